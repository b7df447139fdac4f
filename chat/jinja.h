/* jinja.h — a small Jinja2 interpreter for Hugging Face chat templates.
 *
 * It renders templates the way @huggingface/jinja (the engine transformers.js
 * uses for apply_chat_template) does, on the subset that chat templates use:
 * {{ }}, {% if/elif/else %}, {% for %} (loop.*, tuple unpacking, `if`
 * filters, else blocks, break/continue), {% set %} (also block set, tuples
 * and namespace attributes), comments, whitespace control, transformers'
 * {% generation %} markers, the operators, literals (strings with escapes,
 * numbers, lists, dicts, tuples), every test, filter, string/dict method and
 * global the reference has (trim, length, tojson, default, join, replace,
 * items, sort, dictsort, selectattr, map, ...; defined, none, string,
 * mapping, ...; strip, split, startswith, get, ...; namespace(),
 * raise_exception(), range(), strftime_now()). Like transformers it lexes
 * with trim_blocks and lstrip_blocks on.
 *
 * The reference's semantics are kept where they differ from Python's Jinja2:
 * booleans print as true/false, `==` is JavaScript's loose equality, numbers
 * are doubles, .strip('x') ignores its argument and trims whitespace, an
 * operation on undefined/none is an error, the output of a loop iteration cut
 * short by break/continue is dropped.
 *
 * Known differences from the reference: case mapping covers ASCII, Latin-1,
 * Latin Extended-A, basic Greek and Cyrillic only (no final-sigma rule);
 * indexing into the middle of a non-BMP character yields U+FFFD (what the
 * reference's lone surrogate becomes in UTF-8, but two halves do not join
 * back); tojson(sort_keys=true) sorts by bytes, not by localeCompare; a few
 * invalid templates the reference happens to accept (`a == not b` parsed as a
 * call of a variable named not, `not a not b`) are refused.
 *
 * A template that uses a statement the reference has and this interpreter
 * lacks (macro, call and filter blocks) or argument unpacking is refused by
 * gn_jinja_parse with GN_EUNSUP; syntax errors give GN_EFORMAT. A filter,
 * test, function or method neither engine knows is, as in the reference, an
 * error only when the template reaches it (Llama 3.1's template names one on
 * a branch plain conversations never take). Messages name the line and
 * column in the original template.
 *
 * Rendering is bounded: evaluation steps, output bytes, working memory and
 * nesting depth (256) all have limits, so no input (template or variables)
 * can make it loop forever, exhaust memory or overflow the stack (the worst
 * case, macros recursing through deep expressions, stays under 1 MiB of
 * stack in an optimized build). */
#ifndef GN_JINJA_H
#define GN_JINJA_H

#include <stddef.h>

#include <jansson.h>

#include "gn_err.h"

typedef struct gn_jinja gn_jinja;

/* Limits of one render; zero fields take the defaults below. */
typedef struct gn_jinja_limits {
    size_t max_output;  /* bytes of rendered text (default 16 MiB) */
    size_t max_memory;  /* bytes of working memory for values (default 256 MiB) */
    long max_steps;     /* evaluated nodes (default 20,000,000) */
} gn_jinja_limits;

/* Parses src (len bytes, need not be NUL-terminated). Returns the compiled
 * template (caller frees with gn_jinja_free) or NULL with err set:
 * GN_EFORMAT for a syntax error, GN_EUNSUP for an unsupported construct,
 * GN_ERANGE for nesting deeper than the interpreter allows, GN_ENOMEM. */
gn_jinja *gn_jinja_parse(const char *src, size_t len, gn_err *err);

void gn_jinja_free(gn_jinja *t);

/* Renders t with the variables of vars (a JSON object; NULL for none). On
 * success *out is a NUL-terminated gn_malloc'd string of *out_len bytes that
 * the caller frees with gn_free. On failure returns a negative GN_E* code
 * (GN_EINVAL for a runtime error such as raise_exception or an operation on
 * the wrong types, GN_ERANGE when a limit was hit, GN_ENOMEM) and *out is
 * NULL. t is only read: several threads may render one template at once. */
int gn_jinja_render(const gn_jinja *t, const json_t *vars, const gn_jinja_limits *limits,
                    char **out, size_t *out_len, gn_err *err);

#endif
