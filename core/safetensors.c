/* safetensors.c - compiles the implementation of the header-only reader/writer in core/safetensors.h. */
#define LF_SAFETENSORS_IMPLEMENTATION
#include "core/safetensors.h"
