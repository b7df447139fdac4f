/* hf_config.c — config.json → gn_model_config (see hf_config.h). */
#include "hf_config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"

#define FN(f) ((f) ? (f) : "config.json")

static const struct {
    const char *name;
    gn_arch arch;
    int max_pos;      /* transformers default max_position_embeddings */
    int default_bos;  /* -1: None */
    int default_eos;
} k_archs[] = {
    {"LlamaForCausalLM", GN_ARCH_LLAMA, 2048, 1, 2},
    {"MistralForCausalLM", GN_ARCH_MISTRAL, 4096 * 32, 1, 2},
    {"Qwen2ForCausalLM", GN_ARCH_QWEN2, 32768, -1, -1},
    {"Qwen3ForCausalLM", GN_ARCH_QWEN3, 32768, -1, -1},
};

const char *gn_arch_hf_name(gn_arch a) {
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (k_archs[i].arch == a) return k_archs[i].name;
    return "?";
}

/* A field that is absent or JSON null counts as missing. */
static const json_t *field(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

/* Integer field in [lo, hi]. Returns 1 when present, 0 when missing (and
 * required == 0), or a negative error. Integral reals (4096.0) are accepted. */
static int get_int(const json_t *o, const char *key, int required, long lo, long hi,
                   const char *fname, const char *where, int *out, gn_err *err) {
    const json_t *v = field(o, key);
    if (!v) {
        if (required)
            return gn_errf(err, GN_EFORMAT, "%s: required field \"%s%s\" is missing", fname, where,
                           key);
        return 0;
    }
    double d;
    if (json_is_integer(v)) d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) d = json_real_value(v);
    else return gn_errf(err, GN_EFORMAT, "%s: field \"%s%s\" must be an integer", fname, where, key);
    if (d < (double)lo || d > (double)hi)
        return gn_errf(err, GN_ERANGE, "%s: field \"%s%s\" = %.0f is out of range [%ld, %ld]", fname,
                       where, key, d, lo, hi);
    *out = (int)d;
    return 1;
}

/* Number field, finite and in (lo, hi]. Same return convention as get_int. */
static int get_num(const json_t *o, const char *key, int required, double lo, double hi,
                   const char *fname, const char *where, float *out, gn_err *err) {
    const json_t *v = field(o, key);
    if (!v) {
        if (required)
            return gn_errf(err, GN_EFORMAT, "%s: required field \"%s%s\" is missing", fname, where,
                           key);
        return 0;
    }
    if (!json_is_number(v))
        return gn_errf(err, GN_EFORMAT, "%s: field \"%s%s\" must be a number", fname, where, key);
    double d = json_number_value(v);
    if (!(d > lo && d <= hi))
        return gn_errf(err, GN_ERANGE, "%s: field \"%s%s\" = %g is out of range (%g, %g]", fname,
                       where, key, d, lo, hi);
    *out = (float)d;
    return 1;
}

static int get_bool(const json_t *o, const char *key, const char *fname, int *out, gn_err *err) {
    const json_t *v = field(o, key);
    if (!v) return 0;
    if (!json_is_boolean(v))
        return gn_errf(err, GN_EFORMAT, "%s: field \"%s\" must be true or false", fname, key);
    *out = json_is_true(v);
    return 1;
}

/* Appends the ids of an int-or-list eos field, skipping duplicates. */
static int add_eos(const json_t *v, const char *fname, const char *key, gn_model_config *c,
                   gn_err *err) {
    if (!v || json_is_null(v)) return 0;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= c->n_vocab)
            return gn_errf(err, GN_ERANGE,
                           "%s: field \"%s\" must be an integer or a list of integers in [0, %d)",
                           fname, key, c->n_vocab);
        int id = (int)json_integer_value(x), dup = 0;
        for (int k = 0; k < c->n_eos; k++) dup |= c->eos_token_ids[k] == id;
        if (dup) continue;
        if (c->n_eos == GN_MAX_EOS)
            return gn_errf(err, GN_ERANGE, "%s: field \"%s\": more than %d end-of-sequence ids",
                           fname, key, GN_MAX_EOS);
        c->eos_token_ids[c->n_eos++] = id;
    }
    return 0;
}

static int parse_bos(const json_t *o, const char *fname, gn_model_config *c, gn_err *err) {
    const json_t *v = json_object_get(o, "bos_token_id");
    if (!v) return 0;
    if (json_is_null(v)) {
        c->bos_token_id = -1;
        return 0;
    }
    int id = -1;
    int rc = get_int(o, "bos_token_id", 1, 0, c->n_vocab - 1, fname, "", &id, err);
    if (rc < 0) return rc;
    c->bos_token_id = id;
    return 0;
}

static int parse_rope(const json_t *root, const char *fname, gn_model_config *c, gn_err *err) {
    int rc;
    if ((rc = get_num(root, "rope_theta", 0, 0, 1e12, fname, "", &c->rope_theta, err)) < 0) return rc;
    /* transformers >= 5 keeps theta and scaling together in "rope_parameters". */
    const char *where = "rope_scaling.";
    const json_t *rs = field(root, "rope_scaling");
    const json_t *rp = field(root, "rope_parameters");
    if (!rs && rp) {
        rs = rp;
        where = "rope_parameters.";
        if ((rc = get_num(rp, "rope_theta", 0, 0, 1e12, fname, where, &c->rope_theta, err)) < 0)
            return rc;
    }
    if (!rs) return 0;
    if (!json_is_object(rs))
        return gn_errf(err, GN_EFORMAT, "%s: field \"%.*s\" must be an object or null", fname,
                       (int)strlen(where) - 1, where);
    const json_t *ty = field(rs, "rope_type");
    if (!ty) ty = field(rs, "type");
    const char *t = json_string_value(ty);
    if (!t)
        return gn_errf(err, GN_EFORMAT, "%s: field \"%srope_type\" is missing or not a string",
                       fname, where);
    if (!strcmp(t, "default")) return 0;
    if (!strcmp(t, "linear")) {
        c->rope_scaling = GN_ROPE_LINEAR;
        rc = get_num(rs, "factor", 1, 0, 1e6, fname, where, &c->rope_factor, err);
        return rc < 0 ? rc : 0;
    }
    if (!strcmp(t, "llama3")) {
        c->rope_scaling = GN_ROPE_LLAMA3;
        if ((rc = get_num(rs, "factor", 1, 0, 1e6, fname, where, &c->rope_factor, err)) < 0 ||
            (rc = get_num(rs, "low_freq_factor", 1, 0, 1e6, fname, where, &c->rope_low_freq_factor,
                          err)) < 0 ||
            (rc = get_num(rs, "high_freq_factor", 1, 0, 1e6, fname, where,
                          &c->rope_high_freq_factor, err)) < 0 ||
            (rc = get_int(rs, "original_max_position_embeddings", 1, 1, 1 << 24, fname, where,
                          &c->rope_orig_max_pos, err)) < 0)
            return rc;
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return gn_errf(err, GN_ERANGE,
                           "%s: field \"%shigh_freq_factor\" (%g) must exceed low_freq_factor (%g)",
                           fname, where, c->rope_high_freq_factor, c->rope_low_freq_factor);
        return 0;
    }
    return gn_errf(err, GN_EUNSUP,
                   "%s: field \"%srope_type\" = \"%s\" is not supported (llama3, linear, default)",
                   fname, where, t);
}

static int parse_root(const json_t *root, const json_t *gen, const char *fname,
                      gn_model_config *c, gn_err *err) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(root)) return gn_errf(err, GN_EFORMAT, "%s: not a JSON object", fname);

    const json_t *archs = field(root, "architectures");
    const char *an = json_is_array(archs) ? json_string_value(json_array_get(archs, 0)) : NULL;
    if (!an)
        return gn_errf(err, GN_EFORMAT,
                       "%s: field \"architectures\" must be a list naming the model class", fname);
    int ai = -1;
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (!strcmp(an, k_archs[i].name)) ai = (int)i;
    if (ai < 0)
        return gn_errf(err, GN_EUNSUP,
                       "%s: field \"architectures\": %.64s is not supported (LlamaForCausalLM, "
                       "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
                       fname, an);
    c->arch = k_archs[ai].arch;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", an);

    const char *act = json_string_value(field(root, "hidden_act"));
    if (field(root, "hidden_act") && (!act || strcmp(act, "silu") != 0))
        return gn_errf(err, GN_EUNSUP, "%s: field \"hidden_act\" must be \"silu\"", fname);

    int rc;
    if ((rc = get_int(root, "vocab_size", 1, 1, 1 << 24, fname, "", &c->n_vocab, err)) < 0 ||
        (rc = get_int(root, "hidden_size", 1, 1, 1 << 17, fname, "", &c->dim, err)) < 0 ||
        (rc = get_int(root, "intermediate_size", 1, 1, 1 << 20, fname, "", &c->ffn_dim, err)) < 0 ||
        (rc = get_int(root, "num_hidden_layers", 1, 1, 1024, fname, "", &c->n_layers, err)) < 0 ||
        (rc = get_int(root, "num_attention_heads", 1, 1, 1024, fname, "", &c->n_heads, err)) < 0)
        return rc;
    c->n_kv_heads = c->n_heads;
    if ((rc = get_int(root, "num_key_value_heads", 0, 1, c->n_heads, fname, "", &c->n_kv_heads,
                      err)) < 0)
        return rc;
    if (c->n_heads % c->n_kv_heads)
        return gn_errf(err, GN_ERANGE,
                       "%s: field \"num_attention_heads\" (%d) is not a multiple of "
                       "num_key_value_heads (%d)",
                       fname, c->n_heads, c->n_kv_heads);
    c->head_dim = c->arch == GN_ARCH_QWEN3 ? 128 : 0;
    if ((rc = get_int(root, "head_dim", 0, 2, 1024, fname, "", &c->head_dim, err)) < 0) return rc;
    if (c->head_dim == 0) {
        if (c->dim % c->n_heads)
            return gn_errf(err, GN_ERANGE,
                           "%s: field \"hidden_size\" (%d) is not a multiple of "
                           "num_attention_heads (%d) and there is no head_dim",
                           fname, c->dim, c->n_heads);
        c->head_dim = c->dim / c->n_heads;
    }
    if (c->head_dim % 2 || c->head_dim > 1024)
        return gn_errf(err, GN_ERANGE, "%s: field \"head_dim\" = %d must be even and <= 1024", fname,
                       c->head_dim);

    c->max_pos = k_archs[ai].max_pos;
    if ((rc = get_int(root, "max_position_embeddings", 0, 1, 1 << 24, fname, "", &c->max_pos, err)) < 0)
        return rc;
    c->norm_eps = 1e-6f;
    if ((rc = get_num(root, "rms_norm_eps", 0, 0, 1, fname, "", &c->norm_eps, err)) < 0) return rc;
    c->rope_theta = 10000.0f;
    c->rope_factor = 1.0f;
    if ((rc = parse_rope(root, fname, c, err)) < 0) return rc;
    if ((rc = get_bool(root, "tie_word_embeddings", fname, &c->tie_embeddings, err)) < 0) return rc;

    int flag = 0;
    if ((rc = get_bool(root, "mlp_bias", fname, &flag, err)) < 0) return rc;
    if (flag) return gn_errf(err, GN_EUNSUP, "%s: field \"mlp_bias\" = true is not supported", fname);
    if (c->arch == GN_ARCH_QWEN2) c->attn_bias = 1;
    if (c->arch == GN_ARCH_LLAMA || c->arch == GN_ARCH_QWEN3) {
        flag = 0;
        if ((rc = get_bool(root, "attention_bias", fname, &flag, err)) < 0) return rc;
        if (flag)
            return gn_errf(err, GN_EUNSUP,
                           "%s: field \"attention_bias\" = true (a bias on o_proj too) is not supported",
                           fname);
    }
    if (c->arch == GN_ARCH_QWEN3) c->qk_norm = 1;

    if (c->arch == GN_ARCH_MISTRAL) {
        const json_t *sw = json_object_get(root, "sliding_window");
        c->sliding_window = sw ? 0 : 4096; /* absent: transformers' default; null: none */
        if ((rc = get_int(root, "sliding_window", 0, 0, 1 << 24, fname, "", &c->sliding_window, err)) < 0)
            return rc;
    }
    if (c->arch == GN_ARCH_QWEN2 || c->arch == GN_ARCH_QWEN3) {
        flag = 0;
        if ((rc = get_bool(root, "use_sliding_window", fname, &flag, err)) < 0) return rc;
        int mwl = c->n_layers;
        if (flag && (rc = get_int(root, "max_window_layers", 0, 0, 1 << 20, fname, "", &mwl, err)) < 0)
            return rc;
        /* Layers from max_window_layers on would use the window. */
        if (flag && mwl < c->n_layers)
            return gn_errf(err, GN_EUNSUP,
                           "%s: field \"use_sliding_window\" = true (per-layer sliding window) is "
                           "not supported",
                           fname);
    }

    c->dtype = GN_F32;
    const json_t *dt = field(root, "torch_dtype");
    if (!dt) dt = field(root, "dtype");
    const char *ds = json_string_value(dt);
    if (ds && !strcmp(ds, "bfloat16")) c->dtype = GN_BF16;
    else if (ds && !strcmp(ds, "float16")) c->dtype = GN_F16;

    c->bos_token_id = k_archs[ai].default_bos < c->n_vocab ? k_archs[ai].default_bos : -1;
    if ((rc = parse_bos(root, fname, c, err)) < 0) return rc;
    const json_t *eos = json_object_get(root, "eos_token_id");
    if (!eos && k_archs[ai].default_eos >= 0 && k_archs[ai].default_eos < c->n_vocab)
        c->eos_token_ids[c->n_eos++] = k_archs[ai].default_eos;
    if ((rc = add_eos(eos, fname, "eos_token_id", c, err)) < 0) return rc;
    if (gen) {
        if (!json_is_object(gen))
            return gn_errf(err, GN_EFORMAT, "generation_config.json: not a JSON object");
        if ((rc = parse_bos(gen, "generation_config.json", c, err)) < 0) return rc;
        if ((rc = add_eos(json_object_get(gen, "eos_token_id"), "generation_config.json",
                          "eos_token_id", c, err)) < 0)
            return rc;
    }
    return 0;
}

int gn_hf_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, const char *fname, gn_model_config *out, gn_err *err) {
    fname = FN(fname);
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *root = json_loadb(config_json, config_len, 0, &je);
    if (!root)
        return gn_errf(err, GN_EFORMAT, "%s: not valid JSON (line %d, column %d): %s", fname,
                       je.line, je.column, je.text);
    json_t *gen = NULL;
    if (gen_json) {
        gen = json_loadb(gen_json, gen_len, 0, &je);
        if (!gen) {
            json_decref(root);
            return gn_errf(err, GN_EFORMAT,
                           "generation_config.json: not valid JSON (line %d, column %d): %s",
                           je.line, je.column, je.text);
        }
    }
    gn_model_config c;
    int rc = parse_root(root, gen, fname, &c, err);
    json_decref(root);
    json_decref(gen);
    if (rc == 0) *out = c;
    return rc;
}

int gn_hf_config_load(const char *dir, gn_model_config *out, gn_err *err) {
    char *cp = gn_fs_join(dir, "config.json");
    char *gp = gn_fs_join(dir, "generation_config.json");
    char *cj = NULL, *gj = NULL;
    size_t cl = 0, gl = 0;
    int rc;
    if (!cp || !gp) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = gn_fs_read_file(cp, 16u << 20, &cj, &cl, err)) != 0) goto done;
    rc = gn_fs_read_file(gp, 16u << 20, &gj, &gl, err);
    if (rc == GN_ENOTFOUND) {
        gn_err_clear(err);
        rc = 0;
    }
    if (rc) goto done;
    rc = gn_hf_config_parse(cj, cl, gj, gl, cp, out, err);
done:
    gn_free(cp);
    gn_free(gp);
    gn_free(cj);
    gn_free(gj);
    return rc;
}
