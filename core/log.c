/* log.c - leveled logging: "[loraforge LEVEL] func: message" lines on one sink, one write per line. */
#include "core/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>

int lf_log_threshold = LF_LOG_INFO;
static FILE *log_sink;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void lf_log_set_level(lf_log_level level) { lf_log_threshold = (int)level; }

int lf_log_level_from_name(const char *name) {
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++)
        if (name && strcmp(name, names[i]) == 0) return i;
    return -1;
}

void lf_log_set_sink(FILE *f) { log_sink = f; }

void lf_log_write(lf_log_level level, const char *func, const char *fmt, ...) {
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    char line[2048];
    int n = snprintf(line, sizeof line, "[loraforge %s] %s: ", tags[level < 0 || level > 4 ? 4 : level], func);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len] = '\n';
    pthread_mutex_lock(&log_mu);
    fwrite(line, 1, len + 1, log_sink ? log_sink : stderr);
    fflush(log_sink ? log_sink : stderr);
    pthread_mutex_unlock(&log_mu);
}
