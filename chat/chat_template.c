/* chat_template.c — the chat-template API over the Jinja interpreter. */
#include <string.h>

#include <jansson.h>

#include "chat_template.h"
#include "gn_alloc.h"
#include "jinja.h"
#include "jinja_internal.h"

struct gn_chat_template {
    gn_jinja *j;
};

gn_chat_render_opts gn_chat_render_default_opts(void) { return (gn_chat_render_opts){0}; }

gn_chat_template *gn_chat_template_parse(const char *src, gn_err *err) {
    if (!src) {
        gn_errf(err, GN_EINVAL, "chat template: NULL source");
        return NULL;
    }
    gn_chat_template *t = gn_calloc(1, sizeof *t);
    if (!t) {
        gn_errf(err, GN_ENOMEM, "chat template: out of memory");
        return NULL;
    }
    if (!(t->j = gn_jinja_parse(src, strlen(src), err))) {
        gn_free(t);
        return NULL;
    }
    return t;
}

gn_chat_template *gn_chat_template_from_config(const char *config_json, size_t len, const char *name,
                                              gn_err *err) {
    json_error_t je;
    json_t *cfg = config_json ? json_loadb(config_json, len, JSON_DECODE_INT_AS_REAL, &je) : NULL;
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        gn_errf(err, GN_EFORMAT, "tokenizer_config.json: %s",
                cfg           ? "not a JSON object"
                : config_json ? je.text
                              : "NULL");
        return NULL;
    }
    json_t *ct = json_object_get(cfg, "chat_template");
    const char *src = NULL;
    if (json_is_string(ct)) {
        src = json_string_value(ct);
    } else if (json_is_array(ct)) {
        const char *want = name ? name : "default";
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *e = json_array_get(ct, i);
            json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
            if (!json_is_string(tp)) continue;
            if (json_is_string(nm) && !strcmp(json_string_value(nm), want)) {
                src = json_string_value(tp);
                break;
            }
            if (!src && !name) src = json_string_value(tp);
        }
    } else if (ct && !json_is_null(ct)) {
        json_decref(cfg);
        gn_errf(err, GN_EFORMAT, "tokenizer_config.json: chat_template must be a string or a list");
        return NULL;
    }
    gn_chat_template *t = NULL;
    if (!src)
        gn_errf(err, GN_ENOTFOUND, "tokenizer_config.json has no chat template%s%s", name ? " named " : "",
                name ? name : "");
    else
        t = gn_chat_template_parse(src, err);
    json_decref(cfg);
    return t;
}

static int token_of(json_t *cfg, const char *key, char **out, gn_err *err) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    *out = NULL;
    if (!json_is_string(v)) return 0;
    if (!(*out = gn_strndup(json_string_value(v), json_string_length(v))))
        return gn_errf(err, GN_ENOMEM, "chat template: out of memory");
    return 0;
}

int gn_chat_special_tokens(const char *config_json, size_t len, char **bos, char **eos, gn_err *err) {
    *bos = *eos = NULL;
    json_error_t je;
    json_t *cfg = config_json ? json_loadb(config_json, len, JSON_DECODE_INT_AS_REAL, &je) : NULL;
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return gn_errf(err, GN_EFORMAT, "tokenizer_config.json: %s",
                       cfg           ? "not a JSON object"
                       : config_json ? je.text
                                     : "NULL");
    }
    int rc = token_of(cfg, "bos_token", bos, err);
    if (!rc) rc = token_of(cfg, "eos_token", eos, err);
    if (rc) {
        gn_free(*bos);
        *bos = NULL;
    }
    json_decref(cfg);
    return rc;
}

void gn_chat_template_free(gn_chat_template *t) {
    if (!t) return;
    gn_jinja_free(t->j);
    gn_free(t);
}

static gn_jinja_limits limits_of(const gn_chat_render_opts *o) {
    gn_jinja_limits l = {0};
    if (o) {
        l.max_output = o->max_output;
        l.max_memory = o->max_memory;
        l.max_steps = o->max_steps;
    }
    return l;
}

static int set_str(json_t *obj, const char *key, const char *s, gn_err *err) {
    if (!ju_valid_utf8(s, strlen(s))) return gn_errf(err, GN_EINVAL, "chat template: %s is not valid UTF-8", key);
    json_t *v = json_stringn(s, strlen(s));
    if (!v || json_object_set_new(obj, key, v)) return gn_errf(err, GN_ENOMEM, "chat template: out of memory");
    return 0;
}

int gn_chat_template_render(const gn_chat_template *t, const gn_chat_message *msgs, int n,
                            const gn_chat_render_opts *opts, char **out, size_t *out_len, gn_err *err) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out || n < 0 || (n > 0 && !msgs)) return gn_errf(err, GN_EINVAL, "chat template: bad argument");
    gn_chat_render_opts o = opts ? *opts : gn_chat_render_default_opts();
    int rc = GN_ENOMEM;
    json_t *vars = json_object(), *arr = json_array();
    if (!vars || !arr || json_object_set(vars, "messages", arr)) {
        rc = gn_errf(err, GN_ENOMEM, "chat template: out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        json_t *m = json_object();
        if (!m || json_array_append_new(arr, m)) {
            rc = gn_errf(err, GN_ENOMEM, "chat template: out of memory");
            goto out;
        }
        if ((rc = set_str(m, "role", msgs[i].role ? msgs[i].role : "", err))) goto out;
        if (msgs[i].content) {
            if ((rc = set_str(m, "content", msgs[i].content, err))) goto out;
        } else if (json_object_set_new(m, "content", json_null())) {
            rc = gn_errf(err, GN_ENOMEM, "chat template: out of memory");
            goto out;
        }
    }
    if (json_object_set_new(vars, "add_generation_prompt", json_boolean(o.add_generation_prompt))) {
        rc = gn_errf(err, GN_ENOMEM, "chat template: out of memory");
        goto out;
    }
    if (o.bos_token && (rc = set_str(vars, "bos_token", o.bos_token, err))) goto out;
    if (o.eos_token && (rc = set_str(vars, "eos_token", o.eos_token, err))) goto out;
    if (o.extra_vars_json) {
        json_error_t je;
        json_t *extra = json_loads(o.extra_vars_json, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
        if (!extra || !json_is_object(extra)) {
            json_decref(extra);
            rc = gn_errf(err, GN_EINVAL, "chat template: extra variables: %s", extra ? "not a JSON object" : je.text);
            goto out;
        }
        int bad = json_object_update(vars, extra);
        json_decref(extra);
        if (bad) {
            rc = gn_errf(err, GN_ENOMEM, "chat template: out of memory");
            goto out;
        }
    }
    gn_jinja_limits lim = limits_of(&o);
    rc = gn_jinja_render(t->j, vars, &lim, out, out_len, err);
out:
    json_decref(arr);
    json_decref(vars);
    return rc;
}

int gn_chat_template_render_json(const gn_chat_template *t, const char *vars_json, size_t len,
                                 const gn_chat_render_opts *opts, char **out, size_t *out_len, gn_err *err) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out || !vars_json) return gn_errf(err, GN_EINVAL, "chat template: bad argument");
    json_error_t je;
    json_t *vars = json_loadb(vars_json, len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
    if (!vars || !json_is_object(vars)) {
        json_decref(vars);
        return gn_errf(err, GN_EINVAL, "chat template: variables: %s", vars ? "not a JSON object" : je.text);
    }
    gn_jinja_limits lim = limits_of(opts);
    int rc = gn_jinja_render(t->j, vars, &lim, out, out_len, err);
    json_decref(vars);
    return rc;
}
