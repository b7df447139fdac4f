/* sampler.c — temperature / top-k / top-p / min-p sampling over a combined
 * score row (see sampler.h for the exact semantics and their order).
 *
 * The per-token work is a few passes over the row in kernels chosen at run
 * time (__builtin_cpu_supports, like backends/cpu), and no sort:
 *
 *   scan      NaN check, max and argmax (lowest id on ties), smallest finite
 *             score. Greedy stops here.
 *   weights   w(v) = E(d(v)) for the whole row, d(v) = (score(v) - s_max) · (1/T)
 *             in float, with the block / group sums below; optionally masked
 *             (min-p, a top-p cut) and tagged with top-p buckets.
 *   kth       the k-th largest score (a value: any method gives the same one).
 *   collect   the tokens past thresholds, in id order, for top-k.
 *
 * Paths: no top-k → weights (T only, min-p), or for top-p two weights passes
 * around a mass histogram (top_p_row); the draw then walks the sums. top-k →
 * kth + collect: a short list, filtered by top-p / min-p and drawn from in id
 * order. Filters see the score order: d is monotone in the score, so ties in
 * z = score / T are exactly ties in the score (as before this rewrite).
 *
 * Every kernel exists as plain C (the reference, always compiled) and as AVX2
 * code (the weights pass also as AVX-512: one block per vector) that evaluates
 * the same float operations in the same order, so they agree bit for bit and a seed gives the same tokens on every machine;
 * test_sampler compares them on a thousand random rows. Everything after the
 * kernels (top-p selection, min-p, the draw) is shared scalar code. The
 * reference calls libm's fmaf (correctly rounded everywhere), so it is slow
 * on CPUs without FMA; those are not serving targets.
 *
 * E(x) is exp(x) for x in [-87, 0]: Cody-Waite reduction x = k ln2 + r and
 * Cephes' degree-6 polynomial for e^r, written with explicit fmaf (FMA in the
 * AVX2 kernels). Relative error against exp(): 7.9e-8 at most over 40,000
 * points of [-87, 0] (test_sampler measures it and holds it below 2.5e-7).
 * E(0) = 1 exactly, so the argmax has weight 1. Tokens with d < -87 get weight
 * 0 and are dropped: their probability is below e^-87 ≈ 1.6e-38 times the
 * argmax's, far below the 2^-53 resolution of the draw, so they could never be
 * drawn anyway (the earlier double-precision code kept them down to e^-745).
 *
 * Sums: block b (ids 16b .. 16b+15) sums its 16 weights in double in a fixed
 * tree ((w_j + w_j+8), then + (j+4), + (j+2), + (j+1)); a group of 64 blocks
 * sums its block sums in order; the row total sums the groups in order. The
 * draw scales one uniform by the total and walks the same numbers: group,
 * then block, then token (no pass over the row, nothing sorted). Lists (top-k)
 * are summed in id order. */
#include "sampler.h"

#include <math.h>
#include <string.h>

#include "exp_neg.h"
#include "gn_alloc.h"
#include "kth_largest.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GN_SMP_X86 1
#include <immintrin.h>
#define GN_T256 __attribute__((target("avx2,fma")))
#define GN_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#endif

#define BLK 16           /* ids per block of the canonical sum */
#define GRP 64           /* blocks per group */
#define NB_ROW 1024      /* top-p buckets over the row's d range (first level) */
#define D_RANGE 64.0f    /* ... which spans at most [-D_RANGE, 0] (lower d: last bucket) */
#define TOPP_SORT_MAX 64  /* top-p sorts regions this small */
#define TOPP_BUCKETS 256  /* top-p histogram buckets per level (lists, regions) */
#define KTH_HEAP_MAX 4096 /* top-k up to this uses a heap, above a quickselect */

typedef struct cand {
    float s; /* score */
    float w; /* weight E(d), in (0, 1] */
    int32_t id;
} cand;

/* The row under the temperature: d(v) = (score[v] - smax) * invT. */
typedef struct row {
    const float *score;
    int n;
    float smax, invT;
    float smin; /* the smallest finite score */
} row;

/* What a weights pass does besides w = E(d). */
typedef struct wpass {
    float minp;   /* w below minp: 0 (min-p) */
    float sthr;   /* score below sthr: 0 (the top-p cut) */
    int reuse;    /* w already holds E(d) from an earlier pass on this row */
    uint16_t *bk; /* if set: each token's top-p bucket (bucket_of_d) */
    float bscale;
} wpass;

typedef struct kernels {
    void (*scan)(const float *x, int n, float *vmax, int *imax, float *vmin, int *nan);
    void (*weights)(const row *r, const wpass *o, float *w, double *bs, double *gs);
    int (*collect)(const row *r, float thr, float dmin, const float *w, cand *out);
    float (*kth)(float *heap, const float *x, int n, int k);
} kernels;

struct gn_sampler {
    int cap;        /* n_vocab the scratch is sized for */
    int which;      /* GN_SAMPLER_KERNELS_* in use */
    const kernels *k;
    float *w;       /* (nblk * BLK) weights of the last full-row pass, 0-padded */
    double *bs;     /* (nblk) block sums */
    double *gs;     /* (ngrp) group sums */
    uint16_t *bk;   /* (nblk * BLK) top-p bucket of each token */
    double *hist;   /* (4 * NB_ROW) top-p mass per bucket, 4 interleaved copies */
    float *heap;    /* (cap) top-k scratch */
    cand *c;        /* (cap) candidate list, id order */
    cand *r;        /* (cap) top-p region scratch */
    int32_t *ids;   /* (cap) result of gn_sampler_dist */
    double *probs;  /* (cap) */
    double *mass;   /* (TOPP_BUCKETS) top-p histogram */
};

gn_sampler_params gn_sampler_default_params(void) {
    gn_sampler_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 0;
    return p;
}

int gn_sampler_validate_params(const gn_sampler_params *p, gn_err *err) {
    if (!p)
        return gn_errf(err, GN_EINVAL, "sampler: no parameters");
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return gn_errf(err, GN_EINVAL, "temperature must be >= 0 (got %g)", (double)p->temperature);
    if (p->top_k < 0)
        return gn_errf(err, GN_EINVAL, "top_k must be >= 0 (got %d)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return gn_errf(err, GN_EINVAL, "top_p must be in (0, 1] (got %g)", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return gn_errf(err, GN_EINVAL, "min_p must be in [0, 1] (got %g)", (double)p->min_p);
    return 0;
}

/* ---- xoshiro256** seeded by SplitMix64 ---------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void gn_rng_seed(gn_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t gn_rng_next(gn_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double gn_rng_uniform(gn_rng *r) { return (double)(gn_rng_next(r) >> 11) * 0x1.0p-53; }

/* The top-p bucket of d: floor(-d * bscale), at most NB_ROW - 1. */
static inline int bucket_of_d(float d, float bscale) {
    float t = (0.0f - d) * bscale;
    t = t < (float)(NB_ROW - 1) ? t : (float)(NB_ROW - 1);
    return (int)t;
}

/* The block sum tree: (w_j + w_j+8), then + (j+4), + (j+2), + (j+1). */
static inline double block_sum(const float *w) {
    double a[8];
    for (int j = 0; j < 8; j++)
        a[j] = (double)w[j] + (double)w[j + 8];
    for (int j = 0; j < 4; j++)
        a[j] = a[j] + a[j + 4];
    for (int j = 0; j < 2; j++)
        a[j] = a[j] + a[j + 2];
    return a[0] + a[1];
}

/* ---- top-k: the k-th largest value (heap, or quickselect for large k) ---- */

static void heap_sift(float *h, int k, int i) { /* min-heap */
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < k && h[l] < h[m])
            m = l;
        if (l + 1 < k && h[l + 1] < h[m])
            m = l + 1;
        if (m == i)
            return;
        float t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_init(float *h, const float *x, int k) {
    memcpy(h, x, (size_t)k * sizeof *h);
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_sift(h, k, i);
}

static inline void heap_offer(float *h, int k, float x) {
    if (x > h[0]) { /* ties with the root change nothing */
        h[0] = x;
        heap_sift(h, k, 0);
    }
}

GN_DEFINE_KTH_LARGEST(kth_select, float)

/* ---- reference kernels (plain C) ---------------------------------------- */

/* The max and its lowest id, the smallest finite value (+inf if none) and
 * whether there is a NaN. */
static void scan_ref(const float *x, int n, float *vmax, int *imax, float *vmin, int *nan) {
    float bv = -INFINITY, lo = INFINITY;
    int bi = -1, bad = 0;
    for (int v = 0; v < n; v++) {
        if (x[v] != x[v])
            bad = 1;
        if (x[v] > bv) {
            bv = x[v];
            bi = v;
        }
        if (x[v] > -INFINITY && x[v] < lo)
            lo = x[v];
    }
    *vmax = bv;
    *imax = bi;
    *vmin = lo;
    *nan = bad;
}

/* w = E(d) (0 below GN_EXP_MIN, below o->minp or for a score below o->sthr)
 * for the whole row, padded to a whole block with 0; the block and group
 * sums; and, if o->bk, each token's bucket. */
static void weights_ref(const row *r, const wpass *o, float *w, double *bs, double *gs) {
    const int nb = (r->n + BLK - 1) / BLK;
    double g = 0.0;
    for (int b = 0; b < nb; b++) {
        float *wb = w + (size_t)b * BLK;
        for (int j = 0; j < BLK; j++) {
            int v = b * BLK + j;
            float s = v < r->n ? r->score[v] : -INFINITY;
            float d = (s - r->smax) * r->invT;
            float x = o->reuse ? wb[j] : d >= GN_EXP_MIN ? gn_exp_neg(d) : 0.0f;
            if (!(s >= o->sthr) || !(x >= o->minp))
                x = 0.0f;
            wb[j] = x;
            if (o->bk)
                o->bk[v] = (uint16_t)bucket_of_d(d, o->bscale);
        }
        bs[b] = block_sum(wb);
        if (b % GRP == 0)
            g = 0.0;
        g = g + bs[b];
        gs[b / GRP] = g;
    }
}

static int collect_ref(const row *r, float thr, float dmin, const float *w, cand *out) {
    int m = 0;
    for (int v = 0; v < r->n; v++) {
        float s = r->score[v];
        if (!(s >= thr))
            continue;
        float d = (s - r->smax) * r->invT;
        if (!(d >= dmin))
            continue;
        out[m].s = s;
        out[m].w = w ? w[v] : gn_exp_neg(d);
        out[m].id = v;
        m++;
    }
    return m;
}

static float kth_ref(float *heap, const float *x, int n, int k) {
    if (k > KTH_HEAP_MAX) {
        memcpy(heap, x, (size_t)n * sizeof *heap);
        return kth_select(heap, n, k);
    }
    heap_init(heap, x, k);
    for (int v = k; v < n; v++)
        heap_offer(heap, k, x[v]);
    return heap[0];
}

static const kernels kern_ref = {scan_ref, weights_ref, collect_ref, kth_ref};

/* ---- AVX2 kernels: the same operations, 8 lanes at a time ------------------ */

#ifdef GN_SMP_X86


/* d = (s - smax) * invT and w = E(d), 0 where d < GN_EXP_MIN. */
static inline GN_T256 __m256 weight8(__m256 s, __m256 smax, __m256 invT, __m256 *dout) {
    const __m256 lo = _mm256_set1_ps(GN_EXP_MIN);
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(s, smax), invT);
    *dout = d;
    __m256 ok = _mm256_cmp_ps(d, lo, _CMP_GE_OQ);
    return _mm256_and_ps(gn_exp_neg8(_mm256_max_ps(d, lo)), ok);
}

static GN_T256 void scan_avx2(const float *x, int n, float *vmax, int *imax, float *vmin,
                             int *nan) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY), pinf = _mm256_set1_ps(INFINITY);
    __m256 mx = ninf, mn = pinf, un = _mm256_setzero_ps();
    __m256i ix = _mm256_set1_epi32(-1), idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi32(8);
    int v = 0;
    for (; v + 8 <= n; v += 8) {
        __m256 a = _mm256_loadu_ps(x + v);
        un = _mm256_or_ps(un, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        mn = _mm256_min_ps(mn, _mm256_blendv_ps(pinf, a, _mm256_cmp_ps(a, ninf, _CMP_GT_OQ)));
        __m256 gt = _mm256_cmp_ps(a, mx, _CMP_GT_OQ); /* strict: a lane keeps its first max */
        mx = _mm256_blendv_ps(mx, a, gt);
        ix = _mm256_blendv_epi8(ix, idx, _mm256_castps_si256(gt));
        idx = _mm256_add_epi32(idx, step);
    }
    float lm[8], ln[8];
    int li[8];
    _mm256_storeu_ps(lm, mx);
    _mm256_storeu_ps(ln, mn);
    _mm256_storeu_si256((__m256i *)li, ix);
    float bv = -INFINITY, lo = INFINITY;
    int bi = -1, bad = _mm256_movemask_ps(un) != 0;
    for (int l = 0; l < 8; l++) { /* the max, and the lowest id among lanes holding it */
        if (li[l] >= 0 && (lm[l] > bv || (lm[l] == bv && li[l] < bi))) {
            bv = lm[l];
            bi = li[l];
        }
        lo = ln[l] < lo ? ln[l] : lo;
    }
    for (; v < n; v++) { /* tail ids are above every lane's */
        if (x[v] != x[v])
            bad = 1;
        if (x[v] > bv) {
            bv = x[v];
            bi = v;
        }
        if (x[v] > -INFINITY && x[v] < lo)
            lo = x[v];
    }
    *vmax = bv;
    *imax = bi;
    *vmin = lo;
    *nan = bad;
}

/* floor(-d * bscale) capped at NB_ROW - 1, as bucket_of_d, for 16 lanes. */
static inline GN_T256 __m256i buckets16(__m256 d0, __m256 d1, __m256 bscale) {
    const __m256 cap = _mm256_set1_ps((float)(NB_ROW - 1)), z = _mm256_setzero_ps();
    __m256i i0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(z, d0), bscale), cap));
    __m256i i1 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(z, d1), bscale), cap));
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(i0, i1), 0xD8);
}

static GN_T256 void weights_avx2(const row *r, const wpass *o, float *w, double *bs,
                                 double *gs) {
    const int nb = (r->n + BLK - 1) / BLK;
    const __m256 smax = _mm256_set1_ps(r->smax), invT = _mm256_set1_ps(r->invT);
    const __m256 vmin = _mm256_set1_ps(o->minp), vthr = _mm256_set1_ps(o->sthr);
    const __m256 vbs = _mm256_set1_ps(o->bscale);
    double g = 0.0;
    for (int b = 0; b < nb; b++) {
        const float *sp = r->score + (size_t)b * BLK;
        float tail[BLK];
        if (b * BLK + BLK > r->n) { /* last, partial block: pad with -inf (weight 0) */
            int have = r->n - b * BLK;
            for (int j = 0; j < BLK; j++)
                tail[j] = j < have ? sp[j] : -INFINITY;
            sp = tail;
        }
        __m256 d0, d1, s0 = _mm256_loadu_ps(sp), s1 = _mm256_loadu_ps(sp + 8), w0, w1;
        if (o->reuse) {
            w0 = _mm256_loadu_ps(w + (size_t)b * BLK);
            w1 = _mm256_loadu_ps(w + (size_t)b * BLK + 8);
            d0 = d1 = _mm256_setzero_ps();
        } else {
            w0 = weight8(s0, smax, invT, &d0);
            w1 = weight8(s1, smax, invT, &d1);
        }
        w0 = _mm256_and_ps(w0, _mm256_and_ps(_mm256_cmp_ps(s0, vthr, _CMP_GE_OQ),
                                             _mm256_cmp_ps(w0, vmin, _CMP_GE_OQ)));
        w1 = _mm256_and_ps(w1, _mm256_and_ps(_mm256_cmp_ps(s1, vthr, _CMP_GE_OQ),
                                             _mm256_cmp_ps(w1, vmin, _CMP_GE_OQ)));
        _mm256_storeu_ps(w + (size_t)b * BLK, w0);
        _mm256_storeu_ps(w + (size_t)b * BLK + 8, w1);
        if (o->bk)
            _mm256_storeu_si256((__m256i *)(o->bk + (size_t)b * BLK), buckets16(d0, d1, vbs));
        __m256d q0 = _mm256_cvtps_pd(_mm256_castps256_ps128(w0));
        __m256d q1 = _mm256_cvtps_pd(_mm256_extractf128_ps(w0, 1));
        __m256d q2 = _mm256_cvtps_pd(_mm256_castps256_ps128(w1));
        __m256d q3 = _mm256_cvtps_pd(_mm256_extractf128_ps(w1, 1));
        __m256d bb = _mm256_add_pd(_mm256_add_pd(q0, q2), _mm256_add_pd(q1, q3));
        __m128d c = _mm_add_pd(_mm256_castpd256_pd128(bb), _mm256_extractf128_pd(bb, 1));
        double sb = _mm_cvtsd_f64(_mm_add_sd(c, _mm_unpackhi_pd(c, c)));
        bs[b] = sb;
        if (b % GRP == 0)
            g = 0.0;
        g = g + sb;
        gs[b / GRP] = g;
    }
}

static GN_T256 int collect_avx2(const row *r, float thr, float dmin, const float *w, cand *out) {
    const __m256 smax = _mm256_set1_ps(r->smax), invT = _mm256_set1_ps(r->invT);
    const __m256 vthr = _mm256_set1_ps(thr), vdmin = _mm256_set1_ps(dmin);
    int m = 0, v = 0;
    for (; v + 8 <= r->n; v += 8) {
        __m256 s = _mm256_loadu_ps(r->score + v);
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(s, smax), invT);
        __m256 keep = _mm256_and_ps(_mm256_cmp_ps(s, vthr, _CMP_GE_OQ),
                                    _mm256_cmp_ps(d, vdmin, _CMP_GE_OQ));
        unsigned mask = (unsigned)_mm256_movemask_ps(keep);
        if (!mask)
            continue;
        float sv[8], wv[8];
        _mm256_storeu_ps(sv, s);
        if (w)
            _mm256_storeu_ps(wv, _mm256_loadu_ps(w + v));
        else
            _mm256_storeu_ps(wv, gn_exp_neg8(_mm256_max_ps(d, _mm256_set1_ps(GN_EXP_MIN))));
        while (mask) {
            int l = __builtin_ctz(mask);
            mask &= mask - 1;
            out[m].s = sv[l];
            out[m].w = wv[l];
            out[m].id = v + l;
            m++;
        }
    }
    row t = *r; /* the tail through the reference code (same operations) */
    t.score += v;
    t.n -= v;
    int mt = collect_ref(&t, thr, dmin, w ? w + v : NULL, out + m);
    for (int i = m; i < m + mt; i++)
        out[i].id += v;
    return m + mt;
}

static GN_T256 float kth_avx2(float *heap, const float *x, int n, int k) {
    if (k > KTH_HEAP_MAX)
        return kth_ref(heap, x, n, k);
    heap_init(heap, x, k);
    int v = k;
    for (; v + 8 <= n; v += 8) {
        __m256 a = _mm256_loadu_ps(x + v);
        unsigned mask = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(a, _mm256_set1_ps(heap[0]), _CMP_GT_OQ));
        while (mask) {
            int l = __builtin_ctz(mask);
            mask &= mask - 1;
            heap_offer(heap, k, x[v + l]);
        }
    }
    for (; v < n; v++)
        heap_offer(heap, k, x[v]);
    return heap[0];
}

/* ---- AVX-512: the weights pass, 16 lanes (one block) at a time ----------- */


static GN_T512 void weights_avx512(const row *r, const wpass *o, float *w, double *bs,
                                   double *gs) {
    const int nb = (r->n + BLK - 1) / BLK;
    const __m512 smax = _mm512_set1_ps(r->smax), invT = _mm512_set1_ps(r->invT);
    const __m512 lo = _mm512_set1_ps(GN_EXP_MIN), vmin = _mm512_set1_ps(o->minp);
    const __m512 vthr = _mm512_set1_ps(o->sthr), vbs = _mm512_set1_ps(o->bscale);
    const __m512 cap = _mm512_set1_ps((float)(NB_ROW - 1));
    double g = 0.0;
    for (int b = 0; b < nb; b++) {
        const int have = r->n - b * BLK;
        const __mmask16 in = (__mmask16)(have >= BLK ? 0xffffu : (1u << have) - 1u);
        /* the partial last block reads -inf past the row (weight 0), as the others */
        __m512 sv = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), in, r->score + (size_t)b * BLK);
        __m512 d = _mm512_mul_ps(_mm512_sub_ps(sv, smax), invT), wv;
        if (o->reuse)
            wv = _mm512_loadu_ps(w + (size_t)b * BLK);
        else
            wv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(d, lo, _CMP_GE_OQ),
                                     gn_exp_neg16(_mm512_max_ps(d, lo)));
        __mmask16 keep = _mm512_cmp_ps_mask(sv, vthr, _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(wv, vmin, _CMP_GE_OQ);
        wv = _mm512_maskz_mov_ps(keep, wv);
        _mm512_storeu_ps(w + (size_t)b * BLK, wv);
        if (o->bk) {
            __m512 t = _mm512_min_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), d), vbs), cap);
            _mm256_storeu_si256((__m256i *)(o->bk + (size_t)b * BLK),
                                _mm512_cvtepi32_epi16(_mm512_cvttps_epi32(t)));
        }
        __m512d a = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(wv)),
                                  _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                      _mm512_castps_pd(wv), 1))));
        __m256d bb = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
        __m128d c = _mm_add_pd(_mm256_castpd256_pd128(bb), _mm256_extractf128_pd(bb, 1));
        double sb = _mm_cvtsd_f64(_mm_add_sd(c, _mm_unpackhi_pd(c, c)));
        bs[b] = sb;
        if (b % GRP == 0)
            g = 0.0;
        g = g + sb;
        gs[b / GRP] = g;
    }
}

static const kernels kern_avx512 = {scan_avx2, weights_avx512, collect_avx2, kth_avx2};

static int have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static const kernels kern_avx2 = {scan_avx2, weights_avx2, collect_avx2, kth_avx2};

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int have_avx2(void) { return 0; }
static int have_avx512(void) { return 0; }
#endif

/* ---- sampler ------------------------------------------------------------ */

static const kernels *kernels_for(int which) {
#ifdef GN_SMP_X86
    if (which == GN_SAMPLER_KERNELS_AVX2)
        return &kern_avx2;
    if (which == GN_SAMPLER_KERNELS_AVX512)
        return &kern_avx512;
#endif
    (void)which;
    return &kern_ref;
}

int gn_sampler_set_kernels(gn_sampler *s, int which, gn_err *err) {
    if (which == GN_SAMPLER_KERNELS_AUTO)
        which = have_avx512()  ? GN_SAMPLER_KERNELS_AVX512
                : have_avx2() ? GN_SAMPLER_KERNELS_AVX2
                              : GN_SAMPLER_KERNELS_REF;
    if (which != GN_SAMPLER_KERNELS_REF && which != GN_SAMPLER_KERNELS_AVX2 &&
        which != GN_SAMPLER_KERNELS_AVX512)
        return gn_errf(err, GN_EINVAL, "sampler: unknown kernel set %d", which);
    if ((which == GN_SAMPLER_KERNELS_AVX2 && !have_avx2()) ||
        (which == GN_SAMPLER_KERNELS_AVX512 && !have_avx512()))
        return gn_errf(err, GN_EINVAL, "sampler: this CPU or build cannot run kernel set %d",
                       which);
    s->which = which;
    s->k = kernels_for(which);
    return 0;
}

int gn_sampler_kernels(const gn_sampler *s) { return s->which; }

gn_sampler *gn_sampler_create(int n_vocab, gn_err *err) {
    if (n_vocab <= 0) {
        gn_errf(err, GN_EINVAL, "sampler: n_vocab must be > 0 (got %d)", n_vocab);
        return NULL;
    }
    gn_sampler *s = gn_calloc(1, sizeof *s);
    if (!s)
        goto oom;
    size_t cap = (size_t)n_vocab, nb = (cap + BLK - 1) / BLK, ng = (nb + GRP - 1) / GRP;
    s->cap = n_vocab;
    s->w = gn_malloc(nb * BLK * sizeof *s->w);
    s->bs = gn_malloc(nb * sizeof *s->bs);
    s->gs = gn_malloc(ng * sizeof *s->gs);
    s->bk = gn_malloc(nb * BLK * sizeof *s->bk);
    s->hist = gn_malloc(4 * NB_ROW * sizeof *s->hist);
    s->heap = gn_malloc(cap * sizeof *s->heap);
    s->c = gn_malloc(cap * sizeof *s->c);
    s->r = gn_malloc(cap * sizeof *s->r);
    s->ids = gn_malloc(cap * sizeof *s->ids);
    s->probs = gn_malloc(cap * sizeof *s->probs);
    s->mass = gn_malloc(TOPP_BUCKETS * sizeof *s->mass);
    if (!s->w || !s->bs || !s->gs || !s->bk || !s->hist || !s->heap || !s->c || !s->r || !s->ids || !s->probs ||
        !s->mass)
        goto oom;
    gn_sampler_set_kernels(s, GN_SAMPLER_KERNELS_AUTO, NULL);
    return s;
oom:
    gn_sampler_free(s);
    gn_errf(err, GN_ENOMEM, "sampler: out of memory for %d candidates", n_vocab);
    return NULL;
}

void gn_sampler_free(gn_sampler *s) {
    if (!s)
        return;
    gn_free(s->w);
    gn_free(s->bs);
    gn_free(s->gs);
    gn_free(s->bk);
    gn_free(s->hist);
    gn_free(s->heap);
    gn_free(s->c);
    gn_free(s->r);
    gn_free(s->ids);
    gn_free(s->probs);
    gn_free(s->mass);
    gn_free(s);
}

/* The total order every filter uses: higher score first, then lower id.
 * (score / T keeps the order of the scores, and their ties.) */
static inline int before(const cand *a, const cand *b) {
    return a->s > b->s || (a->s == b->s && a->id < b->id);
}

static void insertion_sort(cand *c, int n) {
    for (int i = 1; i < n; i++) {
        cand x = c[i];
        int j = i - 1;
        while (j >= 0 && before(&x, &c[j])) {
            c[j + 1] = c[j];
            j--;
        }
        c[j + 1] = x;
    }
}

static inline int bucket_of(double zhi, double scale, float s) {
    double d = (zhi - (double)s) * scale;
    return d < (double)(TOPP_BUCKETS - 1) ? (int)d : TOPP_BUCKETS - 1;
}

/* top-p boundary without sorting the list: radix-style selection on the
 * score. A mass histogram (double, summed in list order) of the region that
 * holds the boundary (TOPP_BUCKETS equal score intervals, bucket 0 highest)
 * splits it into buckets surely kept (added to `above`), the one bucket where
 * the cumulative mass reaches the target (the next region) and buckets surely
 * cut. Each level shrinks the score range 256-fold and the region by at least
 * one token (the highest and the lowest score are in different buckets); a
 * region of at most TOPP_SORT_MAX tokens, or of one score, is sorted and
 * walked. Sets *bnd to the last kept token and returns 1, or returns 0 when
 * the list's mass runs out before the target. */
static int top_p_boundary(gn_sampler *s, const cand *c, int m, double above, double target,
                          cand *bnd) {
    cand *r = s->r;
    memcpy(r, c, (size_t)m * sizeof *r);
    int n = m;
    for (;;) {
        float zhi = -INFINITY, zlo = INFINITY;
        for (int i = 0; i < n; i++) {
            zhi = r[i].s > zhi ? r[i].s : zhi;
            zlo = r[i].s < zlo ? r[i].s : zlo;
        }
        if (n <= TOPP_SORT_MAX || !(zhi > zlo))
            break;
        const double scale = TOPP_BUCKETS / ((double)zhi - (double)zlo);
        double *mass = s->mass;
        memset(mass, 0, TOPP_BUCKETS * sizeof *mass);
        for (int i = 0; i < n; i++)
            mass[bucket_of(zhi, scale, r[i].s)] += r[i].w;
        int b = 0;
        for (; b < TOPP_BUCKETS; b++) {
            if (above + mass[b] >= target)
                break;
            above += mass[b];
        }
        if (b == TOPP_BUCKETS)
            return 0;
        int j = 0; /* the bucket becomes the region, in list order */
        for (int i = 0; i < n; i++)
            if (bucket_of(zhi, scale, r[i].s) == b)
                r[j++] = r[i];
        n = j;
    }
    insertion_sort(r, n);
    double cum = above;
    for (int i = 0; i < n; i++) {
        cum += r[i].w;
        if (cum >= target) {
            *bnd = r[i];
            return 1;
        }
    }
    return 0;
}

/* Keeps the tokens at or before bnd in the total order. */
static int keep_through(cand *c, int m, const cand *bnd) {
    int j = 0;
    for (int i = 0; i < m; i++)
        if (!before(bnd, &c[i]))
            c[j++] = c[i];
    return j;
}

static double list_total(const cand *c, int m) {
    double t = 0.0;
    for (int i = 0; i < m; i++)
        t += c[i].w;
    return t;
}

/* Validates, scans the row and sets up r. Returns 0, 1 when greedy (the token
 * in *amax), or a negative error. */
static int prepare(gn_sampler *s, const gn_sampler_params *p, const float *score, int n, row *r,
                   int *amax, gn_err *err) {
    int rc = gn_sampler_validate_params(p, err);
    if (rc)
        return rc;
    if (n <= 0 || n > s->cap)
        return gn_errf(err, GN_ERANGE, "sampler: row of %d scores (sampler sized for %d)", n,
                       s->cap);
    float smax, smin;
    int bi, nan;
    s->k->scan(score, n, &smax, &bi, &smin, &nan);
    if (nan)
        for (int v = 0; v < n; v++)
            if (score[v] != score[v])
                return gn_errf(err, GN_EINVAL, "sampler: score of token %d is NaN", v);
    if (bi < 0)
        return gn_errf(err, GN_EINVAL, "sampler: no token has a finite score");
    if (isinf(smax))
        return gn_errf(err, GN_EINVAL, "sampler: score of token %d is +inf", bi);
    *amax = bi;
    if (p->temperature == 0.0f)
        return 1; /* greedy: filters cannot move the argmax */
    float invT = 1.0f / p->temperature;
    r->score = score;
    r->n = n;
    r->smax = smax;
    r->smin = smin;
    r->invT = isinf(invT) ? 0x1.fffffep127f : invT; /* T below 2^-128 acts as 2^-128 */
    return 0;
}

/* Whether the draw works on the whole row (no top-k): then the weights
 * passes, the tree sums and the draw walk are all there is. */
static int row_path(const gn_sampler_params *p, int n) { return !(p->top_k > 0 && p->top_k < n); }

/* top-p over the whole row (no top-k), leaving the kept tokens' weights in
 * s->w with their sums, as a plain weights pass would. A first pass gives the
 * total and each token's bucket: NB_ROW equal slices of the row's d range
 * (bucket 0 is the top; d below -D_RANGE all go to the last). A mass
 * histogram (double, four interleaved copies added in a fixed order) finds
 * the bucket where the cumulative mass reaches the target; only that bucket's
 * tokens go through top_p_boundary. A second pass over the stored weights
 * then zeroes the tokens after the boundary (and those below min_p) and redoes
 * the sums; ties with the boundary's score but a higher id are zeroed last. */
static void top_p_row(gn_sampler *s, const gn_sampler_params *p, const row *r) {
    const int n = r->n, nb = (n + BLK - 1) / BLK, ng = (nb + GRP - 1) / GRP;
    float dlo = (r->smin - r->smax) * r->invT; /* the lowest finite d */
    dlo = dlo > -D_RANGE ? dlo : -D_RANGE;
    wpass o = {0.0f, -INFINITY, 0, s->bk, dlo < 0.0f ? (float)NB_ROW / (0.0f - dlo) : 1.0f};
    s->k->weights(r, &o, s->w, s->bs, s->gs);
    double total = 0.0;
    for (int g = 0; g < ng; g++)
        total += s->gs[g];
    const double target = (double)p->top_p * total;

    double *h = s->hist;
    memset(h, 0, 4 * NB_ROW * sizeof *h);
    int v = 0;
    for (; v + 4 <= n; v += 4) { /* four copies: no store-to-load chain on one bucket */
        h[s->bk[v]] += s->w[v];
        h[NB_ROW + s->bk[v + 1]] += s->w[v + 1];
        h[2 * NB_ROW + s->bk[v + 2]] += s->w[v + 2];
        h[3 * NB_ROW + s->bk[v + 3]] += s->w[v + 3];
    }
    for (; v < n; v++)
        h[s->bk[v]] += s->w[v];
    double above = 0.0;
    int b = 0;
    for (; b < NB_ROW; b++) {
        double mb = ((h[b] + h[NB_ROW + b]) + h[2 * NB_ROW + b]) + h[3 * NB_ROW + b];
        if (above + mb >= target)
            break;
        above += mb;
    }
    cand bnd = {-INFINITY, 0.0f, 0};
    int nr = 0;
    if (b < NB_ROW) { /* else the buckets fell short of the target by rounding: keep all */
        cand *reg = s->c; /* the bucket's tokens, in id order (at least one: its mass > 0) */
        const uint64_t ones = 0x0001000100010001ull, bb = ones * (uint64_t)b;
        for (v = 0; v < n; v += 4) { /* 4 buckets at a time: SWAR test for a zero half */
            uint64_t x;
            memcpy(&x, s->bk + v, sizeof x); /* bk is padded to whole blocks */
            x ^= bb;
            if (!((x - ones) & ~x & 0x8000800080008000ull))
                continue;
            for (int j = v; j < v + 4 && j < n; j++)
                if (s->bk[j] == b && s->w[j] > 0.0f) {
                    reg[nr].s = r->score[j];
                    reg[nr].w = s->w[j];
                    reg[nr].id = j;
                    nr++;
                }
        }
        if (!top_p_boundary(s, reg, nr, above, target, &bnd)) { /* rounding: keep the bucket */
            bnd = reg[0];
            for (int i = 1; i < nr; i++)
                if (before(&bnd, &reg[i]))
                    bnd = reg[i];
        }
    }
    o.minp = p->min_p;
    o.sthr = bnd.s;
    o.reuse = 1;
    o.bk = NULL;
    s->k->weights(r, &o, s->w, s->bs, s->gs);
    int dirty = -1; /* ties after the boundary: zero them, redo their blocks and groups */
    for (int i = 0; i < nr; i++) {
        const cand *t = &s->c[i];
        if (t->s == bnd.s && t->id > bnd.id && s->w[t->id] != 0.0f) {
            int bb = t->id / BLK;
            s->w[t->id] = 0.0f;
            s->bs[bb] = block_sum(s->w + (size_t)bb * BLK);
            dirty = bb / GRP;
        }
        if (dirty >= 0 && (i + 1 == nr || s->c[i + 1].id / (BLK * GRP) != dirty)) {
            double g = 0.0;
            for (int j = dirty * GRP; j < nb && j < (dirty + 1) * GRP; j++)
                g = g + s->bs[j];
            s->gs[dirty] = g;
            dirty = -1;
        }
    }
}

/* top-k (then top-p, min-p) as a candidate list in s->c, id order. Returns
 * its length (>= 1: the argmax is always kept). */
static int build_list(gn_sampler *s, const gn_sampler_params *p, const row *r) {
    cand *c = s->c, bnd;
    float thr = s->k->kth(s->heap, r->score, r->n, p->top_k);
    int m = s->k->collect(r, thr, GN_EXP_MIN, NULL, c);
    if (p->top_p < 1.0f &&
        top_p_boundary(s, c, m, 0.0, (double)p->top_p * list_total(c, m), &bnd))
        m = keep_through(c, m, &bnd);
    if (p->min_p > 0.0f) { /* w >= min_p: the argmax has w = 1 */
        int j = 0;
        for (int i = 0; i < m; i++)
            if (c[i].w >= p->min_p)
                c[j++] = c[i];
        m = j;
    }
    return m;
}

/* No top-k: the weights of the kept tokens in s->w and their sums; returns
 * the total. */
static double row_weights(gn_sampler *s, const gn_sampler_params *p, const row *r) {
    if (p->top_p < 1.0f) {
        top_p_row(s, p, r);
    } else {
        wpass o = {p->min_p, -INFINITY, 0, NULL, 1.0f};
        s->k->weights(r, &o, s->w, s->bs, s->gs);
    }
    const int ng = ((r->n + BLK - 1) / BLK + GRP - 1) / GRP;
    double total = 0.0;
    for (int g = 0; g < ng; g++)
        total += s->gs[g];
    return total;
}

static int last_positive(const float *w, int lo, int hi) {
    for (int v = hi - 1; v > lo; v--)
        if (w[v] > 0.0f)
            return v;
    return lo;
}

/* The draw over the weights pass: u in [0, total), walked through the group,
 * block and token sums (the same numbers that make up total). */
static int draw_row(const gn_sampler *s, int n, double u) {
    const int nb = (n + BLK - 1) / BLK, ng = (nb + GRP - 1) / GRP;
    double cum = 0.0;
    int g = 0;
    for (; g < ng; g++) {
        double next = cum + s->gs[g];
        if (u < next)
            break;
        cum = next;
    }
    if (g == ng) /* u within rounding of total */
        return last_positive(s->w, 0, n);
    u -= cum;
    cum = 0.0;
    int b = g * GRP, bend = b + GRP < nb ? b + GRP : nb;
    for (; b < bend; b++) {
        double next = cum + s->bs[b];
        if (u < next)
            break;
        cum = next;
    }
    if (b == bend)
        return last_positive(s->w, g * GRP * BLK, n < bend * BLK ? n : bend * BLK);
    u -= cum;
    cum = 0.0;
    int v = b * BLK, vend = v + BLK < n ? v + BLK : n;
    for (; v < vend; v++) {
        cum += s->w[v];
        if (u < cum)
            return v;
    }
    return last_positive(s->w, b * BLK, vend);
}

int gn_sampler_dist(gn_sampler *s, const gn_sampler_params *p, const float *score, int n,
                    const int32_t **ids, const double **probs, int *n_out, gn_err *err) {
    row r;
    int amax = 0, m = 0;
    int rc = prepare(s, p, score, n, &r, &amax, err);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        s->ids[0] = amax;
        s->probs[0] = 1.0;
        m = 1;
    } else if (row_path(p, n)) {
        double total = row_weights(s, p, &r);
        for (int v = 0; v < n; v++)
            if (s->w[v] > 0.0f) {
                s->ids[m] = v;
                s->probs[m++] = s->w[v] / total;
            }
    } else {
        m = build_list(s, p, &r);
        double total = list_total(s->c, m);
        for (int i = 0; i < m; i++) {
            s->ids[i] = s->c[i].id;
            s->probs[i] = s->c[i].w / total;
        }
    }
    *ids = s->ids;
    *probs = s->probs;
    *n_out = m;
    return 0;
}

int gn_sampler_sample(gn_sampler *s, const gn_sampler_params *p, gn_rng *rng, const float *score,
                      int n, gn_err *err) {
    row r;
    int amax = 0;
    int rc = prepare(s, p, score, n, &r, &amax, err);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return amax; /* greedy: no draw */
    if (row_path(p, n)) {
        double total = row_weights(s, p, &r);
        return draw_row(s, n, gn_rng_uniform(rng) * total);
    }
    int m = build_list(s, p, &r);
    double u = gn_rng_uniform(rng) * list_total(s->c, m), cum = 0.0;
    for (int i = 0; i < m; i++) {
        cum += s->c[i].w;
        if (u < cum)
            return s->c[i].id;
    }
    return s->c[m - 1].id; /* u within rounding of total */
}
