/* model.c — loading a Hugging Face model directory (see model.h).
 *
 * Every tensor the architecture needs is looked up by its Hugging Face name,
 * checked against the shape the config implies, optionally merged with a
 * LoRA adapter, and then either used in place (host backends: a view into
 * the read-only mapping, so a BF16 model costs its file size once) or
 * uploaded into backend memory. Tensors the architecture does not use are
 * refused, which catches a config.json that disagrees with the weights. */
#include "model.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "hf_config.h"
#include "lora.h"
#include "safetensors.h"
#include "tokenizer.h"

struct gn_model {
    gn_model_config cfg;
    gn_weights w;
    gn_backend *be;
    gn_tokenizer *tok;
    char *dir;
    gn_st_set *st;      /* kept mapped while tensors point into it (host backends) */
    void **owned;       /* backend buffers to free with be->ops->free */
    int n_owned, cap_owned;
    size_t weight_bytes;
    int n_out;
};

gn_model_params gn_model_default_params(void) {
    gn_model_params p;
    memset(&p, 0, sizeof p);
    p.load_tokenizer = 1;
    return p;
}

/* Load-time state. */
typedef struct loader {
    gn_model *m;
    gn_lora *lora;
    unsigned char *used; /* per st entry */
    gn_err *err;
} loader;

static int own(gn_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = gn_realloc(m->owned, sizeof *o * (size_t)cap);
        if (!o) return -1;
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

/* *dst = a backend buffer of nbytes holding `src` (host memory), registered
 * in m for freeing. */
static int to_backend(loader *L, const void *src, size_t nbytes, const char *name, void **dst) {
    gn_backend *be = L->m->be;
    void *d = be->ops->alloc(be, nbytes);
    if (!d)
        return gn_errf(L->err, GN_ENOMEM, "tensor '%s': backend %s cannot allocate %zu bytes: %s",
                       name, be->name, nbytes, be->err.msg);
    if (own(L->m, d) != 0) {
        be->ops->free(be, d);
        return gn_errf(L->err, GN_ENOMEM, "out of memory");
    }
    if (be->is_host) memcpy(d, src, nbytes);
    else if (be->ops->upload(be, d, src, nbytes) != 0)
        return gn_errf(L->err, GN_EBACKEND, "tensor '%s': upload to %s failed: %s", name, be->name,
                       be->err.msg);
    *dst = d;
    return 0;
}

static void shape_str(char *buf, size_t cap, const gn_st_tensor *t) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->n_dims && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Binds `name`, expected 2-D (rows, cols), or 1-D (cols) when rows < 0.
 * Missing and !required: out->data stays NULL. */
static int bind(loader *L, const char *name, int64_t rows, int64_t cols, int required,
                gn_tensor *out) {
    gn_model *m = L->m;
    memset(out, 0, sizeof *out);
    const gn_st_entry *e = gn_st_set_find(m->st, name);
    if (!e) {
        if (!required) return 0;
        return gn_errf(L->err, GN_ENOTFOUND, "%s: tensor '%s' is missing (%s needs it)", m->dir,
                       name, m->cfg.arch_name);
    }
    L->used[e - m->st->entries] = 1;
    const gn_st_tensor *t = e->tensor;
    int ok = rows < 0 ? t->n_dims == 1 && t->shape[0] == cols
                      : t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols;
    if (!ok) {
        char got[128];
        shape_str(got, sizeof got, t);
        if (rows < 0)
            return gn_errf(L->err, GN_EMISMATCH,
                           "%s: tensor '%s' has shape %s, config.json implies [%lld]",
                           e->file->path, name, got, (long long)cols);
        return gn_errf(L->err, GN_EMISMATCH,
                       "%s: tensor '%s' has shape %s, config.json implies [%lld, %lld]",
                       e->file->path, name, got, (long long)rows, (long long)cols);
    }
    gn_tensor v = gn_st_view(e->file, t);
    size_t nbytes = gn_tensor_nbytes(&v);
    gn_tensor la, lb;
    if (L->lora && gn_lora_find(L->lora, name, &la, &lb)) {
        /* Merged weights go to new buffers; the mapping stays read-only. */
        void *tmp = gn_malloc_aligned(nbytes, 64);
        if (!tmp) return gn_errf(L->err, GN_ENOMEM, "tensor '%s': out of memory for LoRA merge", name);
        void *dst = NULL;
        int rc = gn_lora_merge(&v, &la, &lb, gn_lora_cfg(L->lora)->scale, tmp, name, L->err);
        if (!rc) rc = to_backend(L, tmp, nbytes, name, &dst);
        gn_free_aligned(tmp);
        if (rc) return rc;
        v.data = dst;
    } else if (!m->be->is_host || ((uintptr_t)v.data % gn_dtype_size(v.dtype)) != 0) {
        /* Device memory, or a host pointer misaligned for its element type
         * (possible in a valid file whose header length is odd): copy. */
        void *dst = NULL;
        int rc = to_backend(L, v.data, nbytes, name, &dst);
        if (rc) return rc;
        v.data = dst;
    }
    *out = v;
    m->weight_bytes += nbytes;
    return 0;
}

static int bind_layer(loader *L, int l, gn_layer_weights *lw) {
    const gn_model_config *c = &L->m->cfg;
    const int64_t D = c->dim, Q = (int64_t)c->n_heads * c->head_dim,
                  KV = (int64_t)c->n_kv_heads * c->head_dim, F = c->ffn_dim;
    char n[160];
    int rc;
#define B(leaf, rows, cols, req, dst)                                   \
    do {                                                                \
        snprintf(n, sizeof n, "model.layers.%d.%s", l, leaf);          \
        if ((rc = bind(L, n, rows, cols, req, dst)) != 0) return rc;    \
    } while (0)
    B("input_layernorm.weight", -1, D, 1, &lw->attn_norm);
    B("self_attn.q_proj.weight", Q, D, 1, &lw->wq);
    B("self_attn.k_proj.weight", KV, D, 1, &lw->wk);
    B("self_attn.v_proj.weight", KV, D, 1, &lw->wv);
    if (c->attn_bias) {
        B("self_attn.q_proj.bias", -1, Q, 1, &lw->bq);
        B("self_attn.k_proj.bias", -1, KV, 1, &lw->bk);
        B("self_attn.v_proj.bias", -1, KV, 1, &lw->bv);
    }
    if (c->qk_norm) {
        B("self_attn.q_norm.weight", -1, c->head_dim, 1, &lw->q_norm);
        B("self_attn.k_norm.weight", -1, c->head_dim, 1, &lw->k_norm);
    }
    B("self_attn.o_proj.weight", D, Q, 1, &lw->wo);
    B("post_attention_layernorm.weight", -1, D, 1, &lw->ffn_norm);
    B("mlp.gate_proj.weight", F, D, 1, &lw->w_gate);
    B("mlp.up_proj.weight", F, D, 1, &lw->w_up);
    B("mlp.down_proj.weight", D, F, 1, &lw->w_down);
#undef B
    return 0;
}

/* Tensors no architecture here reads but checkpoints carry harmlessly. */
static int ignorable(const char *name, int tied) {
    size_t n = strlen(name);
    const char *suffix = ".rotary_emb.inv_freq";
    size_t sl = strlen(suffix);
    if (n > sl && !strcmp(name + n - sl, suffix)) return 1;
    return tied && !strcmp(name, "lm_head.weight"); /* transformers re-ties it */
}

static int bind_all(loader *L) {
    gn_model *m = L->m;
    const gn_model_config *c = &m->cfg;
    int rc;
    if ((rc = bind(L, "model.embed_tokens.weight", c->n_vocab, c->dim, 1, &m->w.embed)) != 0) return rc;
    m->w.layers = gn_calloc((size_t)c->n_layers, sizeof *m->w.layers);
    if (!m->w.layers) return gn_errf(L->err, GN_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++)
        if ((rc = bind_layer(L, l, &m->w.layers[l])) != 0) return rc;
    if ((rc = bind(L, "model.norm.weight", -1, c->dim, 1, &m->w.final_norm)) != 0) return rc;
    if (c->tie_embeddings) {
        m->w.lm_head = m->w.embed;
    } else if ((rc = bind(L, "lm_head.weight", c->n_vocab, c->dim, 1, &m->w.lm_head)) != 0) {
        if (rc == GN_ENOTFOUND)
            gn_errf(L->err, rc,
                    "%s: tensor 'lm_head.weight' is missing and config.json does not set "
                    "tie_word_embeddings",
                    m->dir);
        return rc;
    }
    for (int i = 0; i < m->st->n_entries; i++) {
        const gn_st_entry *e = &m->st->entries[i];
        if (!L->used[i] && !ignorable(e->name, c->tie_embeddings))
            return gn_errf(L->err, GN_EFORMAT,
                           "%s: unexpected tensor '%s' (not part of %s with %d layers as "
                           "config.json describes)",
                           e->file->path, e->name, c->arch_name, c->n_layers);
    }
    if (L->lora && (rc = gn_lora_check_all_used(L->lora, L->err)) != 0) return rc;
    return 0;
}

gn_model *gn_model_load(const char *dir, gn_backend *be, const gn_model_params *p, gn_err *err) {
    gn_model_params defaults = gn_model_default_params();
    if (!p) p = &defaults;
    loader L = {.err = err};
    gn_model *m = gn_calloc(1, sizeof *m);
    if (!m || !(m->dir = gn_strdup(dir))) {
        gn_free(m);
        gn_errf(err, GN_ENOMEM, "out of memory");
        return NULL;
    }
    m->be = be;
    L.m = m;
    if (gn_hf_config_load(dir, &m->cfg, err) != 0) goto fail;
    if (!(m->st = gn_st_set_open(dir, err))) goto fail;
    if (!(L.used = gn_calloc((size_t)(m->st->n_entries ? m->st->n_entries : 1), 1))) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        goto fail;
    }
    if (p->lora_dir && !(L.lora = gn_lora_open(p->lora_dir, err))) goto fail;
    if (bind_all(&L) != 0) {
        if (L.lora) gn_err_prefix(err, "with adapter %s: ", p->lora_dir);
        goto fail;
    }
    gn_lora_free(L.lora);
    L.lora = NULL;
    gn_free(L.used);
    L.used = NULL;
    if (!be->is_host) {
        /* Every tensor was uploaded: the mapping is no longer needed. */
        gn_st_set_close(m->st);
        m->st = NULL;
    }
    m->n_out = m->cfg.n_vocab;
    if (p->load_tokenizer) {
        m->tok = gn_tok_load(dir, err);
        if (!m->tok) {
            gn_err_prefix(err, "loading the tokenizer of %s: ", dir);
            goto fail;
        }
        int nt = gn_tok_n_vocab(m->tok);
        if (nt > m->cfg.n_vocab) {
            gn_errf(err, GN_EMISMATCH,
                    "%s: the tokenizer has %d ids but the model only %d embedding rows", dir, nt,
                    m->cfg.n_vocab);
            goto fail;
        }
        m->n_out = nt;
    }
    return m;
fail:
    gn_lora_free(L.lora);
    gn_free(L.used);
    gn_model_free(m);
    return NULL;
}

void gn_model_free(gn_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) m->be->ops->free(m->be, m->owned[i]);
    gn_free(m->owned);
    gn_free(m->w.layers);
    gn_st_set_close(m->st);
    gn_tok_free(m->tok);
    gn_free(m->dir);
    gn_free(m);
}

const gn_model_config *gn_model_cfg(const gn_model *m) { return &m->cfg; }
const gn_weights *gn_model_weights(const gn_model *m) { return &m->w; }
gn_backend *gn_model_backend(const gn_model *m) { return m->be; }
const struct gn_tokenizer *gn_model_tokenizer(const gn_model *m) { return m->tok; }
int gn_model_n_out(const gn_model *m) { return m->n_out; }
size_t gn_model_weight_bytes(const gn_model *m) { return m->weight_bytes; }
const char *gn_model_dir(const gn_model *m) { return m->dir; }
