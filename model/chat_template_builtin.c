/* chat_template_builtin.c - named chat templates for models without one, written as Jinja in the Hugging
 * Face convention (the assistant header belongs to the assistant turn; add_generation_prompt appends it),
 * with LLaMA-Factory's turn formats (src/llamafactory/data/template.py: llama3, llama2, mistral, qwen,
 * gemma, phi, alpaca, default). bos_token / eos_token are joined with `~`, so an undefined token renders
 * as "". A system message that the format has no slot for is merged into the first user turn, as
 * LLaMA-Factory does. */
#include <string.h>

#include "model/chat_template.h"

static const char LLAMA3[] =
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{{- '<|start_header_id|>' ~ message['role'] ~ '<|end_header_id|>\\n\\n' ~ message['content'] ~ '<|eot_id|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}\n";

static const char LLAMA2[] =
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}{%- set system_message = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- if message['role'] == 'user' -%}\n"
    "{%- if loop.first and system_message -%}\n"
    "{{- bos_token ~ '[INST] <<SYS>>\\n' ~ system_message ~ '\\n<</SYS>>\\n\\n' ~ message['content'] ~ ' [/INST]' -}}\n"
    "{%- else -%}{{- bos_token ~ '[INST] ' ~ message['content'] ~ ' [/INST]' -}}{%- endif -%}\n"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' ~ message['content'] ~ ' ' ~ eos_token -}}\n"
    "{%- else -%}{{- raise_exception('llama2 template: only user and assistant roles after an optional system message') -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n";

static const char MISTRAL[] =
    "{{- bos_token -}}\n"
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}{%- set system_message = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- if message['role'] == 'user' -%}\n"
    "{%- if loop.first and system_message -%}{{- '[INST] ' ~ system_message ~ '\\n\\n' ~ message['content'] ~ '[/INST]' -}}\n"
    "{%- else -%}{{- '[INST] ' ~ message['content'] ~ '[/INST]' -}}{%- endif -%}\n"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] ~ eos_token -}}\n"
    "{%- else -%}{{- raise_exception('mistral template: only user and assistant roles after an optional system message') -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n";

static const char QWEN[] =
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- else -%}\n"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' -}}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n";

static const char GEMMA[] =
    "{{- bos_token -}}\n"
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}{%- set system_message = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\n"
    "{%- if loop.first and system_message and message['role'] == 'user' -%}\n"
    "{%- set content = system_message ~ '\\n\\n' ~ message['content'] -%}\n"
    "{%- else -%}{%- set content = message['content'] -%}{%- endif -%}\n"
    "{{- '<start_of_turn>' ~ role ~ '\\n' ~ content ~ '<end_of_turn>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}\n";

static const char PHI[] =
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ '<|end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n";

static const char ALPACA[] =
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{{- messages[0]['content'] ~ '\\n\\n' -}}{%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "{{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' -}}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- if message['role'] == 'user' -%}{{- '### Instruction:\\n' ~ message['content'] ~ '\\n\\n' -}}\n"
    "{%- elif message['role'] == 'assistant' -%}{{- '### Response:\\n' ~ message['content'] ~ eos_token ~ '\\n\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}\n";

static const char DEFAULT[] =
    "{%- for message in messages -%}\n"
    "{%- if message['role'] == 'system' -%}{{- 'System: ' ~ message['content'] ~ '\\n' -}}\n"
    "{%- elif message['role'] == 'user' -%}{{- 'Human: ' ~ message['content'] ~ '\\n' -}}\n"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' ~ message['content'] ~ eos_token ~ '\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}\n";

static const struct {
    const char *name;
    const char *src;
} BUILTINS[] = {
    {"llama3", LLAMA3}, {"llama2", LLAMA2}, {"mistral", MISTRAL}, {"qwen", QWEN},      {"chatml", QWEN},
    {"gemma", GEMMA},   {"phi", PHI},       {"alpaca", ALPACA},   {"default", DEFAULT},
};

static const char *const NAMES[] = {"llama3", "llama2", "mistral", "qwen", "chatml", "gemma", "phi", "alpaca", "default",
                                    NULL};

const char *lf_chat_template_builtin(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof BUILTINS / sizeof BUILTINS[0]; i++)
        if (!strcmp(BUILTINS[i].name, name)) return BUILTINS[i].src;
    return NULL;
}

const char *const *lf_chat_template_builtin_names(void) { return NAMES; }
