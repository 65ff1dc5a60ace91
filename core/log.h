/* log.h - leveled logging to one sink (stderr by default); formatting is skipped below the level. */
#ifndef LF_CORE_LOG_H
#define LF_CORE_LOG_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_log_level { LF_LOG_DEBUG = 0, LF_LOG_INFO = 1, LF_LOG_WARN = 2, LF_LOG_ERROR = 3, LF_LOG_OFF = 4 } lf_log_level;

extern int lf_log_threshold; /* messages below it are dropped; default LF_LOG_INFO */

void lf_log_set_level(lf_log_level level);
/* Parse "debug|info|warn|error|off"; returns -1 if unknown. */
int lf_log_level_from_name(const char *name);
/* Redirect output (borrowed FILE*, NULL = stderr). */
void lf_log_set_sink(FILE *f);
void lf_log_write(lf_log_level level, const char *func, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define LF_LOG(level, ...)                                   \
    do {                                                     \
        if ((int)(level) < lf_log_threshold) break;          \
        lf_log_write((level), __func__, __VA_ARGS__);        \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
