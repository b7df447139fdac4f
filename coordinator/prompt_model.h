/* prompt_model.h — a model as the coordinator sees it when it builds
 * prompts: its tokenizer and chat template (ARCHITECTURE.md §1: each model renders
 * a conversation with its own template; all share the continuation). A PEFT
 * adapter directory without a tokenizer of its own has its backbone's.
 *
 * Read-only after loading: gn_prompt_tokens may run on several threads. */
#ifndef GN_PROMPT_MODEL_H
#define GN_PROMPT_MODEL_H

#include <stdint.h>

#include "chat_template.h"
#include "control.h"
#include "gn_err.h"
#include "openai.h"
#include "tokenizer.h"

typedef struct gn_prompt_model {
    char path[GN_CTL_PATH_MAX];
    const gn_tokenizer *tok;
    gn_tokenizer *own_tok;  /* tok when gn_prompt_model_load loaded it (clear frees it), else NULL */
    gn_chat_template *tmpl; /* NULL: the plain "role: content" fallback format */
    char *bos, *eos;        /* the template's bos_token / eos_token */
} gn_prompt_model;

/* Loads the tokenizer and chat template of the model (or adapter) at path.
 * 0, or a negative code with err; on failure *m is cleared. */
int gn_prompt_model_load(gn_prompt_model *m, const char *path, gn_err *err);
/* The same over a tokenizer loaded elsewhere (a model's), which must outlive
 * m; label names the model in errors. 0, or a negative code with err (*m
 * cleared). */
int gn_prompt_model_init(gn_prompt_model *m, const gn_tokenizer *tok, const char *label, gn_err *err);
void gn_prompt_model_clear(gn_prompt_model *m);

/* r's conversation rendered with m's chat template (or, without one, as
 * "role: content" lines then "assistant:"); *out is gn_malloc'd. */
int gn_prompt_chat_text(const gn_prompt_model *m, const gn_oai_request *r, char **out, gn_err *err);

/* The token ids of r's prompt for model m: a completion's text (with the
 * tokenizer's special tokens), or a chat rendered with m's template (which
 * places them itself). *ids is gn_malloc'd. GN_EINVAL for an empty prompt. */
int gn_prompt_tokens(const gn_prompt_model *m, const gn_oai_request *r, int32_t **ids, int *n, gn_err *err);

#endif
