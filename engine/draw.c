/* draw.c — the one draw of the next token (draw.h): exact mode on dense rows,
 * the certified draw on sparse rows.
 *
 * Dense rows go through gn_guidance_combine and the sampler unchanged, so the
 * tokens are the sampler's bit for bit; the log-probs are the double
 * log-sum-exp over the float score row that the coordinator always reported.
 *
 * Sparse rows. Per call, with the models whose coefficient c_m != 0 (the
 * "active" ones; c_0 = 1, c_{1+i} = weight_i / beta in float as guidance.c
 * computes it):
 *
 *   union     the listed ids, deduplicated through a stamp array (one epoch
 *             per call, so nothing of n_vocab size is cleared per call), then
 *             radix-sorted: the candidates C in increasing id order.
 *   models    one pass per active model over its list adds t = c_m x_m
 *             (float64; the product of two floats is exact) to its candidates
 *             and, in float, replays gn_guidance_combine's acc = acc + a x for
 *             the greedy identity; then one pass over C adds the missing
 *             model's upper bound hi_m (the larger of c_m row_min_m and
 *             c_m floor_m) to the candidates it does not list.
 *   classify  K: listed by every active model (the score s is exact); the
 *             others (partial) have ub = s_listed + Σ hi; the tail R = V \ C
 *             has ub_R = Σ_m hi_m and a mass bound (tail_log_mass).
 *   certify   per filter (below); the bound is M / (Z + M).
 *   need      what would settle it: the missing values, unless the tail
 *             alone would stop the proof whatever they are (tail_blocks).
 *   draw      one uniform scaled by the float64 total of the kept known
 *             weights, walked over them in increasing id order.
 *
 * Why TV(P, Q) <= M / (Z + M): when every filter keeps the same known tokens
 * in P (all tokens, exact scores) as in Q (known tokens only), P and Q differ
 * only by the unknown tokens P keeps, of total weight m <= M: P = (w_K, w_U) /
 * (Z + m), Q = (w_K, 0) / Z, and TV = m / (Z + m) <= M / (Z + M). Each filter
 * below checks that its known decisions cannot depend on the unknown scores:
 *   top-k  the k-th largest known score exceeds every unknown ub, so it is
 *          the k-th largest overall and no unknown token reaches it (m = 0);
 *   top-p  c_b >= p (Z_K + M_all) >= p Z puts the exact boundary at or before
 *          k_b, and c_{b-1} + (1 - p) M_all < p Z_K keeps the mass before k_b
 *          (at most c_{b-1} + m) below p Z = p (Z_K + m): the exact nucleus is
 *          k_1..k_b plus unknown tokens ranked before k_b (ub >= s(k_b));
 *   min-p  the largest known score is >= every unknown ub still in play, so it
 *          is the exact maximum (tokens cut earlier rank below a kept known
 *          token) and the threshold is exact; unknown tokens whose ub is below
 *          it are cut in P as well;
 *   greedy the float combine of the best known token beats a rigorous upper
 *          bound of every unknown token's float combine: the dense argmax.
 * The reported bound is for the draw; greedy reports 0 (its token is exact
 * mode's, bit for bit). */
#include "draw.h"

#include <math.h>
#include <string.h>

#include "gn_alloc.h"
#include "kth_largest.h"

/* Greedy: the float combine of n terms (a product and a sum rounded per model)
 * is within GREEDY_GAMMA_PER_MODEL · n_models · Σ|c_m x_m| of the exact sum
 * (2 roundings of 2^-24 per model, doubled for margin). */
#define GREEDY_GAMMA_PER_MODEL (4.0 * 0x1.0p-24)
/* Mass bounds are sums of exp() in double: widen them a hair. */
#define MASS_SLACK (1.0 + 1e-12)

typedef struct cand {
    double s;    /* Σ c_m x_m over the active models that list it */
    double ub;   /* Σ over the models that miss it of the high end of c_m x_m; once
                    classified, for a partial token its score's upper bound s + that
                    (+inf where the sum is NaN) */
    double ab;   /* greedy only: Σ |c_m x_m| (listed) + Σ |hi_m| (missing), its rounding bound */
    float f;     /* greedy only: acc = acc + a x in model order (gn_guidance_combine's rounding) */
    int32_t id;
    int32_t mark; /* the last model that listed it */
    int32_t nl;   /* active models that list it */
} cand;

struct gn_drawer {
    int n_vocab;
    gn_sampler *smp;
    float *score;      /* (n_vocab) the dense combined row */
    uint32_t *stamp;   /* (n_vocab) epoch of the call that saw the id */
    uint32_t epoch;
    int32_t *slot;     /* (n_vocab) id -> index in c (valid where stamped) */
    cand *c;           /* (n_vocab) candidates, id order */
    int32_t *tmp;      /* (n_vocab) union ids, radix scratch */
    int32_t *known;    /* (n_vocab) indices into c of the known tokens, id order */
    int32_t *part;     /* (n_vocab) indices of the partial tokens */
    int32_t *ord;      /* (n_vocab) sort scratch */
    int32_t *ord2;     /* (n_vocab) */
    double *w;         /* (n_vocab) weight per known token (parallel to known) */
    double *sel;       /* (n_vocab) top-k selection scratch */
    unsigned char *keep; /* (n_vocab) per known token */
    int32_t *miss;     /* (miss_cap) NEED_VALUES lists */
    size_t miss_cap;
    int32_t *dist_ids; /* (n_vocab) gn_draw_dist's Q */
    double *dist_p;
};

gn_draw_params gn_draw_default_params(void) {
    gn_draw_params p;
    memset(&p, 0, sizeof p);
    p.guidance = gn_guidance_default();
    p.sampling = gn_sampler_default_params();
    p.epsilon = 1e-6;
    p.want_logprob = 0;
    p.n_top = 0;
    p.logprob_tol = 1e-4;
    return p;
}

void gn_drawer_free(gn_drawer *d) {
    if (!d)
        return;
    gn_sampler_free(d->smp);
    gn_free(d->score);
    gn_free(d->stamp);
    gn_free(d->slot);
    gn_free(d->c);
    gn_free(d->tmp);
    gn_free(d->known);
    gn_free(d->part);
    gn_free(d->ord);
    gn_free(d->ord2);
    gn_free(d->w);
    gn_free(d->sel);
    gn_free(d->keep);
    gn_free(d->miss);
    gn_free(d->dist_ids);
    gn_free(d->dist_p);
    gn_free(d);
}

gn_drawer *gn_drawer_create(int n_vocab, gn_err *err) {
    if (n_vocab <= 0) {
        gn_errf(err, GN_EINVAL, "draw: n_vocab must be > 0 (got %d)", n_vocab);
        return NULL;
    }
    gn_drawer *d = gn_calloc(1, sizeof *d);
    if (!d)
        goto oom;
    const size_t n = (size_t)n_vocab;
    d->n_vocab = n_vocab;
    d->smp = gn_sampler_create(n_vocab, err);
    if (!d->smp) {
        gn_drawer_free(d);
        return NULL;
    }
    d->score = gn_malloc(n * sizeof *d->score);
    d->stamp = gn_calloc(n, sizeof *d->stamp);
    d->slot = gn_malloc(n * sizeof *d->slot);
    d->c = gn_malloc(n * sizeof *d->c);
    d->tmp = gn_malloc(n * sizeof *d->tmp);
    d->known = gn_malloc(n * sizeof *d->known);
    d->part = gn_malloc(n * sizeof *d->part);
    d->ord = gn_malloc(n * sizeof *d->ord);
    d->ord2 = gn_malloc(n * sizeof *d->ord2);
    d->w = gn_malloc(n * sizeof *d->w);
    d->sel = gn_malloc(n * sizeof *d->sel);
    d->keep = gn_malloc(n * sizeof *d->keep);
    d->miss_cap = 2 * n; /* more missing values than this: whole rows are cheaper */
    d->miss = gn_malloc(d->miss_cap * sizeof *d->miss);
    d->dist_ids = gn_malloc(n * sizeof *d->dist_ids);
    d->dist_p = gn_malloc(n * sizeof *d->dist_p);
    if (!d->score || !d->stamp || !d->slot || !d->c || !d->tmp || !d->known || !d->part ||
        !d->ord || !d->ord2 || !d->w || !d->sel || !d->keep || !d->miss || !d->dist_ids ||
        !d->dist_p)
        goto oom;
    d->epoch = 0;
    return d;
oom:
    gn_drawer_free(d);
    gn_errf(err, GN_ENOMEM, "draw: out of memory for %d columns", n_vocab);
    return NULL;
}

const float *gn_drawer_scores(const gn_drawer *d) { return d->score; }

/* ======================================================================== */
/* Dense rows: exact mode                                                    */
/* ======================================================================== */

double gn_draw_lse_top(const float *s, int n, int n_top, int32_t *top, int *n_out) {
    float mx = -INFINITY;
    for (int v = 0; v < n; v++)
        if (s[v] > mx)
            mx = s[v];
    double sum = 0;
    for (int v = 0; v < n; v++)
        sum += exp((double)s[v] - mx);
    int k = n_top < n ? n_top : n;
    int nt = 0;
    for (int v = 0; v < n && k > 0; v++) { /* insertion into the k best, ties to the lower id */
        if (nt == k && !(s[v] > s[top[nt - 1]]))
            continue;
        int pos = nt < k ? nt++ : k - 1;
        while (pos > 0 && s[v] > s[top[pos - 1]]) {
            top[pos] = top[pos - 1];
            pos--;
        }
        top[pos] = v;
    }
    *n_out = nt;
    return mx + log(sum);
}

/* What the coordinator reported before this module: logprob = score - lse. */
static void dense_logprobs(const float *sc, int n, int n_top, int32_t token, gn_draw_result *out) {
    const double lse = gn_draw_lse_top(sc, n, n_top, out->top_ids, &out->n_top);
    for (int i = 0; i < out->n_top; i++)
        out->top_logprobs[i] = (float)(sc[out->top_ids[i]] - lse);
    if (token >= 0)
        out->logprob = (float)(sc[token] - lse);
}

/* The sampler names the column of a NaN; the rows name the model. */
static int dense_error(const gn_draw_params *p, const gn_row_view *rows, const float *alpha, int n,
                       int rc, gn_err *err) {
    for (int m = 0; m <= p->guidance.n_arms; m++) {
        if (alpha[m] == 0.0f)
            continue;
        for (int v = 0; v < n; v++)
            if (rows[m].dense[v] != rows[m].dense[v])
                return gn_errf(err, GN_EINVAL, "draw: model %d: value of token %d is NaN", m, v);
    }
    if (err)
        gn_err_prefix(err, "draw: ");
    return rc;
}

static int draw_dense(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows,
                      const float *alpha, gn_rng *rng, int want_dist, const int32_t **ids,
                      const double **probs, int *n_out, gn_draw_result *out, gn_err *err) {
    const int n = d->n_vocab;
    const float *arm[GN_GUIDANCE_MAX_ARMS];
    for (int i = 0; i < p->guidance.n_arms; i++)
        arm[i] = rows[1 + i].dense;
    gn_guidance_combine(&p->guidance, rows[0].dense, arm, d->score, n);
    int tok;
    if (want_dist) {
        int rc = gn_sampler_dist(d->smp, &p->sampling, d->score, n, ids, probs, n_out, err);
        if (rc < 0)
            return dense_error(p, rows, alpha, n, rc, err);
        tok = (*ids)[0];
        if (p->sampling.temperature != 0.0f)
            tok = -1; /* a distribution, not a draw */
    } else {
        tok = gn_sampler_sample(d->smp, &p->sampling, rng, d->score, n, err);
        if (tok < 0)
            return dense_error(p, rows, alpha, n, tok, err);
    }
    out->status = GN_DRAW_DONE;
    out->token = tok;
    if (p->want_logprob || p->n_top > 0)
        dense_logprobs(d->score, n, p->n_top, tok, out);
    return 0;
}

/* ======================================================================== */
/* Sparse rows: the certified draw                                           */
/* ======================================================================== */

typedef struct mdl {
    int m;          /* model index: 0 base, 1 + i ARM i */
    float a;        /* the float coefficient (gn_guidance_combine's alpha) */
    double c;       /* the same, in double */
    double hi;      /* max c x over unlisted tokens: c floor (c > 0), c row_min (c < 0) */
    const gn_row_view *r;
} mdl;

/* Everything one sparse call knows. */
typedef struct sctx {
    mdl md[GN_DRAW_MAX_MODELS];
    int na;          /* active models */
    int nc, nk, np;  /* candidates, known, partial */
    long nR;         /* tail tokens (no model lists them) */
    int hpos, hneg;  /* models whose hi is +inf, -inf */
    double hfin;     /* Σ of the finite hi */
    double habs;     /* Σ |hi| (greedy's rounding bound for the tail) */
    double S;        /* the largest known score */
    double umax;     /* the largest ub of any unknown token (-inf if none) */
    double pmax;     /* the largest ub of a partial token (-inf if none) */
    double ubR;      /* the tail's ub */
    int has_unknown;
} sctx;

/* acc + a · x with the product and the sum rounded separately, as
 * gn_guidance_combine does (guidance.c's combine_ref: no FMA). Not inlined,
 * so that no caller's contraction setting can fuse it. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off"), noinline))
#elif defined(__clang__)
__attribute__((noinline))
#endif
static float combine_step(float acc, float a, float x) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
    float prod = a * x;
    return acc + prod;
}

/* ids[0..n) ascending (distinct, < 2^31): LSD radix sort on bytes, with the
 * passes the largest id needs; tmp is scratch of n. Short lists: insertion. */
static void sort_ids(int32_t *ids, int32_t *tmp, int n, int n_vocab) {
    if (n <= 48) {
        for (int i = 1; i < n; i++) {
            int32_t x = ids[i];
            int j = i - 1;
            while (j >= 0 && ids[j] > x) {
                ids[j + 1] = ids[j];
                j--;
            }
            ids[j + 1] = x;
        }
        return;
    }
    int32_t *src = ids, *dst = tmp;
    for (int shift = 0; shift < 32 && ((uint32_t)(n_vocab - 1) >> shift) != 0; shift += 8) {
        int cnt[257];
        memset(cnt, 0, sizeof cnt);
        for (int i = 0; i < n; i++)
            cnt[(((uint32_t)src[i] >> shift) & 255u) + 1]++;
        for (int b = 0; b < 256; b++)
            cnt[b + 1] += cnt[b];
        for (int i = 0; i < n; i++)
            dst[cnt[((uint32_t)src[i] >> shift) & 255u]++] = src[i];
        int32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != ids)
        memcpy(ids, src, (size_t)n * sizeof *ids);
}

/* The sampler's total order: higher score first, then lower id. */
static inline int before(const cand *c, int32_t a, int32_t b) {
    return c[a].s > c[b].s || (c[a].s == c[b].s && c[a].id < c[b].id);
}

/* Sorts candidate indices x[0..n) by the total order: bottom-up merge sort
 * with scratch y of n. */
static void sort_order(const cand *c, int32_t *x, int32_t *y, int n) {
    int32_t *src = x, *dst = y;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = before(c, src[j], src[i]) ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        int32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != x)
        memcpy(x, src, (size_t)n * sizeof *x);
}

GN_DEFINE_KTH_LARGEST(kth_largest, double)

/* log of an upper bound of Σ_{v in R} exp((s(v) - ref) / T): the smallest of
 *   (a) |R| · exp((ub_R - S) / T), every tail token at the tail's ub;
 *   (b) per carrier j (c_j > 0): Σ_R exp(e_j x_j) · Π_{m != j} max exp(e_m x_m),
 *       e_m = c_m / T, where max exp(e_m x_m) = exp(hi_m / T) and
 *         Σ_R exp(e_j x_j) <= exp(tail_lse_j + (e_j - 1) floor_j)  (e_j >= 1:
 *                               exp((e_j - 1) x) <= exp((e_j - 1) floor_j)),
 *         Σ_R exp(e_j x_j) <= |R|^(1 - e_j) exp(e_j tail_lse_j)  (0 < e_j < 1:
 *                               power mean, t -> t^e_j is concave),
 *       as Σ_R exp(x_j) <= exp(tail_lse_j) (R lies among j's unlisted tokens).
 * NaN (opposite infinities) means no bound from that term. */
static double tail_log_mass(const sctx *x, double T, double ref) {
    if (x->nR == 0)
        return -INFINITY;
    const double lr = log((double)x->nR);
    double best = lr + (x->ubR - ref) / T;
    if (best != best)
        best = INFINITY;
    for (int j = 0; j < x->na; j++) {
        const mdl *mj = &x->md[j];
        double tl = mj->r->tail.tail_lse;
        if (!(mj->c > 0.0) || tl == INFINITY)
            continue;
        /* Σ_{m != j} hi_m without inf - inf */
        int p = x->hpos - (mj->hi == INFINITY), q = x->hneg - (mj->hi == -INFINITY);
        double own = isfinite(mj->hi) ? mj->hi : 0.0;
        double rest = p && q ? NAN : p ? INFINITY : q ? -INFINITY : x->hfin - own;
        double e = mj->c / T, fl = mj->r->tail.floor, ls;
        if (e >= 1.0)
            ls = tl + (e == 1.0 ? 0.0 : (e - 1.0) * fl);
        else
            ls = (1.0 - e) * lr + e * tl;
        double v = ls + (rest - ref) / T;
        if (v == v && v < best)
            best = v;
    }
    return best;
}

/* The unknown tokens still in play after the filters so far. */
typedef struct play {
    int none;      /* top-k cut them all */
    double ub_min; /* top-p: ub >= this (could rank before the boundary) */
    double lw_min; /* min-p: (ub - S) / T >= this */
} play;

static inline int in_play(const play *pl, const sctx *x, double ub, double T) {
    return !pl->none && ub >= pl->ub_min && (ub - x->S) / T >= pl->lw_min;
}

/* Upper bound of the weight Σ exp((s - S) / T) of the unknown tokens in play.
 * cached: each partial token's exp((ub - S) / T) is in d->w already. */
static double unknown_mass(const gn_drawer *d, const sctx *x, const play *pl, double T,
                           double tail_lm, int cached) {
    if (pl->none)
        return 0.0;
    double m = 0.0;
    for (int i = 0; i < x->np; i++) {
        double ub = d->c[d->part[i]].ub;
        if (in_play(pl, x, ub, T))
            m += cached ? d->w[d->part[i]] : exp((ub - x->S) / T);
    }
    if (x->nR > 0 && in_play(pl, x, x->ubR, T))
        m += exp(tail_lm);
    return m * MASS_SLACK;
}

/* The largest ub of the unknown tokens in play. */
static double play_umax(const gn_drawer *d, const sctx *x, const play *pl, double T) {
    double u = -INFINITY;
    if (pl->none)
        return u;
    for (int i = 0; i < x->np; i++) {
        double ub = d->c[d->part[i]].ub;
        if (in_play(pl, x, ub, T) && ub > u)
            u = ub;
    }
    if (x->nR > 0 && in_play(pl, x, x->ubR, T) && x->ubR > u)
        u = x->ubR;
    return u;
}

/* T > 0: applies the filters to the known tokens (keep[] and w[], indexed
 * like c), returns 1 with *bound and *z (the kept weights' total, summed in id
 * order) when certified, 0 otherwise. *tail_lm: tail_log_mass(x, T). */
static int certify_sample(gn_drawer *d, const sctx *x, const gn_sampler_params *sp, double eps,
                          double *bound, double *zk_out, double *tail_lm_out) {
    const double T = sp->temperature;
    const int nk = x->nk;
    const int32_t *kn = d->known;
    const cand *c = d->c;
    double *w = d->w;
    unsigned char *keep = d->keep;
    const double tail_lm = *tail_lm_out = tail_log_mass(x, T, x->S);
    play pl = {0, -INFINITY, -INFINITY};
    for (int i = 0; i < nk; i++) {
        w[kn[i]] = exp((c[kn[i]].s - x->S) / T);
        keep[kn[i]] = 1;
    }
    for (int i = 0; i < x->np; i++) /* the partial tokens' bounds, once */
        w[d->part[i]] = exp((c[d->part[i]].ub - x->S) / T);
    if (sp->top_k > 0 && sp->top_k < d->n_vocab) {
        if (nk < sp->top_k)
            return 0;
        for (int i = 0; i < nk; i++)
            d->sel[i] = c[kn[i]].s;
        double sk = kth_largest(d->sel, nk, sp->top_k);
        if (x->has_unknown && !(sk > x->umax))
            return 0;
        for (int i = 0; i < nk; i++)
            keep[kn[i]] = c[kn[i]].s >= sk;
        pl.none = 1;
    }
    if (sp->top_p < 1.0f) {
        int m = 0;
        double zk = 0.0;
        for (int i = 0; i < nk; i++)
            if (keep[kn[i]]) {
                d->ord[m++] = kn[i];
                zk += w[kn[i]];
            }
        sort_order(c, d->ord, d->ord2, m);
        const double p = (double)sp->top_p, target = p * zk;
        double cum = 0.0, prev = 0.0;
        int b = m - 1;
        for (int i = 0; i < m; i++) {
            prev = cum;
            cum += w[d->ord[i]];
            if (cum >= target) {
                b = i;
                break;
            }
        }
        double mall = unknown_mass(d, x, &pl, T, tail_lm, 1);
        if (!(p * zk - prev > (1.0 - p) * mall) || !(cum >= p * (zk + mall)))
            return 0;
        for (int i = b + 1; i < m; i++)
            keep[d->ord[i]] = 0;
        pl.ub_min = c[d->ord[b]].s;
    }
    if (sp->min_p > 0.0f) {
        if (play_umax(d, x, &pl, T) > x->S)
            return 0;
        for (int i = 0; i < nk; i++)
            if (keep[kn[i]] && !(w[kn[i]] >= (double)sp->min_p))
                keep[kn[i]] = 0;
        pl.lw_min = log((double)sp->min_p);
    }
    double z = 0.0;
    for (int i = 0; i < nk; i++)
        if (keep[kn[i]])
            z += w[kn[i]];
    double mm = unknown_mass(d, x, &pl, T, tail_lm, 1);
    double bd = mm > 0.0 ? mm / (z + mm) : 0.0;
    if (!(z > 0.0) || !(bd <= eps))
        return 0;
    *bound = bd;
    *zk_out = z;
    return 1;
}

/* Greedy: a rigorous upper bound of the float combine of a token whose score
 * is at most ub, with rounding bound ab. */
static inline double greedy_fub(double ub, double ab, double gamma) {
    return ub == -INFINITY ? -INFINITY : ub + gamma * ab + 1e-30;
}

/* Greedy: the best known token by its float combine (ties: lower id), if it
 * beats every unknown token's float combine for sure. Returns its index in
 * known[] or -1. */
static int certify_greedy(const gn_drawer *d, const sctx *x) {
    int best = -1;
    float bf = -INFINITY;
    for (int i = 0; i < x->nk; i++) {
        float f = d->c[d->known[i]].f;
        if (best < 0 || f > bf) {
            best = i;
            bf = f;
        }
    }
    if (best < 0)
        return -1;
    const double gamma = GREEDY_GAMMA_PER_MODEL * (x->na + 1);
    /* f(u) <= Σ_m (t_m + gamma |t_m|) <= Σ_m (hi_m + gamma |hi_m|): t + gamma |t| grows with t */
    for (int i = 0; i < x->np; i++) {
        const cand *c = &d->c[d->part[i]];
        if (!((double)bf > greedy_fub(c->ub, c->ab, gamma)))
            return -1;
    }
    if (x->nR > 0 && !((double)bf > greedy_fub(x->ubR, x->habs, gamma)))
        return -1;
    return best;
}

/* Log-probs at T = 1 without filters: logprob(v) = s(v) - lse with lse the
 * log of the KNOWN mass (S + log Z_K). The true lse lies in
 * [S + log Z_K, S + log(Z_K + M_1)]; reporting the low end keeps the numbers
 * those of the known distribution (exact when the unknown mass is nil, and the
 * mass bounds are usually far above the real unknown mass, so the real error
 * is far below the certified log(1 + M_1 / Z_K) <= tol). The top n must be
 * provably the top n: the n-th known score above every unknown ub.
 * t1: certify_sample ran at T = 1, so w[] holds exp(s - S) (exp(ub - S) for
 * the partial tokens) and tail_lm1 is tail_log_mass(x, 1): reused. */
static int certify_logprobs(gn_drawer *d, const sctx *x, const gn_draw_params *p, int t1,
                            double tail_lm1, gn_draw_result *out, double *lse_out) {
    double z = 0.0;
    for (int i = 0; i < x->nk; i++)
        z += t1 ? d->w[d->known[i]] : exp(d->c[d->known[i]].s - x->S);
    play all = {0, -INFINITY, -INFINITY};
    double m1 = unknown_mass(d, x, &all, 1.0, t1 ? tail_lm1 : tail_log_mass(x, 1.0, x->S), t1);
    if (!(z > 0.0) || !(log1p(m1 / z) <= p->logprob_tol))
        return 0;
    const double lse = x->S + log(z);
    int k = p->n_top < d->n_vocab ? p->n_top : d->n_vocab;
    if (k > x->nk)
        return 0;
    int32_t top[GN_DRAW_MAX_TOP];
    int nt = 0;
    for (int i = 0; i < x->nk && k > 0; i++) { /* id order: strict > keeps the lower id first */
        int32_t ci = d->known[i];
        if (nt == k && !before(d->c, ci, top[nt - 1]))
            continue;
        int pos = nt < k ? nt++ : k - 1;
        while (pos > 0 && before(d->c, ci, top[pos - 1])) {
            top[pos] = top[pos - 1];
            pos--;
        }
        top[pos] = ci;
    }
    if (nt > 0 && x->has_unknown && !(d->c[top[nt - 1]].s > x->umax))
        return 0;
    out->n_top = nt;
    for (int i = 0; i < nt; i++) {
        out->top_ids[i] = d->c[top[i]].id;
        out->top_logprobs[i] = (float)(d->c[top[i]].s - lse);
    }
    *lse_out = lse;
    return 1;
}

static int check_tail(const gn_row_view *r, int m, int n_vocab, gn_err *err) {
    const gn_row_tail *t = &r->tail;
    if (r->n < 0 || r->n > n_vocab)
        return gn_errf(err, GN_ERANGE, "draw: model %d lists %d tokens (n_vocab %d)", m, r->n,
                       n_vocab);
    if (r->n > 0 && (!r->ids || !r->vals))
        return gn_errf(err, GN_EINVAL, "draw: model %d: sparse row without ids or values", m);
    if (t->floor != t->floor || t->row_min != t->row_min || t->tail_lse != t->tail_lse)
        return gn_errf(err, GN_EINVAL, "draw: model %d: NaN in the row's tail bounds", m);
    if (t->floor == INFINITY || t->row_min == INFINITY)
        return gn_errf(err, GN_EINVAL, "draw: model %d: +inf floor or row_min", m);
    if (r->n < n_vocab && t->row_min > t->floor)
        return gn_errf(err, GN_EINVAL, "draw: model %d: row_min %g above floor %g", m,
                       (double)t->row_min, (double)t->floor);
    return 0;
}

/* The k-th largest score the known tokens could have once the partial ones
 * are known (each at most its ub). */
static double kth_resolved(gn_drawer *d, const sctx *x, int k) {
    for (int i = 0; i < x->nk; i++)
        d->sel[i] = d->c[d->known[i]].s;
    for (int i = 0; i < x->np; i++)
        d->sel[x->nk + i] = d->c[d->part[i]].ub;
    return kth_largest(d->sel, x->nc, k);
}

/* At temperature t, relative to So: *zo, the largest mass the known tokens
 * can have once the partial ones are known (each at its ub), and *tm, the
 * tail's mass bound. */
static void resolved_masses(const gn_drawer *d, const sctx *x, double t, double So, double *zo,
                            double *tm) {
    double z = 0.0;
    for (int i = 0; i < x->nk; i++)
        z += exp((d->c[d->known[i]].s - So) / t);
    for (int i = 0; i < x->np; i++)
        z += exp((d->c[d->part[i]].ub - So) / t);
    *zo = z;
    *tm = exp(tail_log_mass(x, t, So)) * MASS_SLACK;
}

/* Whether the tail alone stops the proof whatever values the partial tokens
 * turn out to have: once they are fetched every candidate is known and the
 * tail R (its ub_R and mass bound unchanged) is the only unknown. With each
 * partial token somewhere at or below its ub, the known tokens then have a
 * largest score S' <= So = max(S, pmax), a mass at most Zo (the known weights
 * plus every partial one at its ub) and a k-th largest score at most
 * kth_resolved; every test below fails for all such outcomes, so only whole
 * rows can settle the draw and a fetch of values would be wasted. (Sufficient,
 * not necessary: 0 promises nothing.) */
static int tail_blocks(gn_drawer *d, const sctx *x, const gn_draw_params *p) {
    if (x->nR == 0)
        return 0;
    const double So = x->S > x->pmax ? x->S : x->pmax;
    if (So == -INFINITY)
        return 1; /* no known token will have a finite score */
    if (So == INFINITY)
        return 0;
    const gn_sampler_params *sp = &p->sampling;
    const double T = sp->temperature;
    double zo = 0.0, tm = 0.0;
    if (T > 0.0) {
        resolved_masses(d, x, T, So, &zo, &tm);
        if (sp->top_k > 0 && sp->top_k < d->n_vocab) { /* top-k cuts the tail or fails */
            if (x->nc < sp->top_k || x->ubR >= kth_resolved(d, x, sp->top_k))
                return 1;
        } else {
            int in_play = 1; /* the tail surely stays among the tokens P keeps */
            if (sp->top_p < 1.0f) {
                const double pp = (double)sp->top_p;
                if (!(pp * zo > (1.0 - pp) * tm) || !((1.0 - pp) * zo >= pp * tm))
                    return 1;
                in_play = x->ubR >= So; /* ranks at or before the nucleus boundary */
            }
            if (in_play && sp->min_p > 0.0f) {
                if (x->ubR > So)
                    return 1; /* the maximum could not be proved exact */
                in_play = (x->ubR - So) / T >= log((double)sp->min_p);
            }
            if (in_play && !(tm / (zo + tm) <= p->epsilon))
                return 1;
        }
    } else {
        const double gamma = GREEDY_GAMMA_PER_MODEL * (x->na + 1);
        double bo = -INFINITY; /* the best float combine a known token could have */
        for (int i = 0; i < x->nk; i++)
            if (d->c[d->known[i]].f > bo)
                bo = d->c[d->known[i]].f;
        for (int i = 0; i < x->np; i++) {
            const cand *c = &d->c[d->part[i]];
            double f = greedy_fub(c->ub, c->ab, gamma);
            if (f > bo)
                bo = f;
        }
        if (!(bo > greedy_fub(x->ubR, x->habs, gamma)))
            return 1;
    }
    if (p->want_logprob || p->n_top > 0) { /* at T = 1, no filters */
        if (T != 1.0)
            resolved_masses(d, x, 1.0, So, &zo, &tm);
        const int k = p->n_top < d->n_vocab ? p->n_top : d->n_vocab;
        if (!(log1p(tm / zo) <= p->logprob_tol) || k > x->nc ||
            (k > 0 && x->ubR >= kth_resolved(d, x, k)))
            return 1;
    }
    return 0;
}

/* NEED_VALUES lists (sorted: c is in id order) or, when they would not fit or
 * the tail would still stop the proof, NEED_ROWS. */
static void need(gn_drawer *d, const sctx *x, const gn_draw_params *p, gn_draw_result *out) {
    if (x->np > 0 && !tail_blocks(d, x, p)) {
        size_t used = 0;
        int fits = 1;
        for (int i = 0; i < x->na && fits; i++) {
            const mdl *md = &x->md[i];
            for (int j = 0; j < md->r->n; j++)
                d->c[d->slot[md->r->ids[j]]].mark = md->m;
            int32_t *dst = d->miss + used;
            int cnt = 0;
            for (int k = 0; k < x->nc; k++)
                if (d->c[k].mark != md->m) {
                    if (used + (size_t)cnt >= d->miss_cap) {
                        fits = 0;
                        break;
                    }
                    dst[cnt++] = d->c[k].id;
                }
            out->n_missing[md->m] = cnt;
            out->missing[md->m] = cnt ? dst : NULL;
            used += (size_t)cnt;
        }
        if (fits) {
            out->status = GN_DRAW_NEED_VALUES;
            return;
        }
        memset(out->n_missing, 0, sizeof out->n_missing);
        memset(out->missing, 0, sizeof out->missing);
    }
    out->status = GN_DRAW_NEED_ROWS;
    for (int i = 0; i < x->na; i++)
        out->need_rows[x->md[i].m] = 1;
}

static int draw_sparse(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows,
                       const float *alpha, gn_rng *rng, int want_dist, const int32_t **ids,
                       const double **probs, int *n_out, gn_draw_result *out, gn_err *err) {
    const int n_vocab = d->n_vocab;
    sctx x;
    x.na = x.hpos = x.hneg = 0;
    x.hfin = x.habs = 0.0;
    for (int m = 0; m <= p->guidance.n_arms; m++) {
        if (alpha[m] == 0.0f)
            continue;
        mdl *md = &x.md[x.na++];
        md->m = m;
        md->a = alpha[m];
        md->c = (double)alpha[m];
        md->r = &rows[m];
        int rc = check_tail(md->r, m, n_vocab, err);
        if (rc)
            return rc;
        md->hi = md->c * (double)(md->c > 0.0 ? md->r->tail.floor : md->r->tail.row_min);
        x.hpos += md->hi == INFINITY;
        x.hneg += md->hi == -INFINITY;
        if (isfinite(md->hi))
            x.hfin += md->hi;
        x.habs += fabs(md->hi);
    }

    /* the union C, in id order */
    if (++d->epoch == 0) {
        memset(d->stamp, 0, (size_t)n_vocab * sizeof *d->stamp);
        d->epoch = 1;
    }
    const uint32_t ep = d->epoch;
    int nc = 0;
    for (int i = 0; i < x.na; i++) {
        const gn_row_view *r = x.md[i].r;
        for (int j = 0; j < r->n; j++) {
            int32_t id = r->ids[j];
            if (id < 0 || id >= n_vocab)
                return gn_errf(err, GN_ERANGE, "draw: model %d lists token %d, outside [0, %d)",
                               x.md[i].m, (int)id, n_vocab);
            if (d->stamp[id] != ep) {
                d->stamp[id] = ep;
                d->tmp[nc++] = id;
            }
        }
    }
    /* sort in place through known[] as scratch */
    sort_ids(d->tmp, d->known, nc, n_vocab);
    for (int k = 0; k < nc; k++) {
        cand *c = &d->c[k];
        c->s = c->ub = c->ab = 0.0;
        c->f = 0.0f;
        c->id = d->tmp[k];
        c->mark = -1;
        c->nl = 0;
        d->slot[c->id] = k;
    }

    /* the models' values, then their bounds where they lack one (the float
     * replay and the rounding bound only for greedy, the one reader) */
    const int greedy = p->sampling.temperature == 0.0f;
    for (int i = 0; i < x.na; i++) {
        const mdl *md = &x.md[i];
        const gn_row_view *r = md->r;
        for (int j = 0; j < r->n; j++) {
            int32_t id = r->ids[j];
            float v = r->vals[j];
            if (v != v)
                return gn_errf(err, GN_EINVAL, "draw: model %d: value of token %d is NaN", md->m,
                               (int)id);
            if (v == INFINITY)
                return gn_errf(err, GN_EINVAL, "draw: model %d: value of token %d is +inf",
                               md->m, (int)id);
            cand *c = &d->c[d->slot[id]];
            if (c->mark == md->m)
                return gn_errf(err, GN_EINVAL, "draw: model %d lists token %d twice", md->m,
                               (int)id);
            c->mark = md->m;
            c->nl++;
            double t = md->c * (double)v;
            c->s += t;
            if (greedy) {
                c->ab += fabs(t);
                c->f = md->m == 0 ? v : combine_step(c->f, md->a, v);
            }
        }
        if (r->n < nc)
            for (int k = 0; k < nc; k++) {
                cand *c = &d->c[k];
                if (c->mark != md->m) {
                    c->ub += md->hi;
                    if (greedy)
                        c->ab += fabs(md->hi);
                }
            }
    }

    /* known / partial / tail */
    x.nc = nc;
    x.nk = x.np = 0;
    x.S = x.umax = x.pmax = -INFINITY;
    for (int k = 0; k < nc; k++) {
        cand *c = &d->c[k];
        if (c->nl == x.na) {
            if (c->s != c->s)
                return gn_errf(err, GN_EINVAL, "draw: score of token %d is NaN", (int)c->id);
            if (c->s == INFINITY)
                return gn_errf(err, GN_EINVAL, "draw: score of token %d is +inf", (int)c->id);
            d->known[x.nk++] = k;
            if (c->s > x.S)
                x.S = c->s;
        } else {
            d->part[x.np++] = k;
            c->ub += c->s;
            if (c->ub != c->ub)
                c->ub = INFINITY;
            if (c->ub > x.pmax)
                x.pmax = c->ub;
        }
    }
    x.nR = (long)n_vocab - nc;
    x.ubR = x.hpos ? INFINITY : x.hneg ? -INFINITY : x.hfin;
    x.umax = x.nR > 0 && x.ubR > x.pmax ? x.ubR : x.pmax;
    x.has_unknown = x.np > 0 || x.nR > 0;
    if (x.S == -INFINITY && x.umax == -INFINITY)
        return gn_errf(err, GN_EINVAL, "draw: no token has a finite score");

    /* certify the draw, then the log-probs */
    int ok = x.S > -INFINITY, tok = -1; /* tok: index in c of the token */
    double bound = 0.0, lse = 0.0, total = 0.0, tail_lm = 0.0;
    if (ok && greedy) {
        int b = certify_greedy(d, &x);
        ok = b >= 0;
        tok = ok ? d->known[b] : -1;
    } else if (ok) {
        ok = certify_sample(d, &x, &p->sampling, p->epsilon, &bound, &total, &tail_lm);
    }
    const int want_lp = p->want_logprob || p->n_top > 0;
    if (ok && want_lp)
        ok = certify_logprobs(d, &x, p, !greedy && p->sampling.temperature == 1.0f, tail_lm, out,
                              &lse);
    if (!ok) {
        out->n_top = 0;
        need(d, &x, p, out);
        return 0;
    }

    out->status = GN_DRAW_DONE;
    out->bound = bound;
    const int32_t *kn = d->known;
    if (greedy) {
        if (want_dist) {
            d->dist_ids[0] = d->c[tok].id;
            d->dist_p[0] = 1.0;
            *n_out = 1;
        }
    } else { /* total: the kept weights summed in id order, as the walk */
        if (want_dist) {
            int m = 0;
            for (int i = 0; i < x.nk; i++)
                if (d->keep[kn[i]]) {
                    d->dist_ids[m] = d->c[kn[i]].id;
                    d->dist_p[m++] = d->w[kn[i]] / total;
                }
            *n_out = m;
        } else {
            /* the sampler's draw: one uniform scaled by the total, walked in id order */
            double u = gn_rng_uniform(rng) * total, cum = 0.0;
            for (int i = 0; i < x.nk; i++) {
                if (!d->keep[kn[i]])
                    continue;
                tok = kn[i]; /* the last kept one if u is within rounding of total */
                cum += d->w[kn[i]];
                if (u < cum)
                    break;
            }
        }
    }
    if (want_dist) {
        *ids = d->dist_ids;
        *probs = d->dist_p;
    }
    if (tok >= 0) {
        out->token = d->c[tok].id;
        if (want_lp)
            out->logprob = (float)(d->c[tok].s - lse);
    }
    return 0;
}

/* ======================================================================== */

static int run(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows, gn_rng *rng,
               int want_dist, const int32_t **ids, const double **probs, int *n_out,
               gn_draw_result *out, gn_err *err) {
    if (!d || !p || !rows || !out || (!want_dist && !rng) ||
        (want_dist && (!ids || !probs || !n_out)))
        return gn_errf(err, GN_EINVAL, "draw: bad arguments");
    memset(out, 0, sizeof *out);
    out->token = -1;
    if (want_dist) {
        *ids = NULL;
        *probs = NULL;
        *n_out = 0;
    }
    int rc = gn_guidance_validate(&p->guidance, err);
    if (rc)
        return rc;
    if ((rc = gn_sampler_validate_params(&p->sampling, err)))
        return rc;
    if (!(p->epsilon >= 0.0) || !(p->logprob_tol >= 0.0))
        return gn_errf(err, GN_EINVAL, "draw: epsilon and logprob_tol must be >= 0 (got %g, %g)",
                       p->epsilon, p->logprob_tol);
    if (p->n_top < 0 || p->n_top > GN_DRAW_MAX_TOP)
        return gn_errf(err, GN_EINVAL, "draw: n_top must be in 0..%d (got %d)", GN_DRAW_MAX_TOP,
                       p->n_top);
    float alpha[GN_DRAW_MAX_MODELS]; /* c_m: 1 for the base, then guidance.h's alphas */
    alpha[0] = 1.0f;
    gn_guidance_alphas(&p->guidance, alpha + 1);
    int n_dense = 0, n_sparse = 0;
    for (int m = 0; m <= p->guidance.n_arms; m++) {
        if (alpha[m] == 0.0f)
            continue; /* not read (gn_guidance_combine skips it too) */
        if (rows[m].dense)
            n_dense++;
        else
            n_sparse++;
    }
    if (n_sparse == 0)
        return draw_dense(d, p, rows, alpha, rng, want_dist, ids, probs, n_out, out, err);
    if (n_dense > 0) { /* a step is all dense or all sparse */
        out->status = GN_DRAW_NEED_ROWS;
        for (int m = 0; m <= p->guidance.n_arms; m++)
            if (alpha[m] != 0.0f && !rows[m].dense)
                out->need_rows[m] = 1;
        return 0;
    }
    return draw_sparse(d, p, rows, alpha, rng, want_dist, ids, probs, n_out, out, err);
}

int gn_draw(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows, gn_rng *rng,
            gn_draw_result *out, gn_err *err) {
    return run(d, p, rows, rng, 0, NULL, NULL, NULL, out, err);
}

int gn_draw_dist(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows,
                 const int32_t **ids, const double **probs, int *n_out, gn_draw_result *out,
                 gn_err *err) {
    return run(d, p, rows, NULL, 1, ids, probs, n_out, out, err);
}
