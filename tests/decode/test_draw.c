/* test_draw.c — the one draw of the next token (draw.h).
 *
 *  - dense rows: gn_draw is gn_guidance_combine + gn_sampler_sample token for
 *    token (and the rng advances the same), and the log-probs are the formula
 *    the coordinator always reported (double lse over the float row);
 *  - sparse rows (a test-local sort-based top-K selector gives ids, floor,
 *    row_min and an exact tail_lse rounded up): whenever the draw is DONE the
 *    measured TV(Q, P) against a float64 reference of the sampler's semantics
 *    (top-k with ties kept, the top-p nucleus in the total order, min-p) is
 *    <= epsilon and <= the reported bound; greedy sparse == greedy dense,
 *    always; the fetch loop (NEED_VALUES -> values -> never NEED_VALUES
 *    again; NEED_ROWS -> dense -> DONE; the rng untouched on NEED_*); log-probs
 *    within logprob_tol of float64 and the top ids those of float64;
 *  - the errors (NaN, ids out of range, duplicates, mixed dense / sparse).
 * Printed, not asserted: how often sparse certifies at once, after values, or
 * needs rows, per case family and K, and how often the sparse and dense draws
 * agree for the same rng state.
 *
 * Rows avoid exact top-p boundaries in float64 (e.g. flat rows with p·n an
 * integer): there even exact mode's float arithmetic may cut elsewhere than
 * float64, so no sparse claim could be checked against P. Flat rows here never
 * certify (every tail token ties the best known one), so they only exercise
 * the fetch loop. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "draw.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "guidance.h"
#include "sampler.h"

#define MAXM 4 /* base + up to 3 ARMs in these tests */

static uint64_t rs = 0x51A5EDBEEF1234ull;
static double urand(void) { /* xorshift64, independent of the library's rng */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}
static int irand(int n) { return (int)(urand() * n); }
static double nrand(void) {
    double u = urand() + 1e-300, v = urand();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ---- rows ------------------------------------------------------------------ */

/* log_softmax of logits (double), rounded to float. -inf logits stay -inf. */
static void log_softmax_f(const double *z, int n, float *out) {
    double mx = -INFINITY, s = 0.0;
    for (int v = 0; v < n; v++)
        mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < n; v++)
        s += exp(z[v] - mx);
    double lse = mx + log(s);
    for (int v = 0; v < n; v++)
        out[v] = (float)(z[v] - lse);
}

/* A Zipf background over a random ranking: -a log(1 + rank) + noise. */
static void zipf_logits(double *z, int n, double a, int32_t *perm) {
    for (int v = 0; v < n; v++)
        perm[v] = v;
    for (int v = n - 1; v > 0; v--) {
        int j = irand(v + 1);
        int32_t t = perm[v];
        perm[v] = perm[j];
        perm[j] = t;
    }
    for (int r = 0; r < n; r++)
        z[perm[r]] = -a * log(1.0 + r) + 0.3 * nrand();
}

/* Row families; the last three are LM-like rows under other guidance profiles
 * (reported apart). */
enum {
    FAM_LM, FAM_INDEP, FAM_ADV, FAM_FLAT, FAM_NEARFLAT, FAM_NEGINF, FAM_HEAVY,
    FAM_SEVERAL, FAM_NEGW, FAM_ZERO, N_FAM
};
static const char *fam_name[N_FAM] = {"lm",         "lm, indep.",   "adversarial", "flat",
                                      "nearly-flat", "-inf entries", "heavy tail",  "lm, 2-3 ARMs",
                                      "lm, neg. w",  "lm, w 0"};

typedef struct rowset {
    int n, nm;            /* vocab, models */
    float *x[MAXM];       /* dense rows */
    int32_t *ord[MAXM];   /* each row's order: value desc, id asc */
    int32_t *sid[MAXM];   /* sparse views' storage (room for n) */
    float *sval[MAXM];
    gn_row_view sv[MAXM], dv[MAXM];
    gn_guidance g;
    double *s;            /* float64 scores */
    int32_t *sord;        /* by s desc, id asc */
    double *pref, *q;     /* reference P and Q (dense arrays) */
    double *z;            /* logits scratch */
    double *z0;           /* the base's background logits */
    int32_t *perm;
    float *score;         /* dense combine scratch */
} rowset;

static rowset *rowset_new(int n, int nm) {
    rowset *r = calloc(1, sizeof *r);
    r->n = n;
    r->nm = nm;
    for (int m = 0; m < nm; m++) {
        r->x[m] = malloc(sizeof(float) * (size_t)n);
        r->ord[m] = malloc(sizeof(int32_t) * (size_t)n);
        r->sid[m] = malloc(sizeof(int32_t) * (size_t)n);
        r->sval[m] = malloc(sizeof(float) * (size_t)n);
    }
    r->s = malloc(sizeof(double) * (size_t)n);
    r->sord = malloc(sizeof(int32_t) * (size_t)n);
    r->pref = calloc((size_t)n, sizeof(double));
    r->q = calloc((size_t)n, sizeof(double));
    r->z = malloc(sizeof(double) * (size_t)n);
    r->z0 = malloc(sizeof(double) * (size_t)n);
    r->perm = malloc(sizeof(int32_t) * (size_t)n);
    r->score = malloc(sizeof(float) * (size_t)n);
    return r;
}

static void rowset_free(rowset *r) {
    for (int m = 0; m < r->nm; m++) {
        free(r->x[m]);
        free(r->ord[m]);
        free(r->sid[m]);
        free(r->sval[m]);
    }
    free(r->s);
    free(r->sord);
    free(r->pref);
    free(r->q);
    free(r->z);
    free(r->z0);
    free(r->perm);
    free(r->score);
    free(r);
}

static const float *g_row;
static int cmp_order(const void *pa, const void *pb) { /* value desc, then id asc */
    int a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    float x = g_row[a], y = g_row[b];
    if (x > y)
        return -1;
    if (x < y)
        return 1;
    return a < b ? -1 : a > b;
}

static void order_row(rowset *r, int m) {
    for (int v = 0; v < r->n; v++)
        r->ord[m][v] = v;
    g_row = r->x[m];
    qsort(r->ord[m], (size_t)r->n, sizeof(int32_t), cmp_order);
}

/* Fills the rows of family fam: the base (a Zipf background over a random
 * ranking plus a head of 1..5 likely tokens boosted by 3..12 nats), then each
 * ARM: the base's background plus N(0, 1) noise (FAM_INDEP: a background of
 * its own), boosting some of the base's head tokens, sometimes one of its
 * own. */
static void make_rows(rowset *r, int fam) {
    const int n = r->n;
    double *z = r->z;
    int32_t head[8];
    int nh = 1 + irand(5);
    for (int m = 0; m < r->nm; m++) {
        if (fam == FAM_FLAT) {
            for (int v = 0; v < n; v++)
                r->x[m][v] = (float)-log((double)n);
            continue;
        }
        if (fam == FAM_NEARFLAT) {
            for (int v = 0; v < n; v++)
                z[v] = 0.01 * urand();
            log_softmax_f(z, n, r->x[m]);
            continue;
        }
        if (fam == FAM_HEAVY) { /* 2.5 N(0, 1) logits, a few boosted: most mass in the tail */
            for (int v = 0; v < n; v++)
                z[v] = 2.5 * nrand() + (urand() < 2e-4 ? 8.0 + 4.0 * urand() : 0.0);
            log_softmax_f(z, n, r->x[m]);
            continue;
        }
        if (m == 0 || fam == FAM_INDEP) {
            zipf_logits(z, n, 1.1, r->perm);
            if (m == 0)
                memcpy(r->z0, z, sizeof(double) * (size_t)n);
        } else { /* an ARM tuned from a related model: the base's background, perturbed */
            for (int v = 0; v < n; v++)
                z[v] = r->z0[v] + nrand();
        }
        if (m == 0)
            for (int i = 0; i < nh; i++)
                head[i] = irand(n);
        for (int i = 0; i < nh; i++) /* the base's likely tokens; ARMs boost some of them */
            if (m == 0 || urand() < 0.6)
                z[head[i]] += 3.0 + 9.0 * urand();
        if (m > 0 && urand() < 0.5)
            z[irand(n)] += 6.0 + 6.0 * urand(); /* an ARM's own favourite */
        if (fam == FAM_ADV && m == 1) {
            /* a token deep in the base's tail (rank 2000..5000 when n allows)
             * that the ARM makes its clear favourite */
            int lo = n > 6000 ? 2000 : n / 3, hi = n > 6000 ? 5000 : n / 2;
            int32_t tk = r->ord[0][lo + irand(hi - lo)];
            z[tk] = 25.0;
        }
        if (fam == FAM_NEGINF && m == 0)
            for (int v = 0; v < n; v++)
                if (urand() < 0.1)
                    z[v] = -INFINITY;
        log_softmax_f(z, n, r->x[m]);
        if (m == 0 && fam == FAM_ADV) /* the ARM needs the base's order */
            order_row(r, 0);
    }
}

/* The sparse view of model m with its K largest values (the test's own
 * selector: a full sort), tail_lse exact in double and rounded up. */
static void make_view(rowset *r, int m, int K) {
    const int n = r->n;
    const float *x = r->x[m];
    K = K < n ? K : n;
    for (int i = 0; i < K; i++) {
        r->sid[m][i] = r->ord[m][i];
        r->sval[m][i] = x[r->ord[m][i]];
    }
    gn_row_view *v = &r->sv[m];
    memset(v, 0, sizeof *v);
    v->ids = r->sid[m];
    v->vals = r->sval[m];
    v->n = K;
    v->tail.floor = K < n ? x[r->ord[m][K]] : -INFINITY;
    v->tail.row_min = x[r->ord[m][n - 1]];
    double mx = v->tail.floor, s = 0.0;
    for (int i = K; i < n && mx > -INFINITY; i++)
        s += exp((double)x[r->ord[m][i]] - mx);
    double lse = K < n && mx > -INFINITY ? mx + log(s) : -INFINITY;
    float t = (float)lse;
    if (lse > -INFINITY)
        while ((double)t < lse + 1e-12 * (1.0 + fabs(lse)))
            t = nextafterf(t, INFINITY);
    v->tail.tail_lse = t;
}

static void dense_views(rowset *r) {
    for (int m = 0; m < r->nm; m++) {
        memset(&r->dv[m], 0, sizeof r->dv[m]);
        r->dv[m].dense = r->x[m];
    }
}

/* ---- the float64 reference ---------------------------------------------------- */

static float coef(const gn_guidance *g, int m) {
    return m == 0 ? 1.0f : g->weights[m - 1] / g->beta;
}

static const double *g_s;
static int cmp_s(const void *pa, const void *pb) {
    int a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (g_s[a] > g_s[b])
        return -1;
    if (g_s[a] < g_s[b])
        return 1;
    return a < b ? -1 : a > b;
}

/* s(v) = Σ c_m x_m(v) in float64 (models in order, weight 0 skipped), and
 * the total order. */
static void ref_scores(rowset *r) {
    for (int v = 0; v < r->n; v++) {
        double s = r->x[0][v];
        for (int m = 1; m < r->nm; m++) {
            float c = coef(&r->g, m);
            if (c != 0.0f)
                s += (double)c * (double)r->x[m][v];
        }
        r->s[v] = s;
        r->sord[v] = v;
    }
    g_s = r->s;
    qsort(r->sord, (size_t)r->n, sizeof(int32_t), cmp_s);
}

/* P (T > 0) into r->pref: top-k (ties with the k-th kept), top-p (the
 * shortest prefix of the total order whose mass reaches p of what top-k
 * kept), min-p (w >= min_p · w_max), then normalised. */
static void ref_dist(rowset *r, const gn_sampler_params *sp) {
    const int n = r->n;
    const double T = sp->temperature, S = r->s[r->sord[0]];
    int m = n; /* kept: a prefix of sord */
    if (sp->top_k > 0 && sp->top_k < n) {
        double sk = r->s[r->sord[sp->top_k - 1]];
        m = sp->top_k;
        while (m < n && r->s[r->sord[m]] >= sk)
            m++;
    }
    if (sp->top_p < 1.0f) {
        double tot = 0.0, cum = 0.0;
        for (int i = 0; i < m; i++)
            tot += exp((r->s[r->sord[i]] - S) / T);
        int b = m;
        for (int i = 0; i < m; i++) {
            cum += exp((r->s[r->sord[i]] - S) / T);
            if (cum >= (double)sp->top_p * tot) {
                b = i + 1;
                break;
            }
        }
        m = b;
    }
    memset(r->pref, 0, sizeof(double) * (size_t)n);
    double z = 0.0;
    for (int i = 0; i < m; i++) {
        int32_t v = r->sord[i];
        double w = exp((r->s[v] - S) / T);
        if (sp->min_p > 0.0f && !(w >= (double)sp->min_p))
            continue;
        r->pref[v] = w;
        z += w;
    }
    for (int v = 0; v < n; v++)
        r->pref[v] /= z;
}

/* What the coordinator reported before draw.h: lse in double over the float
 * score row, the top k by score (ties: lower id). */
static void old_logprobs(const float *sc, int n, int k, int tok, float *lp, int32_t *top, float *toplp,
                         int *nt_out) {
    double mx = -INFINITY;
    for (int v = 0; v < n; v++)
        if (sc[v] > mx)
            mx = sc[v];
    double sum = 0;
    for (int v = 0; v < n; v++)
        sum += exp((double)sc[v] - mx);
    double lse = mx + log(sum);
    int nt = 0;
    for (int v = 0; v < n && k > 0; v++) {
        if (nt == k && !(sc[v] > sc[top[nt - 1]]))
            continue;
        int pos = nt < k ? nt++ : k - 1;
        while (pos > 0 && sc[v] > sc[top[pos - 1]]) {
            top[pos] = top[pos - 1];
            pos--;
        }
        top[pos] = v;
    }
    for (int i = 0; i < nt; i++)
        toplp[i] = (float)(sc[top[i]] - lse);
    *lp = (float)(sc[tok] - lse);
    *nt_out = nt;
}

/* ---- statistics ------------------------------------------------------------- */

typedef struct fstat {
    long cases, at_once, after_values, rows;
    long draws, agree; /* T > 0 sparse DONE: same token as dense with the same rng */
    double tv_max, bound_max;
} fstat;

/* [family][vocab slot][K slot], and per parameter case on LM-like rows */
static fstat g_stat[2][N_FAM][3][8]; /* [with log-probs] */
static fstat g_case[2][3][8][32];
static int g_lp; /* this pass asks for log-probs */
static const int k_slots[8] = {1, 4, 16, 64, 256, 1024, 4096, 0};
static const int n_slots[3] = {1000, 32000, 128256};
static int kslot(int K) {
    for (int i = 0; i < 7; i++)
        if (k_slots[i] == K)
            return i;
    return 7;
}
static int nslot(int n) { return n <= 1000 ? 0 : n <= 32000 ? 1 : 2; }

/* ---- one case ---------------------------------------------------------------- */

static int same_rng(const gn_rng *a, const gn_rng *b) { return memcmp(a, b, sizeof *a) == 0; }

static long g_n_dense, g_bad_dense;

/* Dense: gn_draw == combine + sample (token, rng) and the old log-probs;
 * gn_draw_dist == gn_sampler_dist (small rows). */
static void check_dense(gn_drawer *d, gn_sampler *smp, rowset *r, const gn_draw_params *p,
                        uint64_t seed, int32_t *tok_out) {
    gn_err err = {0};
    gn_rng r1, r2;
    gn_rng_seed(&r1, seed);
    r2 = r1;
    gn_draw_result res;
    dense_views(r);
    int rc = gn_draw(d, p, r->dv, &r1, &res, &err);
    const float *arm[MAXM];
    for (int m = 1; m < r->nm; m++)
        arm[m - 1] = r->x[m];
    gn_guidance_combine(&p->guidance, r->x[0], arm, r->score, r->n);
    int tok = gn_sampler_sample(smp, &p->sampling, &r2, r->score, r->n, &err);
    int ok = rc == 0 && res.status == GN_DRAW_DONE && res.token == tok && same_rng(&r1, &r2) &&
             res.bound == 0.0;
    if (ok && (p->want_logprob || p->n_top)) {
        float lp, toplp[GN_DRAW_MAX_TOP];
        int32_t top[GN_DRAW_MAX_TOP];
        int nt;
        old_logprobs(r->score, r->n, p->n_top, tok, &lp, top, toplp, &nt);
        ok = memcmp(&lp, &res.logprob, sizeof lp) == 0 && nt == res.n_top &&
             memcmp(top, res.top_ids, sizeof(int32_t) * (size_t)nt) == 0 &&
             memcmp(toplp, res.top_logprobs, sizeof(float) * (size_t)nt) == 0;
    }
    if (ok && r->n <= 1000) { /* gn_draw_dist on dense rows is gn_sampler_dist's */
        const int32_t *i1, *i2;
        const double *p1, *p2;
        int n1, n2;
        gn_draw_result rd;
        int rc1 = gn_draw_dist(d, p, r->dv, &i1, &p1, &n1, &rd, &err);
        int rc2 = gn_sampler_dist(smp, &p->sampling, r->score, r->n, &i2, &p2, &n2, &err);
        ok = rc1 == 0 && rc2 == 0 && rd.status == GN_DRAW_DONE && n1 == n2 &&
             memcmp(i1, i2, sizeof(int32_t) * (size_t)n1) == 0 &&
             memcmp(p1, p2, sizeof(double) * (size_t)n1) == 0;
    }
    g_n_dense++;
    if (!ok && g_bad_dense++ < 5)
        CHECK(0, "dense draw != combine + sample (rc %d status %d token %d vs %d): %s", rc,
              res.status, res.token, tok, err.msg);
    *tok_out = tok;
}

/* Appends the values the result says are missing to the sparse views. */
static void supply_values(rowset *r, const gn_draw_result *res) {
    for (int m = 0; m < r->nm; m++) {
        gn_row_view *v = &r->sv[m];
        for (int i = 0; i < res->n_missing[m]; i++) {
            int32_t id = res->missing[m][i];
            r->sid[m][v->n] = id;
            r->sval[m][v->n] = r->x[m][id];
            v->n++;
        }
    }
}

typedef struct ccase {
    float T;
    int k;
    float p, mp;
} ccase;

static long g_bad_tv, g_bad_greedy, g_bad_loop, g_bad_lp, g_bad_rng, g_bad_dist;

/* The sparse fetch loop for one (rows, K, params): checks every claim. */
static void check_sparse(gn_drawer *d, gn_sampler *smp, rowset *r, int fam, int K, int ci,
                         const gn_draw_params *p, uint64_t seed) {
    gn_err err = {0};
    fstat *st = &g_stat[g_lp][fam][nslot(r->n)][kslot(K)];
    fstat *sc = fam == FAM_LM && r->nm == 2 ? &g_case[g_lp][nslot(r->n)][kslot(K)][ci] : NULL;
    int32_t tok_dense;
    check_dense(d, smp, r, p, seed, &tok_dense);
    for (int m = 0; m < r->nm; m++)
        make_view(r, m, K);
    gn_rng rng, rng0;
    gn_rng_seed(&rng, seed);
    rng0 = rng;
    gn_draw_result res;
    int rc = gn_draw(d, p, r->sv, &rng, &res, &err);
    CHECK(rc == 0, "sparse draw: %s", err.msg);
    if (rc)
        return;
    st->cases++;
    int phase = 0;
    if (res.status != GN_DRAW_DONE) {
        if (!same_rng(&rng, &rng0) && g_bad_rng++ < 5)
            CHECK(0, "the rng moved on status %d", res.status);
        if (res.status == GN_DRAW_NEED_VALUES) {
            int any = 0;
            for (int m = 0; m < r->nm; m++) {
                any |= res.n_missing[m] > 0;
                for (int i = 1; i < res.n_missing[m]; i++)
                    if (!(res.missing[m][i - 1] < res.missing[m][i]) && g_bad_loop++ < 5)
                        CHECK(0, "missing ids not ascending");
                if (coef(&r->g, m) == 0.0f && res.n_missing[m] && g_bad_loop++ < 5)
                    CHECK(0, "values asked from a weight-0 model");
            }
            if (!any && g_bad_loop++ < 5)
                CHECK(0, "NEED_VALUES without missing values");
            supply_values(r, &res);
            rc = gn_draw(d, p, r->sv, &rng, &res, &err);
            CHECK(rc == 0, "sparse draw after values: %s", err.msg);
            if (rc)
                return;
            if (res.status == GN_DRAW_NEED_VALUES && g_bad_loop++ < 5)
                CHECK(0, "NEED_VALUES again after the values were supplied");
            phase = 1;
            if (res.status != GN_DRAW_DONE && !same_rng(&rng, &rng0) && g_bad_rng++ < 5)
                CHECK(0, "the rng moved on status %d", res.status);
        }
        if (res.status == GN_DRAW_NEED_ROWS) {
            phase = 2;
            gn_row_view mixed[MAXM];
            for (int m = 0; m < r->nm; m++) {
                mixed[m] = r->sv[m];
                if (coef(&r->g, m) != 0.0f && !res.need_rows[m] && g_bad_loop++ < 5)
                    CHECK(0, "NEED_ROWS leaves out active model %d", m);
                if (coef(&r->g, m) == 0.0f && res.need_rows[m] && g_bad_loop++ < 5)
                    CHECK(0, "NEED_ROWS asks for weight-0 model %d", m);
                if (res.need_rows[m])
                    mixed[m].dense = r->x[m];
            }
            rc = gn_draw(d, p, mixed, &rng, &res, &err);
            if ((rc || res.status != GN_DRAW_DONE || res.token != tok_dense) && g_bad_loop++ < 5)
                CHECK(0, "rows supplied: rc %d status %d token %d (dense %d)", rc, res.status,
                      res.token, tok_dense);
        }
    }
    if (sc) {
        sc->cases++;
        sc->at_once += phase == 0;
        sc->after_values += phase == 1;
        sc->rows += phase == 2;
    }
    if (phase == 0)
        st->at_once++;
    else if (phase == 1)
        st->after_values++;
    else {
        st->rows++;
        return;
    }
    /* DONE on sparse rows: the claims */
    if (p->sampling.temperature == 0.0f) {
        if (res.token != tok_dense && g_bad_greedy++ < 5)
            CHECK(0, "greedy sparse %d != dense %d", res.token, tok_dense);
    } else {
        st->draws++;
        st->agree += res.token == tok_dense;
        if (same_rng(&rng, &rng0) && g_bad_rng++ < 5)
            CHECK(0, "the rng did not advance on a draw");
        gn_rng chk = rng0;
        gn_rng_uniform(&chk);
        if (!same_rng(&rng, &chk) && g_bad_rng++ < 5)
            CHECK(0, "the rng advanced by more than one draw");
        const int32_t *ids;
        const double *probs;
        int nq;
        gn_draw_result rd;
        rc = gn_draw_dist(d, p, r->sv, &ids, &probs, &nq, &rd, &err);
        if ((rc || rd.status != GN_DRAW_DONE || rd.bound != res.bound) && g_bad_dist++ < 5) {
            CHECK(0, "gn_draw_dist disagrees with gn_draw: rc %d status %d: %s", rc, rd.status,
                  err.msg);
            return;
        }
        ref_dist(r, &p->sampling);
        memset(r->q, 0, sizeof(double) * (size_t)r->n);
        int in_q = 0;
        for (int i = 0; i < nq; i++) {
            r->q[ids[i]] = probs[i];
            in_q |= ids[i] == res.token;
        }
        double tv = 0.0;
        for (int v = 0; v < r->n; v++)
            tv += fabs(r->q[v] - r->pref[v]);
        tv *= 0.5;
        if (tv > st->tv_max)
            st->tv_max = tv;
        if (res.bound > st->bound_max)
            st->bound_max = res.bound;
        if ((!(tv <= p->epsilon) || !(tv <= res.bound + 1e-12) || !in_q) && g_bad_tv++ < 5)
            CHECK(0, "%s K %d T %g k %d p %g minp %g: TV %.3g, bound %.3g, eps %.3g, token in Q %d",
                  fam_name[fam], K, (double)p->sampling.temperature, p->sampling.top_k,
                  (double)p->sampling.top_p, (double)p->sampling.min_p, tv, res.bound, p->epsilon,
                  in_q);
    }
    if (p->want_logprob) {
        double mx = r->s[r->sord[0]], z = 0.0;
        for (int v = 0; v < r->n; v++)
            z += exp(r->s[v] - mx);
        double lse = mx + log(z), want = r->s[res.token] - lse;
        int ok = fabs((double)res.logprob - want) <= p->logprob_tol + 1e-6 * (1.0 + fabs(want));
        ok = ok && res.n_top == (p->n_top < r->n ? p->n_top : r->n);
        for (int i = 0; ok && i < res.n_top; i++) {
            double wi = r->s[r->sord[i]] - lse;
            ok = res.top_ids[i] == r->sord[i] &&
                 fabs((double)res.top_logprobs[i] - wi) <= p->logprob_tol + 1e-6 * (1.0 + fabs(wi));
        }
        if (!ok && g_bad_lp++ < 5)
            CHECK(0, "%s K %d: log-prob %.7g want %.7g (top %d)", fam_name[fam], K,
                  (double)res.logprob, want, res.n_top);
    }
}

/* ---- the families --------------------------------------------------------------- */

static const ccase k_cases[] = {
    {0.0f, 0, 1.0f, 0.0f},   {0.3f, 0, 1.0f, 0.0f},   {0.7f, 0, 1.0f, 0.0f},
    {1.0f, 0, 1.0f, 0.0f},   {1.5f, 0, 1.0f, 0.0f},   {2.5f, 0, 1.0f, 0.0f},
    {0.7f, 0, 0.9f, 0.0f},   {1.0f, 0, 0.95f, 0.0f},  {1.5f, 0, 0.8f, 0.0f},
    {0.8f, 50, 1.0f, 0.0f},  {1.0f, 5, 1.0f, 0.0f},   {0.7f, 0, 1.0f, 0.05f},
    {1.0f, 0, 1.0f, 0.1f},   {0.8f, 50, 0.9f, 0.0f},  {1.0f, 40, 0.95f, 0.05f},
    {2.5f, 0, 0.9f, 0.02f},  {0.3f, 20, 0.7f, 0.0f},
};
#define N_CASES ((int)(sizeof k_cases / sizeof *k_cases))

typedef struct profile {
    int n_arms;
    float w[3], beta;
} profile;

static void run_family(gn_drawer *d, gn_sampler *smp, int fam, int n, const profile *pf, int n_pf,
                       const int *Ks, int nK, int seeds, int with_lp) {
    int nm = 1;
    for (int i = 0; i < n_pf; i++)
        nm = 1 + pf[i].n_arms > nm ? 1 + pf[i].n_arms : nm;
    rowset *r = rowset_new(n, nm);
    for (int sd = 0; sd < seeds; sd++) {
        const profile *pr = &pf[sd % n_pf];
        r->nm = 1 + pr->n_arms;
        make_rows(r, fam >= FAM_SEVERAL ? FAM_LM : fam);
        for (int m = 0; m < r->nm; m++)
            order_row(r, m);
        r->g = gn_guidance_default();
        r->g.n_arms = pr->n_arms;
        r->g.beta = pr->beta;
        for (int i = 0; i < pr->n_arms; i++)
            r->g.weights[i] = pr->w[i];
        ref_scores(r);
        for (int ki = 0; ki < nK; ki++)
            for (int ci = 0; ci < N_CASES; ci++) {
                gn_draw_params p = gn_draw_default_params();
                p.guidance = r->g;
                p.sampling.temperature = k_cases[ci].T;
                p.sampling.top_k = k_cases[ci].k;
                p.sampling.top_p = k_cases[ci].p;
                p.sampling.min_p = k_cases[ci].mp;
                uint64_t seed = 0x1000u * (uint64_t)sd + (uint64_t)ci * 7 + (uint64_t)ki;
                g_lp = 0;
                check_sparse(d, smp, r, fam, Ks[ki], ci, &p, seed);
                if (with_lp) { /* again, asking for the log-prob and 5 alternatives */
                    g_lp = 1;
                    p.want_logprob = 1;
                    p.n_top = 5;
                    check_sparse(d, smp, r, fam, Ks[ki], ci, &p, seed);
                }
            }
    }
    r->nm = nm;
    rowset_free(r);
}

/* ---- errors and the small contracts --------------------------------------------- */

static void test_errors(void) {
    gn_err err = {0};
    const int n = 1000;
    gn_drawer *d = gn_drawer_create(n, &err);
    CHECK(d != NULL, "drawer: %s", err.msg);
    CHECK(gn_drawer_create(0, &err) == NULL && err.code == GN_EINVAL, "n_vocab 0 refused");
    rowset *r = rowset_new(n, 3);
    make_rows(r, FAM_LM);
    for (int m = 0; m < 3; m++) {
        order_row(r, m);
        make_view(r, m, 64);
    }
    gn_draw_params p = gn_draw_default_params();
    p.guidance.n_arms = 2;
    p.guidance.weights[0] = 1.0f;
    p.guidance.weights[1] = 0.0f;
    gn_rng rng, rng0;
    gn_rng_seed(&rng, 5);
    rng0 = rng;
    gn_draw_result res;

    /* a weight-0 ARM's row is not read (a broken view would fail if it were) */
    r->sv[2].ids = NULL;
    r->sv[2].vals = NULL;
    r->sv[2].n = 7;
    int rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == 0, "weight-0 row not read: %s", err.msg);

    /* NaN in a sparse value names the model and the token */
    gn_rng_seed(&rng, 5);
    float keep = r->sval[1][3];
    r->sval[1][3] = NAN;
    rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    char want[64];
    snprintf(want, sizeof want, "model 1: value of token %d is NaN", r->sid[1][3]);
    CHECK(rc == GN_EINVAL && strstr(err.msg, want), "NaN named: %s", err.msg);
    CHECK(same_rng(&rng, &rng0), "rng untouched on error");
    r->sval[1][3] = keep;

    /* ids out of range, duplicates */
    int32_t kid = r->sid[0][5];
    r->sid[0][5] = n;
    rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == GN_ERANGE && strstr(err.msg, "outside"), "id out of range: %s", err.msg);
    r->sid[0][5] = -3;
    rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == GN_ERANGE, "negative id: %s", err.msg);
    r->sid[0][5] = r->sid[0][9];
    rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == GN_EINVAL && strstr(err.msg, "twice"), "duplicate id: %s", err.msg);
    r->sid[0][5] = kid;
    r->sv[0].tail.tail_lse = NAN;
    rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == GN_EINVAL, "NaN tail: %s", err.msg);
    make_view(r, 0, 64);

    /* NaN in a dense row names the model */
    dense_views(r);
    r->dv[2].dense = NULL; /* weight 0: not read */
    keep = r->x[1][17];
    r->x[1][17] = NAN;
    rc = gn_draw(d, &p, r->dv, &rng, &res, &err);
    CHECK(rc == GN_EINVAL && strstr(err.msg, "model 1: value of token 17 is NaN"), "dense NaN: %s",
          err.msg);
    r->x[1][17] = keep;
    rc = gn_draw(d, &p, r->dv, &rng, &res, &err);
    CHECK(rc == 0 && res.status == GN_DRAW_DONE, "dense with a NULL weight-0 row: %s", err.msg);

    /* mixed: NEED_ROWS for the sparse active ones only */
    gn_row_view mixed[3] = {r->dv[0], r->sv[1], r->sv[2]};
    gn_rng_seed(&rng, 9);
    rng0 = rng;
    rc = gn_draw(d, &p, mixed, &rng, &res, &err);
    CHECK(rc == 0 && res.status == GN_DRAW_NEED_ROWS && !res.need_rows[0] && res.need_rows[1] &&
              !res.need_rows[2] && same_rng(&rng, &rng0),
          "mixed dense/sparse: status %d rows %d %d %d", res.status, res.need_rows[0],
          res.need_rows[1], res.need_rows[2]);

    /* bad parameters */
    p.n_top = GN_DRAW_MAX_TOP + 1;
    CHECK(gn_draw(d, &p, r->sv, &rng, &res, &err) == GN_EINVAL, "n_top too large refused");
    p.n_top = 0;
    p.sampling.top_p = 0.0f;
    CHECK(gn_draw(d, &p, r->sv, &rng, &res, &err) == GN_EINVAL, "top_p 0 refused");
    p.sampling.top_p = 1.0f;
    p.guidance.beta = 0.0f;
    CHECK(gn_draw(d, &p, r->sv, &rng, &res, &err) == GN_EINVAL, "beta 0 refused");
    p.guidance.beta = 1.0f;

    /* a row with no finite score */
    gn_draw_params p0 = gn_draw_default_params();
    for (int v = 0; v < n; v++)
        r->x[0][v] = -INFINITY;
    dense_views(r);
    CHECK(gn_draw(d, &p0, r->dv, &rng, &res, &err) == GN_EINVAL, "dense: no finite score");
    order_row(r, 0);
    make_view(r, 0, n);
    CHECK(gn_draw(d, &p0, r->sv, &rng, &res, &err) == GN_EINVAL && strstr(err.msg, "finite"),
          "sparse: no finite score: %s", err.msg);

    /* everything listed: the draw is exact (bound 0) and the dense one */
    make_rows(r, FAM_LM);
    order_row(r, 0);
    make_view(r, 0, n);
    gn_sampler *smp = gn_sampler_create(n, &err);
    p0.sampling.temperature = 0.9f;
    for (int s = 0; s < 20; s++) {
        gn_rng a, b;
        gn_rng_seed(&a, (uint64_t)s);
        b = a;
        rc = gn_draw(d, &p0, r->sv, &a, &res, &err);
        int tok = gn_sampler_sample(smp, &p0.sampling, &b, r->x[0], n, &err);
        CHECK(rc == 0 && res.status == GN_DRAW_DONE && res.bound == 0.0 && same_rng(&a, &b),
              "all listed: DONE, bound 0 (%d, %g)", res.status, res.bound);
        (void)tok;
    }
    gn_sampler_free(smp);
    r->sv[2].ids = r->sid[2];
    rowset_free(r);
    gn_drawer_free(d);
}

/* min-p needs the exact maximum: a token listed only by the ARM could top
 * every known token (ub above S) while its mass is small next to many known
 * tokens, so the bound alone (epsilon 0.1 here) would pass; the threshold
 * would then sit too low and keep known tokens that P cuts. */
static void test_minp_unknown_max(void) {
    gn_err err = {0};
    const int n = 1000;
    gn_drawer *d = gn_drawer_create(n, &err);
    gn_sampler *smp = gn_sampler_create(n, &err);
    rowset *r = rowset_new(n, 2);
    for (int v = 0; v < n; v++) {
        r->x[0][v] = v < 50 ? -5.0f : v < 100 ? -5.5f : v == 100 ? -8.0f : -30.0f;
        r->x[1][v] = v < 100 ? -5.0f : v == 100 ? -1.5f : -30.0f;
    }
    /* scores: 0..49 -10, 50..99 -10.5, token 100 -9.5 (above every listed-by-all one) */
    for (int m = 0; m < 2; m++)
        order_row(r, m);
    make_view(r, 0, 100); /* the base lacks token 100: its floor is -8 */
    make_view(r, 1, 101);
    r->g = gn_guidance_default();
    r->g.n_arms = 1;
    ref_scores(r);
    gn_draw_params p = gn_draw_default_params();
    p.guidance = r->g;
    p.epsilon = 0.1;
    p.sampling.min_p = 0.5f;
    gn_rng rng;
    gn_rng_seed(&rng, 1);
    gn_draw_result res;
    int rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == 0 && res.status == GN_DRAW_NEED_VALUES && res.n_missing[0] == 1 &&
              res.missing[0][0] == 100 && res.n_missing[1] == 0,
          "min-p with an unknown maximum: status %d, base misses %d", res.status, res.n_missing[0]);
    supply_values(r, &res);
    const int32_t *ids;
    const double *probs;
    int nq;
    rc = gn_draw_dist(d, &p, r->sv, &ids, &probs, &nq, &res, &err);
    CHECK(rc == 0 && res.status == GN_DRAW_DONE, "min-p after the values: status %d", res.status);
    if (rc == 0 && res.status == GN_DRAW_DONE) {
        ref_dist(r, &p.sampling);
        memset(r->q, 0, sizeof(double) * (size_t)n);
        for (int i = 0; i < nq; i++)
            r->q[ids[i]] = probs[i];
        double tv = 0.0;
        for (int v = 0; v < n; v++)
            tv += fabs(r->q[v] - r->pref[v]);
        CHECK(tv / 2 <= res.bound + 1e-12 && nq == 51, "min-p: TV %g, %d tokens kept (want 51)",
              tv / 2, nq);
    }
    /* the same rows dense: token for token as combine + sample */
    int32_t tok;
    check_dense(d, smp, r, &p, 3, &tok);
    rowset_free(r);
    gn_sampler_free(smp);
    gn_drawer_free(d);
}

/* A tail that stops the proof whatever values the partial tokens turn out to
 * have: NEED_ROWS at once, not a fetch of values whose next draw could only
 * say NEED_ROWS. Two flat rows (every score ties the tail's bound) listing
 * different tokens (0..9 and 5..14), so partial tokens exist; each filter's
 * test in turn. Then the converse: a tail heavy next to the known tokens but
 * light next to what a partial token may turn out to be still asks for the
 * values, and they settle it. */
static void test_tail_blocks(void) {
    gn_err err = {0};
    const int n = 1000;
    gn_drawer *d = gn_drawer_create(n, &err);
    gn_sampler *smp = gn_sampler_create(n, &err);
    rowset *r = rowset_new(n, 2);
    const float flat = (float)-log((double)n);
    for (int m = 0; m < 2; m++) {
        for (int v = 0; v < n; v++)
            r->x[m][v] = flat;
        gn_row_view *v = &r->sv[m];
        memset(v, 0, sizeof *v);
        for (int i = 0; i < 10; i++) {
            r->sid[m][i] = 5 * m + i;
            r->sval[m][i] = flat;
        }
        v->ids = r->sid[m];
        v->vals = r->sval[m];
        v->n = 10;
        v->tail.floor = v->tail.row_min = flat;
        v->tail.tail_lse = nextafterf((float)((double)flat + log(990.0)), INFINITY);
    }
    r->g = gn_guidance_default();
    r->g.n_arms = 1;
    const ccase blocked[] = {{1.0f, 0, 1.0f, 0.0f}, {0.7f, 0, 0.9f, 0.0f}, {1.0f, 5, 1.0f, 0.0f},
                             {1.0f, 0, 1.0f, 0.05f}, {0.0f, 0, 1.0f, 0.0f}};
    for (int ci = 0; ci < (int)(sizeof blocked / sizeof *blocked); ci++) {
        gn_draw_params p = gn_draw_default_params();
        p.guidance = r->g;
        p.sampling.temperature = blocked[ci].T;
        p.sampling.top_k = blocked[ci].k;
        p.sampling.top_p = blocked[ci].p;
        p.sampling.min_p = blocked[ci].mp;
        gn_rng rng, rng0;
        gn_rng_seed(&rng, 11 + (uint64_t)ci);
        rng0 = rng;
        gn_draw_result res;
        int rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
        CHECK(rc == 0 && res.status == GN_DRAW_NEED_ROWS && res.need_rows[0] && res.need_rows[1] &&
                  res.n_missing[0] == 0 && res.n_missing[1] == 0 && same_rng(&rng, &rng0),
              "tail blocks (T %g k %d p %g min-p %g): status %d (want NEED_ROWS at once), "
              "missing %d %d",
              (double)blocked[ci].T, blocked[ci].k, (double)blocked[ci].p, (double)blocked[ci].mp,
              res.status, res.n_missing[0], res.n_missing[1]);
        int32_t tok;
        check_dense(d, smp, r, &p, 11 + (uint64_t)ci, &tok);
        gn_row_view mixed[2] = {r->sv[0], r->sv[1]};
        mixed[0].dense = r->x[0];
        mixed[1].dense = r->x[1];
        rc = gn_draw(d, &p, mixed, &rng, &res, &err);
        CHECK(rc == 0 && res.status == GN_DRAW_DONE && res.token == tok,
              "tail blocks: the rows settle it (status %d, token %d, dense %d)", res.status,
              res.token, tok);
    }

    /* scores: 1..4 known at -22; token 0 listed by the base only, ub -2.101
     * (its value); token 5 by the ARM only, ub -26.9; the tail's ub -27.1.
     * Next to the known tokens the tail's mass bound is ~1e-3 (> epsilon),
     * next to token 0 ~1e-11: the values settle the draw. */
    for (int v = 0; v < n; v++)
        r->x[0][v] = r->x[1][v] = -40.0f;
    r->x[0][0] = -0.001f;
    r->x[1][0] = -2.1f;
    for (int v = 1; v <= 4; v++)
        r->x[0][v] = -20.0f, r->x[1][v] = -2.0f;
    r->x[0][5] = -25.0f;
    r->x[1][5] = -1.9f;
    for (int m = 0; m < 2; m++) {
        order_row(r, m);
        make_view(r, m, 5);
    }
    ref_scores(r);
    gn_draw_params p = gn_draw_default_params();
    p.guidance = r->g;
    gn_rng rng;
    gn_rng_seed(&rng, 5);
    gn_draw_result res;
    int rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
    CHECK(rc == 0 && res.status == GN_DRAW_NEED_VALUES && res.n_missing[0] == 1 &&
              res.missing[0][0] == 5 && res.n_missing[1] == 1 && res.missing[1][0] == 0,
          "a partial token may outweigh the tail: status %d (want NEED_VALUES)", res.status);
    if (rc == 0 && res.status == GN_DRAW_NEED_VALUES) {
        supply_values(r, &res);
        rc = gn_draw(d, &p, r->sv, &rng, &res, &err);
        CHECK(rc == 0 && res.status == GN_DRAW_DONE && res.bound <= p.epsilon,
              "the values settle it: status %d, bound %g", res.status, res.bound);
    }
    rowset_free(r);
    gn_sampler_free(smp);
    gn_drawer_free(d);
}

/* Allocation failures: create fails cleanly on every allocation. */
static void test_alloc_failures(void) {
    int ok = 1;
    for (int k = 1; k < 40; k++) {
        gn_alloc_fail_after(k);
        gn_err err = {0};
        gn_drawer *d = gn_drawer_create(500, &err);
        gn_alloc_fail_after(-1);
        if (d)
            gn_drawer_free(d);
        else
            ok &= err.code == GN_ENOMEM;
    }
    CHECK(ok, "drawer create: every allocation failure is GN_ENOMEM");
}

static void print_stats(void) {
    printf("\nsparse certification (epsilon 1e-6, logprob_tol 1e-4), %d parameter cases per row set\n"
           "(agree: sparse and dense drew the same token from the same rng state, T > 0):\n",
           N_CASES);
    printf("%-13s %6s %5s %6s %8s %8s %8s %8s %9s %9s %11s\n", "family", "n", "K", "cases", "at once",
           "values", "rows", "agree", "max TV", "max bound", "+log-probs");
    for (int f = 0; f < N_FAM; f++)
        for (int ni = 0; ni < 3; ni++)
            for (int k = 0; k < 8; k++) {
                const fstat *s = &g_stat[0][f][ni][k], *l = &g_stat[1][f][ni][k];
                if (!s->cases)
                    continue;
                char agree[32], lp[32];
                snprintf(agree, sizeof agree, s->draws ? "%.1f%%" : "-",
                         s->draws ? 100.0 * (double)s->agree / (double)s->draws : 0.0);
                snprintf(lp, sizeof lp, l->cases ? "%.1f%%" : "-",
                         l->cases ? 100.0 * (double)(l->at_once + l->after_values) / (double)l->cases : 0.0);
                printf("%-13s %6d %5d %6ld %7.1f%% %7.1f%% %7.1f%% %8s %9.2g %9.2g %11s\n",
                       fam_name[f], n_slots[ni], k_slots[k], s->cases,
                       100.0 * (double)s->at_once / (double)s->cases,
                       100.0 * (double)s->after_values / (double)s->cases,
                       100.0 * (double)s->rows / (double)s->cases, agree, s->tv_max, s->bound_max, lp);
            }
    for (int lpi = 0; lpi < 2; lpi++) {
        printf("\nLM-like rows, one ARM%s: certified (at once + after values) per case and K\n",
               lpi ? ", with log-probs (T 1, tol 1e-4) and 5 alternatives" : "");
        printf("%-26s", "T / top-k / top-p / min-p");
        for (int ni = 1; ni < 3; ni++)
            for (int k = 3; k < 6; k++)
                printf(" %4dk:K%-4d", n_slots[ni] / 1000, k_slots[k]);
        printf("\n");
        for (int ci = 0; ci < N_CASES; ci++) {
            const ccase *c = &k_cases[ci];
            char name[64];
            snprintf(name, sizeof name, "T %.1f k %d p %.2f mp %.2f", (double)c->T, c->k,
                     (double)c->p, (double)c->mp);
            printf("%-26s", name);
            for (int ni = 1; ni < 3; ni++)
                for (int k = 3; k < 6; k++) {
                    const fstat *s = &g_case[lpi][ni][k][ci];
                    if (s->cases)
                        printf(" %10.0f%%",
                               100.0 * (double)(s->at_once + s->after_values) / (double)s->cases);
                    else
                        printf(" %11s", "-");
                }
            printf("\n");
        }
    }
}

int main(int argc, char **argv) {
    (void)argv;
    double t0 = (double)clock() / CLOCKS_PER_SEC;
    test_errors();
    test_alloc_failures();
    test_minp_unknown_max();
    test_tail_blocks();

    const int big = argc > 1; /* any argument: more seeds */
    gn_err err = {0};
    gn_drawer *d1 = gn_drawer_create(1000, &err), *d32 = gn_drawer_create(32000, &err),
              *d128 = gn_drawer_create(128256, &err);
    gn_sampler *s1 = gn_sampler_create(1000, &err), *s32 = gn_sampler_create(32000, &err),
               *s128 = gn_sampler_create(128256, &err);
    CHECK(d1 && d32 && d128 && s1 && s32 && s128, "drawers: %s", err.msg);
    if (!d1 || !d32 || !d128 || !s1 || !s32 || !s128)
        GN_TEST_MAIN_END();

    const profile one[] = {{1, {1.0f}, 1.0f}, {1, {1.0f}, 0.5f}, {1, {0.5f}, 1.0f}};
    const profile several[] = {{3, {0.8f, 0.4f, 0.0f}, 0.5f}, {2, {1.0f, 0.5f}, 1.0f}};
    const profile negw[] = {{2, {1.0f, -0.3f}, 1.0f}, {1, {-0.5f}, 1.0f}};
    const profile zero[] = {{2, {0.0f, 0.0f}, 1.0f}, {0, {0}, 1.0f}};
    const int K_lm[] = {64, 256, 1024};
    const int K_small[] = {1, 4, 16, 64, 4096};
    const int K_flat[] = {64, 256};
    const int sc = big ? 4 : 1;

    /* 1000 columns: every family, many seeds */
    run_family(d1, s1, FAM_LM, 1000, one, 3, K_small, 5, 12 * sc, 1);
    run_family(d1, s1, FAM_SEVERAL, 1000, several, 2, K_lm, 3, 8 * sc, 1);
    run_family(d1, s1, FAM_NEGW, 1000, negw, 2, K_lm, 3, 8 * sc, 1);
    run_family(d1, s1, FAM_ZERO, 1000, zero, 2, K_lm, 3, 6 * sc, 1);
    run_family(d1, s1, FAM_ADV, 1000, one, 3, K_lm, 3, 8 * sc, 1);
    run_family(d1, s1, FAM_INDEP, 1000, one, 3, K_lm, 3, 6 * sc, 0);
    run_family(d1, s1, FAM_FLAT, 1000, one, 1, K_flat, 2, 2 * sc, 0);
    run_family(d1, s1, FAM_NEARFLAT, 1000, one, 1, K_flat, 2, 3 * sc, 0);
    run_family(d1, s1, FAM_NEGINF, 1000, one, 3, K_lm, 3, 6 * sc, 1);
    /* 32000 columns: LM-like rows, K 64 / 256 / 1024 */
    run_family(d32, s32, FAM_LM, 32000, one, 3, K_lm, 3, 24 * sc, 1);
    run_family(d32, s32, FAM_SEVERAL, 32000, several, 2, K_lm, 3, 4 * sc, 1);
    run_family(d32, s32, FAM_NEGW, 32000, negw, 2, K_lm, 3, 4 * sc, 1);
    run_family(d32, s32, FAM_ADV, 32000, one, 3, K_lm, 3, 3 * sc, 1);
    run_family(d32, s32, FAM_INDEP, 32000, one, 3, K_lm, 3, 6 * sc, 0);
    run_family(d32, s32, FAM_HEAVY, 32000, one, 1, K_lm, 3, 2 * sc, 0);
    /* 128256 columns: a few */
    run_family(d128, s128, FAM_LM, 128256, one, 3, K_lm, 3, 6 * sc, 1);

    CHECK(g_n_dense > 1000 && g_bad_dense == 0, "%ld of %ld dense draws differ from combine + sample",
          g_bad_dense, g_n_dense);
    CHECK(g_bad_tv == 0, "%ld sparse draws outside their TV bound", g_bad_tv);
    CHECK(g_bad_greedy == 0, "%ld greedy sparse tokens differ from dense", g_bad_greedy);
    CHECK(g_bad_loop == 0, "%ld fetch-loop violations", g_bad_loop);
    CHECK(g_bad_lp == 0, "%ld log-prob violations", g_bad_lp);
    CHECK(g_bad_rng == 0, "%ld rng violations", g_bad_rng);
    CHECK(g_bad_dist == 0, "%ld dist/draw disagreements", g_bad_dist);
    long done = 0;
    for (int f = 0; f < N_FAM; f++)
        for (int ni = 0; ni < 3; ni++)
            for (int k = 0; k < 8; k++)
                done += g_stat[0][f][ni][k].at_once + g_stat[0][f][ni][k].after_values;
    CHECK(done > 0, "some sparse draws certified");
    print_stats();

    gn_drawer_free(d1);
    gn_drawer_free(d32);
    gn_drawer_free(d128);
    gn_sampler_free(s1);
    gn_sampler_free(s32);
    gn_sampler_free(s128);
    printf("(%.1f s CPU)\n", (double)clock() / CLOCKS_PER_SEC - t0);
    GN_TEST_MAIN_END();
}
