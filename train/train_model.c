/* train_model.c — loading a model into float32 for training, LoRA adapters,
 * and saving in the Hugging Face / PEFT layouts. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "hf_config.h"
#include "lora.h"
#include "safetensors.h"
#include "train_internal.h"

/* ---- the tensor table ------------------------------------------------------------ */

static int tab_add(gn_train_tensor *tab, int *n, size_t *off, const char *name, int64_t rows,
                   int64_t cols, int n_dims, int decay) {
    gn_train_tensor *t = &tab[*n];
    char *s = gn_strdup(name);
    if (!s) return GN_ENOMEM;
    t->name = s;
    t->offset = *off;
    t->rows = rows;
    t->cols = cols;
    t->n_dims = n_dims;
    t->decay = decay;
    *off += (size_t)rows * (size_t)cols;
    (*n)++;
    return 0;
}

static void tab_free(gn_train_tensor *tab, int n) {
    for (int i = 0; tab && i < n; i++) gn_free((char *)tab[i].name);
    gn_free(tab);
}

/* The base tensors in Hugging Face module order (as engine/model_maker.c writes them). */
static int build_base_tab(gn_train_model *m) {
    const gn_model_config *c = &m->cfg;
    const int64_t D = c->dim, Q = (int64_t)c->n_heads * c->head_dim,
                  KV = (int64_t)c->n_kv_heads * c->head_dim, F = c->ffn_dim, V = c->n_vocab;
    m->base_tab = gn_calloc((size_t)c->n_layers * 16 + 4, sizeof *m->base_tab);
    if (!m->base_tab) return GN_ENOMEM;
    gn_train_tensor *t = m->base_tab;
    int *n = &m->n_base_tab;
    size_t off = 0;
    char nm[160];
    int rc = tab_add(t, n, &off, "model.embed_tokens.weight", V, D, 2, 1);
    for (int l = 0; l < c->n_layers && !rc; l++) {
#define ADD(leaf, r, cc, nd, dec)                                         \
    do {                                                                 \
        snprintf(nm, sizeof nm, "model.layers.%d.%s", l, leaf);          \
        if (!rc) rc = tab_add(t, n, &off, nm, r, cc, nd, dec);           \
    } while (0)
        ADD("self_attn.q_proj.weight", Q, D, 2, 1);
        if (c->attn_bias) ADD("self_attn.q_proj.bias", 1, Q, 1, 0);
        ADD("self_attn.k_proj.weight", KV, D, 2, 1);
        if (c->attn_bias) ADD("self_attn.k_proj.bias", 1, KV, 1, 0);
        ADD("self_attn.v_proj.weight", KV, D, 2, 1);
        if (c->attn_bias) ADD("self_attn.v_proj.bias", 1, KV, 1, 0);
        ADD("self_attn.o_proj.weight", D, Q, 2, 1);
        if (c->qk_norm) {
            ADD("self_attn.q_norm.weight", 1, c->head_dim, 1, 0);
            ADD("self_attn.k_norm.weight", 1, c->head_dim, 1, 0);
        }
        ADD("mlp.gate_proj.weight", F, D, 2, 1);
        ADD("mlp.up_proj.weight", F, D, 2, 1);
        ADD("mlp.down_proj.weight", D, F, 2, 1);
        ADD("input_layernorm.weight", 1, D, 1, 0);
        ADD("post_attention_layernorm.weight", 1, D, 1, 0);
#undef ADD
    }
    if (!rc) rc = tab_add(t, n, &off, "model.norm.weight", 1, D, 1, 0);
    if (!rc && !c->tie_embeddings) rc = tab_add(t, n, &off, "lm_head.weight", V, D, 2, 1);
    m->n_base = off;
    return rc;
}

static float *tab_ptr(float *base, const gn_train_tensor *tab, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(tab[i].name, name)) return base + tab[i].offset;
    return NULL;
}

/* Points the layer structs at the flat vectors (grad may be NULL: frozen). */
static void wire_base(gn_train_model *m) {
    const gn_model_config *c = &m->cfg;
    float *g = m->base_grad;
    char nm[160];
#define P(name) tab_ptr(m->base, m->base_tab, m->n_base_tab, name)
#define G(name) (g ? g + (P(name) - m->base) : NULL)
    m->embed = P("model.embed_tokens.weight");
    m->gembed = G("model.embed_tokens.weight");
    m->final_norm = (tm_norm){P("model.norm.weight"), G("model.norm.weight"), c->dim};
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
        m->glm_head = m->gembed;
    } else {
        m->lm_head = P("lm_head.weight");
        m->glm_head = G("lm_head.weight");
    }
    const int D = c->dim, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim,
              F = c->ffn_dim;
    for (int l = 0; l < c->n_layers; l++) {
        tm_layer *L = &m->layers[l];
#define LP(leaf) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, leaf), P(nm))
#define LG(leaf) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, leaf), G(nm))
#define LIN(f, leaf, o_, i_, bias)                                                   \
    do {                                                                             \
        L->f.w = LP("self_attn." leaf ".weight");                                    \
        if (!L->f.w) L->f.w = LP("mlp." leaf ".weight");                             \
        L->f.gw = g ? g + (L->f.w - m->base) : NULL;                                 \
        L->f.b = bias ? LP("self_attn." leaf ".bias") : NULL;                        \
        L->f.gb = L->f.b && g ? g + (L->f.b - m->base) : NULL;                       \
        L->f.out = o_;                                                               \
        L->f.in = i_;                                                                \
    } while (0)
        LIN(q, "q_proj", Q, D, c->attn_bias);
        LIN(k, "k_proj", KV, D, c->attn_bias);
        LIN(v, "v_proj", KV, D, c->attn_bias);
        LIN(o, "o_proj", D, Q, 0);
        LIN(gate, "gate_proj", F, D, 0);
        LIN(up, "up_proj", F, D, 0);
        LIN(down, "down_proj", D, F, 0);
#undef LIN
        L->attn_norm = (tm_norm){LP("input_layernorm.weight"), LG("input_layernorm.weight"), D};
        L->ffn_norm = (tm_norm){LP("post_attention_layernorm.weight"),
                                LG("post_attention_layernorm.weight"), D};
        if (c->qk_norm) {
            L->q_norm = (tm_norm){LP("self_attn.q_norm.weight"), LG("self_attn.q_norm.weight"),
                                  c->head_dim};
            L->k_norm = (tm_norm){LP("self_attn.k_norm.weight"), LG("self_attn.k_norm.weight"),
                                  c->head_dim};
        }
#undef LP
#undef LG
    }
#undef P
#undef G
}

/* ---- loading --------------------------------------------------------------------- */

static int load_tensor(gn_train_model *m, const gn_st_set *set, const gn_train_tensor *t,
                       const char *dir, gn_err *err) {
    const gn_st_entry *e = gn_st_set_find(set, t->name);
    if (!e) return gn_errf(err, GN_EFORMAT, "%s: tensor '%s' is missing", dir, t->name);
    const gn_st_tensor *st = e->tensor;
    int ok = t->n_dims == 1 ? st->n_dims == 1 && st->shape[0] == t->cols
                            : st->n_dims == 2 && st->shape[0] == t->rows && st->shape[1] == t->cols;
    if (!ok)
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s' has the wrong shape (want %lld x %lld)",
                       dir, t->name, (long long)t->rows, (long long)t->cols);
    const void *src = gn_st_data(e->file, st);
    float *dst = m->base + t->offset;
    size_t n = (size_t)t->rows * (size_t)t->cols;
    if (t->offset == 0) m->src_dtype = st->dtype;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        switch (st->dtype) {
        case GN_F32: memcpy(&dst[i], (const char *)src + 4 * i, 4); break;
        case GN_F16: memcpy(&h, (const char *)src + 2 * i, 2); dst[i] = gn_f16_to_f32(h); break;
        default: memcpy(&h, (const char *)src + 2 * i, 2); dst[i] = gn_bf16_to_f32(h); break;
        }
    }
    return 0;
}

gn_train_model *gn_train_model_load(const char *dir, int n_threads, gn_err *err) {
    gn_train_model *m = gn_calloc(1, sizeof *m);
    if (!m) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        return NULL;
    }
    gn_st_set *set = NULL;
    int rc = gn_hf_config_load(dir, &m->cfg, err);
    if (rc) goto fail;
    const gn_model_config *c = &m->cfg;
    if (c->head_dim % 2 || c->n_heads % c->n_kv_heads) {
        rc = gn_errf(err, GN_EUNSUP, "%s: head_dim %d must be even, heads %d a multiple of kv heads %d",
                     dir, c->head_dim, c->n_heads, c->n_kv_heads);
        goto fail;
    }
    m->layers = gn_calloc((size_t)c->n_layers, sizeof *m->layers);
    m->inv_freq = gn_calloc((size_t)c->head_dim / 2, sizeof(float));
    if (!m->layers || !m->inv_freq || build_base_tab(m)) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto fail;
    }
    gn_rope_inv_freq(c, m->inv_freq);
    size_t bytes;
    if (gn_size_mul(m->n_base, sizeof(float), &bytes) ||
        !(m->base = gn_malloc_aligned(bytes, 64)) || !(m->base_grad = gn_malloc_aligned(bytes, 64))) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory for %zu parameters", m->n_base);
        goto fail;
    }
    memset(m->base_grad, 0, bytes);
    if (!(set = gn_st_set_open(dir, err))) {
        rc = err ? err->code : GN_EIO;
        goto fail;
    }
    for (int i = 0; i < m->n_base_tab; i++)
        if ((rc = load_tensor(m, set, &m->base_tab[i], dir, err)) != 0) goto fail;
    gn_st_set_close(set);
    set = NULL;
    wire_base(m);
    m->n_threads = n_threads;
    if (!(m->pool = gn_pool_create(n_threads))) {
        rc = gn_errf(err, GN_ENOMEM, "cannot create the thread pool");
        goto fail;
    }
    return m;
fail:
    (void)rc;
    gn_st_set_close(set);
    gn_train_model_free(m);
    return NULL;
}

void gn_train_model_free(gn_train_model *m) {
    if (!m) return;
    gn_pool_free(m->pool);
    gn_free_aligned(m->base);
    gn_free_aligned(m->base_grad);
    gn_free_aligned(m->lora);
    gn_free_aligned(m->lora_grad);
    gn_free_aligned(m->act);
    tab_free(m->base_tab, m->n_base_tab);
    tab_free(m->lora_tab, m->n_lora_tab);
    gn_free(m->layers);
    gn_free(m->inv_freq);
    gn_free(m);
}

const gn_model_config *gn_train_model_cfg(const gn_train_model *m) { return &m->cfg; }
gn_dtype gn_train_model_src_dtype(const gn_train_model *m) { return m->src_dtype; }
int gn_train_model_has_lora(const gn_train_model *m) { return m->lora != NULL; }
size_t gn_train_n_params(const gn_train_model *m) { return m->lora ? m->n_lora : m->n_base; }
float *gn_train_params(gn_train_model *m) { return m->lora ? m->lora : m->base; }
float *gn_train_grads(gn_train_model *m) { return m->lora ? m->lora_grad : m->base_grad; }
void gn_train_zero_grads(gn_train_model *m) {
    memset(gn_train_grads(m), 0, gn_train_n_params(m) * sizeof(float));
}
int gn_train_n_tensors(const gn_train_model *m) { return m->lora ? m->n_lora_tab : m->n_base_tab; }
const gn_train_tensor *gn_train_tensor_at(const gn_train_model *m, int i) {
    return m->lora ? &m->lora_tab[i] : &m->base_tab[i];
}

/* ---- LoRA ------------------------------------------------------------------------ */

static const char *const k_mod_names[7] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};

static tm_lin *layer_lin(tm_layer *L, int k) {
    tm_lin *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    return lins[k];
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int lora_fail(gn_train_model *m, gn_err *err) {
    tab_free(m->lora_tab, m->n_lora_tab);
    gn_free_aligned(m->lora);
    gn_free_aligned(m->lora_grad);
    m->lora_tab = NULL;
    m->n_lora_tab = 0;
    m->lora = m->lora_grad = NULL;
    return gn_errf(err, GN_ENOMEM, "out of memory for LoRA adapters");
}

int gn_train_model_add_lora(gn_train_model *m, int rank, float alpha, unsigned targets,
                            uint64_t seed, gn_err *err) {
    if (m->lora) return gn_errf(err, GN_EINVAL, "the model already has LoRA adapters");
    if (rank < 1 || rank > 4096 || !(alpha > 0) || !(targets & 0x7fu))
        return gn_errf(err, GN_EINVAL, "bad LoRA settings: rank %d alpha %g targets 0x%x", rank,
                       (double)alpha, targets);
    const gn_model_config *c = &m->cfg;
    int n_mod = 0;
    for (int k = 0; k < 7; k++) n_mod += (targets >> k) & 1;
    m->lora_tab = gn_calloc((size_t)c->n_layers * (size_t)n_mod * 2, sizeof *m->lora_tab);
    if (!m->lora_tab) return lora_fail(m, err);
    size_t off = 0;
    char nm[200];
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < 7; k++) {
            if (!((targets >> k) & 1)) continue;
            tm_lin *f = layer_lin(&m->layers[l], k);
            const char *grp = k < 4 ? "self_attn" : "mlp";
            for (int ab = 0; ab < 2; ab++) {
                snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l,
                         grp, k_mod_names[k], ab ? 'B' : 'A');
                if (tab_add(m->lora_tab, &m->n_lora_tab, &off, nm, ab ? f->out : rank,
                            ab ? rank : f->in, 2, 1))
                    return lora_fail(m, err);
            }
        }
    size_t bytes;
    if (gn_size_mul(off, sizeof(float), &bytes) || !(m->lora = gn_malloc_aligned(bytes, 64)) ||
        !(m->lora_grad = gn_malloc_aligned(bytes, 64)))
        return lora_fail(m, err);
    memset(m->lora, 0, bytes);
    memset(m->lora_grad, 0, bytes);
    m->n_lora = off;
    m->lora_rank = rank;
    m->lora_alpha = alpha;
    m->lora_targets = targets;
    int ti = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < 7; k++) {
            if (!((targets >> k) & 1)) continue;
            tm_lin *f = layer_lin(&m->layers[l], k);
            const gn_train_tensor *ta = &m->lora_tab[ti++], *tb = &m->lora_tab[ti++];
            f->A = m->lora + ta->offset;
            f->gA = m->lora_grad + ta->offset;
            f->B = m->lora + tb->offset;
            f->gB = m->lora_grad + tb->offset;
            f->r = rank;
            f->scale = alpha / (float)rank;
            uint64_t s = seed ^ (0x51ed270b27d8a3b1ull * (uint64_t)(ti + 1));
            double bound = 1.0 / sqrt((double)f->in);
            for (size_t i = 0; i < (size_t)rank * (size_t)f->in; i++)
                f->A[i] = (float)((2.0 * ((double)(splitmix64(&s) >> 11) * 0x1.0p-53) - 1.0) * bound);
        }
    /* The base is frozen from now on. */
    gn_free_aligned(m->base_grad);
    m->base_grad = NULL;
    wire_base(m);
    return 0;
}

/* ---- saving ---------------------------------------------------------------------- */

static int write_tensors(const char *path, const gn_train_tensor *tab, int n, const float *flat,
                         gn_dtype dt, const gn_train_model *merge, gn_err *err) {
    gn_st_write_tensor *w = gn_calloc((size_t)n, sizeof *w);
    void **bufs = gn_calloc((size_t)n, sizeof *bufs);
    int rc = 0;
    if (!w || !bufs) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const gn_train_tensor *t = &tab[i];
        size_t numel = (size_t)t->rows * (size_t)t->cols;
        const float *src = flat + t->offset;
        float *merged = NULL;
        if (merge && merge->lora) { /* W + scale · B A for adapted projections */
            for (int l = 0; l < merge->cfg.n_layers && !merged; l++)
                for (int k = 0; k < 7; k++) {
                    tm_lin *f = layer_lin(&merge->layers[l], k);
                    if (f->w != src || !f->A) continue;
                    if (!(merged = gn_malloc(numel * sizeof(float)))) {
                        rc = gn_errf(err, GN_ENOMEM, "out of memory");
                        goto done;
                    }
                    for (int o = 0; o < f->out; o++)
                        for (int j = 0; j < f->in; j++) {
                            float acc = 0;
                            for (int r = 0; r < f->r; r++)
                                acc += f->B[(size_t)o * f->r + r] * f->A[(size_t)r * f->in + j];
                            merged[(size_t)o * f->in + j] = src[(size_t)o * f->in + j] + f->scale * acc;
                        }
                    break;
                }
        }
        if (merged) src = merged;
        if (!(bufs[i] = gn_malloc(numel * gn_dtype_size(dt)))) {
            gn_free(merged);
            rc = gn_errf(err, GN_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t e = 0; e < numel; e++) {
            if (dt == GN_F32) {
                memcpy((char *)bufs[i] + 4 * e, &src[e], 4);
            } else {
                uint16_t h = dt == GN_F16 ? gn_f32_to_f16(src[e]) : gn_f32_to_bf16(src[e]);
                memcpy((char *)bufs[i] + 2 * e, &h, 2);
            }
        }
        gn_free(merged);
        w[i].name = t->name;
        w[i].dtype = dt;
        w[i].n_dims = t->n_dims;
        if (t->n_dims == 1) {
            w[i].shape[0] = t->cols;
        } else {
            w[i].shape[0] = t->rows;
            w[i].shape[1] = t->cols;
        }
        w[i].data = bufs[i];
    }
    static const char *const meta[] = {"format", "pt", NULL};
    rc = gn_st_write(path, w, n, meta, err);
done:
    for (int i = 0; bufs && i < n; i++) gn_free(bufs[i]);
    gn_free(bufs);
    gn_free(w);
    return rc;
}

static int copy_if_present(const char *src_dir, const char *out_dir, const char *name, gn_err *err) {
    char *s = gn_fs_join(src_dir, name), *d = gn_fs_join(out_dir, name);
    int rc = 0;
    if (!s || !d) rc = gn_errf(err, GN_ENOMEM, "out of memory");
    else if (gn_fs_is_file(s) && strcmp(s, d) != 0) rc = gn_fs_copy_file(s, d, err);
    gn_free(s);
    gn_free(d);
    return rc;
}

/* The copied config.json must name the dtype the weights are saved in. */
static int set_torch_dtype(const char *out_dir, gn_dtype dtype, gn_err *err) {
    char *path = gn_fs_join(out_dir, "config.json"), *text = NULL, *out = NULL;
    size_t len = 0;
    json_t *cfg = NULL;
    int rc = path ? gn_fs_read_file(path, 1 << 20, &text, &len, err) : gn_errf(err, GN_ENOMEM, "out of memory");
    if (!rc) {
        json_error_t je;
        cfg = json_loadb(text, len, 0, &je);
        if (!json_is_object(cfg))
            rc = gn_errf(err, GN_EFORMAT, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
    }
    if (!rc) {
        const char *name = dtype == GN_F32 ? "float32" : dtype == GN_F16 ? "float16" : "bfloat16";
        if (json_object_set_new(cfg, "torch_dtype", json_string(name)) ||
            !(out = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER)))
            rc = gn_errf(err, GN_ENOMEM, "out of memory");
    }
    if (!rc) rc = gn_fs_write_file(path, out, strlen(out), err);
    free(out);
    json_decref(cfg);
    gn_free(text);
    gn_free(path);
    return rc;
}

int gn_train_model_save(const gn_train_model *m, const char *src_dir, const char *out_dir,
                        gn_dtype dtype, gn_err *err) {
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json"};
    int rc = gn_fs_mkdirs(out_dir, err);
    for (size_t i = 0; !rc && i < sizeof files / sizeof files[0]; i++)
        rc = copy_if_present(src_dir, out_dir, files[i], err);
    if (!rc) rc = set_torch_dtype(out_dir, dtype, err);
    if (rc) return rc;
    char *path = gn_fs_join(out_dir, "model.safetensors");
    if (!path) return gn_errf(err, GN_ENOMEM, "out of memory");
    rc = write_tensors(path, m->base_tab, m->n_base_tab, m->base, dtype, m, err);
    gn_free(path);
    return rc;
}

int gn_train_lora_save(const gn_train_model *m, const char *base_dir, const char *out_dir,
                       gn_err *err) {
    if (!m->lora) return gn_errf(err, GN_EINVAL, "the model has no LoRA adapters");
    int rc = gn_fs_mkdirs(out_dir, err);
    if (rc) return rc;
    json_t *targets = json_array();
    for (int k = 0; k < 7; k++)
        if ((m->lora_targets >> k) & 1) json_array_append_new(targets, json_string(k_mod_names[k]));
    json_t *cfg = json_pack(
        "{s:{}, s:n, s:s, s:s, s:b, s:b, s:b, s:n, s:n, s:f, s:f, s:n, s:s, s:i, s:{}, s:n,"
        " s:o, s:s, s:b, s:b}",
        "alpha_pattern", "auto_mapping", "base_model_name_or_path", base_dir ? base_dir : "",
        "bias", "none", "fan_in_fan_out", 0, "inference_mode", 1, "init_lora_weights", 1,
        "layers_pattern", "layers_to_transform", "lora_alpha", (double)m->lora_alpha,
        "lora_dropout", 0.0, "modules_to_save", "peft_type", "LORA", "r", m->lora_rank,
        "rank_pattern", "revision", "target_modules", targets, "task_type", "CAUSAL_LM",
        "use_dora", 0, "use_rslora", 0);
    char *s = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(cfg);
    char *p1 = gn_fs_join(out_dir, "adapter_config.json");
    char *p2 = gn_fs_join(out_dir, "adapter_model.safetensors");
    if (!s || !p1 || !p2) rc = gn_errf(err, GN_ENOMEM, "out of memory");
    if (!rc) rc = gn_fs_write_file(p1, s, strlen(s), err);
    if (!rc) rc = write_tensors(p2, m->lora_tab, m->n_lora_tab, m->lora, GN_F32, NULL, err);
    free(s);
    gn_free(p1);
    gn_free(p2);
    return rc;
}
