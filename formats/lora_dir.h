/* lora_dir.h — PEFT adapter directories as ARMs are registered: telling an
 * adapter (adapter_config.json) from a full model (config.json), and finding
 * the backbone it was trained on (adapter_config.json's
 * base_model_name_or_path, a local directory; relative paths are taken from
 * the adapter's directory). Pure file reads, reentrant. */
#ifndef GN_LORA_DIR_H
#define GN_LORA_DIR_H

#include <stddef.h>

#include "gn_err.h"

/* 1 when dir holds adapter_config.json, else 0. */
int gn_lora_is_adapter_dir(const char *dir);

/* Writes the backbone directory of the adapter in adapter_dir to out (cap
 * bytes). 0, or GN_EIO / GN_EFORMAT / GN_ENOTFOUND / GN_ERANGE with the file
 * and field named (e.g. a Hub id that is not a local directory). */
int gn_lora_backbone_dir(const char *adapter_dir, char *out, size_t cap, gn_err *err);

#endif
