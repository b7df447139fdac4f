/* runner.c — the transformer forward pass over batched steps (runner.h).
 *
 * One step appends new tokens to any number of sequences. The tokens of all
 * items are laid end to end and cut into chunks of at most max_batch_tokens;
 * each chunk runs the whole model once (all layers) on its tokens, which may
 * belong to several sequences and mix prefill (many tokens) with decode (one).
 * A chunk writes its K/V rows into the paged pool before attending, so the
 * next chunk of the same sequence sees them; sequence lengths are committed
 * only when every chunk has succeeded.
 *
 * Per layer (LLaMA family):
 *   xb = rmsnorm(x);  q,k,v = xb·Wq,Wk,Wv (+bias: Qwen2; one matmul_multi
 *                     call when the backend has it, as gate/up below)
 *   q,k = rmsnorm per head (Qwen3);  q,k = rope(q,k)
 *   att = attention(q, k, v, KV pool);  x += att·Wo
 *   xb = rmsnorm(x);  x += (silu(xb·Wgate) * (xb·Wup))·Wdown
 * then, only for the rows that need log-probs: rmsnorm, lm_head, log_softmax
 * over the first gn_model_n_out() columns.
 * Backends with the optional fused ops save launches: rope_attention (or
 * else rope_qk) rotates q and k together with (before) attention; add_rmsnorm does each residual add together with the norm after
 * it (ffn_norm, the next layer's attn_norm, and after the last layer the
 * final norm of all rows, so the logit rows are taken from its output).
 *
 * All scratch (activations, logits, step tables) is sized once at create, in
 * backend memory, with overflow-checked arithmetic; the per-step path does
 * not allocate.
 *
 * Decode steps as graphs (backends with graph_begin, i.e. CUDA): a step whose
 * items all add one token and fit one chunk and one logit group has the same
 * kernels, arguments and buffers every time for a given batch size n; only
 * the uploaded tables (tokens, positions, lengths, block tables) differ. So
 * the first such step of size n runs eagerly (it also sizes the backend's
 * conversion scratch), the second is recorded (uploads before graph_begin,
 * the download after graph_end) and every later one replays the recording:
 * one launch instead of ~15 per layer. Recording slots are per backend and
 * handed out below, so runners sharing a backend (base + ARMs on one GPU)
 * never replay each other's steps. A size whose recording fails stays eager.
 * GN_RUNNER_GRAPHS=0 in the environment (read at create) turns this off.
 *
 * LoRA adapters per sequence (gn_seq_set_adapter): after each targeted
 * projection over all rows of a chunk, the rows of every sequence that has
 * an adapter get y += B'·(A·x) from the adapter's factors (plain backend
 * matmul/add on those rows; consecutive rows of one adapter in one go):
 * q/k/v before q/k norm and RoPE, o and down before the residual add, gate
 * and up before swiglu. A chunk without adapters runs exactly as before; a
 * chunk with any is never recorded or replayed as a graph. */
#include "runner.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "kvcache.h"
#include "lora.h"

struct gn_seq {
    gn_runner *r;
    int len;          /* tokens in the KV cache */
    int n_blocks;     /* blocks held: ceil(len / block_size) outside a step */
    int32_t *blocks;  /* (max_blocks) physical block ids */
    uint64_t stamp;   /* last step that listed this sequence (duplicate check) */
    const gn_lora_adapter *ad; /* LoRA applied to its rows, or NULL */
};

/* Rows [start, start + n) of a chunk that take adapter ad. */
typedef struct ad_seg {
    int start, n;
    const gn_lora_adapter *ad;
} ad_seg;

struct gn_runner {
    gn_model *m;
    const gn_model_config *cfg;
    const gn_weights *w;
    gn_backend *be;
    gn_runner_params p;
    int n_vocab, n_out;
    int max_blocks;  /* per sequence: ceil(max_ctx / block_size) */
    int logit_rows;  /* rows of logits computed at once */
    float scale;     /* attention scale, 1/sqrt(head_dim) */
    uint64_t stamp;

    gn_kvcache *kc;
    gn_kv_pool pool;

    /* Backend memory. */
    float *x;       /* (T, dim) residual stream */
    float *xb;      /* (T, dim) normed input / projection output */
    float *q;       /* (T, n_heads * head_dim) */
    float *k, *v;   /* (T, n_kv_heads * head_dim) */
    float *att;     /* (T, n_heads * head_dim) */
    float *gate;    /* (T, ffn_dim) */
    float *up;      /* (T, ffn_dim) */
    float *xr;      /* (L, dim) rows that need logits */
    float *logits;  /* (L, n_vocab) */
    float *lp;      /* (L, n_out) log-probs (device backends only) */
    float *inv_freq;/* (head_dim / 2) */
    int32_t *d_tokens, *d_tok_seq, *d_tok_pos, *d_seq_len, *d_table, *d_rows;

    /* Host mirrors of the step tables. */
    int32_t *h_tokens;  /* (T) */
    int32_t *h_tok_seq; /* (T) */
    int32_t *h_tok_pos; /* (T) */
    int32_t *h_seq_len; /* (max_seqs) */
    int32_t *h_table;   /* (max_seqs, max_blocks) */
    int32_t *h_rows;    /* (T) */
    int32_t *new_blocks;/* (max_seqs * max_blocks) taken this step, for rollback */
    int *old_nb;        /* (max_seqs) blocks held before this step */

    /* LoRA adapters of the current chunk: one segment per run of rows with
     * the same adapter (none when no item has one). The scratch is allocated
     * when the first sequence binds an adapter, grown with its rank. */
    ad_seg *segs;       /* (max_seqs) */
    int n_segs;
    float *lt;          /* (T, lt_r) A·x */
    float *lu;          /* (T, max(dim, q, kv, ffn)) B'·(A·x) */
    int lt_r;

    /* Decode-step recordings, indexed by batch size n (1 .. max_seqs). */
    int graphs;             /* the backend records and graphs are not switched off */
    unsigned char *g_state; /* (max_seqs + 1) GRAPH_* below */
    short *g_slot;          /* (max_seqs + 1) the backend slot holding size n, -1 none */
};

enum { GRAPH_NEW, GRAPH_WARM, GRAPH_READY, GRAPH_NEVER };

/* ------------------------------------------------------------------ graph slots */

/* Which recording slots of which backend are taken, process-wide (runners on
 * one backend may live on different threads). An entry is freed when its
 * last slot is. */
#define SLOT_BACKENDS 16
static pthread_mutex_t g_slot_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const gn_backend *be;
    int n_used;
    unsigned char used[GN_GRAPH_SLOTS];
} g_slot_tab[SLOT_BACKENDS];

/* A free slot of be, or -1 when all are taken. */
static int slot_claim(const gn_backend *be) {
    int got = -1;
    pthread_mutex_lock(&g_slot_mu);
    int e = -1;
    for (int i = 0; i < SLOT_BACKENDS && e < 0; i++)
        if (g_slot_tab[i].be == be) e = i;
    for (int i = 0; i < SLOT_BACKENDS && e < 0; i++)
        if (!g_slot_tab[i].be) {
            e = i;
            g_slot_tab[i].be = be;
        }
    if (e >= 0)
        for (int s = 0; s < GN_GRAPH_SLOTS && got < 0; s++)
            if (!g_slot_tab[e].used[s]) {
                g_slot_tab[e].used[s] = 1;
                g_slot_tab[e].n_used++;
                got = s;
            }
    pthread_mutex_unlock(&g_slot_mu);
    return got;
}

static void slot_release(const gn_backend *be, int slot) {
    pthread_mutex_lock(&g_slot_mu);
    for (int i = 0; i < SLOT_BACKENDS; i++) {
        if (g_slot_tab[i].be != be || !g_slot_tab[i].used[slot]) continue;
        g_slot_tab[i].used[slot] = 0;
        if (--g_slot_tab[i].n_used == 0) g_slot_tab[i].be = NULL;
        break;
    }
    pthread_mutex_unlock(&g_slot_mu);
}

gn_runner_params gn_runner_default_params(void) {
    gn_runner_params p;
    memset(&p, 0, sizeof p);
    p.max_batch_tokens = 512;
    p.max_seqs = 64;
    p.max_ctx = 0;
    p.block_size = 16;
    p.n_blocks = 0;
    return p;
}

/* ------------------------------------------------------------------ create / free */

#define KV_POOL_CAP ((size_t)1 << 30)

/* Bytes of a (rows x cols) float32 or int32 buffer, overflow-checked. */
static int nbytes4(size_t rows, size_t cols, size_t *out) {
    size_t n;
    if (gn_size_mul(rows, cols, &n) || gn_size_mul(n, 4, out)) return -1;
    return 0;
}

static void *be_buf(gn_runner *r, size_t rows, size_t cols, const char *what, gn_err *err) {
    size_t n;
    if (nbytes4(rows, cols, &n)) {
        gn_errf(err, GN_ERANGE, "runner: %s: size overflow (%zu x %zu)", what, rows, cols);
        return NULL;
    }
    void *p = r->be->ops->alloc(r->be, n);
    if (!p) gn_errf(err, GN_ENOMEM, "runner: %s: %zu bytes on %s: %s", what, n, r->be->name, r->be->err.msg);
    return p;
}

static void *host_buf(size_t rows, size_t cols, const char *what, gn_err *err) {
    size_t n;
    void *p = NULL;
    if (nbytes4(rows, cols, &n) == 0) p = gn_malloc(n);
    if (!p) gn_errf(err, GN_ENOMEM, "runner: %s: out of memory (%zu x %zu)", what, rows, cols);
    return p;
}

void gn_runner_free(gn_runner *r) {
    if (!r) return;
    gn_backend *be = r->be;
    void *bufs[] = {r->x, r->xb, r->q, r->k, r->v, r->att, r->gate, r->up, r->xr, r->logits, r->lp,
                    r->inv_freq, r->d_tokens, r->d_tok_seq, r->d_tok_pos, r->d_seq_len, r->d_table,
                    r->d_rows, r->pool.data, r->lt, r->lu};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->ops->free(be, bufs[i]);
    gn_kvcache_free(r->kc);
    gn_free(r->h_tokens);
    gn_free(r->h_tok_seq);
    gn_free(r->h_tok_pos);
    gn_free(r->h_seq_len);
    gn_free(r->h_table);
    gn_free(r->h_rows);
    gn_free(r->new_blocks);
    gn_free(r->old_nb);
    gn_free(r->segs);
    if (r->g_slot)
        for (int n = 0; n <= r->p.max_seqs; n++)
            if (r->g_slot[n] >= 0) slot_release(be, r->g_slot[n]);
    gn_free(r->g_state);
    gn_free(r->g_slot);
    gn_free(r);
}

static int check_params(const gn_runner_params *p, const gn_model_config *c, gn_err *err) {
    if (p->max_batch_tokens < 1 || p->max_batch_tokens > (1 << 20))
        return gn_errf(err, GN_EINVAL, "runner: max_batch_tokens = %d (1 .. 1048576)", p->max_batch_tokens);
    if (p->max_seqs < 1 || p->max_seqs > (1 << 16))
        return gn_errf(err, GN_EINVAL, "runner: max_seqs = %d (1 .. 65536)", p->max_seqs);
    if (p->block_size < 1 || p->block_size > 4096)
        return gn_errf(err, GN_EINVAL, "runner: block_size = %d (1 .. 4096)", p->block_size);
    if (p->max_ctx < 1 || p->max_ctx > (1 << 24))
        return gn_errf(err, GN_EINVAL, "runner: max_ctx = %d (1 .. 16777216)", p->max_ctx);
    if (p->n_blocks < 0) return gn_errf(err, GN_EINVAL, "runner: n_blocks = %d", p->n_blocks);
    if (c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->head_dim <= 0 ||
        c->head_dim % 2 || c->ffn_dim <= 0 || c->n_vocab <= 0 || c->n_heads % c->n_kv_heads)
        return gn_errf(err, GN_EINVAL,
                       "runner: unsupported shape (dim %d, layers %d, heads %d/%d, head_dim %d, ffn %d, vocab %d)",
                       c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->ffn_dim, c->n_vocab);
    return 0;
}

gn_runner *gn_runner_create(gn_model *m, const gn_runner_params *params, gn_err *err) {
    if (!m) {
        gn_errf(err, GN_EINVAL, "runner: no model");
        return NULL;
    }
    gn_runner_params p = params ? *params : gn_runner_default_params();
    const gn_model_config *c = gn_model_cfg(m);
    if (p.max_ctx == 0) p.max_ctx = c->max_pos > 0 && c->max_pos < 4096 ? c->max_pos : 4096;
    if (check_params(&p, c, err)) return NULL;

    gn_runner *r = gn_calloc(1, sizeof *r);
    if (!r) {
        gn_errf(err, GN_ENOMEM, "runner: out of memory");
        return NULL;
    }
    r->m = m;
    r->cfg = c;
    r->w = gn_model_weights(m);
    r->be = gn_model_backend(m);
    r->n_vocab = c->n_vocab;
    r->n_out = gn_model_n_out(m);
    r->scale = 1.0f / sqrtf((float)c->head_dim);
    if (r->n_out < 1 || r->n_out > r->n_vocab) {
        gn_errf(err, GN_EINVAL, "runner: model has %d output columns for %d vocabulary rows", r->n_out, r->n_vocab);
        goto fail;
    }
    r->max_blocks = (p.max_ctx + p.block_size - 1) / p.block_size;

    /* KV pool: n_blocks blocks of (n_layers, 2, block_size, n_kv_heads, head_dim). */
    gn_backend *be = r->be;
    size_t per_block;
    if (gn_size_mul((size_t)c->n_layers * 2, (size_t)p.block_size, &per_block) ||
        gn_size_mul(per_block, (size_t)c->n_kv_heads * (size_t)c->head_dim, &per_block) ||
        gn_size_mul(per_block, gn_dtype_size(be->kv_dtype), &per_block)) {
        gn_errf(err, GN_ERANGE, "runner: KV block size overflows");
        goto fail;
    }
    if (p.n_blocks == 0) {
        size_t want = (size_t)p.max_seqs * (size_t)r->max_blocks;
        size_t cap = KV_POOL_CAP / per_block;
        if (want > cap) want = cap;
        if (want < 1) want = 1;
        if (want > INT32_MAX) want = INT32_MAX;
        p.n_blocks = (int)want;
    }
    size_t pool_bytes;
    if (gn_size_mul(per_block, (size_t)p.n_blocks, &pool_bytes)) {
        gn_errf(err, GN_ERANGE, "runner: KV pool of %d blocks overflows", p.n_blocks);
        goto fail;
    }
    r->p = p;
    if (!(r->kc = gn_kvcache_create(p.n_blocks, err))) goto fail;
    r->pool = (gn_kv_pool){.dtype = be->kv_dtype, .n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim, .block_size = p.block_size, .n_blocks = p.n_blocks};
    r->pool.data = be->ops->alloc(be, pool_bytes);
    if (!r->pool.data) {
        gn_errf(err, GN_ENOMEM, "runner: KV pool of %d blocks (%zu bytes) on %s: %s", p.n_blocks, pool_bytes,
                be->name, be->err.msg);
        goto fail;
    }

    size_t T = (size_t)p.max_batch_tokens;
    size_t qd = (size_t)c->n_heads * (size_t)c->head_dim, kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    r->logit_rows = p.max_seqs < p.max_batch_tokens ? p.max_seqs : p.max_batch_tokens;
    if (r->logit_rows < 16 && p.max_batch_tokens >= 16) r->logit_rows = 16;
    size_t L = (size_t)r->logit_rows;
    if (!(r->x = be_buf(r, T, (size_t)c->dim, "x", err)) ||
        !(r->xb = be_buf(r, T, (size_t)c->dim, "xb", err)) || !(r->q = be_buf(r, T, qd, "q", err)) ||
        !(r->k = be_buf(r, T, kvd, "k", err)) || !(r->v = be_buf(r, T, kvd, "v", err)) ||
        !(r->att = be_buf(r, T, qd, "att", err)) ||
        !(r->gate = be_buf(r, T, (size_t)c->ffn_dim, "gate", err)) ||
        !(r->up = be_buf(r, T, (size_t)c->ffn_dim, "up", err)) ||
        !(r->xr = be_buf(r, L, (size_t)c->dim, "xr", err)) ||
        !(r->logits = be_buf(r, L, (size_t)r->n_vocab, "logits", err)) ||
        (!be->is_host && !(r->lp = be_buf(r, L, (size_t)r->n_out, "log-probs", err))) ||
        !(r->inv_freq = be_buf(r, 1, (size_t)c->head_dim / 2, "inv_freq", err)) ||
        !(r->d_tokens = be_buf(r, 1, T, "tokens", err)) || !(r->d_tok_seq = be_buf(r, 1, T, "tok_seq", err)) ||
        !(r->d_tok_pos = be_buf(r, 1, T, "tok_pos", err)) ||
        !(r->d_seq_len = be_buf(r, 1, (size_t)p.max_seqs, "seq_len", err)) ||
        !(r->d_table = be_buf(r, (size_t)p.max_seqs, (size_t)r->max_blocks, "block table", err)) ||
        !(r->d_rows = be_buf(r, 1, T, "rows", err)))
        goto fail;
    if (!(r->h_tokens = host_buf(1, T, "tokens", err)) || !(r->h_tok_seq = host_buf(1, T, "tok_seq", err)) ||
        !(r->h_tok_pos = host_buf(1, T, "tok_pos", err)) ||
        !(r->h_seq_len = host_buf(1, (size_t)p.max_seqs, "seq_len", err)) ||
        !(r->h_table = host_buf((size_t)p.max_seqs, (size_t)r->max_blocks, "block table", err)) ||
        !(r->h_rows = host_buf(1, T, "rows", err)) ||
        !(r->new_blocks = host_buf((size_t)p.max_seqs, (size_t)r->max_blocks, "new blocks", err)) ||
        !(r->old_nb = host_buf(1, (size_t)p.max_seqs, "old blocks", err)))
        goto fail;
    r->g_state = gn_calloc((size_t)p.max_seqs + 1, 1);
    r->g_slot = gn_malloc(sizeof(short) * ((size_t)p.max_seqs + 1));
    r->segs = gn_calloc((size_t)p.max_seqs, sizeof *r->segs);
    if (!r->g_state || !r->g_slot || !r->segs) {
        gn_errf(err, GN_ENOMEM, "runner: out of memory");
        goto fail;
    }
    for (int n = 0; n <= p.max_seqs; n++) r->g_slot[n] = -1;
    const char *genv = getenv("GN_RUNNER_GRAPHS");
    r->graphs = be->ops->graph_begin && be->ops->graph_end && be->ops->graph_launch && !be->is_host &&
                !(genv && !strcmp(genv, "0"));

    /* RoPE inverse frequencies: computed once on the host, uploaded once. */
    float *inv = gn_malloc(sizeof(float) * (size_t)(c->head_dim / 2));
    if (!inv) {
        gn_errf(err, GN_ENOMEM, "runner: out of memory");
        goto fail;
    }
    gn_rope_inv_freq(c, inv);
    int rc = be->ops->upload(be, r->inv_freq, inv, sizeof(float) * (size_t)(c->head_dim / 2));
    gn_free(inv);
    if (rc) {
        gn_errf(err, rc, "runner: uploading RoPE frequencies to %s: %s", be->name, be->err.msg);
        goto fail;
    }
    return r;
fail:
    gn_runner_free(r);
    return NULL;
}

/* ------------------------------------------------------------------ sequences */

gn_seq *gn_seq_create(gn_runner *r, gn_err *err) {
    gn_seq *s = gn_calloc(1, sizeof *s);
    if (s) s->blocks = gn_malloc(sizeof(int32_t) * (size_t)r->max_blocks);
    if (!s || !s->blocks) {
        if (s) gn_free(s);
        gn_errf(err, GN_ENOMEM, "runner: out of memory for a sequence");
        return NULL;
    }
    s->r = r;
    return s;
}

void gn_seq_free(gn_seq *s) {
    if (!s) return;
    gn_kvcache_release(s->r->kc, s->blocks, s->n_blocks);
    gn_free(s->blocks);
    gn_free(s);
}

int gn_seq_len(const gn_seq *s) { return s->len; }

void gn_seq_truncate(gn_seq *s, int n) {
    if (n < 0) n = 0;
    if (n >= s->len) return;
    int keep = (n + s->r->p.block_size - 1) / s->r->p.block_size;
    if (keep < s->n_blocks) {
        gn_kvcache_release(s->r->kc, s->blocks + keep, s->n_blocks - keep);
        s->n_blocks = keep;
    }
    s->len = n;
}

/* Makes sure the adapter scratch holds rank r for max_batch_tokens rows. */
static int lora_scratch(gn_runner *r, int rank, gn_err *err) {
    const gn_model_config *c = r->cfg;
    size_t T = (size_t)r->p.max_batch_tokens;
    if (!r->lu) {
        size_t wide = (size_t)c->dim, qd = (size_t)c->n_heads * (size_t)c->head_dim;
        if (qd > wide) wide = qd;
        if ((size_t)c->ffn_dim > wide) wide = (size_t)c->ffn_dim;
        if (!(r->lu = be_buf(r, T, wide, "LoRA scratch", err))) return GN_ENOMEM;
    }
    if (r->lt_r < rank) {
        float *lt = be_buf(r, T, (size_t)rank, "LoRA scratch", err);
        if (!lt) return GN_ENOMEM;
        if (r->lt) r->be->ops->free(r->be, r->lt);
        r->lt = lt;
        r->lt_r = rank;
    }
    return 0;
}

int gn_seq_set_adapter(gn_seq *s, const gn_lora_adapter *a, gn_err *err) {
    if (!s) return gn_errf(err, GN_EINVAL, "runner: set_adapter: no sequence");
    if (s->len > 0)
        return gn_errf(err, GN_EINVAL,
                       "runner: set_adapter: the sequence already holds %d tokens (bind the adapter "
                       "before the first step)",
                       s->len);
    if (a) {
        if (gn_lora_adapter_model(a) != s->r->m)
            return gn_errf(err, GN_EMISMATCH,
                           "runner: set_adapter: the adapter was loaded for another model (%s), "
                           "not the runner's (%s)",
                           gn_model_dir(gn_lora_adapter_model(a)), gn_model_dir(s->r->m));
        int rc = lora_scratch(s->r, gn_lora_adapter_cfg(a)->r, err);
        if (rc) return rc;
    }
    s->ad = a;
    return 0;
}

const gn_lora_adapter *gn_seq_adapter(const gn_seq *s) { return s->ad; }

void gn_runner_kv_usage(const gn_runner *r, int *used_blocks, int *total_blocks) {
    int total = gn_kvcache_n_blocks(r->kc);
    if (used_blocks) *used_blocks = total - gn_kvcache_n_free(r->kc);
    if (total_blocks) *total_blocks = total;
}

int gn_runner_step_rows(const gn_step_item *items, int n_items) {
    int rows = 0;
    for (int i = 0; i < n_items; i++) rows += items[i].all_logits ? items[i].n_tokens : 1;
    return rows;
}

/* ------------------------------------------------------------------ forward */

/* Wraps a failed backend op: names the op (and layer) and the backend's detail. */
static int op_fail(gn_runner *r, int rc, const char *op, int layer, gn_err *err) {
    if (layer >= 0)
        return gn_errf(err, rc, "runner: %s: layer %d %s failed: %s", r->be->name, layer, op, r->be->err.msg);
    return gn_errf(err, rc, "runner: %s: %s failed: %s", r->be->name, op, r->be->err.msg);
}

#define OP(call, name, layer)                                  \
    do {                                                       \
        int rc_ = (call);                                      \
        if (rc_) return op_fail(r, rc_, name, layer, err);     \
    } while (0)

/* LoRA deltas of projection `mod` (lora.h's module index) of layer l: for
 * each segment whose adapter has it, on that segment's rows only,
 * y += B'·(A·x) with x (n, in) and y (n, out) the projection's input and
 * output. Backend ops only, so it runs wherever the backend does. */
static int lora_apply(gn_runner *r, int l, int mod, float *y, const float *x, int in, int out,
                      gn_err *err) {
    gn_backend *be = r->be;
    const gn_backend_ops *o = be->ops;
    for (int i = 0; i < r->n_segs; i++) {
        const ad_seg *g = &r->segs[i];
        const gn_tensor *A, *B;
        if (!gn_lora_adapter_factors(g->ad, l, mod, &A, &B)) continue;
        OP(o->matmul(be, r->lt, x + (size_t)g->start * (size_t)in, A, NULL, g->n), "LoRA A", l);
        OP(o->matmul(be, r->lu, r->lt, B, NULL, g->n), "LoRA B", l);
        OP(o->add(be, y + (size_t)g->start * (size_t)out, r->lu, (size_t)g->n * (size_t)out), "LoRA add", l);
    }
    return 0;
}

#define LORA(mod, y, x, in, out)                                              \
    do {                                                                      \
        if (r->n_segs) {                                                      \
            int rc_ = lora_apply(r, l, (mod), (y), (x), (in), (out), err);    \
            if (rc_) return rc_;                                              \
        }                                                                     \
    } while (0)

/* Runs all layers over the n tokens whose tables are uploaded, then final
 * norm, lm_head and log-softmax on the n_rows rows that want log-probs, a
 * group of logit_rows at a time. download = 1: each group's log-probs go to
 * out_host (n_rows x n_out); download = 0 (recording a graph: n_rows <=
 * logit_rows, device backends): they stay in r->lp for the caller. */
static int forward_compute(gn_runner *r, int n, int n_rows, const gn_attn_batch *ab, float *out_host,
                           int download, gn_err *err) {
    gn_backend *be = r->be;
    const gn_backend_ops *o = be->ops;
    const gn_model_config *c = r->cfg;
    const gn_weights *w = r->w;
    int dim = c->dim, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, ffn = c->ffn_dim;
    size_t nd = (size_t)n * (size_t)dim;

    /* fused: the backend has add_rmsnorm, so each residual add also computes
     * the next norm (ffn_norm; the next layer's attn_norm; after the last
     * layer the final norm, over all n rows, left in xb). */
    const int fused = o->add_rmsnorm != NULL;
    OP(o->embed(be, r->x, &w->embed, r->d_tokens, n), "embed", -1);
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        if (!fused || l == 0)
            OP(o->rmsnorm(be, r->xb, r->x, &L->attn_norm, n, dim, c->norm_eps), "attn_norm", l);
        if (o->matmul_multi) {
            float *const ys[3] = {r->q, r->k, r->v};
            const gn_tensor *const ws[3] = {&L->wq, &L->wk, &L->wv}, *const bs[3] = {&L->bq, &L->bk, &L->bv};
            OP(o->matmul_multi(be, 3, ys, r->xb, ws, bs, n), "q/k/v_proj", l);
        } else {
            OP(o->matmul(be, r->q, r->xb, &L->wq, &L->bq, n), "q_proj", l);
            OP(o->matmul(be, r->k, r->xb, &L->wk, &L->bk, n), "k_proj", l);
            OP(o->matmul(be, r->v, r->xb, &L->wv, &L->bv, n), "v_proj", l);
        }
        /* LoRA on q/k/v: before q/k norm, RoPE and attention. */
        LORA(0, r->q, r->xb, dim, nh * hd);
        LORA(1, r->k, r->xb, dim, nkv * hd);
        LORA(2, r->v, r->xb, dim, nkv * hd);
        if (c->qk_norm) {
            OP(o->rmsnorm(be, r->q, r->q, &L->q_norm, n * nh, hd, c->norm_eps), "q_norm", l);
            OP(o->rmsnorm(be, r->k, r->k, &L->k_norm, n * nkv, hd, c->norm_eps), "k_norm", l);
        }
        if (o->rope_attention) {
            OP(o->rope_attention(be, r->att, r->q, r->k, r->v, &r->pool, l, ab, nh, c->sliding_window, r->scale,
                                 r->inv_freq),
               "rope+attention", l);
        } else {
            if (o->rope_qk) {
                OP(o->rope_qk(be, r->q, r->k, n, nh, nkv, hd, r->d_tok_pos, r->inv_freq), "rope q/k", l);
            } else {
                OP(o->rope(be, r->q, n, nh, hd, r->d_tok_pos, r->inv_freq), "rope q", l);
                OP(o->rope(be, r->k, n, nkv, hd, r->d_tok_pos, r->inv_freq), "rope k", l);
            }
            OP(o->attention(be, r->att, r->q, r->k, r->v, &r->pool, l, ab, nh, c->sliding_window, r->scale),
               "attention", l);
        }
        OP(o->matmul(be, r->xb, r->att, &L->wo, NULL, n), "o_proj", l);
        LORA(3, r->xb, r->att, nh * hd, dim); /* before the residual add */
        if (fused) {
            OP(o->add_rmsnorm(be, r->x, r->xb, r->xb, &L->ffn_norm, n, dim, c->norm_eps), "residual+ffn_norm", l);
        } else {
            OP(o->add(be, r->x, r->xb, nd), "residual", l);
            OP(o->rmsnorm(be, r->xb, r->x, &L->ffn_norm, n, dim, c->norm_eps), "ffn_norm", l);
        }
        if (o->matmul_multi) {
            float *const ys[2] = {r->gate, r->up};
            const gn_tensor *const ws[2] = {&L->w_gate, &L->w_up};
            OP(o->matmul_multi(be, 2, ys, r->xb, ws, NULL, n), "gate/up_proj", l);
        } else {
            OP(o->matmul(be, r->gate, r->xb, &L->w_gate, NULL, n), "gate_proj", l);
            OP(o->matmul(be, r->up, r->xb, &L->w_up, NULL, n), "up_proj", l);
        }
        LORA(4, r->gate, r->xb, dim, ffn); /* before swiglu */
        LORA(5, r->up, r->xb, dim, ffn);
        OP(o->swiglu(be, r->gate, r->gate, r->up, (size_t)n * (size_t)ffn), "swiglu", l);
        OP(o->matmul(be, r->xb, r->gate, &L->w_down, NULL, n), "down_proj", l);
        LORA(6, r->xb, r->gate, ffn, dim); /* before the residual add */
        if (fused) {
            const gn_tensor *nw = l + 1 < c->n_layers ? &w->layers[l + 1].attn_norm : &w->final_norm;
            OP(o->add_rmsnorm(be, r->x, r->xb, r->xb, nw, n, dim, c->norm_eps), "residual+norm", l);
        } else {
            OP(o->add(be, r->x, r->xb, nd), "residual", l);
        }
    }
    /* Final norm, lm_head and log-softmax only on the rows that need them, a
     * group of logit_rows at a time. */
    for (int g0 = 0; g0 < n_rows; g0 += r->logit_rows) {
        int cnt = n_rows - g0 < r->logit_rows ? n_rows - g0 : r->logit_rows;
        float *dst = out_host ? out_host + (size_t)g0 * (size_t)r->n_out : NULL;
        const float *xin = r->xr;
        if (!fused) {
            OP(o->get_rows(be, r->xr, r->x, r->d_rows + g0, cnt, dim), "get_rows", -1);
            OP(o->rmsnorm(be, r->xr, r->xr, &w->final_norm, cnt, dim, c->norm_eps), "final norm", -1);
        } else if (n_rows == n) {
            /* Every token wants its row, in order (rows 0 .. n-1): read xb in place. */
            xin = r->xb + (size_t)g0 * (size_t)dim;
        } else {
            OP(o->get_rows(be, r->xr, r->xb, r->d_rows + g0, cnt, dim), "get_rows", -1);
        }
        OP(o->matmul(be, r->logits, xin, &w->lm_head, NULL, cnt), "lm_head", -1);
        if (be->is_host) {
            OP(o->log_softmax(be, dst, r->logits, cnt, r->n_out, r->n_vocab), "log_softmax", -1);
        } else {
            OP(o->log_softmax(be, r->lp, r->logits, cnt, r->n_out, r->n_vocab), "log_softmax", -1);
            if (download)
                OP(o->download(be, dst, r->lp, sizeof(float) * (size_t)cnt * (size_t)r->n_out), "download", -1);
        }
    }
    return 0;
}

/* Records forward_compute for n one-token rows into a backend slot claimed
 * for size n: GRAPH_READY on success, GRAPH_NEVER otherwise (that size then
 * stays eager; nothing was run either way). */
static void record_step(gn_runner *r, int n, gn_attn_batch ab) {
    gn_backend *be = r->be;
    const gn_backend_ops *o = be->ops;
    if (r->g_slot[n] < 0) r->g_slot[n] = (short)slot_claim(be);
    int slot = r->g_slot[n];
    r->g_state[n] = GRAPH_NEVER;
    if (slot < 0 || o->graph_begin(be) != 0) return;
    /* The recording serves every later step of this size: size anything the
     * backend sizes from the context length for the longest one. */
    ab.max_seq_len = r->p.max_ctx;
    gn_err scratch = {0};
    int rc = forward_compute(r, n, n, &ab, NULL, 0, &scratch);
    if (o->graph_end(be, rc ? -1 : slot) == 0 && rc == 0) {
        r->g_state[n] = GRAPH_READY;
        return;
    }
    slot_release(be, slot);
    r->g_slot[n] = -1;
}

/* Uploads the step tables staged on the host (n tokens, n_cs chunk
 * sequences, n_rows rows wanting log-probs) and runs the chunk, writing
 * those rows' log-probs to out_host (n_rows x n_out). A chunk of n one-token
 * rows that fits one logit group runs from a recording when the backend
 * records (see the top of the file). */
static int forward_chunk(gn_runner *r, int n, int n_cs, int n_rows, int max_len, float *out_host,
                         gn_err *err) {
    gn_backend *be = r->be;
    const gn_backend_ops *o = be->ops;

    OP(o->upload(be, r->d_tokens, r->h_tokens, sizeof(int32_t) * (size_t)n), "upload", -1);
    OP(o->upload(be, r->d_tok_seq, r->h_tok_seq, sizeof(int32_t) * (size_t)n), "upload", -1);
    OP(o->upload(be, r->d_tok_pos, r->h_tok_pos, sizeof(int32_t) * (size_t)n), "upload", -1);
    OP(o->upload(be, r->d_seq_len, r->h_seq_len, sizeof(int32_t) * (size_t)n_cs), "upload", -1);
    OP(o->upload(be, r->d_table, r->h_table, sizeof(int32_t) * (size_t)n_cs * (size_t)r->max_blocks),
       "upload", -1);
    OP(o->upload(be, r->d_rows, r->h_rows, sizeof(int32_t) * (size_t)n_rows), "upload", -1);

    gn_attn_batch ab = {.n_tokens = n, .n_seqs = n_cs, .tok_seq = r->d_tok_seq, .tok_pos = r->d_tok_pos,
                        .seq_len = r->d_seq_len, .block_table = r->d_table, .max_blocks = r->max_blocks,
                        .max_seq_len = max_len};

    /* One token per sequence and one row per token: the same kernels, shapes
     * and buffers for every step of this n (h_rows is 0 .. n-1). */
    int graph = r->graphs && n == n_cs && n == n_rows && n_rows <= r->logit_rows;
    /* A step carrying adapters runs eagerly: a recording has no LoRA ops. */
    if (r->n_segs) graph = 0;
    if (graph && r->g_state[n] == GRAPH_WARM) record_step(r, n, ab);
    if (graph && r->g_state[n] == GRAPH_READY) {
        OP(o->graph_launch(be, r->g_slot[n]), "graph_launch", -1);
        OP(o->download(be, out_host, r->lp, sizeof(float) * (size_t)n_rows * (size_t)r->n_out), "download", -1);
        return 0;
    }
    int rc = forward_compute(r, n, n_rows, &ab, out_host, 1, err);
    if (rc == 0 && graph && r->g_state[n] == GRAPH_NEW) r->g_state[n] = GRAPH_WARM;
    return rc;
}

/* Stages and runs every chunk of the step. Sequences already hold the blocks
 * for their new length. */
static int run_chunks(gn_runner *r, const gn_step_item *items, int n_items, float *out_host, gn_err *err) {
    int T = r->p.max_batch_tokens;
    int item = 0, off = 0; /* cursor: next token is items[item].tokens[off] */
    size_t out_row = 0;
    while (item < n_items) {
        int n = 0, n_cs = 0, n_rows = 0, max_len = 0;
        r->n_segs = 0;
        while (n < T && item < n_items) {
            const gn_step_item *it = &items[item];
            gn_seq *s = it->seq;
            int take = it->n_tokens - off < T - n ? it->n_tokens - off : T - n;
            int cs = n_cs++;
            int32_t *row = r->h_table + (size_t)cs * (size_t)r->max_blocks;
            memcpy(row, s->blocks, sizeof(int32_t) * (size_t)s->n_blocks);
            memset(row + s->n_blocks, 0, sizeof(int32_t) * (size_t)(r->max_blocks - s->n_blocks));
            for (int u = 0; u < take; u++, n++) {
                int t = off + u;
                r->h_tokens[n] = it->tokens[t];
                r->h_tok_seq[n] = cs;
                r->h_tok_pos[n] = s->len + t;
                if (it->all_logits || t == it->n_tokens - 1) r->h_rows[n_rows++] = n;
            }
            if (s->ad) {
                /* Rows of one adapter next to each other: one segment. */
                ad_seg *last = r->n_segs ? &r->segs[r->n_segs - 1] : NULL;
                if (last && last->ad == s->ad && last->start + last->n == n - take)
                    last->n += take;
                else
                    r->segs[r->n_segs++] = (ad_seg){.start = n - take, .n = take, .ad = s->ad};
            }
            r->h_seq_len[cs] = s->len + off + take;
            if (r->h_seq_len[cs] > max_len) max_len = r->h_seq_len[cs];
            off += take;
            if (off == it->n_tokens) {
                item++;
                off = 0;
            }
        }
        int rc = forward_chunk(r, n, n_cs, n_rows, max_len, out_host + out_row * (size_t)r->n_out, err);
        if (rc) return rc;
        out_row += (size_t)n_rows;
    }
    return 0;
}

int gn_runner_step(gn_runner *r, const gn_step_item *items, int n_items, float *out_host, gn_err *err) {
    if (n_items == 0) return 0;
    if (!r || !items || n_items < 0 || !out_host)
        return gn_errf(err, GN_EINVAL, "runner step: bad arguments");
    if (n_items > r->p.max_seqs)
        return gn_errf(err, GN_ERANGE, "runner step: %d items, more than max_seqs %d", n_items, r->p.max_seqs);
    r->stamp++;
    int bs = r->p.block_size, need = 0;
    for (int i = 0; i < n_items; i++) {
        const gn_step_item *it = &items[i];
        gn_seq *s = it->seq;
        if (!s || s->r != r)
            return gn_errf(err, GN_EINVAL, "runner step: item %d: sequence %s", i,
                           s ? "belongs to another runner" : "is NULL");
        if (s->stamp == r->stamp)
            return gn_errf(err, GN_EINVAL, "runner step: item %d: sequence listed twice in one step", i);
        s->stamp = r->stamp;
        if (it->n_tokens < 1 || !it->tokens)
            return gn_errf(err, GN_EINVAL, "runner step: item %d: %d tokens (need at least 1)", i, it->n_tokens);
        if (it->n_tokens > r->p.max_ctx - s->len)
            return gn_errf(err, GN_ERANGE,
                           "runner step: item %d: context overflow: %d tokens held + %d new > max_ctx %d", i,
                           s->len, it->n_tokens, r->p.max_ctx);
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= r->n_vocab)
                return gn_errf(err, GN_EINVAL, "runner step: item %d token %d: id %d out of range [0, %d)", i, t,
                               it->tokens[t], r->n_vocab);
        int nb = (s->len + it->n_tokens + bs - 1) / bs;
        need += nb - s->n_blocks;
    }
    /* Blocks: all or nothing. */
    if (gn_kvcache_alloc(r->kc, need, r->new_blocks) != 0)
        return gn_errf(err, GN_ERANGE, "runner step: KV cache exhausted: the step needs %d more blocks, %d of %d free",
                       need, gn_kvcache_n_free(r->kc), gn_kvcache_n_blocks(r->kc));
    int taken = 0;
    for (int i = 0; i < n_items; i++) {
        gn_seq *s = items[i].seq;
        int nb = (s->len + items[i].n_tokens + bs - 1) / bs;
        r->old_nb[i] = s->n_blocks;
        while (s->n_blocks < nb) s->blocks[s->n_blocks++] = r->new_blocks[taken++];
    }
    int rc = run_chunks(r, items, n_items, out_host, err);
    if (rc) {
        /* Roll back: no sequence changes length or blocks. */
        for (int i = 0; i < n_items; i++) items[i].seq->n_blocks = r->old_nb[i];
        gn_kvcache_release(r->kc, r->new_blocks, need);
        return rc;
    }
    for (int i = 0; i < n_items; i++) items[i].seq->len += items[i].n_tokens;
    return 0;
}
