/* lora.c — PEFT LoRA adapters: config parsing, tensor pairing, merging, and
 * adapters kept apart from the weights for per-sequence use (see lora.h). */
#include "lora.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "model.h"
#include "safetensors.h"

static const struct {
    const char *name;
    unsigned bit;
} k_modules[] = {
    {"q_proj", GN_LORA_Q},       {"k_proj", GN_LORA_K},   {"v_proj", GN_LORA_V},
    {"o_proj", GN_LORA_O},       {"gate_proj", GN_LORA_GATE}, {"up_proj", GN_LORA_UP},
    {"down_proj", GN_LORA_DOWN},
};
#define N_MODULES (sizeof k_modules / sizeof k_modules[0])

static unsigned module_bit(const char *name) {
    for (size_t i = 0; i < N_MODULES; i++)
        if (!strcmp(name, k_modules[i].name)) return k_modules[i].bit;
    return 0;
}

/* A field that is absent, null, false, "" or an empty list/object. */
static int is_empty(const json_t *v) {
    return !v || json_is_null(v) || json_is_false(v) ||
           (json_is_string(v) && !json_string_length(v)) ||
           (json_is_array(v) && !json_array_size(v)) || (json_is_object(v) && !json_object_size(v));
}

static int parse_cfg(const json_t *root, const char *fname, gn_lora_config *c, gn_err *err) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(root)) return gn_errf(err, GN_EFORMAT, "%s: not a JSON object", fname);
    const json_t *v = json_object_get(root, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA") != 0))
        return gn_errf(err, GN_EUNSUP, "%s: field \"peft_type\" must be \"LORA\"", fname);
    v = json_object_get(root, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536)
        return gn_errf(err, GN_EFORMAT, "%s: field \"r\" must be an integer in [1, 65536]", fname);
    c->r = (int)json_integer_value(v);
    c->alpha = 8.0f; /* PEFT's default lora_alpha */
    v = json_object_get(root, "lora_alpha");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return gn_errf(err, GN_EFORMAT, "%s: field \"lora_alpha\" must be a number", fname);
        c->alpha = (float)json_number_value(v);
    }
    v = json_object_get(root, "use_rslora");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return gn_errf(err, GN_EFORMAT, "%s: field \"use_rslora\" must be true or false", fname);
    c->use_rslora = json_is_true(v);
    c->scale = c->use_rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;

    static const char *const must_be_off[] = {"fan_in_fan_out", "use_dora", "rank_pattern",
                                              "alpha_pattern", "modules_to_save",
                                              "layer_replication", "lora_bias"};
    for (size_t i = 0; i < sizeof must_be_off / sizeof must_be_off[0]; i++)
        if (!is_empty(json_object_get(root, must_be_off[i])))
            return gn_errf(err, GN_EUNSUP, "%s: field \"%s\" is set; that is not supported", fname,
                           must_be_off[i]);
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "none") != 0))
        return gn_errf(err, GN_EUNSUP, "%s: field \"bias\" must be \"none\"", fname);

    v = json_object_get(root, "target_modules");
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "all-linear") != 0)
            return gn_errf(err, GN_EUNSUP,
                           "%s: field \"target_modules\" = \"%.64s\": a regular expression is not "
                           "supported; list the module names",
                           fname, json_string_value(v));
        for (size_t i = 0; i < N_MODULES; i++) c->targets |= k_modules[i].bit;
        return 0;
    }
    if (!json_is_array(v) || !json_array_size(v))
        return gn_errf(err, GN_EFORMAT, "%s: field \"target_modules\" must be a non-empty list",
                       fname);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const char *m = json_string_value(json_array_get(v, i));
        /* PEFT matches a target as a suffix of the module path, so
         * "self_attn.q_proj" names the same modules as "q_proj". */
        const char *leaf = m ? strrchr(m, '.') : NULL;
        unsigned bit = m ? module_bit(leaf ? leaf + 1 : m) : 0;
        if (!bit)
            return gn_errf(err, GN_EUNSUP,
                           "%s: field \"target_modules\": unknown target module '%.64s' (q_proj, "
                           "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                           fname, m ? m : "(not a string)");
        c->targets |= bit;
    }
    return 0;
}

int gn_lora_config_parse(const char *json, size_t len, const char *fname, gn_lora_config *out,
                         gn_err *err) {
    if (!fname) fname = "adapter_config.json";
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root)
        return gn_errf(err, GN_EFORMAT, "%s: not valid JSON (line %d, column %d): %s", fname,
                       je.line, je.column, je.text);
    int rc = parse_cfg(root, fname, out, err);
    json_decref(root);
    return rc;
}

/* ---- adapters ---------------------------------------------------------------- */

typedef struct lora_mod {
    char *module;                 /* "model.layers.3.self_attn.q_proj" */
    const gn_st_entry *a, *b;
    int used;
} lora_mod;

struct gn_lora {
    gn_lora_config cfg;
    gn_st_set *st;
    char *path;                   /* adapter_model.safetensors, for messages */
    int n_mods;
    lora_mod *mods;               /* sorted by module */
};

static int cmp_mod(const void *x, const void *y) {
    return strcmp(((const lora_mod *)x)->module, ((const lora_mod *)y)->module);
}

void gn_lora_free(gn_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n_mods; i++) gn_free(l->mods[i].module);
    gn_free(l->mods);
    gn_st_set_close(l->st);
    gn_free(l->path);
    gn_free(l);
}

const gn_lora_config *gn_lora_cfg(const gn_lora *l) { return &l->cfg; }

static lora_mod *find_mod(const gn_lora *l, const char *module) {
    lora_mod key = {.module = (char *)module};
    if (!l->n_mods) return NULL;
    return bsearch(&key, l->mods, (size_t)l->n_mods, sizeof *l->mods, cmp_mod);
}

/* Splits an adapter key into module and A/B; GN_EUNSUP naming it otherwise. */
static int pair_tensors(gn_lora *l, gn_err *err) {
    static const char prefix[] = "base_model.model.";
    const size_t plen = sizeof prefix - 1, slen = strlen(".lora_A.weight");
    const gn_st_set *s = l->st;
    l->mods = gn_calloc((size_t)(s->n_entries ? s->n_entries : 1), sizeof *l->mods);
    if (!l->mods) return gn_errf(err, GN_ENOMEM, "out of memory");
    /* Pass 1: collect module names from the A tensors. Pass 2: attach the Bs. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) qsort(l->mods, (size_t)l->n_mods, sizeof *l->mods, cmp_mod);
        for (int i = 0; i < s->n_entries; i++) {
            const gn_st_entry *e = &s->entries[i];
            size_t n = strlen(e->name);
            int is_a = n > plen + slen && !strcmp(e->name + n - slen, ".lora_A.weight");
            int is_b = n > plen + slen && !strcmp(e->name + n - slen, ".lora_B.weight");
            if ((!is_a && !is_b) || strncmp(e->name, prefix, plen) != 0)
                return gn_errf(err, GN_EUNSUP,
                               "%s: tensor '%s' is not a LoRA A/B weight "
                               "(base_model.model.<module>.lora_{A,B}.weight)",
                               l->path, e->name);
            if (is_a != (pass == 0)) continue;
            char *module = gn_strndup(e->name + plen, n - plen - slen);
            if (!module) return gn_errf(err, GN_ENOMEM, "out of memory");
            const char *leaf = strrchr(module, '.');
            unsigned bit = module_bit(leaf ? leaf + 1 : module);
            if (!(bit & l->cfg.targets)) {
                int rc = gn_errf(err, GN_EMISMATCH,
                                 "%s: tensor '%s': module '%s' is not in target_modules", l->path,
                                 e->name, leaf ? leaf + 1 : module);
                gn_free(module);
                return rc;
            }
            if (pass == 0) {
                l->mods[l->n_mods].module = module;
                l->mods[l->n_mods++].a = e;
                continue;
            }
            lora_mod *m = find_mod(l, module);
            gn_free(module);
            if (!m)
                return gn_errf(err, GN_EFORMAT, "%s: tensor '%s' has no matching lora_A", l->path,
                               e->name);
            m->b = e;
        }
    }
    for (int i = 0; i < l->n_mods; i++) {
        lora_mod *m = &l->mods[i];
        if (!m->b)
            return gn_errf(err, GN_EFORMAT, "%s: module '%s' has lora_A but no lora_B", l->path,
                           m->module);
        const gn_st_tensor *a = m->a->tensor, *b = m->b->tensor;
        if (a->n_dims != 2 || b->n_dims != 2 || a->shape[0] != l->cfg.r || b->shape[1] != l->cfg.r)
            return gn_errf(err, GN_EMISMATCH,
                           "%s: module '%s': lora_A must be (r=%d, in) and lora_B (out, r=%d)",
                           l->path, m->module, l->cfg.r, l->cfg.r);
    }
    return 0;
}

gn_lora *gn_lora_open(const char *dir, gn_err *err) {
    gn_lora *l = gn_calloc(1, sizeof *l);
    char *cfg_path = gn_fs_join(dir, "adapter_config.json");
    char *json = NULL;
    size_t len = 0;
    if (!l || !cfg_path || !(l->path = gn_fs_join(dir, "adapter_model.safetensors"))) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        goto fail;
    }
    if (gn_fs_read_file(cfg_path, 16u << 20, &json, &len, err) != 0 ||
        gn_lora_config_parse(json, len, cfg_path, &l->cfg, err) != 0)
        goto fail;
    if (!gn_fs_is_file(l->path)) {
        gn_errf(err, GN_ENOTFOUND, "%s: missing (only safetensors adapters are supported)", l->path);
        goto fail;
    }
    if (!(l->st = gn_st_set_open_file(l->path, err)) || pair_tensors(l, err) != 0) goto fail;
    gn_free(json);
    gn_free(cfg_path);
    return l;
fail:
    gn_free(json);
    gn_free(cfg_path);
    gn_lora_free(l);
    return NULL;
}

int gn_lora_find(gn_lora *l, const char *weight_name, gn_tensor *a, gn_tensor *b) {
    size_t n = strlen(weight_name);
    if (n < 8 || strcmp(weight_name + n - 7, ".weight") != 0) return 0;
    char buf[256];
    if (n - 7 >= sizeof buf) return 0;
    memcpy(buf, weight_name, n - 7);
    buf[n - 7] = '\0';
    lora_mod *m = find_mod(l, buf);
    if (!m) return 0;
    m->used = 1;
    *a = gn_st_view(m->a->file, m->a->tensor);
    *b = gn_st_view(m->b->file, m->b->tensor);
    return 1;
}

int gn_lora_check_all_used(const gn_lora *l, gn_err *err) {
    for (int i = 0; i < l->n_mods; i++)
        if (!l->mods[i].used)
            return gn_errf(err, GN_EMISMATCH,
                           "%s: adapter for module '%s' matches no weight of the model", l->path,
                           l->mods[i].module);
    return 0;
}

/* ---- merging ------------------------------------------------------------------- */

static float load_el(const void *p, gn_dtype t, size_t i) {
    if (t == GN_F32) {
        float f;
        memcpy(&f, (const char *)p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return t == GN_F16 ? gn_f16_to_f32(h) : gn_bf16_to_f32(h);
}

static void store_el(void *p, gn_dtype t, size_t i, float v) {
    if (t == GN_F32) {
        memcpy((char *)p + 4 * i, &v, 4);
        return;
    }
    uint16_t h = t == GN_F16 ? gn_f32_to_f16(v) : gn_f32_to_bf16(v);
    memcpy((char *)p + 2 * i, &h, 2);
}

int gn_lora_merge(const gn_tensor *w, const gn_tensor *a, const gn_tensor *b, float scale,
                  void *out, const char *name, gn_err *err) {
    const int64_t rows = w->rows, cols = w->cols, r = a->rows;
    if (a->cols != cols || b->rows != rows || b->cols != r || r < 1)
        return gn_errf(err, GN_EMISMATCH,
                       "LoRA for '%s': weight is (%lld, %lld) but lora_A is (%lld, %lld) and "
                       "lora_B (%lld, %lld)",
                       name, (long long)rows, (long long)cols, (long long)a->rows,
                       (long long)a->cols, (long long)b->rows, (long long)b->cols);
    size_t na;
    if (gn_size_mul((size_t)r, (size_t)cols, &na) != 0)
        return gn_errf(err, GN_ERANGE, "LoRA for '%s': too large", name);
    float *af = gn_malloc(sizeof(float) * na);
    float *delta = gn_malloc(sizeof(float) * (size_t)cols);
    if (!af || !delta) {
        gn_free(af);
        gn_free(delta);
        return gn_errf(err, GN_ENOMEM, "LoRA for '%s': out of memory", name);
    }
    for (size_t i = 0; i < na; i++) af[i] = load_el(a->data, a->dtype, i);
    for (int64_t o = 0; o < rows; o++) {
        /* delta = (B·A)[o, :], then W + scale * delta rounded once. */
        memset(delta, 0, sizeof(float) * (size_t)cols);
        for (int64_t k = 0; k < r; k++) {
            const float bk = load_el(b->data, b->dtype, (size_t)(o * r + k));
            const float *ak = af + k * cols;
            for (int64_t j = 0; j < cols; j++) delta[j] += bk * ak[j];
        }
        for (int64_t j = 0; j < cols; j++) {
            size_t idx = (size_t)(o * cols + j);
            store_el(out, w->dtype, idx, load_el(w->data, w->dtype, idx) + scale * delta[j]);
        }
    }
    gn_free(af);
    gn_free(delta);
    return 0;
}

/* ---- adapters kept apart from the weights ------------------------------------ */

#define N_PROJ 7 /* q, k, v, o, gate, up, down: the order of k_modules and GN_LORA_* */

static const char *const k_proj_path[N_PROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

struct gn_lora_adapter {
    gn_model *m;
    gn_backend *be;
    gn_lora_config cfg;
    int n_layers;
    gn_tensor *fa, *fb; /* (n_layers * N_PROJ); data NULL where the adapter has no module */
    size_t bytes;
};

static const gn_tensor *proj_weight(const gn_layer_weights *lw, int mod) {
    switch (mod) {
    case 0: return &lw->wq;
    case 1: return &lw->wk;
    case 2: return &lw->wv;
    case 3: return &lw->wo;
    case 4: return &lw->w_gate;
    case 5: return &lw->w_up;
    default: return &lw->w_down;
    }
}

void gn_lora_adapter_free(gn_lora_adapter *a) {
    if (!a) return;
    for (int i = 0; a->fa && i < a->n_layers * N_PROJ; i++) {
        if (a->fa[i].data) a->be->ops->free(a->be, a->fa[i].data);
        if (a->fb[i].data) a->be->ops->free(a->be, a->fb[i].data);
    }
    gn_free(a->fa);
    gn_free(a->fb);
    gn_free(a);
}

const gn_lora_config *gn_lora_adapter_cfg(const gn_lora_adapter *a) { return &a->cfg; }
size_t gn_lora_adapter_bytes(const gn_lora_adapter *a) { return a ? a->bytes : 0; }
struct gn_model *gn_lora_adapter_model(const gn_lora_adapter *a) { return a->m; }

int gn_lora_adapter_factors(const gn_lora_adapter *a, int layer, int module, const gn_tensor **A,
                            const gn_tensor **B) {
    if (layer < 0 || layer >= a->n_layers || module < 0 || module >= N_PROJ) return 0;
    size_t i = (size_t)layer * N_PROJ + (size_t)module;
    if (!a->fa[i].data) return 0;
    *A = &a->fa[i];
    *B = &a->fb[i];
    return 1;
}

/* *out = src converted to F32 and multiplied by `mul`, in backend memory. */
static int upload_factor(gn_lora_adapter *ad, const gn_tensor *src, float mul, const char *what,
                         gn_tensor *out, gn_err *err) {
    gn_backend *be = ad->be;
    size_t n = (size_t)src->rows * (size_t)src->cols, nbytes = n * sizeof(float);
    float *h = gn_malloc(nbytes);
    if (!h) return gn_errf(err, GN_ENOMEM, "LoRA %s: out of memory", what);
    for (size_t i = 0; i < n; i++) h[i] = mul * load_el(src->data, src->dtype, i);
    void *d = be->ops->alloc(be, nbytes);
    int rc = 0;
    if (!d)
        rc = gn_errf(err, GN_ENOMEM, "LoRA %s: backend %s cannot allocate %zu bytes: %s", what,
                     be->name, nbytes, be->err.msg);
    else if (be->ops->upload(be, d, h, nbytes) != 0) {
        rc = gn_errf(err, GN_EBACKEND, "LoRA %s: upload to %s failed: %s", what, be->name,
                     be->err.msg);
        be->ops->free(be, d);
    }
    gn_free(h);
    if (rc) return rc;
    *out = (gn_tensor){.data = d, .dtype = GN_F32, .rows = src->rows, .cols = src->cols};
    ad->bytes += nbytes;
    return 0;
}

gn_lora_adapter *gn_lora_adapter_load(gn_model *m, const char *dir, gn_err *err) {
    if (!m || !dir) {
        gn_errf(err, GN_EINVAL, "LoRA adapter: no model or directory");
        return NULL;
    }
    gn_lora *l = gn_lora_open(dir, err);
    if (!l) return NULL;
    const gn_model_config *c = gn_model_cfg(m);
    const gn_weights *w = gn_model_weights(m);
    gn_lora_adapter *ad = gn_calloc(1, sizeof *ad);
    size_t n = (size_t)c->n_layers * N_PROJ;
    if (!ad || !(ad->fa = gn_calloc(n, sizeof *ad->fa)) || !(ad->fb = gn_calloc(n, sizeof *ad->fb))) {
        gn_errf(err, GN_ENOMEM, "LoRA adapter %s: out of memory", dir);
        goto fail;
    }
    ad->m = m;
    ad->be = gn_model_backend(m);
    ad->cfg = l->cfg;
    ad->n_layers = c->n_layers;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int mod = 0; mod < N_PROJ; mod++) {
            if (!(l->cfg.targets & (1u << mod))) continue;
            char name[160];
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, k_proj_path[mod]);
            gn_tensor ta, tb;
            if (!gn_lora_find(l, name, &ta, &tb)) continue;
            const gn_tensor *wt = proj_weight(&w->layers[layer], mod);
            name[strlen(name) - 7] = '\0'; /* the module: drop ".weight" */
            if (ta.cols != wt->cols || tb.rows != wt->rows) {
                gn_errf(err, GN_EMISMATCH,
                        "%s: module '%s': lora_A is (%lld, %lld) and lora_B (%lld, %lld), but the "
                        "model's weight is (%lld, %lld)",
                        l->path, name, (long long)ta.rows, (long long)ta.cols, (long long)tb.rows,
                        (long long)tb.cols, (long long)wt->rows, (long long)wt->cols);
                goto fail;
            }
            size_t i = (size_t)layer * N_PROJ + (size_t)mod;
            if (upload_factor(ad, &ta, 1.0f, name, &ad->fa[i], err) != 0 ||
                upload_factor(ad, &tb, l->cfg.scale, name, &ad->fb[i], err) != 0)
                goto fail;
        }
    if (gn_lora_check_all_used(l, err) != 0) goto fail;
    gn_lora_free(l);
    return ad;
fail:
    gn_lora_adapter_free(ad);
    gn_lora_free(l);
    return NULL;
}
