/* bench_gpu.c — decode throughput of the CUDA backend.
 *
 * For a ~1B-shaped and a 7B-shaped random BF16 Llama model: decode tokens/s
 * at batch 1, 8, 32 and 64 through the real engine (gn_model_load +
 * gn_runner_step, log-probs downloaded every step), with the runner's
 * recorded decode steps (CUDA graphs, the default) and without them
 * (GN_RUNNER_GRAPHS=0 when the runner is created), and the achieved fraction
 * of HBM bandwidth (plus batch 1 recorded with programmatic dependent launch
 * off, and with the fused decode ops off: gn_backend_cuda_set_fuse):
 *
 *     weight bytes read per step × steps/s ÷ device-to-device copy bandwidth
 *
 * where the copy bandwidth (bytes read + bytes written per second) is
 * measured in the same run. Then guided decoding — the 7B base and the 1B ARM
 * on one GPU, both stepped every token, log-probs combined on the host
 * (gn_guidance_combine) and the next tokens chosen by the library's sampler
 * (greedy), the ARM step after the base step on one CUDA stream or beside it
 * on a second backend (its own stream, its own host thread) — against
 * base-only decoding with the same loop. Also a matmul micro-benchmark (GEMV kernel with and
 * without programmatic dependent launch, cuBLAS; single weights and the
 * fused q/k/v and gate/up launches of matmul_multi) on the 7B projection
 * shapes, which decides GN_CUDA_GEMV_MAX; the log-prob download into pageable
 * and into page-locked host memory (gn_backend_host_alloc, what the workers
 * and this bench use); for each shape, where an eager decode step's GPU time
 * goes, op by op (gn_backend_cuda_profile, batch 1 with the fused ops on and
 * off, batch 64); and in the guided table the host's share of each step
 * (combining and sampling).
 *
 * How the weights are made: writing a 13.5 GB safetensors file would take
 * minutes, so the bench writes config.json and a *sparse* model.safetensors
 * (a real header, then ftruncate: the data area is a hole that reads as
 * zeros and takes no disk), loads it with the ordinary loader onto the GPU,
 * deletes the file, and then overwrites every weight on the device with
 * deterministic random values (gn_backend_cuda_fill_random: uniform with the
 * std of a freshly initialised model; norms around 1). So the model goes
 * through the same loader, upload and runner as a real one.
 *
 * Usage: bench_gpu [--quick | --matmul]   (--quick: 1B only, fewer steps;
 *        --matmul: the matmul micro-benchmark only)
 * Environment: GN_BENCH_DIR (scratch directory, default /tmp).
 * Exits 77 without a GPU (or in a build without CUDA). */
#if defined(__has_include)
#if __has_include("backend_cuda.h")
#define GN_BENCH_HAVE_CUDA 1
#endif
#endif

#include <stdio.h>

#ifndef GN_BENCH_HAVE_CUDA
int main(void) {
    printf("skipped: built without the CUDA backend\n");
    return 77;
}
#else

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "gn_alloc.h"
#include "guidance.h"
#include "model.h"
#include "model_config.h"
#include "runner.h"
#include "sampler.h"

typedef struct shape {
    const char *name;
    int dim, n_layers, n_heads, n_kv_heads, ffn, n_vocab;
} shape;

static const shape k_1b = {"1B", 2048, 16, 16, 4, 5632, 32000};
static const shape k_7b = {"7B", 4096, 32, 32, 32, 11008, 32000};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, const char *msg) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, msg);
    exit(1);
}

/* ---- a sparse random-weight model directory ------------------------------ */

typedef struct tdesc {
    char name[96];
    int64_t rows, cols; /* rows = 0: a vector of cols */
} tdesc;

static int llama_tensors(const shape *s, tdesc *t) {
    int n = 0;
    const int64_t D = s->dim, hd = s->dim / s->n_heads, KV = (int64_t)s->n_kv_heads * hd;
#define T(R, C, ...) (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].rows = (R), t[n].cols = (C), n++)
    T(s->n_vocab, D, "model.embed_tokens.weight");
    for (int l = 0; l < s->n_layers; l++) {
        T(D, D, "model.layers.%d.self_attn.q_proj.weight", l);
        T(KV, D, "model.layers.%d.self_attn.k_proj.weight", l);
        T(KV, D, "model.layers.%d.self_attn.v_proj.weight", l);
        T(D, D, "model.layers.%d.self_attn.o_proj.weight", l);
        T(s->ffn, D, "model.layers.%d.mlp.gate_proj.weight", l);
        T(s->ffn, D, "model.layers.%d.mlp.up_proj.weight", l);
        T(D, s->ffn, "model.layers.%d.mlp.down_proj.weight", l);
        T(0, D, "model.layers.%d.input_layernorm.weight", l);
        T(0, D, "model.layers.%d.post_attention_layernorm.weight", l);
    }
    T(0, D, "model.norm.weight");
    T(s->n_vocab, D, "lm_head.weight");
#undef T
    return n;
}

/* path = dir/name, or exit when it does not fit. */
static void join(char *path, size_t cap, const char *dir, const char *name) {
    if (snprintf(path, cap, "%s/%s", dir, name) >= (int)cap) die(dir, "path too long");
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) die(path, strerror(errno));
}

static void make_sparse_model(const shape *s, const char *dir) {
    char path[512], buf[2048];
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) die(dir, strerror(errno));
    join(path, sizeof path, dir, "config.json");
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\",\n"
             " \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d,\n"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"vocab_size\": %d,\n"
             " \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0,\n"
             " \"rope_scaling\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\",\n"
             " \"hidden_act\": \"silu\", \"attention_bias\": false, \"bos_token_id\": 1, \"eos_token_id\": 2}\n",
             s->dim, s->ffn, s->n_layers, s->n_heads, s->n_kv_heads, s->n_vocab);
    write_file(path, buf);

    tdesc *t = calloc((size_t)s->n_layers * 9 + 3, sizeof *t);
    int n = llama_tensors(s, t);
    size_t cap = (size_t)n * 160 + 64, len = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)(t[i].rows ? t[i].rows : 1) * (uint64_t)t[i].cols * 2;
        if (t[i].rows)
            len += (size_t)snprintf(hdr + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%" PRId64 ",%" PRId64
                                    "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}",
                                    t[i].name, t[i].rows, t[i].cols, off, off + bytes);
        else
            len += (size_t)snprintf(hdr + len, cap - len,
                                    ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%" PRId64
                                    "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}",
                                    t[i].name, t[i].cols, off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';
    join(path, sizeof path, dir, "model.safetensors");
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) die(path, strerror(errno));
    uint8_t n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (uint8_t)((uint64_t)len >> (8 * i));
    if (write(fd, n8, 8) != 8 || write(fd, hdr, len) != (ssize_t)len ||
        ftruncate(fd, (off_t)(8 + len + off)) != 0 || close(fd) != 0)
        die(path, strerror(errno));
    free(hdr);
    free(t);
}

static void remove_model_dir(const char *dir) {
    char path[512];
    join(path, sizeof path, dir, "model.safetensors");
    unlink(path);
    join(path, sizeof path, dir, "config.json");
    unlink(path);
    rmdir(dir);
}

static void fill(gn_backend *be, const gn_tensor *t, uint64_t seed, float scale, float offset) {
    if (!t->data) return;
    if (gn_backend_cuda_fill_random(be, t->data, t->dtype, (size_t)t->rows * (size_t)t->cols, seed,
                                    scale, offset))
        die("fill_random", be->err.msg);
}

/* Loads the sparse model onto be and randomises its weights on the device. */
static gn_model *load_random_model(gn_backend *be, const shape *s, const char *root,
                                   uint64_t seed) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/gn_bench_%s_%d", root, s->name, (int)getpid());
    double t0 = now_s();
    make_sparse_model(s, dir);
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 0;
    gn_err err = {0};
    gn_model *m = gn_model_load(dir, be, &mp, &err);
    remove_model_dir(dir);
    if (!m) die("gn_model_load", err.msg);
    double t1 = now_s();
    const gn_weights *w = gn_model_weights(m);
    const gn_model_config *c = gn_model_cfg(m);
    const float a = 0.02f * sqrtf(3.0f); /* uniform with std 0.02 */
    fill(be, &w->embed, seed + 1, a, 0.0f);
    fill(be, &w->final_norm, seed + 2, 0.1f, 1.0f);
    if (w->lm_head.data != w->embed.data) fill(be, &w->lm_head, seed + 3, a, 0.0f);
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        uint64_t s0 = seed + 100 + 20 * (uint64_t)l;
        fill(be, &L->attn_norm, s0 + 0, 0.1f, 1.0f);
        fill(be, &L->ffn_norm, s0 + 1, 0.1f, 1.0f);
        fill(be, &L->wq, s0 + 2, a, 0.0f);
        fill(be, &L->wk, s0 + 3, a, 0.0f);
        fill(be, &L->wv, s0 + 4, a, 0.0f);
        fill(be, &L->wo, s0 + 5, a, 0.0f);
        fill(be, &L->w_gate, s0 + 6, a, 0.0f);
        fill(be, &L->w_up, s0 + 7, a, 0.0f);
        fill(be, &L->w_down, s0 + 8, a, 0.0f);
    }
    if (be->ops->synchronize(be)) die("synchronize", be->err.msg);
    printf("  %s: %.2f GB of BF16 weights, loaded in %.1f s (sparse file + upload), randomised in %.2f s\n",
           s->name, gn_model_weight_bytes(m) / 1e9, t1 - t0, now_s() - t1);
    return m;
}

/* Bytes of weights one decode step reads: everything but the embedding table
 * (of which only the batch's rows are read). */
static double step_weight_bytes(gn_model *m) {
    const gn_weights *w = gn_model_weights(m);
    double b = (double)gn_model_weight_bytes(m);
    if (w->lm_head.data != w->embed.data) b -= (double)gn_tensor_nbytes(&w->embed);
    return b;
}

/* ---- decode loops -------------------------------------------------------- */

typedef struct decoder {
    gn_runner *r;
    gn_seq *seqs[64];
    int n_out;
} decoder;

/* A runner for up to max_seqs sequences of ctx tokens; graphs = 0 creates it
 * with the runner's decode-step recording switched off. */
static gn_runner *make_runner(gn_model *m, int ctx, int max_seqs, int graphs) {
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = max_seqs;
    rp.max_ctx = ctx;
    rp.block_size = 16;
    rp.n_blocks = max_seqs * ((ctx + 15) / 16) + 8;
    rp.max_batch_tokens = 512;
    if (!graphs) setenv("GN_RUNNER_GRAPHS", "0", 1);
    gn_err err = {0};
    gn_runner *r = gn_runner_create(m, &rp, &err);
    if (!graphs) unsetenv("GN_RUNNER_GRAPHS");
    if (!r) die("gn_runner_create", err.msg);
    return r;
}

static void start_batch(decoder *d, gn_model *m, gn_runner *r, int B, int prompt_len, float *out) {
    gn_err err = {0};
    d->r = r;
    d->n_out = gn_model_n_out(m);
    int32_t *prompt = malloc((size_t)B * prompt_len * sizeof *prompt);
    gn_step_item items[64];
    for (int b = 0; b < B; b++) {
        if (!(d->seqs[b] = gn_seq_create(r, &err))) die("gn_seq_create", err.msg);
        for (int i = 0; i < prompt_len; i++) prompt[b * prompt_len + i] = 3 + (b * 131 + i * 17) % 30000;
        items[b] = (gn_step_item){d->seqs[b], prompt + b * prompt_len, prompt_len, 0};
    }
    if (gn_runner_step(r, items, B, out, &err)) die("prefill", err.msg);
    free(prompt);
}

static void end_batch(decoder *d, int B) {
    for (int b = 0; b < B; b++) gn_seq_free(d->seqs[b]);
}

/* Greedy tokens of B rows of n log-probs through the library's sampler (what
 * the coordinator runs for each sequence). */
static void sample_rows(gn_sampler *smp, const float *x, int B, int n, int32_t *tok) {
    gn_sampler_params sp = gn_sampler_default_params();
    sp.temperature = 0.0f;
    gn_rng rng;
    gn_rng_seed(&rng, 1);
    gn_err err = {0};
    for (int b = 0; b < B; b++) {
        int t = gn_sampler_sample(smp, &sp, &rng, x + (size_t)b * n, n, &err);
        if (t < 0) die("sample", err.msg);
        tok[b] = t;
    }
}

/* The ARM stepped on its own host thread (and its own backend, so its own
 * CUDA stream): the base and the ARM steps of one token run at the same time,
 * as a base worker and a reward worker do. */
typedef struct arm_thread {
    pthread_t th;
    sem_t go, done;
    decoder *d;
    int B;
    const int32_t *tok;
    float *lp;
    int quit;
} arm_thread;

static void *arm_main(void *p) {
    arm_thread *a = p;
    gn_step_item items[64];
    gn_err err = {0};
    for (;;) {
        sem_wait(&a->go);
        if (a->quit) break;
        for (int b = 0; b < a->B; b++) items[b] = (gn_step_item){a->d->seqs[b], &a->tok[b], 1, 0};
        if (gn_runner_step(a->d->r, items, a->B, a->lp, &err)) die("decode step (arm thread)", err.msg);
        sem_post(&a->done);
    }
    return NULL;
}

static void arm_thread_start(arm_thread *a) {
    memset(a, 0, sizeof *a);
    if (sem_init(&a->go, 0, 0) || sem_init(&a->done, 0, 0) || pthread_create(&a->th, NULL, arm_main, a))
        die("arm thread", strerror(errno));
}

static void arm_thread_stop(arm_thread *a) {
    a->quit = 1;
    sem_post(&a->go);
    pthread_join(a->th, NULL);
    sem_destroy(&a->go);
    sem_destroy(&a->done);
}

/* Host seconds spent combining and sampling by decode_steps (summed). */
static double g_host_s;
static gn_sampler *g_smp;

/* Runs `steps` decode steps of B sequences on base (and arm when non-NULL,
 * combining with alpha 1; on thread `at` when non-NULL, concurrently with the
 * base step); returns seconds. */
static double decode_steps(decoder *base, decoder *arm, arm_thread *at, int B, int steps, float *lp_base,
                           float *lp_arm) {
    gn_err err = {0};
    int32_t tok[64];
    gn_step_item items[64];
    gn_guidance g = gn_guidance_default();
    g.n_arms = 1;
    sample_rows(g_smp, lp_base, B, base->n_out, tok);
    double t0 = now_s();
    for (int s = 0; s < steps; s++) {
        if (at) {
            at->d = arm, at->B = B, at->tok = tok, at->lp = lp_arm;
            sem_post(&at->go);
        }
        for (int b = 0; b < B; b++) items[b] = (gn_step_item){base->seqs[b], &tok[b], 1, 0};
        if (gn_runner_step(base->r, items, B, lp_base, &err)) die("decode step (base)", err.msg);
        if (arm) {
            if (at) {
                sem_wait(&at->done);
            } else {
                for (int b = 0; b < B; b++) items[b] = (gn_step_item){arm->seqs[b], &tok[b], 1, 0};
                if (gn_runner_step(arm->r, items, B, lp_arm, &err)) die("decode step (arm)", err.msg);
            }
            g_host_s -= now_s();
            for (int b = 0; b < B; b++) {
                const float *arm_row = lp_arm + (size_t)b * arm->n_out;
                float *row = lp_base + (size_t)b * base->n_out;
                gn_guidance_combine(&g, row, &arm_row, row, base->n_out);
            }
            g_host_s += now_s();
        }
        g_host_s -= now_s();
        sample_rows(g_smp, lp_base, B, base->n_out, tok);
        g_host_s += now_s();
    }
    return now_s() - t0;
}

/* Guided tokens/s of B sequences: the 7B base on rb and the 1B ARM on ra,
 * both stepped every token (3 warm-up steps, 24 timed), the ARM on thread at
 * when non-NULL; *host_ms: the host's combining + sampling per step. */
static double guided_rate(gn_model *mb, gn_runner *rb, gn_model *ma, gn_runner *ra, arm_thread *at, int B,
                          int prompt_len, float *lp_base, float *lp_arm, double *host_ms) {
    decoder db, da;
    start_batch(&db, mb, rb, B, prompt_len, lp_base);
    start_batch(&da, ma, ra, B, prompt_len, lp_arm);
    decode_steps(&db, &da, at, B, 3, lp_base, lp_arm);
    const int steps = 24;
    g_host_s = 0;
    double t = decode_steps(&db, &da, at, B, steps, lp_base, lp_arm);
    end_batch(&db, B);
    end_batch(&da, B);
    *host_ms = 1e3 * g_host_s / steps;
    return steps * B / t;
}

/* ---- matmul micro-benchmark ----------------------------------------------- */

/* GB/s of weights read by matmul (n_mats == 1) or matmul_multi over n_mats
 * weights of rows x cols each, at batch n, GEMV (gemv_max 8) or cuBLAS
 * (gemv_max 0). The weights rotate over copies in a 262 MB region so that
 * they never sit in L2 (50 MB) between calls, as in a real forward pass. */
static double time_matmul(gn_backend *be, void *wreg, size_t wmax, const float *x, float *y, int n_mats,
                          int rows, int cols, int n, int gemv) {
    size_t elems = (size_t)rows * (size_t)cols, set = elems * (size_t)n_mats;
    int n_sub = (int)(wmax / set);
    double bytes = (double)set * 2;
    int iters = (int)(40e9 / bytes) + 5;
    int old = gn_backend_cuda_set_gemv_max(be, gemv ? 8 : 0);
    gn_tensor tw[GN_MATMUL_MULTI_MAX];
    const gn_tensor *ws[GN_MATMUL_MULTI_MAX];
    float *ys[GN_MATMUL_MULTI_MAX];
    double t0 = 0;
    for (int i = -3; i < iters; i++) {
        if (i == 0) {
            if (be->ops->synchronize(be)) die("synchronize", be->err.msg);
            t0 = now_s();
        }
        uint16_t *base = (uint16_t *)wreg + (size_t)((i + 3) % n_sub) * set;
        for (int k = 0; k < n_mats; k++) {
            tw[k] = (gn_tensor){base + (size_t)k * elems, GN_BF16, rows, cols};
            ws[k] = &tw[k];
            ys[k] = y + (size_t)k * 8 * (size_t)rows;
        }
        int rc = n_mats == 1 ? be->ops->matmul(be, y, x, &tw[0], NULL, n)
                             : be->ops->matmul_multi(be, n_mats, ys, x, ws, NULL, n);
        if (rc) die("matmul", be->err.msg);
    }
    if (be->ops->synchronize(be)) die("synchronize", be->err.msg);
    double t = now_s() - t0;
    gn_backend_cuda_set_gemv_max(be, old);
    return bytes * iters / t / 1e9;
}

static void bench_matmul(gn_backend *be, double copy_gbps) {
    static const struct { const char *name; int n_mats, rows, cols; } cases[] = {
        {"4096x4096", 1, 4096, 4096},          {"11008x4096", 1, 11008, 4096},
        {"4096x11008", 1, 4096, 11008},        {"32000x4096", 1, 32000, 4096},
        {"q/k/v 3x4096x4096", 3, 4096, 4096}, {"gate/up 2x11008x4096", 2, 11008, 4096},
    };
    size_t wmax = (size_t)32000 * 4096;
    void *w = be->ops->alloc(be, wmax * 2);
    float *x = be->ops->alloc(be, (size_t)8 * 11008 * 4), *y = be->ops->alloc(be, (size_t)3 * 8 * 32000 * 4);
    if (!w || !x || !y) die("alloc", be->err.msg);
    if (gn_backend_cuda_fill_random(be, w, GN_BF16, wmax, 99, 0.03f, 0.0f) ||
        gn_backend_cuda_fill_random(be, x, GN_F32, (size_t)8 * 11008, 98, 1.0f, 0.0f) ||
        be->ops->synchronize(be))
        die("fill_random", be->err.msg);
    int pdl = gn_backend_cuda_set_pdl(be, 1);
    gn_backend_cuda_set_pdl(be, pdl);
    printf("\nmatmul, BF16 weights, GB/s of weights read (%% of copy bandwidth); n=1: GEMV kernel |\n"
           "GEMV without programmatic dependent launch | cuBLAS; n=2..8: GEMV | cuBLAS (PDL %s)\n",
           pdl ? "on" : "unavailable: the first two n=1 columns are the same");
    printf("  %-21s %-30s %-20s %-20s %-20s\n", "weights (R x C)", "n=1", "n=2", "n=4", "n=8");
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        char line[320];
        int len = snprintf(line, sizeof line, "  %-21s", cases[ci].name);
        const int ns[4] = {1, 2, 4, 8};
        for (int k = 0; k < 4; k++) {
            double g = time_matmul(be, w, wmax, x, y, cases[ci].n_mats, cases[ci].rows, cases[ci].cols, ns[k], 1);
            len += snprintf(line + len, sizeof line - (size_t)len, " %4.0f(%2.0f%%)", g, 100 * g / copy_gbps);
            if (k == 0) {
                gn_backend_cuda_set_pdl(be, 0);
                g = time_matmul(be, w, wmax, x, y, cases[ci].n_mats, cases[ci].rows, cases[ci].cols, 1, 1);
                gn_backend_cuda_set_pdl(be, pdl);
                len += snprintf(line + len, sizeof line - (size_t)len, "|%4.0f(%2.0f%%)", g, 100 * g / copy_gbps);
            }
            g = time_matmul(be, w, wmax, x, y, cases[ci].n_mats, cases[ci].rows, cases[ci].cols, ns[k], 0);
            len += snprintf(line + len, sizeof line - (size_t)len, "|%4.0f(%2.0f%%)", g, 100 * g / copy_gbps);
        }
        printf("%s\n", line);
    }
    be->ops->free(be, w);
    be->ops->free(be, x);
    be->ops->free(be, y);
}

/* Decode steps per second of B sequences on runner r (prefill, three
 * warm-up steps: eager, recorded, replayed; then `steps` timed ones). */
static double decode_rate(gn_model *m, gn_runner *r, int B, int prompt_len, int steps, float *lp,
                          float *lp2) {
    decoder d;
    start_batch(&d, m, r, B, prompt_len, lp);
    decode_steps(&d, NULL, NULL, B, 3, lp, lp2);
    double t = decode_steps(&d, NULL, NULL, B, steps, lp, lp2);
    end_batch(&d, B);
    return steps / t;
}

/* ---- where the time goes ----------------------------------------------------- */

/* GPU time per op of `steps` eager decode steps of B sequences
 * (gn_backend_cuda_profile: CUDA events between ops). */
static void profile_steps(gn_backend *be, gn_model *m, const char *what, int B, int prompt_len, int steps,
                          float *lp, float *lp2) {
    gn_runner *r = make_runner(m, 128, B, 0);
    decoder d;
    start_batch(&d, m, r, B, prompt_len, lp);
    decode_steps(&d, NULL, NULL, B, 2, lp, lp2);
    if (gn_backend_cuda_profile(be, 1)) die("profile", be->err.msg);
    double t = decode_steps(&d, NULL, NULL, B, steps, lp, lp2);
    printf("  %s, batch %d, eager steps profiled (%.3f ms/step with the events):\n", what, B, 1e3 * t / steps);
    gn_backend_cuda_profile_report(be, stdout, steps);
    gn_backend_cuda_profile(be, 0);
    end_batch(&d, B);
    gn_runner_free(r);
}

/* Microseconds per download of B rows of 32000 log-probs into pageable
 * (malloc) and into page-locked (gn_backend_host_alloc) host memory. */
static void bench_download(gn_backend *be) {
    const size_t max = (size_t)64 * 32000 * sizeof(float);
    void *dev = be->ops->alloc(be, max), *pinned = gn_backend_host_alloc(be, max);
    unsigned char *pageable = malloc(max);
    if (!dev || !pageable || !pinned) die("download bench", "allocation");
    memset(pageable, 0, max);
    printf("\nlog-prob download (B x 32000 floats), us per download: pageable | pinned host memory\n");
    const int batches[3] = {1, 8, 64};
    for (int bi = 0; bi < 3; bi++) {
        size_t n = (size_t)batches[bi] * 32000 * sizeof(float);
        double us[2];
        for (int k = 0; k < 2; k++) {
            void *dst = k ? pinned : (void *)pageable;
            double t0 = 0;
            for (int i = -3; i < 20; i++) {
                if (i == 0) t0 = now_s();
                if (be->ops->download(be, dst, dev, n)) die("download", be->err.msg);
            }
            us[k] = 1e6 * (now_s() - t0) / 20;
        }
        printf("  B=%-3d %8.1f | %8.1f  (%.1f | %.1f GB/s)\n", batches[bi], us[0], us[1], n / us[0] / 1e3,
               n / us[1] / 1e3);
    }
    gn_backend_host_free(be, pinned);
    free(pageable);
    be->ops->free(be, dev);
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    int matmul_only = argc > 1 && !strcmp(argv[1], "--matmul");
    if (gn_backend_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *root = getenv("GN_BENCH_DIR");
    if (!root || !*root) root = "/tmp";
    gn_err err = {0};
    gn_backend *be = gn_backend_cuda_create(0, &err);
    if (!be) die("cuda:0", err.msg);
    char name[160];
    size_t fr = 0, tot = 0;
    if (gn_backend_cuda_device_info(be, name, sizeof name, &fr, &tot)) die("device_info", be->err.msg);
    double copy_gbps = 0;
    if (gn_backend_cuda_copy_bandwidth(be, (size_t)1 << 30, 20, &copy_gbps))
        die("copy bandwidth", be->err.msg);
    printf("device: %s, %.1f GiB free of %.1f\n", name, fr / 1073741824.0, tot / 1073741824.0);
    printf("device-to-device copy: %.0f GB/s (bytes read + written; the roofline below)\n", copy_gbps);
    printf("KV cache dtype %s\n", gn_dtype_name(be->kv_dtype));

    bench_matmul(be, copy_gbps);
    if (matmul_only) {
        be->ops->destroy(be);
        return 0;
    }
    bench_download(be);

    const int batches[4] = {1, 8, 32, 64};
    const int prompt_len = 32;
    const int ctx = 128; /* prompt + warm-up + timed steps fit */
    g_smp = gn_sampler_create(32000, &err);
    if (!g_smp) die("sampler", err.msg);
    /* Page-locked, as the workers' output buffers (gn_backend_host_alloc). */
    float *lp_base = gn_backend_host_alloc(be, (size_t)64 * 32000 * sizeof(float));
    float *lp_arm = gn_backend_host_alloc(be, (size_t)64 * 32000 * sizeof(float));
    if (!lp_base || !lp_arm) die("host_alloc", be->err.msg);
    double base_tps[4] = {0};
    gn_model *m1 = NULL, *m7 = NULL;
    gn_runner *r1 = NULL, *r7 = NULL;

    printf("\ndecode through gn_runner_step (prompt %d tokens per sequence, then timed steps of one\n"
           "token each; log-probs of every sequence downloaded every step), eager and with the\n"
           "runner's recorded decode steps (CUDA graphs; tokens/s, GB/s and roofline are for these)\n",
           prompt_len);
    const shape *shapes[2] = {&k_1b, &k_7b};
    for (int si = 0; si < (quick ? 1 : 2); si++) {
        const shape *s = shapes[si];
        gn_model *m = load_random_model(be, s, root, 1000 * (uint64_t)(si + 1));
        gn_runner *r = make_runner(m, ctx, 64, 1);
        gn_runner *re = make_runner(m, ctx, 64, 0);
        double wb = step_weight_bytes(m);
        int steps = quick ? 8 : si == 0 ? 64 : 32;
        printf("  %-3s %5s %14s %14s %10s %12s %9s\n", "", "batch", "eager ms/step", "graph ms/step",
               "tokens/s", "weights GB/s", "roofline");
        for (int bi = 0; bi < 4; bi++) {
            int B = batches[bi];
            double se = decode_rate(m, re, B, prompt_len, steps, lp_base, lp_arm);
            double sg = decode_rate(m, r, B, prompt_len, steps, lp_base, lp_arm);
            printf("  %-3s %5d %14.3f %14.3f %10.1f %12.0f %8.1f%%\n", s->name, B, 1e3 / se, 1e3 / sg,
                   sg * B, wb * sg / 1e9, 100.0 * wb * sg / 1e9 / copy_gbps);
            if (si == 1) base_tps[bi] = sg * B;
        }
        gn_runner_free(re);
        /* The effect of programmatic dependent launch on a whole step: batch
         * 1 recorded without it (a fresh runner: recordings keep the mode
         * they were made in). */
        if (gn_backend_cuda_set_pdl(be, 0)) {
            gn_runner *rn = make_runner(m, ctx, 1, 1);
            double sn = decode_rate(m, rn, 1, prompt_len, steps, lp_base, lp_arm);
            gn_runner_free(rn);
            gn_backend_cuda_set_pdl(be, 1);
            printf("  %-3s %5d %14s %14.3f %10.1f %12.0f %8.1f%%   (graph, PDL off)\n", s->name, 1, "", 1e3 / sn,
                   sn, wb * sn / 1e9, 100.0 * wb * sn / 1e9 / copy_gbps);
        }
        /* The effect of the fused decode ops (add_rmsnorm, rope_qk, KV write
         * inside attention): batch 1 recorded without them. */
        {
            int was = gn_backend_cuda_set_fuse(be, 0);
            gn_runner *rn = make_runner(m, ctx, 1, 1);
            double sn = decode_rate(m, rn, 1, prompt_len, steps, lp_base, lp_arm);
            gn_runner_free(rn);
            gn_backend_cuda_set_fuse(be, was);
            printf("  %-3s %5d %14s %14.3f %10.1f %12.0f %8.1f%%   (graph, fused ops off)\n", s->name, 1, "",
                   1e3 / sn, sn, wb * sn / 1e9, 100.0 * wb * sn / 1e9 / copy_gbps);
        }
        /* Where a step's GPU time goes (eager, fused ops on and off). */
        profile_steps(be, m, s->name, 1, prompt_len, 8, lp_base, lp_arm);
        {
            int was = gn_backend_cuda_set_fuse(be, 0);
            profile_steps(be, m, "fused ops off", 1, prompt_len, 8, lp_base, lp_arm);
            gn_backend_cuda_set_fuse(be, was);
        }
        profile_steps(be, m, s->name, 64, prompt_len, 8, lp_base, lp_arm);
        if (si == 0) m1 = m, r1 = r;
        else m7 = m, r7 = r;
    }

    if (m1 && m7) {
        /* The ARM once more on a backend of its own (its own CUDA stream),
         * stepped on its own thread: base and ARM steps overlap on the GPU,
         * as a base worker's and a reward worker's do. */
        gn_backend *be2 = gn_backend_cuda_create(0, &err);
        if (!be2) die("cuda:0 (second backend)", err.msg);
        gn_model *m1b = load_random_model(be2, &k_1b, root, 1000);
        gn_runner *r1b = make_runner(m1b, ctx, 64, 1);
        arm_thread at;
        arm_thread_start(&at);
        printf("\nguided decoding: 7B base + 1B ARM on one GPU, both stepped every token (graphs),\n"
               "log-probs combined on the host (alpha 1), the next tokens chosen by the library's sampler\n"
               "(greedy): the ARM step after the base step on one stream, or beside it on a stream of\n"
               "its own (a second backend, stepped from a second host thread)\n");
        printf("  %5s %14s %22s %22s %18s\n", "batch", "base tokens/s", "one stream: tok/s", "two streams: tok/s",
               "host ms/step (*)");
        for (int bi = 0; bi < 4; bi++) {
            int B = batches[bi];
            double host1, host2;
            double t1 = guided_rate(m7, r7, m1, r1, NULL, B, prompt_len, lp_base, lp_arm, &host1);
            double t2 = guided_rate(m7, r7, m1b, r1b, &at, B, prompt_len, lp_base, lp_arm, &host2);
            printf("  %5d %14.1f %13.1f (%5.2fx) %13.1f (%5.2fx) %18.3f\n", B, base_tps[bi], t1, t1 / base_tps[bi],
                   t2, t2 / base_tps[bi], host2);
        }
        arm_thread_stop(&at);
        gn_runner_free(r1b);
        gn_model_free(m1b);
        gn_backend_free(be2);
        printf("  (*) combining and sampling on the host (two streams), part of the guided time\n");
    }
    gn_runner_free(r1);
    gn_runner_free(r7);
    gn_model_free(m1);
    gn_model_free(m7);
    gn_sampler_free(g_smp);
    gn_backend_host_free(be, lp_base);
    gn_backend_host_free(be, lp_arm);
    be->ops->destroy(be);
    return 0;
}
#endif
