/* openai.c — OpenAI request parsing/validation and response formatting
 * (see openai.h). */
#include "openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "gn_alloc.h"

int gn_oai_errf(gn_oai_error *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...) {
    if (!e) return GN_EINVAL;
    e->status = status;
    e->type = type ? type : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return GN_EINVAL;
}

#define BAD(param, code, ...) gn_oai_errf(e, 400, "invalid_request_error", param, code, __VA_ARGS__)

static int id_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= GN_OAI_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

/* A copied string member. */
static int get_str(const json_t *v, const char *param, char **out, size_t *out_len,
                   gn_oai_error *e) {
    if (!json_is_string(v)) return BAD(param, "invalid_type", "'%s' must be a string (got %s)", param, jtype(v));
    size_t n = json_string_length(v);
    if (strlen(json_string_value(v)) != n)
        return BAD(param, "invalid_value", "'%s' must not contain NUL characters", param);
    *out = gn_strndup(json_string_value(v), n);
    if (!*out) return gn_oai_errf(e, 500, "server_error", NULL, NULL, "out of memory"), GN_ENOMEM;
    if (out_len) *out_len = n;
    return 0;
}

static int get_num(const json_t *v, const char *param, double lo, double hi, int lo_open,
                   double *out, gn_oai_error *e) {
    if (!json_is_number(v)) return BAD(param, "invalid_type", "'%s' must be a number (got %s)", param, jtype(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return BAD(param, "invalid_value", "'%s' must be in %s%g, %g] (got %g)", param, lo_open ? "(" : "[",
                   lo, hi, x);
    *out = x;
    return 0;
}

static int get_int(const json_t *v, const char *param, long long lo, long long hi, long long *out,
                   gn_oai_error *e) {
    if (!json_is_integer(v)) return BAD(param, "invalid_type", "'%s' must be an integer (got %s)", param, jtype(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return BAD(param, "invalid_value", "'%s' must be in [%lld, %lld] (got %lld)", param, lo, hi, x);
    *out = x;
    return 0;
}

static int get_bool(const json_t *v, const char *param, int *out, gn_oai_error *e) {
    if (!json_is_boolean(v)) return BAD(param, "invalid_type", "'%s' must be a boolean (got %s)", param, jtype(v));
    *out = json_is_true(v);
    return 0;
}

static int parse_stop(const json_t *v, gn_oai_request *r, gn_oai_error *e) {
    if (json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return BAD("stop", "invalid_value", "'stop' must not be empty");
        if (!(r->stop = gn_calloc(1, sizeof *r->stop))) return GN_ENOMEM;
        int rc = get_str(v, "stop", &r->stop[0], NULL, e);
        if (rc) return rc;
        r->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v)) return BAD("stop", "invalid_type", "'stop' must be a string or an array of strings (got %s)", jtype(v));
    size_t n = json_array_size(v);
    if (n > GN_OAI_MAX_STOP) return BAD("stop", "invalid_value", "'stop' may hold at most %d strings (got %zu)", GN_OAI_MAX_STOP, n);
    if (n == 0) return 0;
    if (!(r->stop = gn_calloc(n, sizeof *r->stop))) return GN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char p[32];
        snprintf(p, sizeof p, "stop[%zu]", i);
        json_t *s = json_array_get(v, i);
        if (json_is_string(s) && json_string_length(s) == 0) return BAD(p, "invalid_value", "'%s' must not be empty", p);
        int rc = get_str(s, p, &r->stop[i], NULL, e);
        if (rc) return rc;
        r->n_stop = (int)i + 1;
    }
    return 0;
}

static int parse_arms(const json_t *v, gn_oai_request *r, gn_oai_error *e) {
    if (!json_is_array(v)) return BAD("reward_models", "invalid_type", "'reward_models' must be an array (got %s)", jtype(v));
    size_t n = json_array_size(v);
    if (n < 1 || n > GN_OAI_MAX_ARMS)
        return BAD("reward_models", "invalid_value", "'reward_models' must hold 1..%d entries (got %zu)", GN_OAI_MAX_ARMS, n);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(v, i);
        char p[64];
        snprintf(p, sizeof p, "reward_models[%zu]", i);
        if (!json_is_object(a)) return BAD(p, "invalid_type", "'%s' must be an object (got %s)", p, jtype(a));
        const char *k;
        json_t *m;
        int have_name = 0;
        r->arms[i].weight = 1.0;
        json_object_foreach(a, k, m) {
            char pp[96];
            snprintf(pp, sizeof pp, "%s.%s", p, k);
            if (strcmp(k, "name") == 0) {
                if (!json_is_string(m)) return BAD(pp, "invalid_type", "'%s' must be a string (got %s)", pp, jtype(m));
                const char *s = json_string_value(m);
                if (strlen(s) != json_string_length(m) || !id_valid(s))
                    return BAD(pp, "invalid_value", "'%s' must be 1..64 characters of [A-Za-z0-9._-]", pp);
                for (size_t j = 0; j < i; j++)
                    if (strcmp(r->arms[j].name, s) == 0) return BAD(pp, "invalid_value", "reward model '%s' is listed twice", s);
                snprintf(r->arms[i].name, sizeof r->arms[i].name, "%s", s);
                have_name = 1;
            } else if (strcmp(k, "weight") == 0) {
                int rc = get_num(m, pp, -1e6, 1e6, 0, &r->arms[i].weight, e);
                if (rc) return rc;
            } else {
                return BAD(pp, "unknown_parameter", "unknown member '%s'", pp);
            }
        }
        if (!have_name) {
            char pp[96];
            snprintf(pp, sizeof pp, "%s.name", p);
            return BAD(pp, "missing_required_parameter", "'%s' is required", pp);
        }
    }
    r->n_arms = (int)n;
    return 0;
}

/* Concatenated text of a chat content value: a string, null, or an array of
 * {"type":"text","text":...} parts. */
static int parse_content(const json_t *v, const char *param, char **out, gn_oai_error *e) {
    if (json_is_null(v)) return (*out = gn_strdup("")) ? 0 : GN_ENOMEM;
    if (json_is_string(v)) return get_str(v, param, out, NULL, e);
    if (!json_is_array(v)) return BAD(param, "invalid_type", "'%s' must be a string or an array of parts (got %s)", param, jtype(v));
    size_t total = 0, n = json_array_size(v);
    for (size_t i = 0; i < n; i++) {
        json_t *part = json_array_get(v, i);
        char p[128];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_object(part)) return BAD(p, "invalid_type", "'%s' must be an object (got %s)", p, jtype(part));
        json_t *t = json_object_get(part, "type"), *tx = json_object_get(part, "text");
        if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0)
            return BAD(p, "unsupported_value", "'%s' must be a part of type \"text\"", p);
        if (!json_is_string(tx)) return BAD(p, "invalid_type", "'%s.text' must be a string", p);
        total += json_string_length(tx);
    }
    char *s = gn_malloc(total + 1);
    if (!s) return GN_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *tx = json_object_get(json_array_get(v, i), "text");
        memcpy(s + off, json_string_value(tx), json_string_length(tx));
        off += json_string_length(tx);
    }
    s[off] = 0;
    *out = s;
    return 0;
}

static int parse_messages(const json_t *v, gn_oai_request *r, gn_oai_error *e) {
    if (!json_is_array(v)) return BAD("messages", "invalid_type", "'messages' must be an array (got %s)", jtype(v));
    size_t n = json_array_size(v);
    if (n == 0) return BAD("messages", "invalid_value", "'messages' must not be empty");
    if (n > 100000) return BAD("messages", "invalid_value", "'messages' holds too many entries");
    if (!(r->messages = gn_calloc(n, sizeof *r->messages))) return GN_ENOMEM;
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        char p[64], pp[96];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(m)) return BAD(p, "invalid_type", "'%s' must be an object (got %s)", p, jtype(m));
        r->n_messages = (int)i + 1;
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        snprintf(pp, sizeof pp, "%s.role", p);
        if (!role) return BAD(pp, "missing_required_parameter", "'%s' is required", pp);
        if (!json_is_string(role)) return BAD(pp, "invalid_type", "'%s' must be a string (got %s)", pp, jtype(role));
        int ok = 0;
        for (size_t j = 0; j < sizeof roles / sizeof *roles; j++)
            ok |= strcmp(json_string_value(role), roles[j]) == 0;
        if (!ok) return BAD(pp, "invalid_value", "'%s' must be one of system, user, assistant, tool, developer", pp);
        int rc = get_str(role, pp, &r->messages[i].role, NULL, e);
        if (rc) return rc;
        snprintf(pp, sizeof pp, "%s.content", p);
        if (!content && strcmp(json_string_value(role), "assistant") != 0)
            return BAD(pp, "missing_required_parameter", "'%s' is required", pp);
        if ((rc = parse_content(content ? content : json_null(), pp, &r->messages[i].content, e))) return rc;
        const char *k;
        json_t *x;
        json_object_foreach(m, k, x) {
            if (strcmp(k, "role") && strcmp(k, "content") && strcmp(k, "name"))
                return BAD(p, "unknown_parameter", "unknown member '%s.%s'", p, k);
        }
    }
    return 0;
}

/* Members both endpoints share. Returns 1 when k was handled, 0 when unknown,
 * negative on a refusal. */
static int parse_common(const char *k, const json_t *v, gn_oai_request *r, gn_oai_error *e) {
    int rc = 0;
    long long ll;
    double d;
    if (strcmp(k, "model") == 0) {
        if ((rc = get_str(v, k, &r->model, NULL, e))) return rc;
        if (!r->model[0]) return BAD(k, "invalid_value", "'model' must not be empty");
    } else if (strcmp(k, "max_tokens") == 0 || strcmp(k, "max_completion_tokens") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_int(v, k, 1, GN_OAI_MAX_TOKENS_CAP, &ll, e))) return rc;
        r->max_tokens = (int)ll;
        r->has |= GN_OAI_HAS_MAX_TOKENS;
    } else if (strcmp(k, "temperature") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_num(v, k, 0, 10, 0, &r->temperature, e))) return rc;
        r->has |= GN_OAI_HAS_TEMPERATURE;
    } else if (strcmp(k, "top_p") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_num(v, k, 0, 1, 1, &r->top_p, e))) return rc;
        r->has |= GN_OAI_HAS_TOP_P;
    } else if (strcmp(k, "top_k") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_int(v, k, -1, 1 << 24, &ll, e))) return rc;
        r->top_k = ll < 0 ? 0 : (int)ll;
        r->has |= GN_OAI_HAS_TOP_K;
    } else if (strcmp(k, "min_p") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_num(v, k, 0, 1, 0, &r->min_p, e))) return rc;
        r->has |= GN_OAI_HAS_MIN_P;
    } else if (strcmp(k, "n") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_int(v, k, 1, GN_OAI_MAX_N, &ll, e))) return rc;
        r->n = (int)ll;
    } else if (strcmp(k, "stop") == 0) {
        if ((rc = parse_stop(v, r, e))) return rc;
    } else if (strcmp(k, "seed") == 0) {
        if (json_is_null(v)) return 1;
        if (!json_is_integer(v)) return BAD(k, "invalid_type", "'seed' must be an integer (got %s)", jtype(v));
        r->seed = (uint64_t)json_integer_value(v);
        r->has |= GN_OAI_HAS_SEED;
    } else if (strcmp(k, "stream") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_bool(v, k, &r->stream, e))) return rc;
    } else if (strcmp(k, "stream_options") == 0) {
        if (json_is_null(v)) return 1;
        if (!json_is_object(v)) return BAD(k, "invalid_type", "'stream_options' must be an object (got %s)", jtype(v));
        const char *kk;
        json_t *x;
        json_object_foreach((json_t *)v, kk, x) {
            if (strcmp(kk, "include_usage") == 0) {
                if ((rc = get_bool(x, "stream_options.include_usage", &r->include_usage, e))) return rc;
            } else if (strcmp(kk, "continuous_usage_stats") != 0) {
                return BAD("stream_options", "unknown_parameter", "unknown member 'stream_options.%s'", kk);
            }
        }
    } else if (strcmp(k, "ignore_eos") == 0) {
        if ((rc = get_bool(v, k, &r->ignore_eos, e))) return rc;
    } else if (strcmp(k, "return_tokens_as_token_ids") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_bool(v, k, &r->token_ids, e))) return rc;
    } else if (strcmp(k, "user") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_str(v, k, &r->user, NULL, e))) return rc;
        if (strlen(r->user) > 256) return BAD(k, "invalid_value", "'user' must be at most 256 bytes");
    } else if (strcmp(k, "profile") == 0) {
        if (json_is_null(v)) return 1;
        if (!json_is_string(v)) return BAD(k, "invalid_type", "'profile' must be a string (got %s)", jtype(v));
        const char *s = json_string_value(v);
        if (strlen(s) != json_string_length(v) || !id_valid(s))
            return BAD(k, "invalid_value", "'profile' must be 1..64 characters of [A-Za-z0-9._-]");
        snprintf(r->profile, sizeof r->profile, "%s", s);
    } else if (strcmp(k, "reward_models") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = parse_arms(v, r, e))) return rc;
    } else if (strcmp(k, "beta") == 0) {
        if (json_is_null(v)) return 1;
        if ((rc = get_num(v, k, 0, 1e6, 1, &r->beta, e))) return rc;
        r->has |= GN_OAI_HAS_BETA;
    } else if (strcmp(k, "frequency_penalty") == 0 || strcmp(k, "presence_penalty") == 0 ||
               strcmp(k, "repetition_penalty") == 0) {
        if (json_is_null(v)) return 1;
        double neutral = strcmp(k, "repetition_penalty") == 0 ? 1.0 : 0.0;
        if ((rc = get_num(v, k, -2, 2, 0, &d, e))) return rc;
        if (d != neutral) return BAD(k, "unsupported_value", "'%s' is not supported (only %g)", k, neutral);
    } else if (strcmp(k, "logit_bias") == 0) {
        if (json_is_null(v)) return 1;
        if (!json_is_object(v)) return BAD(k, "invalid_type", "'logit_bias' must be an object (got %s)", jtype(v));
        if (json_object_size(v)) return BAD(k, "unsupported_value", "'logit_bias' is not supported");
    } else {
        return 0;
    }
    return 1;
}

static int parse_body(const char *body, size_t len, gn_oai_error *e, json_t **root) {
    *root = NULL;
    if (len > GN_OAI_BODY_MAX)
        return gn_oai_errf(e, 413, "invalid_request_error", NULL, "body_too_large",
                           "request body of %zu bytes exceeds the limit of %u", len, GN_OAI_BODY_MAX);
    if (!body || len == 0) return BAD(NULL, "invalid_json", "the request body is empty");
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!j) return BAD(NULL, "invalid_json", "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    if (!json_is_object(j)) {
        json_decref(j);
        return BAD(NULL, "invalid_json", "the body must be a JSON object");
    }
    *root = j;
    return 0;
}

static void request_init(gn_oai_request *r, int kind) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->n = 1;
    r->logprobs = -1;
    r->beta = 1.0;
}

static int finish_checks(gn_oai_request *r, gn_oai_error *e) {
    if (!r->model) return BAD("model", "missing_required_parameter", "'model' is required");
    if (r->profile[0] && r->n_arms) return BAD("reward_models", "invalid_value", "give either 'profile' or 'reward_models', not both");
    if (r->include_usage && !r->stream) return BAD("stream_options", "invalid_value", "'stream_options' is only allowed when 'stream' is true");
    return 0;
}

static int parse_any(int kind, const char *body, size_t len, gn_oai_request *out, gn_oai_error *e) {
    gn_oai_error dummy;
    if (!e) e = &dummy;
    memset(e, 0, sizeof *e);
    request_init(out, kind);
    json_t *root;
    int rc = parse_body(body, len, e, &root);
    if (rc) return rc;
    const char *k;
    json_t *v;
    int have_main = 0;
    json_object_foreach(root, k, v) {
        if ((rc = parse_common(k, v, out, e)) < 0) goto fail;
        if (rc == 1) continue;
        rc = 0;
        long long ll;
        if (kind == GN_OAI_COMPLETION && strcmp(k, "prompt") == 0) {
            have_main = 1;
            const json_t *p = v;
            if (json_is_array(v)) {
                if (json_array_size(v) != 1 || !json_is_string(json_array_get(v, 0))) {
                    rc = gn_oai_errf(e, 400, NULL, "prompt",
                                     json_array_size(v) == 1 ? "unsupported_value" : "invalid_value",
                                     "'prompt' must be a string or an array of exactly one string");
                    goto fail;
                }
                p = json_array_get(v, 0);
            }
            if ((rc = get_str(p, "prompt", &out->prompt, &out->prompt_len, e))) goto fail;
            if (out->prompt_len == 0) {
                rc = BAD("prompt", "invalid_value", "'prompt' must not be empty");
                goto fail;
            }
        } else if (kind == GN_OAI_COMPLETION && strcmp(k, "logprobs") == 0) {
            if (json_is_null(v)) continue;
            if ((rc = get_int(v, k, 0, 5, &ll, e))) goto fail;
            out->logprobs = (int)ll;
        } else if (kind == GN_OAI_COMPLETION && (strcmp(k, "echo") == 0 || strcmp(k, "best_of") == 0 ||
                                                 strcmp(k, "suffix") == 0)) {
            /* accepted in their neutral form only */
            int ok = json_is_null(v) || json_is_false(v) ||
                     (strcmp(k, "best_of") == 0 && json_is_integer(v) && json_integer_value(v) == 1);
            if (!ok) {
                rc = BAD(k, "unsupported_value", "'%s' is not supported", k);
                goto fail;
            }
        } else if (kind == GN_OAI_CHAT && strcmp(k, "messages") == 0) {
            have_main = 1;
            if ((rc = parse_messages(v, out, e))) goto fail;
        } else if (kind == GN_OAI_CHAT && strcmp(k, "logprobs") == 0) {
            int b = 0;
            if (json_is_null(v)) continue;
            if ((rc = get_bool(v, k, &b, e))) goto fail;
            if (b) out->logprobs = 0;
        } else if (kind == GN_OAI_CHAT && strcmp(k, "top_logprobs") == 0) {
            if (json_is_null(v)) continue;
            if ((rc = get_int(v, k, 0, 20, &ll, e))) goto fail;
            out->top_logprobs = (int)ll;
        } else {
            rc = BAD(k, "unknown_parameter", "unrecognized request argument '%s'", k);
            goto fail;
        }
    }
    if (!have_main) {
        const char *m = kind == GN_OAI_COMPLETION ? "prompt" : "messages";
        rc = BAD(m, "missing_required_parameter", "'%s' is required", m);
        goto fail;
    }
    if (kind == GN_OAI_CHAT && out->top_logprobs && out->logprobs < 0) {
        rc = BAD("top_logprobs", "invalid_value", "'top_logprobs' requires 'logprobs': true");
        goto fail;
    }
    if ((rc = finish_checks(out, e))) goto fail;
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    if (rc == GN_ENOMEM && !e->message[0])
        gn_oai_errf(e, 500, "server_error", NULL, NULL, "out of memory");
    gn_oai_request_free(out);
    return rc < 0 ? rc : GN_EINVAL;
}

int gn_oai_parse_completion(const char *body, size_t len, gn_oai_request *out, gn_oai_error *e) {
    return parse_any(GN_OAI_COMPLETION, body, len, out, e);
}

int gn_oai_parse_chat(const char *body, size_t len, gn_oai_request *out, gn_oai_error *e) {
    return parse_any(GN_OAI_CHAT, body, len, out, e);
}

void gn_oai_request_free(gn_oai_request *r) {
    if (!r) return;
    gn_free(r->model);
    gn_free(r->prompt);
    for (int i = 0; i < r->n_messages; i++) {
        gn_free(r->messages[i].role);
        gn_free(r->messages[i].content);
    }
    gn_free(r->messages);
    for (int i = 0; i < r->n_stop; i++) gn_free(r->stop[i]);
    gn_free(r->stop);
    gn_free(r->user);
    memset(r, 0, sizeof *r);
}

/* ---- formatting ----------------------------------------------------------- */

static char *dump(json_t *j, const char *prefix, const char *suffix, size_t *len, gn_err *err) {
    if (!j) {
        gn_errf(err, GN_EINVAL, "response text is not valid UTF-8 (or out of memory)");
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "json_dumps failed");
        return NULL;
    }
    size_t a = strlen(prefix), b = strlen(s), c = strlen(suffix);
    char *out = gn_malloc(a + b + c + 1);
    if (out) {
        memcpy(out, prefix, a);
        memcpy(out + a, s, b);
        memcpy(out + a + b, suffix, c + 1);
        if (len) *len = a + b + c;
    } else {
        gn_errf(err, GN_ENOMEM, "out of memory");
    }
    free(s);
    return out;
}

static json_t *text_value(const gn_oai_choice *c) {
    return json_stringn(c->text ? c->text : "", c->text ? c->text_len : 0);
}

static json_t *usage_json(const gn_oai_usage *u) {
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", u->prompt_tokens, "completion_tokens",
                     u->completion_tokens, "total_tokens", u->prompt_tokens + u->completion_tokens);
}

static json_t *reason(const char *r) { return r ? json_string(r) : json_null(); }

static json_t *bytes_of(const char *s, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

/* The choice's "logprobs" value (a new reference; NULL on failure). */
static json_t *logprobs_json(int kind, const gn_oai_choice *c) {
    if (!c->with_logprobs) return json_null();
    if (kind == GN_OAI_CHAT) {
        json_t *content = json_array();
        for (int i = 0; content && i < c->n_lp; i++) {
            const gn_oai_logprob *l = &c->lp[i];
            json_t *tops = json_array();
            for (int k = 0; tops && k < l->n_top; k++) {
                json_t *t = json_stringn(l->top[k].text, l->top[k].len);
                json_t *o = t ? json_pack("{s:o,s:f,s:o}", "token", t, "logprob", (double)l->top[k].logprob,
                                          "bytes", bytes_of(l->top[k].text, l->top[k].len))
                              : NULL;
                if (!o || json_array_append_new(tops, o)) {
                    json_decref(tops);
                    tops = NULL;
                }
            }
            json_t *t = json_stringn(l->tok.text, l->tok.len);
            json_t *o = t && tops ? json_pack("{s:o,s:f,s:o,s:o}", "token", t, "logprob", (double)l->tok.logprob,
                                              "bytes", bytes_of(l->tok.text, l->tok.len), "top_logprobs", tops)
                                  : NULL;
            if (!o) {
                json_decref(t);
                json_decref(tops);
            }
            if (!o || json_array_append_new(content, o)) {
                json_decref(content);
                content = NULL;
            }
        }
        return content ? json_pack("{s:o}", "content", content) : NULL;
    }
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t off = c->offset0;
    int ok = tokens && lps && tops && offs;
    for (int i = 0; ok && i < c->n_lp; i++) {
        const gn_oai_logprob *l = &c->lp[i];
        json_t *t = json_stringn(l->tok.text, l->tok.len);
        json_t *m = json_object();
        for (int k = 0; m && k < l->n_top; k++) {
            /* Keys are NUL-terminated: a token text with a NUL byte is cut
             * there. Tokens that decode to the same text (byte tokens all
             * showing U+FFFD) share a key: the most likely one is kept. */
            char *key = gn_strndup(l->top[k].text, l->top[k].len);
            if (!key || (!json_object_get(m, key) && json_object_set_new(m, key, json_real(l->top[k].logprob))))
                ok = 0;
            gn_free(key);
        }
        ok = ok && t && m && !json_array_append_new(tokens, t) &&
             !json_array_append_new(lps, json_real(l->tok.logprob)) && !json_array_append_new(tops, m) &&
             !json_array_append_new(offs, json_integer((json_int_t)off));
        off += l->tok.len;
    }
    if (!ok) {
        json_decref(tokens);
        json_decref(lps);
        json_decref(tops);
        json_decref(offs);
        return NULL;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
                     "text_offset", offs);
}

char *gn_oai_format_response(int kind, const char *id, int64_t created, const char *model,
                             const gn_oai_choice *choices, int n, const gn_oai_usage *usage,
                             size_t *len, gn_err *err) {
    json_t *arr = json_array();
    for (int i = 0; i < n && arr; i++) {
        const gn_oai_choice *c = &choices[i];
        json_t *t = text_value(c), *o, *lp = logprobs_json(kind, c);
        if (!t || !lp) {
            json_decref(t);
            json_decref(lp);
            json_decref(arr);
            arr = NULL;
            break;
        }
        if (kind == GN_OAI_CHAT)
            o = json_pack("{s:i,s:{s:s,s:o},s:o,s:o}", "index", c->index, "message", "role", "assistant",
                          "content", t, "logprobs", lp, "finish_reason", reason(c->finish_reason));
        else
            o = json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, "text", t, "logprobs", lp,
                          "finish_reason", reason(c->finish_reason));
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr) return dump(NULL, "", "", len, err);
    json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o}", "id", id, "object",
                          kind == GN_OAI_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)created, "model", model, "choices", arr, "usage", usage_json(usage));
    return dump(j, "", "", len, err);
}

char *gn_oai_format_chunk(int kind, const char *id, int64_t created, const char *model,
                          const gn_oai_choice *c, int with_role, const gn_oai_usage *usage,
                          size_t *len, gn_err *err) {
    json_t *arr = json_array();
    if (!usage && arr) {
        json_t *o = NULL;
        if (kind == GN_OAI_CHAT) {
            json_t *delta = json_object();
            if (delta && with_role) json_object_set_new(delta, "role", json_string("assistant"));
            if (delta && c->text_len) {
                json_t *t = text_value(c);
                if (!t) {
                    json_decref(delta);
                    delta = NULL;
                } else {
                    json_object_set_new(delta, "content", t);
                }
            }
            json_t *lp = delta ? logprobs_json(kind, c) : NULL;
            if (delta && lp)
                o = json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, "delta", delta, "logprobs", lp,
                              "finish_reason", reason(c->finish_reason));
            else
                json_decref(delta);
        } else {
            json_t *t = text_value(c), *lp = t ? logprobs_json(kind, c) : NULL;
            if (t && lp)
                o = json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, "text", t, "logprobs", lp,
                              "finish_reason", reason(c->finish_reason));
            else
                json_decref(t);
        }
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr) return dump(NULL, "", "", len, err);
    json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", id, "object",
                          kind == GN_OAI_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)created, "model", model, "choices", arr);
    if (j && usage) json_object_set_new(j, "usage", usage_json(usage));
    return dump(j, "data: ", "\n\n", len, err);
}

char *gn_oai_format_error(const gn_oai_error *e, size_t *len) {
    json_t *msg = json_stringn(e->message, strlen(e->message));
    if (!msg) msg = json_string("error message was not valid UTF-8");
    json_t *j = json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message", msg, "type",
                          e->type ? e->type : "invalid_request_error", "param",
                          e->param[0] ? json_string(e->param) : json_null(), "code",
                          e->code[0] ? json_string(e->code) : json_null());
    return dump(j, "", "", len, NULL);
}
