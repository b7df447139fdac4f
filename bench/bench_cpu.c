/* bench_cpu.c — prefill and decode throughput of the CPU backend.
 *
 * Makes (in a temporary directory, with the model maker) a ~134M-parameter
 * Llama-shaped model — hidden 768, 12 layers, 12 heads (no GQA), FFN 2048,
 * vocabulary 32000, untied lm_head — in BF16 and in F32, loads each through
 * the ordinary loader (weights used in place from the read-only mapping) and
 * measures, through the real runner (gn_runner_step, log-probs over the full
 * vocabulary every step):
 *
 *   - prefill tokens/s for batch 1, 4 and 16 prompts of 128 tokens (one step);
 *   - decode tokens/s at batch 1, 4 and 16 (one new token per sequence per
 *     step, after those prompts), best of 5 runs of 16 steps (prefill: best
 *     of 2), since the machine may be shared;
 *   - the same for BF16 with an unmerged LoRA adapter (r 8, alpha 16, q/k/v,
 *     the paper's ARM adapters) bound to every sequence, as a reward worker
 *     serves adapter ARMs on a shared backbone, and its ratio to plain decode;
 *   - the achieved fraction of memory bandwidth of decode:
 *         weight bytes read per step × steps/s ÷ copy bandwidth
 *     where the copy bandwidth is measured here, in the same run: a 256 MiB
 *     memcpy split over the backend's threads (and one with a single thread),
 *     best of 5, counted as bytes read + bytes written per second (the
 *     convention of bench_gpu.c). It is measured before, between and after
 *     the models and the largest value is the roofline, so a noisy neighbour
 *     during one measurement cannot flatter the result. A streaming read over
 *     all threads is printed too, as the hard ceiling.
 *
 * Weight bytes per step: every layer matrix and norm, the final norm and the
 * lm_head (the embedding table is only gathered, a row per token).
 *
 * Usage: bench_cpu [--threads N] [--quick]
 *   --threads N  CPU worker threads (default: all online cores)
 *   --quick      smaller prompts and fewer steps (a smoke run, ~20 s)
 * Environment: GN_BENCH_DIR (scratch directory, default /tmp).
 * Runs in about a minute on a 2-core machine (mostly writing the models). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "backend_cpu.h"
#include "gn_alloc.h"
#include "gn_threadpool.h"
#include "lora.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ bandwidth */

typedef struct bw_job {
    char *dst;
    const char *src;
    size_t n, per_task;
    uint64_t sums[256];
} bw_job;

static void copy_task(void *ctx, int task, int thread) {
    (void)thread;
    bw_job *j = ctx;
    size_t lo = (size_t)task * j->per_task, hi = lo + j->per_task < j->n ? lo + j->per_task : j->n;
    memcpy(j->dst + lo, j->src + lo, hi - lo);
}

static void read_task(void *ctx, int task, int thread) {
    (void)thread;
    bw_job *j = ctx;
    size_t lo = (size_t)task * j->per_task, hi = lo + j->per_task < j->n ? lo + j->per_task : j->n;
    const uint64_t *p = (const uint64_t *)(j->src + lo);
    size_t n = (hi - lo) / 8;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    j->sums[task & 255] = a ^ b ^ c ^ d;
}

/* Best-of-5 rates in bytes/s: memcpy with one thread and with the pool
 * (each counted read + written), and a streaming read with the pool. */
static void measure_bandwidth(gn_pool *pool, double *copy1, double *copyn, double *readn) {
    size_t n = (size_t)256 << 20;
    char *a = gn_malloc_aligned(n, 64), *b = gn_malloc_aligned(n, 64);
    *copy1 = *copyn = *readn = 0;
    if (!a || !b) {
        gn_free_aligned(a);
        gn_free_aligned(b);
        return;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    int nt = gn_pool_size(pool);
    static bw_job j;
    j.dst = b;
    j.src = a;
    j.n = n;
    j.per_task = (n / (size_t)nt + 63) / 64 * 64;
    double best1 = 1e9, bestn = 1e9, bestr = 1e9;
    for (int it = 0; it < 5; it++) {
        double t = now_s();
        memcpy(b, a, n);
        t = now_s() - t;
        best1 = t < best1 ? t : best1;
        t = now_s();
        gn_pool_run(pool, copy_task, &j, nt);
        t = now_s() - t;
        bestn = t < bestn ? t : bestn;
        t = now_s();
        gn_pool_run(pool, read_task, &j, nt);
        t = now_s() - t;
        bestr = t < bestr ? t : bestr;
    }
    *copy1 = 2.0 * (double)n / best1;
    *copyn = 2.0 * (double)n / bestn;
    *readn = (double)n / bestr;
    gn_free_aligned(a);
    gn_free_aligned(b);
}

/* ------------------------------------------------------------------ model */

static size_t tensor_bytes(const gn_tensor *t) { return t->data ? gn_tensor_nbytes(t) : 0; }

/* Weight bytes one decode step streams (everything but the embedding table). */
static size_t step_weight_bytes(const gn_model *m) {
    const gn_model_config *c = gn_model_cfg(m);
    const gn_weights *w = gn_model_weights(m);
    size_t s = tensor_bytes(&w->final_norm) + tensor_bytes(&w->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        const gn_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->bq, &L->bk, &L->bv, &L->q_norm,
                                 &L->k_norm, &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) s += tensor_bytes(ts[i]);
    }
    return s;
}

static uint64_t g_rng = 42;
static int32_t rand_tok(int n) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((g_rng >> 33) % (uint64_t)n);
}

#define DEC_REPS 5

typedef struct result {
    double prefill_tps, decode_tps, step_ms, gbps;
} result;

/* Prefill b prompts of P tokens in one step, then decode: best of DEC_REPS
 * runs of D steps. */
static int run_batch(gn_runner *r, const gn_model *m, const gn_lora_adapter *ad, int b, int P, int D,
                     size_t step_bytes, result *res) {
    gn_err e = {0};
    int nv = gn_model_cfg(m)->n_vocab, no = gn_model_n_out(m);
    gn_seq *seqs[16] = {NULL};
    gn_step_item items[16];
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)b * (size_t)P);
    int32_t next[16];
    float *out = malloc(sizeof(float) * (size_t)b * (size_t)no);
    int rc = (prompt && out) ? 0 : -1;
    for (int i = 0; i < b * P && !rc; i++) prompt[i] = rand_tok(nv);
    /* Prefill: best of 2 (fresh sequences each time; the second ones stay
     * for decode). */
    double best = 1e9, t;
    for (int rep = 0; rep < 2 && !rc; rep++) {
        for (int s = 0; s < b; s++) {
            gn_seq_free(seqs[s]);
            seqs[s] = gn_seq_create(r, &e);
            if (ad && seqs[s] && gn_seq_set_adapter(seqs[s], ad, &e)) rc = -1;
            items[s] = (gn_step_item){seqs[s], prompt + (size_t)s * (size_t)P, P, 0};
        }
        t = now_s();
        if (!rc) rc = gn_runner_step(r, items, b, out, &e);
        t = now_s() - t;
        best = t < best ? t : best;
    }
    res->prefill_tps = (double)b * P / best;
    best = 1e9;
    for (int rep = 0; rep < DEC_REPS && !rc; rep++) {
        t = now_s();
        for (int d = 0; d < D && !rc; d++) {
            for (int s = 0; s < b; s++) {
                /* Greedy: the next token is the argmax, so the loop does what
                 * a real decode does after the step (a pass over the row). */
                const float *row = out + (size_t)s * (size_t)no;
                int arg = 0;
                for (int c = 1; c < no; c++) arg = row[c] > row[arg] ? c : arg;
                next[s] = arg;
                items[s] = (gn_step_item){seqs[s], &next[s], 1, 0};
            }
            rc = gn_runner_step(r, items, b, out, &e);
        }
        double dt = now_s() - t;
        best = dt < best ? dt : best;
    }
    if (rc) fprintf(stderr, "bench_cpu: step failed: %s\n", e.msg);
    res->decode_tps = (double)b * D / best;
    res->step_ms = best / D * 1e3;
    res->gbps = (double)step_bytes * D / best / 1e9;
    for (int s = 0; s < b; s++) gn_seq_free(seqs[s]);
    free(prompt);
    free(out);
    return rc;
}

int main(int argc, char **argv) {
    int n_threads = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else {
            fprintf(stderr, "usage: bench_cpu [--threads N] [--quick]\n");
            return 2;
        }
    }
    const char *base = getenv("GN_BENCH_DIR");
    char root[512];
    snprintf(root, sizeof root, "%s/gn_bench_cpu_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    double t_start = now_s();
    gn_err e = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = n_threads;
    gn_backend *be = gn_backend_create("cpu", &bp, &e);
    if (!be) {
        fprintf(stderr, "bench_cpu: %s\n", e.msg);
        return 1;
    }
    gn_pool *pool = gn_pool_create(n_threads);
    if (!pool) {
        fprintf(stderr, "bench_cpu: no thread pool\n");
        return 1;
    }
    int nt = gn_pool_size(pool);
    printf("CPU backend: %d threads, %s kernels\n", nt, gn_cpu_isa_name(gn_backend_cpu_isa(be)));
    double roof = 0, readmax = 0;

    const int P = quick ? 32 : 128, D = quick ? 4 : 16;
    static const int batches[3] = {1, 4, 16};
    const gn_dtype dts[2] = {GN_BF16, GN_F32};
    result res[2][3], res_lora[3];
    size_t wbytes[2] = {0, 0};
    double params_m = 0;
    int rc = 0;
    for (int di = 0; di <= 2; di++) {
        double copy1, copyn, readn;
        measure_bandwidth(pool, &copy1, &copyn, &readn);
        printf("memory: copy %.1f GB/s with %d threads, %.1f GB/s with 1 (read+written bytes/s); read %.1f GB/s\n",
               copyn / 1e9, nt, copy1 / 1e9, readn / 1e9);
        roof = copyn > roof ? copyn : roof;
        roof = copy1 > roof ? copy1 : roof;
        readmax = readn > readmax ? readn : readmax;
        if (di == 2 || rc) break;
        char dir[600];
        snprintf(dir, sizeof dir, "%s/llama_%s", root, dts[di] == GN_BF16 ? "bf16" : "f32");
        gn_make_model_params mp = gn_make_model_default_params();
        mp.arch = "llama";
        mp.dim = 768;
        mp.n_layers = 12;
        mp.n_heads = 12;
        mp.n_kv_heads = 12;
        mp.ffn_dim = 2048;
        mp.n_vocab = 32000;
        mp.dtype = dts[di];
        char lora_dir[700];
        snprintf(lora_dir, sizeof lora_dir, "%s_lora", dir);
        mp.lora_out = di == 0 ? lora_dir : NULL; /* r = 8, alpha 16 on q/k/v, as the paper's ARMs */
        double t = now_s();
        if ((rc = gn_make_model(&mp, dir, &e)) != 0) {
            fprintf(stderr, "bench_cpu: make model: %s\n", e.msg);
            break;
        }
        double t_make = now_s() - t;
        gn_model_params lp = gn_model_default_params();
        lp.load_tokenizer = 0; /* log-probs over all 32000 rows */
        gn_model *m = gn_model_load(dir, be, &lp, &e);
        if (!m) {
            fprintf(stderr, "bench_cpu: load: %s\n", e.msg);
            rc = -1;
            break;
        }
        wbytes[di] = step_weight_bytes(m);
        params_m = (double)gn_model_weight_bytes(m) / (double)gn_dtype_size(dts[di]) / 1e6;
        gn_runner_params rp = gn_runner_default_params();
        rp.max_seqs = 16;
        rp.max_ctx = 512;
        gn_runner *r = gn_runner_create(m, &rp, &e);
        if (!r) {
            fprintf(stderr, "bench_cpu: runner: %s\n", e.msg);
            gn_model_free(m);
            rc = -1;
            break;
        }
        printf("%s model: %.1fM parameters, %.1f MB of weights read per decode step (made in %.1f s)\n",
               gn_dtype_name(dts[di]), params_m, (double)wbytes[di] / 1e6, t_make);
        fflush(stdout);
        result warm;
        rc = run_batch(r, m, NULL, 1, 16, 2, wbytes[di], &warm); /* page in the mapping, warm the pool */
        for (int bi = 0; bi < 3 && !rc; bi++)
            rc = run_batch(r, m, NULL, batches[bi], P, D, wbytes[di], &res[di][bi]);
        if (!rc && di == 0) { /* the same with an unmerged LoRA adapter on every sequence */
            gn_lora_adapter *ad = gn_lora_adapter_load(m, lora_dir, &e);
            if (!ad) {
                fprintf(stderr, "bench_cpu: adapter: %s\n", e.msg);
                rc = -1;
            }
            for (int bi = 0; bi < 3 && !rc; bi++)
                rc = run_batch(r, m, ad, batches[bi], P, D, wbytes[di], &res_lora[bi]);
            gn_lora_adapter_free(ad);
        }
        gn_runner_free(r);
        gn_model_free(m);
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, lora_dir);
        if (system(cmd) != 0) fprintf(stderr, "bench_cpu: cannot remove %s\n", dir);
    }
    gn_backend_free(be);
    gn_pool_free(pool);
    rmdir(root);
    if (rc) return 1;

    printf("\nroofline: copy %.1f GB/s, read %.1f GB/s (largest measured)\n", roof / 1e9, readmax / 1e9);
    printf("prompts of %d tokens (best of 2); decode: best of %d x %d steps; bandwidth = weight bytes per step x "
           "steps/s\n", P, DEC_REPS, D);
    printf("%-5s %5s %14s %13s %10s %11s %12s %12s\n", "dtype", "batch", "prefill tok/s", "decode tok/s",
           "step ms", "weight GB/s", "% copy bw", "% read bw");
    for (int di = 0; di < 2; di++)
        for (int bi = 0; bi < 3; bi++) {
            const result *x = &res[di][bi];
            printf("%-5s %5d %14.1f %13.1f %10.2f %11.1f %11.1f%% %11.1f%%\n", gn_dtype_name(dts[di]), batches[bi],
                   x->prefill_tps, x->decode_tps, x->step_ms, x->gbps, 100.0 * x->gbps * 1e9 / roof,
                   100.0 * x->gbps * 1e9 / readmax);
        }
    printf("\nBF16 with an unmerged LoRA adapter (r 8, q/k/v) on every sequence, as a reward worker serves adapter "
           "ARMs on a shared backbone:\n");
    printf("%-5s %5s %14s %13s %10s %16s\n", "dtype", "batch", "prefill tok/s", "decode tok/s", "step ms",
           "decode vs plain");
    for (int bi = 0; bi < 3; bi++)
        printf("%-5s %5d %14.1f %13.1f %10.2f %15.2fx\n", "BF16", batches[bi], res_lora[bi].prefill_tps,
               res_lora[bi].decode_tps, res_lora[bi].step_ms, res_lora[bi].decode_tps / res[0][bi].decode_tps);
    printf("\nbatch-1 BF16 decode: %.1f%% of the copy-bandwidth roofline (goal >= 70%%); total bench time %.0f s\n",
           100.0 * res[0][0].gbps * 1e9 / roof, now_s() - t_start);
    return 0;
}
