/* train_fwd.c — the forward pass with saved activations and its exact
 * backward pass, float32, parallel over the model's thread pool.
 *
 * Every kernel assigns each output element to exactly one task and sums in a
 * fixed order, so the results do not depend on the number of threads. */
#include <math.h>
#include <string.h>

#include "gn_alloc.h"
#include "train_internal.h"

/* ---- parallel helpers ------------------------------------------------------------ */

typedef struct par_ctx {
    void (*fn)(void *ctx, int lo, int hi);
    void *ctx;
    int n, chunk;
} par_ctx;

static void par_task(void *c, int task, int thread) {
    (void)thread;
    par_ctx *p = c;
    int lo = task * p->chunk, hi = lo + p->chunk < p->n ? lo + p->chunk : p->n;
    if (lo < hi) p->fn(p->ctx, lo, hi);
}

/* Calls fn(ctx, lo, hi) over [0, n) in chunks of at least `grain` items and
 * at least ~128k operations (`cost` per item), so that small jobs do not pay
 * the pool's dispatch (which costs more than they do). */
static void par_for(gn_train_model *m, int n, int grain, size_t cost, void (*fn)(void *, int, int),
                    void *ctx) {
    if (n <= 0) return;
    int nt = gn_pool_size(m->pool) * 4;
    int chunk = (n + nt - 1) / nt;
    size_t min_items = cost ? (131072 + cost - 1) / cost : 1;
    if ((size_t)grain < min_items) grain = min_items > (size_t)n ? n : (int)min_items;
    if (chunk < grain) chunk = grain;
    chunk = (chunk + 3) & ~3; /* blocks of 4 start at the same items whatever the threads */
    par_ctx p = {fn, ctx, n, chunk};
    int tasks = (n + chunk - 1) / chunk;
    if (tasks == 1) fn(ctx, 0, n);
    else gn_pool_run(m->pool, par_task, &p, tasks);
}

/* gn_pool_run, or a plain loop when the whole job is too small to share. */
static void run_tasks(gn_train_model *m, gn_pool_fn fn, void *ctx, int n_tasks, size_t cost) {
    if (cost < 262144 || n_tasks < 2) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
    } else {
        gn_pool_run(m->pool, fn, ctx, n_tasks);
    }
}

/* ---- matrix products ------------------------------------------------------------- */

/* The kernels below are plain C; on x86-64 GCC also compiles an AVX2+FMA
 * (x86-64-v3) and an AVX-512 (x86-64-v4) clone of each and picks one at load
 * time for the running CPU. The summation order is the same in every clone
 * up to FMA contraction, so a run is deterministic on a given machine. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define GN_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GN_KERNEL
#endif

typedef struct mm_ctx {
    float *y;        /* output */
    const float *x, *w, *b;
    int n, out, in;
    float alpha;     /* y += alpha · ... for the accumulating forms */
    int accumulate;
} mm_ctx;

static inline void mm_store(const struct mm_ctx *p, int n, int o, float s) {
    float *y = p->y + (size_t)n * p->out + o;
    float v = p->alpha * s + (p->b ? p->b[o] : 0.0f);
    *y = p->accumulate ? *y + v : v;
}

/* y[n, o] (=|+=) alpha · Σ_i x[n, i] w[o, i] (+ b[o]), rows [lo, hi) of n.
 * Blocks of 4 rows x 4 outputs (16 dot products share their loads); lo is a
 * multiple of 4 (par_for), so the blocking does not depend on the threads. */
GN_KERNEL static void mm_xwt_rows(void *c, int lo, int hi) {
    const mm_ctx *p = c;
    const int in = p->in, out = p->out;
    int n = lo;
    for (; n + 4 <= hi; n += 4) {
        const float *x0 = p->x + (size_t)n * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        int o = 0;
        for (; o + 4 <= out; o += 4) {
            const float *w0 = p->w + (size_t)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
            float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            for (int i = 0; i < in; i++) {
                float a0 = x0[i], a1 = x1[i], a2 = x2[i], a3 = x3[i];
                float b0 = w0[i], b1 = w1[i], b2 = w2[i], b3 = w3[i];
                s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
                s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
                s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
                s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
            }
            float s4[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13},
                              {s20, s21, s22, s23}, {s30, s31, s32, s33}};
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 4; j++) mm_store(p, n + r, o + j, s4[r][j]);
        }
        for (; o < out; o++) {
            const float *w0 = p->w + (size_t)o * in;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int i = 0; i < in; i++) {
                s0 += x0[i] * w0[i];
                s1 += x1[i] * w0[i];
                s2 += x2[i] * w0[i];
                s3 += x3[i] * w0[i];
            }
            mm_store(p, n, o, s0);
            mm_store(p, n + 1, o, s1);
            mm_store(p, n + 2, o, s2);
            mm_store(p, n + 3, o, s3);
        }
    }
    for (; n < hi; n++) {
        const float *x = p->x + (size_t)n * in;
        for (int o = 0; o < out; o++) {
            const float *w0 = p->w + (size_t)o * in;
            float s0 = 0;
            for (int i = 0; i < in; i++) s0 += x[i] * w0[i];
            mm_store(p, n, o, s0);
        }
    }
}

static void mm_xwt(gn_train_model *m, float *y, const float *x, const float *w, const float *b,
                   int n, int out, int in, float alpha, int accumulate) {
    mm_ctx c = {y, x, w, b, n, out, in, alpha, accumulate};
    par_for(m, n, 1, (size_t)out * in, mm_xwt_rows, &c);
}

/* dx[n, i] += alpha · Σ_o dy[n, o] w[o, i], rows [lo, hi). (y = dx, x = dy
 * here.) Blocks of 4 rows x 16 columns held in registers across the o loop. */
GN_KERNEL static void mm_dyw_rows(void *c, int lo, int hi) {
    const mm_ctx *p = c;
    const int in = p->in, out = p->out;
    const float al = p->alpha;
    int n = lo;
    for (; n + 4 <= hi; n += 4) {
        const float *d0 = p->x + (size_t)n * out, *d1 = d0 + out, *d2 = d1 + out, *d3 = d2 + out;
        float *x0 = p->y + (size_t)n * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        int i0 = 0;
        for (; i0 + 16 <= in; i0 += 16) {
            float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
            for (int o = 0; o < out; o++) {
                const float *w = p->w + (size_t)o * in + i0;
                float e0 = d0[o], e1 = d1[o], e2 = d2[o], e3 = d3[o];
                for (int i = 0; i < 16; i++) {
                    a0[i] += e0 * w[i];
                    a1[i] += e1 * w[i];
                    a2[i] += e2 * w[i];
                    a3[i] += e3 * w[i];
                }
            }
            for (int i = 0; i < 16; i++) {
                x0[i0 + i] += al * a0[i];
                x1[i0 + i] += al * a1[i];
                x2[i0 + i] += al * a2[i];
                x3[i0 + i] += al * a3[i];
            }
        }
        for (; i0 < in; i0++) {
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (int o = 0; o < out; o++) {
                float w = p->w[(size_t)o * in + i0];
                a0 += d0[o] * w;
                a1 += d1[o] * w;
                a2 += d2[o] * w;
                a3 += d3[o] * w;
            }
            x0[i0] += al * a0;
            x1[i0] += al * a1;
            x2[i0] += al * a2;
            x3[i0] += al * a3;
        }
    }
    for (; n < hi; n++) {
        const float *dy = p->x + (size_t)n * out;
        float *dx = p->y + (size_t)n * in;
        for (int i = 0; i < in; i++) {
            float a = 0;
            for (int o = 0; o < out; o++) a += dy[o] * p->w[(size_t)o * in + i];
            dx[i] += al * a;
        }
    }
}

static void mm_dyw(gn_train_model *m, float *dx, const float *dy, const float *w, int n, int out,
                   int in, float alpha) {
    mm_ctx c = {dx, dy, w, NULL, n, out, in, alpha, 1};
    par_for(m, n, 1, (size_t)out * in, mm_dyw_rows, &c);
}

/* dw[o, i] += alpha · Σ_n dy[n, o] x[n, i], rows [lo, hi) of o. (y = dw,
 * w = dy.) Blocks of 4 outputs x 16 columns held in registers across n. */
GN_KERNEL static void mm_dytx_rows(void *c, int lo, int hi) {
    const mm_ctx *p = c;
    const int in = p->in, out = p->out, N = p->n;
    const float al = p->alpha;
    int o = lo;
    for (; o + 4 <= hi; o += 4) {
        float *w0 = p->y + (size_t)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        int i0 = 0;
        for (; i0 + 16 <= in; i0 += 16) {
            float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
            for (int n = 0; n < N; n++) {
                const float *d = p->w + (size_t)n * out + o;
                const float *x = p->x + (size_t)n * in + i0;
                float e0 = d[0], e1 = d[1], e2 = d[2], e3 = d[3];
                for (int i = 0; i < 16; i++) {
                    a0[i] += e0 * x[i];
                    a1[i] += e1 * x[i];
                    a2[i] += e2 * x[i];
                    a3[i] += e3 * x[i];
                }
            }
            for (int i = 0; i < 16; i++) {
                w0[i0 + i] += al * a0[i];
                w1[i0 + i] += al * a1[i];
                w2[i0 + i] += al * a2[i];
                w3[i0 + i] += al * a3[i];
            }
        }
        for (; i0 < in; i0++) {
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (int n = 0; n < N; n++) {
                const float *d = p->w + (size_t)n * out + o;
                float x = p->x[(size_t)n * in + i0];
                a0 += d[0] * x;
                a1 += d[1] * x;
                a2 += d[2] * x;
                a3 += d[3] * x;
            }
            w0[i0] += al * a0;
            w1[i0] += al * a1;
            w2[i0] += al * a2;
            w3[i0] += al * a3;
        }
    }
    for (; o < hi; o++) {
        float *dw = p->y + (size_t)o * in;
        for (int i = 0; i < in; i++) {
            float a = 0;
            for (int n = 0; n < N; n++) a += p->w[(size_t)n * out + o] * p->x[(size_t)n * in + i];
            dw[i] += al * a;
        }
    }
}

static void mm_dytx(gn_train_model *m, float *dw, const float *dy, const float *x, int n, int out,
                    int in, float alpha) {
    mm_ctx c = {dw, x, dy, NULL, n, out, in, alpha, 1};
    par_for(m, out, 1, (size_t)n * in, mm_dytx_rows, &c);
}

/* db[o] += Σ_n dy[n, o] */
static void colsum_add(float *db, const float *dy, int n, int out) {
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) db[o] += dy[(size_t)r * out + o];
}

/* ---- linear with optional bias and LoRA ---------------------------------------- */

static void lin_fwd(gn_train_model *m, const tm_lin *f, float *y, const float *x, int n) {
    mm_xwt(m, y, x, f->w, f->b, n, f->out, f->in, 1.0f, 0);
    if (f->A) {
        mm_xwt(m, f->xa, x, f->A, NULL, n, f->r, f->in, 1.0f, 0);
        mm_xwt(m, y, f->xa, f->B, NULL, n, f->out, f->r, f->scale, 1);
    }
}

/* dx += dy · W (+ LoRA path); parameter gradients where trainable. dxa is (n, r) scratch. */
static void lin_bwd(gn_train_model *m, const tm_lin *f, float *dx, const float *dy, const float *x,
                    int n, float *dxa) {
    if (f->gw) mm_dytx(m, f->gw, dy, x, n, f->out, f->in, 1.0f);
    if (f->gb) colsum_add(f->gb, dy, n, f->out);
    mm_dyw(m, dx, dy, f->w, n, f->out, f->in, 1.0f);
    if (f->A) {
        mm_dytx(m, f->gB, dy, f->xa, n, f->out, f->r, f->scale);
        memset(dxa, 0, (size_t)n * (size_t)f->r * sizeof(float));
        mm_dyw(m, dxa, dy, f->B, n, f->out, f->r, f->scale);
        mm_dytx(m, f->gA, dxa, x, n, f->r, f->in, 1.0f);
        mm_dyw(m, dx, dxa, f->A, n, f->r, f->in, 1.0f);
    }
}

/* ---- RMSNorm --------------------------------------------------------------------- */

typedef struct rms_ctx {
    float *y, *r, *dx;
    const float *x, *w, *dy;
    int d;
    float eps;
} rms_ctx;

static void rms_fwd_rows(void *c, int lo, int hi) {
    const rms_ctx *p = c;
    for (int n = lo; n < hi; n++) {
        const float *x = p->x + (size_t)n * p->d;
        double ss = 0;
        for (int i = 0; i < p->d; i++) ss += (double)x[i] * x[i];
        float inv = (float)(1.0 / sqrt(ss / p->d + (double)p->eps));
        p->r[n] = inv;
        float *y = p->y + (size_t)n * p->d;
        for (int i = 0; i < p->d; i++) y[i] = x[i] * inv * p->w[i];
    }
}

/* y = x · r · w per row of d; r = 1 / sqrt(mean(x²) + eps) saved. y may alias x. */
static void rms_fwd(gn_train_model *m, float *y, float *r, const float *x, const float *w, int n,
                    int d, float eps) {
    rms_ctx c = {y, r, NULL, x, w, NULL, d, eps};
    par_for(m, n, 16, (size_t)d * 3, rms_fwd_rows, &c);
}

static void rms_bwd_rows(void *c, int lo, int hi) {
    const rms_ctx *p = c;
    const int d = p->d;
    for (int n = lo; n < hi; n++) {
        const float *x = p->x + (size_t)n * d, *dy = p->dy + (size_t)n * d;
        float *dx = p->dx + (size_t)n * d;
        const float r = p->r[n];
        double dot = 0;
        for (int i = 0; i < d; i++) dot += (double)dy[i] * p->w[i] * x[i];
        float k = (float)(dot * (double)r * r * r / d);
        for (int i = 0; i < d; i++) dx[i] += r * dy[i] * p->w[i] - x[i] * k;
    }
}

/* dx += ∂/∂x; gw += Σ_n dy · x · r. */
static void rms_bwd(gn_train_model *m, float *dx, float *gw, const float *dy, const float *x,
                    const float *r, const float *w, int n, int d) {
    rms_ctx c = {NULL, (float *)r, dx, x, w, dy, d, 0};
    par_for(m, n, 16, (size_t)d * 5, rms_bwd_rows, &c);
    if (gw)
        for (int row = 0; row < n; row++) {
            const float *xr = x + (size_t)row * d, *dyr = dy + (size_t)row * d;
            for (int i = 0; i < d; i++) gw[i] += dyr[i] * xr[i] * r[row];
        }
}

/* ---- RoPE ------------------------------------------------------------------------ */

typedef struct rope_ctx {
    float *x;
    const float *inv_freq;
    int T, n_heads, hd, inverse;
} rope_ctx;

static void rope_rows(void *c, int lo, int hi) {
    const rope_ctx *p = c;
    const int half = p->hd / 2;
    for (int n = lo; n < hi; n++) {
        int pos = n % p->T;
        for (int h = 0; h < p->n_heads; h++) {
            float *v = p->x + ((size_t)n * p->n_heads + h) * p->hd;
            for (int i = 0; i < half; i++) {
                float angle = (float)pos * p->inv_freq[i];
                float co = (float)cos((double)angle), si = (float)sin((double)angle);
                if (p->inverse) si = -si;
                float a = v[i], b = v[i + half];
                v[i] = a * co - b * si;
                v[i + half] = b * co + a * si;
            }
        }
    }
}

/* Rotates (N, n_heads, hd) in place by position n % T (inverse: the transpose,
 * which is the backward pass of the rotation). */
static void rope(gn_train_model *m, float *x, int n, int T, int n_heads, int inverse) {
    rope_ctx c = {x, m->inv_freq, T, n_heads, m->cfg.head_dim, inverse};
    par_for(m, n, 4, (size_t)n_heads * m->cfg.head_dim * 8, rope_rows, &c);
}

/* ---- attention ------------------------------------------------------------------- */

typedef struct att_ctx {
    const gn_train_model *m;
    tm_layer *L;
    float *datt, *dq, *dk, *dv; /* backward */
    int B, T;
    float scale;
} att_ctx;

static int att_lo(const gn_model_config *c, int t) {
    int w = c->sliding_window;
    return (w > 0 && t - w + 1 > 0) ? t - w + 1 : 0;
}

/* Task = (sequence, query head). */
static void att_fwd_task(void *cv, int task, int thread) {
    (void)thread;
    const att_ctx *c = cv;
    const gn_model_config *cfg = &c->m->cfg;
    const int Hq = cfg->n_heads, Hk = cfg->n_kv_heads, hd = cfg->head_dim, T = c->T;
    const int b = task / Hq, h = task % Hq, kh = h / (Hq / Hk);
    const size_t Qd = (size_t)Hq * hd, KVd = (size_t)Hk * hd;
    tm_layer *L = c->L;
    float *P = L->P + ((size_t)b * Hq + h) * (size_t)T * T;
    for (int t = 0; t < T; t++) {
        const float *q = L->aq + ((size_t)b * T + t) * Qd + (size_t)h * hd;
        float *pr = P + (size_t)t * T;
        int lo = att_lo(cfg, t);
        float mx = -INFINITY;
        for (int s = 0; s < T; s++) {
            if (s < lo || s > t) {
                pr[s] = 0;
                continue;
            }
            const float *k = L->ak + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
            float d = 0;
            for (int i = 0; i < hd; i++) d += q[i] * k[i];
            pr[s] = d * c->scale;
            if (pr[s] > mx) mx = pr[s];
        }
        double sum = 0;
        for (int s = lo; s <= t; s++) {
            pr[s] = expf(pr[s] - mx);
            sum += pr[s];
        }
        float inv = (float)(1.0 / sum);
        float *o = L->att + ((size_t)b * T + t) * Qd + (size_t)h * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int s = lo; s <= t; s++) {
            pr[s] *= inv;
            const float *v = L->av + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
            for (int i = 0; i < hd; i++) o[i] += pr[s] * v[i];
        }
    }
}

/* Task = (sequence, kv head): the query heads of its group write dk, dv. */
static void att_bwd_task(void *cv, int task, int thread) {
    (void)thread;
    const att_ctx *c = cv;
    const gn_model_config *cfg = &c->m->cfg;
    const int Hq = cfg->n_heads, Hk = cfg->n_kv_heads, hd = cfg->head_dim, T = c->T;
    const int b = task / Hk, kh = task % Hk, group = Hq / Hk;
    const size_t Qd = (size_t)Hq * hd, KVd = (size_t)Hk * hd;
    const tm_layer *L = c->L;
    float dP[T > 0 ? T : 1];
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        const float *P = L->P + ((size_t)b * Hq + h) * (size_t)T * T;
        for (int t = 0; t < T; t++) {
            const float *pr = P + (size_t)t * T;
            const float *dout = c->datt + ((size_t)b * T + t) * Qd + (size_t)h * hd;
            const float *q = L->aq + ((size_t)b * T + t) * Qd + (size_t)h * hd;
            float *dq = c->dq + ((size_t)b * T + t) * Qd + (size_t)h * hd;
            int lo = att_lo(cfg, t);
            double sum = 0;
            for (int s = lo; s <= t; s++) {
                const float *v = L->av + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
                float *dv = c->dv + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
                float d = 0;
                for (int i = 0; i < hd; i++) {
                    d += dout[i] * v[i];
                    dv[i] += pr[s] * dout[i];
                }
                dP[s] = d;
                sum += (double)pr[s] * d;
            }
            for (int s = lo; s <= t; s++) {
                float ds = pr[s] * (dP[s] - (float)sum) * c->scale;
                const float *k = L->ak + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
                float *dk = c->dk + ((size_t)b * T + s) * KVd + (size_t)kh * hd;
                for (int i = 0; i < hd; i++) {
                    dq[i] += ds * k[i];
                    dk[i] += ds * q[i];
                }
            }
        }
    }
}

/* ---- SwiGLU ---------------------------------------------------------------------- */

typedef struct glu_ctx {
    const float *g, *u, *da;
    float *a, *dg, *du;
    int f;
} glu_ctx;

static void glu_fwd_rows(void *cv, int lo, int hi) {
    const glu_ctx *c = cv;
    for (size_t i = (size_t)lo * c->f; i < (size_t)hi * c->f; i++) {
        float g = c->g[i];
        c->a[i] = g / (1.0f + expf(-g)) * c->u[i];
    }
}

static void glu_bwd_rows(void *cv, int lo, int hi) {
    const glu_ctx *c = cv;
    for (size_t i = (size_t)lo * c->f; i < (size_t)hi * c->f; i++) {
        float g = c->g[i], sg = 1.0f / (1.0f + expf(-g));
        c->du[i] = c->da[i] * g * sg;
        c->dg[i] = c->da[i] * c->u[i] * sg * (1.0f + g * (1.0f - sg));
    }
}

/* ---- log-softmax ----------------------------------------------------------------- */

typedef struct ls_ctx {
    float *logits, *logp;
    const float *dlogp;
    const int32_t *targets;
    int V;
} ls_ctx;

/* Turns each logits row into probabilities and writes the target's log-prob. */
static void ls_fwd_rows(void *cv, int lo, int hi) {
    const ls_ctx *c = cv;
    for (int n = lo; n < hi; n++) {
        float *l = c->logits + (size_t)n * c->V;
        float mx = -INFINITY;
        for (int v = 0; v < c->V; v++)
            if (l[v] > mx) mx = l[v];
        double sum = 0;
        for (int v = 0; v < c->V; v++) sum += exp((double)(l[v] - mx));
        float lse = mx + (float)log(sum);
        int t = c->targets[n];
        c->logp[n] = t >= 0 ? l[t] - lse : 0.0f;
        for (int v = 0; v < c->V; v++) l[v] = expf(l[v] - lse);
    }
}

/* probabilities -> dL/dlogits = dlogp · (onehot - p) in place. */
static void ls_bwd_rows(void *cv, int lo, int hi) {
    const ls_ctx *c = cv;
    for (int n = lo; n < hi; n++) {
        float *l = c->logits + (size_t)n * c->V;
        int t = c->targets[n];
        float d = t >= 0 ? c->dlogp[n] : 0.0f;
        if (d == 0.0f) {
            memset(l, 0, (size_t)c->V * sizeof(float));
            continue;
        }
        for (int v = 0; v < c->V; v++) l[v] = -d * l[v];
        l[t] += d;
    }
}

/* ---- scratch layout -------------------------------------------------------------- */

/* Carves the activation and backward buffers for N rows, T per sequence;
 * with `base` NULL only counts. Returns the number of floats. */
static size_t carve(gn_train_model *m, float *base, int B, int T) {
    const gn_model_config *c = &m->cfg;
    const size_t N = (size_t)B * T, D = c->dim, Qd = (size_t)c->n_heads * c->head_dim,
                 KVd = (size_t)c->n_kv_heads * c->head_dim, F = c->ffn_dim, V = c->n_vocab;
    size_t off = 0;
#define TAKE(ptr, cnt)                                       \
    do {                                                     \
        if (base) (ptr) = base + off;                        \
        off += ((size_t)(cnt) + 15) & ~(size_t)15;           \
    } while (0)
    for (int l = 0; l < c->n_layers; l++) {
        tm_layer *L = &m->layers[l];
        TAKE(L->x_in, N * D);
        TAKE(L->h1, N * D);
        TAKE(L->r1, N);
        TAKE(L->aq, N * Qd);
        TAKE(L->ak, N * KVd);
        TAKE(L->av, N * KVd);
        if (c->qk_norm) {
            TAKE(L->qlin, N * Qd);
            TAKE(L->klin, N * KVd);
            TAKE(L->qr, N * c->n_heads);
            TAKE(L->kr, N * c->n_kv_heads);
        } else if (base) {
            L->qlin = L->aq;
            L->klin = L->ak;
        }
        TAKE(L->P, (size_t)B * c->n_heads * (size_t)T * T);
        TAKE(L->att, N * Qd);
        TAKE(L->xmid, N * D);
        TAKE(L->h2, N * D);
        TAKE(L->r2, N);
        TAKE(L->g, N * F);
        TAKE(L->u, N * F);
        TAKE(L->a, N * F);
        tm_lin *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int k = 0; k < 7; k++)
            if (lins[k]->A) TAKE(lins[k]->xa, N * lins[k]->r);
            else if (base) lins[k]->xa = NULL;
    }
    TAKE(m->x_last, N * D);
    TAKE(m->hf, N * D);
    TAKE(m->rf, N);
    TAKE(m->logits, N * V);
    /* backward scratch: dx, dh (D), dq, datt (Qd), dk, dv (KVd), dg, du, da (F), dxa */
    size_t wide = (size_t)(m->lora_rank > 0 ? m->lora_rank : 1);
    TAKE(m->bwd, N * (2 * D + 3 * Qd + 3 * KVd + 3 * F + wide));
#undef TAKE
    return off;
}

int gn_train_forward(gn_train_model *m, const gn_train_batch *b, float *logp, gn_err *err) {
    const gn_model_config *c = &m->cfg;
    m->have_fwd = 0;
    if (b->n_seqs < 1 || b->seq_len < 1 || b->seq_len > c->max_pos)
        return gn_errf(err, GN_EINVAL, "batch of %d sequences x %d tokens (max_position %d)",
                       b->n_seqs, b->seq_len, c->max_pos);
    const int B = b->n_seqs, T = b->seq_len, N = B * T;
    for (int i = 0; i < N; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= c->n_vocab)
            return gn_errf(err, GN_EINVAL, "token %d at position %d out of range [0, %d)",
                           b->tokens[i], i, c->n_vocab);
        if (b->targets[i] < -1 || b->targets[i] >= c->n_vocab)
            return gn_errf(err, GN_EINVAL, "target %d at position %d out of range", b->targets[i], i);
    }
    size_t need = carve(m, NULL, B, T);
    if (need > m->act_cap) {
        gn_free_aligned(m->act);
        size_t bytes;
        if (gn_size_mul(need, sizeof(float), &bytes) || !(m->act = gn_malloc_aligned(bytes, 64))) {
            m->act = NULL;
            m->act_cap = 0;
            return gn_errf(err, GN_ENOMEM, "out of memory for activations (%zu floats)", need);
        }
        m->act_cap = need;
    }
    carve(m, m->act, B, T);
    m->batch = *b;
    const int D = c->dim, Hq = c->n_heads, Hk = c->n_kv_heads, hd = c->head_dim;
    const int Qd = Hq * hd, KVd = Hk * hd, F = c->ffn_dim;
    float *x = c->n_layers ? m->layers[0].x_in : m->x_last;
    for (int n = 0; n < N; n++)
        memcpy(x + (size_t)n * D, m->embed + (size_t)b->tokens[n] * D, (size_t)D * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        tm_layer *L = &m->layers[l];
        float *xout = l + 1 < c->n_layers ? m->layers[l + 1].x_in : m->x_last;
        rms_fwd(m, L->h1, L->r1, L->x_in, L->attn_norm.w, N, D, c->norm_eps);
        lin_fwd(m, &L->q, L->qlin, L->h1, N);
        lin_fwd(m, &L->k, L->klin, L->h1, N);
        lin_fwd(m, &L->v, L->av, L->h1, N);
        if (c->qk_norm) {
            rms_fwd(m, L->aq, L->qr, L->qlin, L->q_norm.w, N * Hq, hd, c->norm_eps);
            rms_fwd(m, L->ak, L->kr, L->klin, L->k_norm.w, N * Hk, hd, c->norm_eps);
        }
        rope(m, L->aq, N, T, Hq, 0);
        rope(m, L->ak, N, T, Hk, 0);
        att_ctx ac = {m, L, NULL, NULL, NULL, NULL, B, T, 1.0f / sqrtf((float)hd)};
        run_tasks(m, att_fwd_task, &ac, B * Hq, (size_t)B * Hq * T * T * hd);
        lin_fwd(m, &L->o, L->xmid, L->att, N);
        for (size_t i = 0; i < (size_t)N * D; i++) L->xmid[i] += L->x_in[i];
        rms_fwd(m, L->h2, L->r2, L->xmid, L->ffn_norm.w, N, D, c->norm_eps);
        lin_fwd(m, &L->gate, L->g, L->h2, N);
        lin_fwd(m, &L->up, L->u, L->h2, N);
        glu_ctx gc = {L->g, L->u, NULL, L->a, NULL, NULL, F};
        par_for(m, N, 4, (size_t)F * 8, glu_fwd_rows, &gc);
        lin_fwd(m, &L->down, xout, L->a, N);
        for (size_t i = 0; i < (size_t)N * D; i++) xout[i] += L->xmid[i];
    }
    (void)Qd;
    (void)KVd;
    rms_fwd(m, m->hf, m->rf, m->x_last, m->final_norm.w, N, D, c->norm_eps);
    mm_xwt(m, m->logits, m->hf, m->lm_head, NULL, N, c->n_vocab, D, 1.0f, 0);
    ls_ctx lc = {m->logits, logp, NULL, b->targets, c->n_vocab};
    par_for(m, N, 1, (size_t)c->n_vocab * 8, ls_fwd_rows, &lc);
    m->have_fwd = 1;
    return 0;
}

typedef struct emb_ctx {
    float *gembed;
    const float *dx;
    const int32_t *tokens;
    int N, D;
} emb_ctx;

/* Columns [lo, hi) of the embedding gradient: each column is one task's. */
static void emb_bwd_cols(void *cv, int lo, int hi) {
    const emb_ctx *c = cv;
    for (int n = 0; n < c->N; n++) {
        float *g = c->gembed + (size_t)c->tokens[n] * c->D;
        const float *d = c->dx + (size_t)n * c->D;
        for (int i = lo; i < hi; i++) g[i] += d[i];
    }
}

int gn_train_backward(gn_train_model *m, const float *dlogp, gn_err *err) {
    if (!m->have_fwd) return gn_errf(err, GN_EINVAL, "backward without a forward pass");
    m->have_fwd = 0; /* the logits buffer is consumed */
    const gn_model_config *c = &m->cfg;
    const gn_train_batch *b = &m->batch;
    const int B = b->n_seqs, T = b->seq_len, N = B * T;
    const int D = c->dim, Hq = c->n_heads, Hk = c->n_kv_heads, hd = c->head_dim;
    const size_t Qd = (size_t)Hq * hd, KVd = (size_t)Hk * hd, F = c->ffn_dim;
    float *dx = m->bwd, *dh = dx + (size_t)N * D, *dq = dh + (size_t)N * D, *datt = dq + N * Qd,
          *dk = datt + N * Qd, *dv = dk + N * KVd, *dg = dv + N * KVd, *du = dg + N * F,
          *da = du + N * F, *dql = da + N * F, *dkl = dql + N * Qd, *dxa = dkl + N * KVd;

    ls_ctx lc = {m->logits, NULL, dlogp, b->targets, c->n_vocab};
    par_for(m, N, 1, (size_t)c->n_vocab * 2, ls_bwd_rows, &lc);
    float *dlogits = m->logits;
    if (m->glm_head) mm_dytx(m, m->glm_head, dlogits, m->hf, N, c->n_vocab, D, 1.0f);
    memset(dh, 0, (size_t)N * D * sizeof(float));
    mm_dyw(m, dh, dlogits, m->lm_head, N, c->n_vocab, D, 1.0f);
    memset(dx, 0, (size_t)N * D * sizeof(float));
    rms_bwd(m, dx, m->final_norm.gw, dh, m->x_last, m->rf, m->final_norm.w, N, D);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        tm_layer *L = &m->layers[l];
        /* x_out = xmid + down(a): dx flows to xmid unchanged */
        memset(da, 0, (size_t)N * F * sizeof(float));
        lin_bwd(m, &L->down, da, dx, L->a, N, dxa);
        glu_ctx gc = {L->g, L->u, da, NULL, dg, du, (int)F};
        par_for(m, N, 4, F * 8, glu_bwd_rows, &gc);
        memset(dh, 0, (size_t)N * D * sizeof(float));
        lin_bwd(m, &L->gate, dh, dg, L->h2, N, dxa);
        lin_bwd(m, &L->up, dh, du, L->h2, N, dxa);
        rms_bwd(m, dx, L->ffn_norm.gw, dh, L->xmid, L->r2, L->ffn_norm.w, N, D);
        /* xmid = x_in + o(att) */
        memset(datt, 0, (size_t)N * Qd * sizeof(float));
        lin_bwd(m, &L->o, datt, dx, L->att, N, dxa);
        memset(dq, 0, (size_t)N * Qd * sizeof(float));
        memset(dk, 0, (size_t)N * KVd * sizeof(float));
        memset(dv, 0, (size_t)N * KVd * sizeof(float));
        att_ctx ac = {m, L, datt, dq, dk, dv, B, T, 1.0f / sqrtf((float)hd)};
        run_tasks(m, att_bwd_task, &ac, B * Hk, (size_t)B * Hq * T * T * hd * 2);
        rope(m, dq, N, T, Hq, 1);
        rope(m, dk, N, T, Hk, 1);
        const float *dqin = dq, *dkin = dk;
        if (c->qk_norm) {
            /* q/k hold norm·RoPE outputs; the norm backward needs the linear
             * outputs (qlin, klin) and the saved 1/RMS */
            memset(dql, 0, (size_t)N * Qd * sizeof(float));
            rms_bwd(m, dql, L->q_norm.gw, dq, L->qlin, L->qr, L->q_norm.w, N * Hq, hd);
            memset(dkl, 0, (size_t)N * KVd * sizeof(float));
            rms_bwd(m, dkl, L->k_norm.gw, dk, L->klin, L->kr, L->k_norm.w, N * Hk, hd);
            dqin = dql;
            dkin = dkl;
        }
        memset(dh, 0, (size_t)N * D * sizeof(float));
        lin_bwd(m, &L->q, dh, dqin, L->h1, N, dxa);
        lin_bwd(m, &L->k, dh, dkin, L->h1, N, dxa);
        lin_bwd(m, &L->v, dh, dv, L->h1, N, dxa);
        rms_bwd(m, dx, L->attn_norm.gw, dh, L->x_in, L->r1, L->attn_norm.w, N, D);
    }
    if (m->gembed) {
        emb_ctx ec = {m->gembed, dx, b->tokens, N, D};
        par_for(m, D, 8, (size_t)N, emb_bwd_cols, &ec);
    }
    return 0;
}
