/* ctl_profile.c — preference profiles as JSON: validate, parse, serialise.
 * Pure functions: no Redis, no I/O. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

void gn_ctl_profile_init(gn_ctl_profile *p) {
    memset(p, 0, sizeof *p);
    p->beta = 1.0;
}

int gn_ctl_profile_validate(const gn_ctl_profile *p, gn_err *err) {
    if (!p) return gn_errf(err, GN_EINVAL, "profile: NULL");
    if (!gn_ctl_id_valid(p->name))
        return gn_errf(err, GN_EINVAL, "profile: name \"%.80s\" is not a valid identifier", p->name);
    if (p->n_arms < 1 || p->n_arms > GN_CTL_PROFILE_MAX_ARMS)
        return gn_errf(err, GN_EINVAL, "profile %s: needs 1 to %d arms, has %d", p->name,
                       GN_CTL_PROFILE_MAX_ARMS, p->n_arms);
    for (int i = 0; i < p->n_arms; i++) {
        if (!gn_ctl_id_valid(p->arms[i].name))
            return gn_errf(err, GN_EINVAL, "profile %s: arms[%d].name \"%.80s\" is not a valid identifier",
                           p->name, i, p->arms[i].name);
        if (!isfinite(p->arms[i].weight))
            return gn_errf(err, GN_EINVAL, "profile %s: arms[%d].weight must be finite", p->name, i);
        for (int j = 0; j < i; j++)
            if (strcmp(p->arms[i].name, p->arms[j].name) == 0)
                return gn_errf(err, GN_EINVAL, "profile %s: arm %s appears twice", p->name,
                               p->arms[i].name);
    }
    if (!isfinite(p->beta) || !(p->beta > 0))
        return gn_errf(err, GN_EINVAL, "profile %s: beta must be finite and > 0 (got %g)", p->name, p->beta);
    if ((p->has & GN_CTL_HAS_TEMPERATURE) && !(isfinite(p->temperature) && p->temperature >= 0))
        return gn_errf(err, GN_EINVAL, "profile %s: defaults.temperature must be finite and >= 0", p->name);
    if ((p->has & GN_CTL_HAS_TOP_P) && !(p->top_p > 0 && p->top_p <= 1))
        return gn_errf(err, GN_EINVAL, "profile %s: defaults.top_p must be in (0, 1]", p->name);
    if ((p->has & GN_CTL_HAS_TOP_K) && p->top_k < 0)
        return gn_errf(err, GN_EINVAL, "profile %s: defaults.top_k must be >= 0", p->name);
    if ((p->has & GN_CTL_HAS_MIN_P) && !(p->min_p >= 0 && p->min_p <= 1))
        return gn_errf(err, GN_EINVAL, "profile %s: defaults.min_p must be in [0, 1]", p->name);
    if ((p->has & GN_CTL_HAS_MAX_TOKENS) && p->max_tokens < 1)
        return gn_errf(err, GN_EINVAL, "profile %s: defaults.max_tokens must be >= 1", p->name);
    return 0;
}

static int get_id(json_t *v, char *out, const char *what, gn_err *err) {
    if (!json_is_string(v)) return gn_errf(err, GN_EFORMAT, "profile: %s must be a string", what);
    const char *s = json_string_value(v);
    if (json_string_length(v) != strlen(s) || !gn_ctl_id_valid(s))
        return gn_errf(err, GN_EINVAL, "profile: %s \"%.80s\" is not a valid identifier", what, s);
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

static int get_num(json_t *v, double *out, const char *what, gn_err *err) {
    if (!json_is_number(v)) return gn_errf(err, GN_EFORMAT, "profile: %s must be a number", what);
    *out = json_number_value(v);
    return 0;
}

static int get_int(json_t *v, int *out, const char *what, gn_err *err) {
    if (!json_is_integer(v)) return gn_errf(err, GN_EFORMAT, "profile: %s must be an integer", what);
    json_int_t x = json_integer_value(v);
    if (x < -2147483647 || x > 2147483647) return gn_errf(err, GN_EINVAL, "profile: %s out of range", what);
    *out = (int)x;
    return 0;
}

static int parse_defaults(json_t *d, gn_ctl_profile *p, gn_err *err) {
    if (!json_is_object(d)) return gn_errf(err, GN_EFORMAT, "profile: defaults must be an object");
    const char *k;
    json_t *v;
    json_object_foreach(d, k, v) {
        int rc;
        if (strcmp(k, "temperature") == 0) {
            rc = get_num(v, &p->temperature, "defaults.temperature", err);
            p->has |= GN_CTL_HAS_TEMPERATURE;
        } else if (strcmp(k, "top_p") == 0) {
            rc = get_num(v, &p->top_p, "defaults.top_p", err);
            p->has |= GN_CTL_HAS_TOP_P;
        } else if (strcmp(k, "top_k") == 0) {
            rc = get_int(v, &p->top_k, "defaults.top_k", err);
            p->has |= GN_CTL_HAS_TOP_K;
        } else if (strcmp(k, "min_p") == 0) {
            rc = get_num(v, &p->min_p, "defaults.min_p", err);
            p->has |= GN_CTL_HAS_MIN_P;
        } else if (strcmp(k, "max_tokens") == 0) {
            rc = get_int(v, &p->max_tokens, "defaults.max_tokens", err);
            p->has |= GN_CTL_HAS_MAX_TOKENS;
        } else {
            rc = gn_errf(err, GN_EFORMAT, "profile: unknown member defaults.%.60s", k);
        }
        if (rc) return rc;
    }
    return 0;
}

static int parse_obj(json_t *root, gn_ctl_profile *p, gn_err *err) {
    if (!json_is_object(root)) return gn_errf(err, GN_EFORMAT, "profile: top level must be an object");
    int have_name = 0, have_arms = 0, have_beta = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        int rc = 0;
        if (strcmp(k, "name") == 0) {
            rc = get_id(v, p->name, "name", err);
            have_name = 1;
        } else if (strcmp(k, "beta") == 0) {
            rc = get_num(v, &p->beta, "beta", err);
            have_beta = 1;
        } else if (strcmp(k, "defaults") == 0) {
            rc = parse_defaults(v, p, err);
        } else if (strcmp(k, "arms") == 0) {
            have_arms = 1;
            if (!json_is_array(v)) return gn_errf(err, GN_EFORMAT, "profile: arms must be an array");
            size_t n = json_array_size(v);
            if (n < 1 || n > GN_CTL_PROFILE_MAX_ARMS)
                return gn_errf(err, GN_EINVAL, "profile: needs 1 to %d arms, has %zu",
                               GN_CTL_PROFILE_MAX_ARMS, n);
            for (size_t i = 0; i < n; i++) {
                json_t *a = json_array_get(v, i);
                if (!json_is_object(a))
                    return gn_errf(err, GN_EFORMAT, "profile: arms[%zu] must be an object", i);
                json_t *an = json_object_get(a, "name"), *aw = json_object_get(a, "weight");
                if (!an || !aw || json_object_size(a) != 2)
                    return gn_errf(err, GN_EFORMAT, "profile: arms[%zu] must have exactly \"name\" and \"weight\"", i);
                if ((rc = get_id(an, p->arms[i].name, "arms[].name", err)) != 0) return rc;
                if ((rc = get_num(aw, &p->arms[i].weight, "arms[].weight", err)) != 0) return rc;
            }
            p->n_arms = (int)n;
        } else {
            rc = gn_errf(err, GN_EFORMAT, "profile: unknown member \"%.60s\"", k);
        }
        if (rc) return rc;
    }
    if (!have_name) return gn_errf(err, GN_EFORMAT, "profile: missing \"name\"");
    if (!have_arms) return gn_errf(err, GN_EFORMAT, "profile: missing \"arms\"");
    if (!have_beta) return gn_errf(err, GN_EFORMAT, "profile: missing \"beta\"");
    return gn_ctl_profile_validate(p, err);
}

int gn_ctl_profile_parse(const char *json, size_t len, gn_ctl_profile *out, gn_err *err) {
    gn_ctl_profile_init(out);
    if (!json) return gn_errf(err, GN_EINVAL, "profile: NULL text");
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return gn_errf(err, GN_EFORMAT, "profile: invalid JSON at line %d column %d: %s", je.line,
                       je.column, je.text);
    int rc = parse_obj(root, out, err);
    json_decref(root);
    if (rc) gn_ctl_profile_init(out);
    return rc;
}

int gn_ctl_profile_to_json(const gn_ctl_profile *p, char **json, gn_err *err) {
    *json = NULL;
    int rc = gn_ctl_profile_validate(p, err);
    if (rc) return rc;
    json_t *root = json_object(), *arms = json_array(), *def = json_object();
    int bad = !root || !arms || !def;
    for (int i = 0; !bad && i < p->n_arms; i++) {
        json_t *a = json_pack("{s:s, s:f}", "name", p->arms[i].name, "weight", p->arms[i].weight);
        bad = !a || json_array_append_new(arms, a) != 0;
    }
    if (!bad && (p->has & GN_CTL_HAS_TEMPERATURE)) bad |= json_object_set_new(def, "temperature", json_real(p->temperature));
    if (!bad && (p->has & GN_CTL_HAS_TOP_P)) bad |= json_object_set_new(def, "top_p", json_real(p->top_p));
    if (!bad && (p->has & GN_CTL_HAS_TOP_K)) bad |= json_object_set_new(def, "top_k", json_integer(p->top_k));
    if (!bad && (p->has & GN_CTL_HAS_MIN_P)) bad |= json_object_set_new(def, "min_p", json_real(p->min_p));
    if (!bad && (p->has & GN_CTL_HAS_MAX_TOKENS)) bad |= json_object_set_new(def, "max_tokens", json_integer(p->max_tokens));
    if (!bad) bad |= json_object_set_new(root, "name", json_string(p->name));
    if (!bad) {
        bad |= json_object_set_new(root, "arms", arms);
        arms = NULL;
    }
    if (!bad) bad |= json_object_set_new(root, "beta", json_real(p->beta));
    if (!bad) {
        bad |= json_object_set_new(root, "defaults", def);
        def = NULL;
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    json_decref(arms);
    json_decref(def);
    if (!text) return gn_errf(err, GN_ENOMEM, "profile %s: cannot serialise", p->name);
    *json = gn_strdup(text);
    free(text); /* jansson allocates with malloc */
    if (!*json) return gn_errf(err, GN_ENOMEM, "profile %s: out of memory", p->name);
    return 0;
}
