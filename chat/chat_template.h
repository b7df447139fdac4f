/* chat_template.h — Hugging Face chat templates (tokenizer_config.json's
 * "chat_template") rendered the way transformers' apply_chat_template does.
 *
 * The output is byte-identical to @huggingface/jinja (the engine of
 * transformers.js) on the templates of Llama-2, Llama-3, Llama-3.1,
 * Qwen3/ChatML, Tulu, Zephyr, Gemma, Mistral and DeepSeek-R1; see jinja.h for
 * the Jinja subset and tests/chat/ for the fixtures.
 * A template is parsed once and is then read-only: any number of threads may
 * render it at the same time (from threads with at least 1 MiB of stack).
 *
 * The rendered prompt already holds the special tokens the template writes
 * (Llama's bos_token, for instance): tokenize it without adding them again
 * (gn_tok_encode(..., add_special = 0)), as apply_chat_template(tokenize=True)
 * does. The bos/eos strings to pass are tokenizer_config.json's bos_token /
 * eos_token (gn_chat_special_tokens reads them; NULL where the file has null,
 * as Qwen3's bos_token is). */
#ifndef GN_CHAT_TEMPLATE_H
#define GN_CHAT_TEMPLATE_H

#include <stddef.h>

#include "gn_err.h"

typedef struct gn_chat_template gn_chat_template;

typedef struct gn_chat_message {
    const char *role;    /* "system", "user", "assistant", "tool"... (UTF-8) */
    const char *content; /* UTF-8 text; NULL gives the template a none value */
} gn_chat_message;

typedef struct gn_chat_render_opts {
    int add_generation_prompt; /* end with the header that starts the assistant's turn */
    const char *bos_token;     /* NULL: the variable is left undefined */
    const char *eos_token;     /* NULL: the variable is left undefined */
    /* Optional JSON object text with more variables (e.g. {"enable_thinking": false},
     * "tools"); NULL for none. Its keys override the ones above. */
    const char *extra_vars_json;
    /* Limits of one render; 0 takes the default (16 MiB of output, 256 MiB of
     * working memory, 20,000,000 evaluation steps). */
    size_t max_output;
    size_t max_memory;
    long max_steps;
} gn_chat_render_opts;

/* All zero: no generation prompt, no special tokens, default limits. */
gn_chat_render_opts gn_chat_render_default_opts(void);

/* Parses a template (NUL-terminated UTF-8). Returns it (free with
 * gn_chat_template_free) or NULL with err set: GN_EFORMAT for a syntax error,
 * GN_EUNSUP for a construct this interpreter does not support, GN_ERANGE for
 * nesting beyond its limit, GN_ENOMEM. Messages name line and column. */
gn_chat_template *gn_chat_template_parse(const char *src, gn_err *err);

/* Picks the template out of a tokenizer_config.json text: "chat_template" as
 * a string, or as a list of {name, template} where name (or "default" when
 * name is NULL, else the first) selects one. GN_ENOTFOUND when there is none. */
gn_chat_template *gn_chat_template_from_config(const char *config_json, size_t len, const char *name,
                                              gn_err *err);

void gn_chat_template_free(gn_chat_template *t);

/* Reads bos_token and eos_token from a tokenizer_config.json text (each a
 * string or an {"content": ...} object). *bos / *eos get gn_malloc'd copies
 * (free with gn_free) or NULL when absent or null. Returns 0, GN_EFORMAT for
 * text that is not a JSON object, GN_ENOMEM. */
int gn_chat_special_tokens(const char *config_json, size_t len, char **bos, char **eos, gn_err *err);

/* Renders n messages (n may be 0). On success returns 0 and *out is a
 * NUL-terminated string of *out_len bytes, allocated with gn_malloc, that the
 * caller frees with gn_free. On failure returns a negative GN_E* and *out is
 * NULL: GN_EINVAL for invalid UTF-8 or JSON in the inputs and for a runtime
 * error of the template (raise_exception's message is quoted, e.g. roles
 * that do not alternate), GN_ERANGE when a limit is hit, GN_ENOMEM. */
int gn_chat_template_render(const gn_chat_template *t, const gn_chat_message *msgs, int n,
                            const gn_chat_render_opts *opts, char **out, size_t *out_len, gn_err *err);

/* Same, with every variable given as one JSON object of len bytes (e.g.
 * {"messages": [...], "add_generation_prompt": true, "bos_token": "<s>"}),
 * so messages may carry any fields (tool_calls, reasoning_content...). Only
 * the limits of opts (may be NULL) are used. */
int gn_chat_template_render_json(const gn_chat_template *t, const char *vars_json, size_t len,
                                 const gn_chat_render_opts *opts, char **out, size_t *out_len, gn_err *err);

#endif
