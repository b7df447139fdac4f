/* bench_sampler.c — ns per gn_sampler_sample and per gn_guidance_combine at
 * Llama-2 (32000) and Qwen (152064) vocabularies, for the common decoding
 * settings: the plain-C reference kernels ("ref"), the AVX2 kernels and the
 * kernels this CPU picks ("fast": AVX-512 where it has it), side by side, with
 * their ratios; "same" says the ref and fast kernels drew the same tokens;
 * gn_guidance_combine against a plain C loop; and gn_draw (draw.h) per row at
 * 32000 and 128256 columns with one ARM: dense rows (combine + sample) against
 * sparse rows of 64 and 256 listed tokens per model, on rows where the sparse
 * draw certifies at once. Not a test: run it by hand,
 *
 *     build/bench/bench_sampler [--draw] [iterations-scale]
 *
 * --draw runs the gn_draw table only.
 *
 * Rows are LM-like log-softmax rows (a few likely tokens and a long tail),
 * eight different ones in turn so that no branch history carries over. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "draw.h"
#include "gn_alloc.h"
#include "guidance.h"
#include "sampler.h"

#define NROWS 8

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double urand(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}

static double gauss(void) {
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* log_softmax of logits 2.5 N(0, 1) with a handful of boosted tokens. */
static void lm_row(float *row, int n) {
    double m = -INFINITY, s = 0.0;
    double *x = malloc(sizeof(double) * (size_t)n);
    for (int v = 0; v < n; v++) {
        x[v] = 2.5 * gauss() + (urand() < 2e-4 ? 8.0 + 4.0 * urand() : 0.0);
        m = x[v] > m ? x[v] : m;
    }
    for (int v = 0; v < n; v++)
        s += exp(x[v] - m);
    double lse = m + log(s);
    for (int v = 0; v < n; v++)
        row[v] = (float)(x[v] - lse);
    free(x);
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static double g_scale = 1.0;
static volatile int g_sink;

/* Best of three batches of about 15 ms (times the scale) of f(arg, i). */
#define TIME_NS(out, stmt)                                                    \
    do {                                                                      \
        double best_ = 1e30;                                                  \
        long it_ = 0;                                                         \
        stmt;                                                                 \
        for (int rep_ = 0; rep_ < 3; rep_++) {                                \
            double t0_ = now_ns(), t1_ = t0_;                                 \
            long k_ = 0;                                                      \
            while (t1_ - t0_ < 15e6 * g_scale || k_ < 3) {                    \
                it_++;                                                        \
                stmt;                                                         \
                k_++;                                                         \
                t1_ = now_ns();                                               \
            }                                                                 \
            double per_ = (t1_ - t0_) / (double)k_;                           \
            best_ = per_ < best_ ? per_ : best_;                              \
        }                                                                     \
        out = best_;                                                          \
    } while (0)

/* The combination rule as a plain loop (guidance.h), the reference. */
static void plain_combine(const gn_guidance *g, const float *base, const float *const *arm, float *score, int n) {
    for (int v = 0; v < n; v++) score[v] = base[v];
    for (int i = 0; i < g->n_arms; i++) {
        float a = g->weights[i] / g->beta;
        for (int v = 0; v < n; v++) score[v] += a * arm[i][v];
    }
}

/* A peaked LM-like row for the sparse draw: a Zipf background over a random
 * ranking with a few boosted tokens; with base_z set, an ARM over the same
 * background plus noise (ARMs are tuned from related models). z: n doubles
 * of scratch, kept for the ARM when base_z is NULL. */
static void peaked_row(float *row, int n, double *z, const double *base_z, const int *head, int nh) {
    if (!base_z) {
        int *perm = malloc(sizeof(int) * (size_t)n);
        for (int v = 0; v < n; v++)
            perm[v] = v;
        for (int v = n - 1; v > 0; v--) {
            int j = (int)(urand() * (v + 1)), t = perm[v];
            perm[v] = perm[j];
            perm[j] = t;
        }
        for (int r = 0; r < n; r++)
            z[perm[r]] = -1.1 * log(1.0 + r) + 0.3 * gauss();
        free(perm);
    }
    double *x = malloc(sizeof(double) * (size_t)n), m = -INFINITY, s = 0.0;
    for (int v = 0; v < n; v++)
        x[v] = base_z ? base_z[v] + gauss() : z[v];
    for (int i = 0; i < nh; i++)
        x[head[i]] += 8.0 + 4.0 * urand();
    for (int v = 0; v < n; v++)
        m = x[v] > m ? x[v] : m;
    for (int v = 0; v < n; v++)
        s += exp(x[v] - m);
    double lse = m + log(s);
    for (int v = 0; v < n; v++)
        row[v] = (float)(x[v] - lse);
    free(x);
}

static const float *g_sel_row;
static int cmp_desc(const void *pa, const void *pb) {
    int a = *(const int *)pa, b = *(const int *)pb;
    float x = g_sel_row[a], y = g_sel_row[b];
    return x > y ? -1 : x < y ? 1 : (a > b) - (a < b);
}

/* The sparse view of row (its k largest values; a full sort: setup only). */
static void sparse_view(const float *row, int n, int k, int32_t *ids, float *vals, gn_row_view *v) {
    int *ord = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        ord[i] = i;
    g_sel_row = row;
    qsort(ord, (size_t)n, sizeof *ord, cmp_desc);
    for (int i = 0; i < k; i++) {
        ids[i] = ord[i];
        vals[i] = row[ord[i]];
    }
    double mx = row[ord[k]], s = 0.0;
    for (int i = k; i < n; i++)
        s += exp((double)row[ord[i]] - mx);
    memset(v, 0, sizeof *v);
    v->ids = ids;
    v->vals = vals;
    v->n = k;
    v->tail.floor = row[ord[k]];
    v->tail.row_min = row[ord[n - 1]];
    v->tail.tail_lse = nextafterf((float)(mx + log(s)), INFINITY);
    free(ord);
}

/* gn_draw per row, dense against sparse (K = 64, 256), one ARM. */
static void bench_draw(void) {
    const int sizes[2] = {32000, 128256}, ks[2] = {64, 256};
    struct {
        const char *name;
        float t, p;
    } dc[2] = {{"T 0.7 top-p 0.9", 0.7f, 0.9f}, {"greedy", 0.0f, 1.0f}};
    gn_err err = {0};
    printf("\ngn_draw, ns per row, one ARM (weight 1, beta 1): dense = combine + sample over n columns;\n"
           "sparse = K listed tokens per model (certified: rows of the %d where the draw is DONE at once)\n",
           NROWS);
    printf("%-18s %7s %10s %10s %10s %11s %11s\n", "case", "n", "dense", "sparse 64", "sparse 256",
           "certified", "dense/256");
    for (int si = 0; si < 2; si++) {
        const int n = sizes[si];
        gn_drawer *d = gn_drawer_create(n, &err);
        float *rows = malloc(sizeof(float) * (size_t)n * 2 * NROWS);
        double *z = malloc(sizeof(double) * (size_t)n);
        int32_t *ids = malloc(sizeof(int32_t) * 256 * 2 * NROWS * 2);
        float *vals = malloc(sizeof(float) * 256 * 2 * NROWS * 2);
        gn_row_view dv[NROWS][2], sv[2][NROWS][2];
        if (!d || !rows || !z || !ids || !vals) {
            fprintf(stderr, "bench_sampler: %s\n", err.msg);
            exit(1);
        }
        for (int r = 0; r < NROWS; r++) {
            int head[3] = {(int)(urand() * n), (int)(urand() * n), (int)(urand() * n)};
            float *b = rows + (size_t)(2 * r) * n, *a = b + n;
            peaked_row(b, n, z, NULL, head, 1 + r % 3);
            peaked_row(a, n, z, z, head, 1 + r % 3);
            memset(dv[r], 0, sizeof dv[r]);
            dv[r][0].dense = b;
            dv[r][1].dense = a;
            for (int ki = 0; ki < 2; ki++)
                for (int m = 0; m < 2; m++) {
                    size_t off = (((size_t)ki * NROWS + (size_t)r) * 2 + (size_t)m) * 256;
                    sparse_view(m ? a : b, n, ks[ki], ids + off, vals + off, &sv[ki][r][m]);
                }
        }
        for (int ci = 0; ci < 2; ci++) {
            gn_draw_params p = gn_draw_default_params();
            p.guidance.n_arms = 1;
            p.guidance.weights[0] = 1.0f;
            p.sampling.temperature = dc[ci].t;
            p.sampling.top_p = dc[ci].p;
            gn_rng rng;
            gn_rng_seed(&rng, 3);
            gn_draw_result res;
            int ok[2][NROWS], nok[2] = {0, 0};
            for (int ki = 0; ki < 2; ki++)
                for (int r = 0; r < NROWS; r++) {
                    gn_rng t = rng;
                    ok[ki][r] = gn_draw(d, &p, sv[ki][r], &t, &res, &err) == 0 &&
                                res.status == GN_DRAW_DONE;
                    nok[ki] += ok[ki][r];
                }
            /* time only certified rows (all rows when none certifies) */
            int pick[2][NROWS], np[2];
            for (int ki = 0; ki < 2; ki++) {
                np[ki] = 0;
                for (int r = 0; r < NROWS; r++)
                    if (ok[ki][r] || nok[ki] == 0)
                        pick[ki][np[ki]++] = r;
            }
            double t_dense, t_s[2];
            TIME_NS(t_dense, gn_draw(d, &p, dv[it_ % NROWS], &rng, &res, &err));
            for (int ki = 0; ki < 2; ki++)
                TIME_NS(t_s[ki], gn_draw(d, &p, sv[ki][pick[ki][it_ % np[ki]]], &rng, &res, &err));
            char cert[32];
            snprintf(cert, sizeof cert, "%d/%d, %d/%d", nok[0], NROWS, nok[1], NROWS);
            printf("%-18s %7d %10.0f %10.0f %10.0f %11s %10.0fx\n", dc[ci].name, n, t_dense, t_s[0],
                   t_s[1], cert, t_dense / t_s[1]);
            fflush(stdout);
        }
        gn_drawer_free(d);
        free(rows);
        free(z);
        free(ids);
        free(vals);
    }
}

typedef struct bcase {
    const char *name;
    float t, p, mp;
    int k;
    int flat;
} bcase;

int main(int argc, char **argv) {
    int draw_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: bench_sampler [--draw] [iterations-scale]\n"
                   "  --draw             only the gn_draw table (dense vs sparse rows)\n"
                   "  iterations-scale   multiplies the ~15 ms timing batches (default 1)\n");
            return 0;
        }
        if (!strcmp(argv[i], "--draw"))
            draw_only = 1;
        else
            g_scale = atof(argv[i]) > 0 ? atof(argv[i]) : 1.0;
    }
    if (draw_only) {
        bench_draw();
        return 0;
    }
    const int sizes[2] = {32000, 152064};
    const bcase cases[] = {
        {"greedy", 0.0f, 1.0f, 0.0f, 0, 0},         {"T 0.6", 0.6f, 1.0f, 0.0f, 0, 0},
        {"T 1.0", 1.0f, 1.0f, 0.0f, 0, 0},          {"T 0.7 top-p 0.9", 0.7f, 0.9f, 0.0f, 0, 0},
        {"T 1.0 top-p 0.95", 1.0f, 0.95f, 0.0f, 0, 0}, {"T 0.8 top-k 50", 0.8f, 1.0f, 0.0f, 50, 0},
        {"T 0.8 k 50 p 0.9", 0.8f, 0.9f, 0.0f, 50, 0}, {"T 1.0 min-p 0.05", 1.0f, 1.0f, 0.05f, 0, 0},
        {"flat, top-p 0.9", 1.0f, 0.9f, 0.0f, 0, 1},
    };
    const int ncases = (int)(sizeof cases / sizeof *cases);
    gn_err err = {0};
    printf("gn_sampler_sample, ns per token (ref: plain-C kernels; avx2: AVX2 kernels; fast: the CPU's pick)\n");
    printf("%-18s %7s %10s %10s %10s %8s %5s\n", "case", "n", "ref", "avx2", "fast", "ref/fast", "same");
    for (int si = 0; si < 2; si++) {
        const int n = sizes[si];
        float *rows = malloc(sizeof(float) * (size_t)n * NROWS);
        float *flat = malloc(sizeof(float) * (size_t)n * NROWS);
        gn_sampler *ref = gn_sampler_create(n, &err), *fast = gn_sampler_create(n, &err);
        gn_sampler *avx2 = gn_sampler_create(n, &err);
        if (!rows || !flat || !ref || !fast || !avx2) {
            fprintf(stderr, "bench_sampler: %s\n", err.msg);
            return 1;
        }
        gn_sampler_set_kernels(ref, GN_SAMPLER_KERNELS_REF, &err);
        int have_avx2 = gn_sampler_set_kernels(avx2, GN_SAMPLER_KERNELS_AVX2, &err) == 0;
        if (si == 0)
            printf("(fast = kernel set %d: 1 ref, 2 AVX2, 3 AVX-512)\n", gn_sampler_kernels(fast));
        for (int r = 0; r < NROWS; r++) {
            lm_row(rows + (size_t)r * n, n);
            for (int v = 0; v < n; v++)
                flat[(size_t)r * n + v] = (float)(-11.9 + 0.01 * urand());
        }
        for (int ci = 0; ci < ncases; ci++) {
            gn_sampler_params p = gn_sampler_default_params();
            p.temperature = cases[ci].t;
            p.top_p = cases[ci].p;
            p.min_p = cases[ci].mp;
            p.top_k = cases[ci].k;
            const float *base = cases[ci].flat ? flat : rows;
            gn_rng r1, r2, r3;
            gn_rng_seed(&r1, 7);
            gn_rng_seed(&r2, 7);
            gn_rng_seed(&r3, 7);
            int same = 1;
            for (int i = 0; i < 64; i++) { /* ref and fast agree token for token */
                const float *row = base + (size_t)(i % NROWS) * n;
                if (gn_sampler_sample(ref, &p, &r1, row, n, &err) !=
                    gn_sampler_sample(fast, &p, &r2, row, n, &err))
                    same = 0;
            }
            double t_ref, t_avx2 = 0.0, t_fast;
            TIME_NS(t_ref, g_sink = gn_sampler_sample(ref, &p, &r1,
                                                      base + (size_t)(it_ % NROWS) * n, n, &err));
            if (have_avx2)
                TIME_NS(t_avx2, g_sink = gn_sampler_sample(avx2, &p, &r3,
                                                           base + (size_t)(it_ % NROWS) * n, n,
                                                           &err));
            TIME_NS(t_fast, g_sink = gn_sampler_sample(fast, &p, &r2,
                                                       base + (size_t)(it_ % NROWS) * n, n, &err));
            printf("%-18s %7d %10.0f %10.0f %10.0f %7.1fx %5s\n", cases[ci].name, n, t_ref, t_avx2, t_fast,
                   t_ref / t_fast, same ? "yes" : "NO");
            fflush(stdout);
        }
        gn_sampler_free(ref);
        gn_sampler_free(fast);
        gn_sampler_free(avx2);
        free(rows);
        free(flat);
    }

    printf("\ngn_guidance_combine, ns per row (plain: a C loop per ARM; fused: gn_guidance_combine)\n");
    printf("%-18s %7s %11s %11s %8s\n", "ARMs", "n", "plain", "fused", "ratio");
    for (int si = 0; si < 2; si++) {
        const int n = sizes[si];
        float *base = malloc(sizeof(float) * (size_t)n), *score = malloc(sizeof(float) * (size_t)n);
        float *arm[2] = {malloc(sizeof(float) * (size_t)n), malloc(sizeof(float) * (size_t)n)};
        if (!base || !score || !arm[0] || !arm[1])
            return 1;
        lm_row(base, n);
        lm_row(arm[0], n);
        lm_row(arm[1], n);
        for (int na = 1; na <= 2; na++) {
            gn_guidance g = gn_guidance_default();
            g.n_arms = na;
            g.weights[0] = 1.0f;
            g.weights[1] = -0.5f;
            g.beta = 0.7f;
            const float *const armp[2] = {arm[0], arm[1]};
            double t_plain, t_new;
            TIME_NS(t_plain, plain_combine(&g, base, armp, score, n));
            TIME_NS(t_new, gn_guidance_combine(&g, base, armp, score, n));
            printf("%-18d %7d %11.0f %11.0f %7.1fx\n", na, n, t_plain, t_new, t_plain / t_new);
        }
        free(base);
        free(score);
        free(arm[0]);
        free(arm[1]);
    }
    bench_draw();
    return 0;
}
