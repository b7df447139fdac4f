/* bench_gpu.c — decode throughput of the CUDA backend.
 *
 * For a ~1B-shaped and a 7B-shaped random BF16 Llama model: decode tokens/s
 * at batch 1, 8, 32 and 64 through the real engine (gn_model_load +
 * gn_runner_step, log-probs downloaded every step), and the achieved
 * fraction of HBM bandwidth:
 *
 *     weight bytes read per step × steps/s ÷ device-to-device copy bandwidth
 *
 * where the copy bandwidth (bytes read + bytes written per second) is
 * measured in the same run. Then guided decoding — the 7B base and the 1B ARM
 * on one GPU, both stepped every token, log-probs combined on the host
 * (gn_guidance_combine) and the argmax fed back — against base-only decoding
 * with the same loop. Also a matmul micro-benchmark (GEMV kernel vs cuBLAS at
 * n = 1..8) on the 7B projection shapes, which decides GN_CUDA_GEMV_MAX.
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
 * Usage: bench_gpu [--quick]   (--quick: 1B only, fewer steps)
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

static gn_runner *make_runner(gn_model *m, int ctx) {
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 64;
    rp.max_ctx = ctx;
    rp.block_size = 16;
    rp.n_blocks = 64 * ((ctx + 15) / 16) + 8;
    rp.max_batch_tokens = 512;
    gn_err err = {0};
    gn_runner *r = gn_runner_create(m, &rp, &err);
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

static void argmax_rows(const float *x, int B, int n, int32_t *tok) {
    for (int b = 0; b < B; b++) {
        const float *row = x + (size_t)b * n;
        int best = 0;
        for (int v = 1; v < n; v++)
            if (row[v] > row[best]) best = v;
        tok[b] = best;
    }
}

/* Runs `steps` decode steps of B sequences on base (and arm when non-NULL,
 * combining with alpha 1); returns seconds. */
static double decode_steps(decoder *base, decoder *arm, int B, int steps, float *lp_base,
                           float *lp_arm) {
    gn_err err = {0};
    int32_t tok[64];
    gn_step_item items[64];
    gn_guidance g = gn_guidance_default();
    g.n_arms = 1;
    argmax_rows(lp_base, B, base->n_out, tok);
    double t0 = now_s();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++) items[b] = (gn_step_item){base->seqs[b], &tok[b], 1, 0};
        if (gn_runner_step(base->r, items, B, lp_base, &err)) die("decode step (base)", err.msg);
        if (arm) {
            for (int b = 0; b < B; b++) items[b] = (gn_step_item){arm->seqs[b], &tok[b], 1, 0};
            if (gn_runner_step(arm->r, items, B, lp_arm, &err)) die("decode step (arm)", err.msg);
            for (int b = 0; b < B; b++) {
                const float *arm_row = lp_arm + (size_t)b * arm->n_out;
                float *row = lp_base + (size_t)b * base->n_out;
                gn_guidance_combine(&g, row, &arm_row, row, base->n_out);
            }
        }
        argmax_rows(lp_base, B, base->n_out, tok);
    }
    return now_s() - t0;
}

/* ---- matmul micro-benchmark ----------------------------------------------- */

static void bench_matmul(gn_backend *be, double copy_gbps) {
    const int shapes[4][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {32000, 4096}};
    size_t wmax = (size_t)32000 * 4096;
    void *w = be->ops->alloc(be, wmax * 2);
    float *x = be->ops->alloc(be, (size_t)8 * 11008 * 4), *y = be->ops->alloc(be, (size_t)8 * 32000 * 4);
    if (!w || !x || !y) die("alloc", be->err.msg);
    fill(be, &(gn_tensor){w, GN_BF16, 1, (int64_t)wmax}, 99, 0.03f, 0.0f);
    fill(be, &(gn_tensor){x, GN_F32, 1, 8 * 11008}, 98, 1.0f, 0.0f);
    printf("\nmatmul, BF16 weights, GB/s of weights read (%% of copy bandwidth): GEMV kernel | cuBLAS\n");
    printf("  %-13s %-8s %-8s %-8s %-8s\n", "R x C", "n=1", "n=2", "n=4", "n=8");
    for (int si = 0; si < 4; si++) {
        gn_tensor tw = {w, GN_BF16, shapes[si][0], shapes[si][1]};
        double bytes = (double)gn_tensor_nbytes(&tw);
        int iters = (int)(20e9 / bytes) + 5;
        /* Rotate over copies so that the weights never sit in L2 (50 MB on
         * an H100) between calls, as in a real forward pass. */
        size_t elems = (size_t)shapes[si][0] * (size_t)shapes[si][1];
        int n_sub = (int)(wmax / elems);
        char line[256];
        int len = snprintf(line, sizeof line, "  %5dx%-7d", shapes[si][0], shapes[si][1]);
        const int ns[4] = {1, 2, 4, 8};
        for (int k = 0; k < 4; k++) {
            double gbps[2];
            for (int path = 0; path < 2; path++) {
                int old = gn_backend_cuda_set_gemv_max(be, path == 0 ? 8 : 0);
                for (int i = 0; i < 3; i++) be->ops->matmul(be, y, x, &tw, NULL, ns[k]);
                be->ops->synchronize(be);
                double t0 = now_s();
                for (int i = 0; i < iters; i++) {
                    tw.data = (uint16_t *)w + (size_t)(i % n_sub) * elems;
                    if (be->ops->matmul(be, y, x, &tw, NULL, ns[k])) die("matmul", be->err.msg);
                }
                if (be->ops->synchronize(be)) die("synchronize", be->err.msg);
                gbps[path] = bytes * iters / (now_s() - t0) / 1e9;
                gn_backend_cuda_set_gemv_max(be, old);
            }
            len += snprintf(line + len, sizeof line - (size_t)len, " %4.0f(%2.0f%%)|%4.0f(%2.0f%%)",
                            gbps[0], 100 * gbps[0] / copy_gbps, gbps[1], 100 * gbps[1] / copy_gbps);
        }
        printf("%s\n", line);
    }
    be->ops->free(be, w);
    be->ops->free(be, x);
    be->ops->free(be, y);
}

/* ---- the decode step as a CUDA graph ---------------------------------------- */

/* A decode step written directly against the backend ops, in the order of
 * engine/runner.c (forward_chunk, one new token per sequence, every row's
 * log-probs), so that it can be timed eagerly and as a CUDA graph replay: what
 * capturing the runner's decode step would buy (the runner does not capture
 * yet). Inputs that change per step (token ids, positions, lengths) are
 * uploaded before each launch; everything else stays at fixed addresses. */
typedef struct fwd {
    gn_backend *be;
    const gn_model_config *c;
    const gn_weights *w;
    int B, ctx0, max_blocks;
    float *x, *xb, *q, *k, *v, *att, *gate, *up, *logits, *lp, *inv_freq;
    int32_t *d_tok, *d_seq, *d_pos, *d_len, *d_table;
    gn_kv_pool pool;
    gn_attn_batch ab;
} fwd;

static void *balloc(gn_backend *be, size_t n) {
    void *p = be->ops->alloc(be, n);
    if (!p) die("alloc", be->err.msg);
    return p;
}

static void fwd_init(fwd *f, gn_backend *be, gn_model *m, int B, int ctx0, int steps) {
    memset(f, 0, sizeof *f);
    const gn_model_config *c = gn_model_cfg(m);
    f->be = be, f->c = c, f->w = gn_model_weights(m), f->B = B, f->ctx0 = ctx0;
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    f->x = balloc(be, (size_t)B * c->dim * 4), f->xb = balloc(be, (size_t)B * c->dim * 4);
    f->q = balloc(be, B * q * 4), f->att = balloc(be, B * q * 4);
    f->k = balloc(be, B * kv * 4), f->v = balloc(be, B * kv * 4);
    f->gate = balloc(be, (size_t)B * c->ffn_dim * 4), f->up = balloc(be, (size_t)B * c->ffn_dim * 4);
    f->logits = balloc(be, (size_t)B * c->n_vocab * 4), f->lp = balloc(be, (size_t)B * c->n_vocab * 4);
    f->inv_freq = balloc(be, (size_t)c->head_dim / 2 * 4);
    float inv[512];
    gn_rope_inv_freq(c, inv);
    f->max_blocks = (ctx0 + steps + 15) / 16;
    int n_blocks = B * f->max_blocks;
    size_t pool_elems = (size_t)n_blocks * c->n_layers * 2 * 16 * kv;
    f->pool = (gn_kv_pool){balloc(be, pool_elems * gn_dtype_size(be->kv_dtype)), be->kv_dtype,
                           c->n_layers, c->n_kv_heads, c->head_dim, 16, n_blocks};
    /* Earlier positions hold random keys and values (the prompt's, as it were). */
    fill(be, &(gn_tensor){f->pool.data, be->kv_dtype, 1, (int64_t)pool_elems}, 77, 0.5f, 0.0f);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)n_blocks), seq[64];
    for (int i = 0; i < n_blocks; i++) table[i] = i;
    for (int b = 0; b < B; b++) seq[b] = b;
    f->d_tok = balloc(be, 64 * 4), f->d_seq = balloc(be, 64 * 4), f->d_pos = balloc(be, 64 * 4);
    f->d_len = balloc(be, 64 * 4), f->d_table = balloc(be, (size_t)n_blocks * 4);
    if (be->ops->upload(be, f->inv_freq, inv, (size_t)c->head_dim / 2 * 4) ||
        be->ops->upload(be, f->d_table, table, (size_t)n_blocks * 4) ||
        be->ops->upload(be, f->d_seq, seq, (size_t)B * 4))
        die("upload", be->err.msg);
    free(table);
    f->ab = (gn_attn_batch){B, B, f->d_seq, f->d_pos, f->d_len, f->d_table, f->max_blocks, ctx0 + steps};
}

static void fwd_free(fwd *f) {
    gn_backend *be = f->be;
    void *p[] = {f->x, f->xb, f->q, f->k, f->v, f->att, f->gate, f->up, f->logits, f->lp,
                 f->inv_freq, f->d_tok, f->d_seq, f->d_pos, f->d_len, f->d_table, f->pool.data};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) be->ops->free(be, p[i]);
}

/* Uploads step s's token ids, positions and lengths. */
static void fwd_inputs(fwd *f, int s) {
    int32_t tok[64], pos[64], len[64];
    for (int b = 0; b < f->B; b++) {
        tok[b] = 3 + (b * 7 + s * 13) % 30000;
        pos[b] = f->ctx0 + s;
        len[b] = f->ctx0 + s + 1;
    }
    gn_backend *be = f->be;
    if (be->ops->upload(be, f->d_tok, tok, (size_t)f->B * 4) ||
        be->ops->upload(be, f->d_pos, pos, (size_t)f->B * 4) ||
        be->ops->upload(be, f->d_len, len, (size_t)f->B * 4))
        die("upload", be->err.msg);
}

#define FOP(call)                                                    \
    do {                                                             \
        if ((call) != 0) return fprintf(stderr, "%s: %s\n", #call, be->err.msg), -1; \
    } while (0)

static int fwd_compute(fwd *f) {
    gn_backend *be = f->be;
    const gn_backend_ops *o = be->ops;
    const gn_model_config *c = f->c;
    const gn_weights *w = f->w;
    int n = f->B, dim = c->dim, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    size_t nd = (size_t)n * dim;
    FOP(o->embed(be, f->x, &w->embed, f->d_tok, n));
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        FOP(o->rmsnorm(be, f->xb, f->x, &L->attn_norm, n, dim, c->norm_eps));
        FOP(o->matmul(be, f->q, f->xb, &L->wq, &L->bq, n));
        FOP(o->matmul(be, f->k, f->xb, &L->wk, &L->bk, n));
        FOP(o->matmul(be, f->v, f->xb, &L->wv, &L->bv, n));
        FOP(o->rope(be, f->q, n, nh, hd, f->d_pos, f->inv_freq));
        FOP(o->rope(be, f->k, n, nkv, hd, f->d_pos, f->inv_freq));
        FOP(o->attention(be, f->att, f->q, f->k, f->v, &f->pool, l, &f->ab, nh, c->sliding_window,
                         1.0f / sqrtf((float)hd)));
        FOP(o->matmul(be, f->xb, f->att, &L->wo, NULL, n));
        FOP(o->add(be, f->x, f->xb, nd));
        FOP(o->rmsnorm(be, f->xb, f->x, &L->ffn_norm, n, dim, c->norm_eps));
        FOP(o->matmul(be, f->gate, f->xb, &L->w_gate, NULL, n));
        FOP(o->matmul(be, f->up, f->xb, &L->w_up, NULL, n));
        FOP(o->swiglu(be, f->gate, f->gate, f->up, (size_t)n * c->ffn_dim));
        FOP(o->matmul(be, f->xb, f->gate, &L->w_down, NULL, n));
        FOP(o->add(be, f->x, f->xb, nd));
    }
    FOP(o->rmsnorm(be, f->xb, f->x, &w->final_norm, n, dim, c->norm_eps));
    FOP(o->matmul(be, f->logits, f->xb, &w->lm_head, NULL, n));
    FOP(o->log_softmax(be, f->lp, f->logits, n, c->n_vocab, c->n_vocab));
    return 0;
}

/* ms per decode step: the step written against the ops, eagerly and as a
 * graph replay (inputs uploaded and log-probs downloaded every step in both). */
static void bench_graph(gn_backend *be, gn_model *m, const char *name, double wb, double copy_gbps,
                        float *host_lp) {
    const int batches[4] = {1, 8, 32, 64}, steps = 20;
    printf("  %-3s %5s %14s %14s %9s %9s\n", "", "batch", "eager ms/step", "graph ms/step", "speedup",
           "roofline");
    for (int bi = 0; bi < 4; bi++) {
        int B = batches[bi];
        fwd f;
        fwd_init(&f, be, m, B, 64, 2 * steps + 4);
        size_t lp_bytes = (size_t)B * f.c->n_vocab * 4;
        double t[2];
        for (int mode = 0; mode < 2; mode++) {
            int s0 = mode * (steps + 2);
            /* warm-up (and the capture, in graph mode) */
            fwd_inputs(&f, s0);
            if (mode == 0) {
                if (fwd_compute(&f)) die("forward", "eager step failed");
            } else {
                if (gn_backend_cuda_capture_begin(be)) die("capture_begin", be->err.msg);
                int rc = fwd_compute(&f);
                if (gn_backend_cuda_capture_end(be, rc ? -1 : B) || rc) die("capture", be->err.msg);
                if (gn_backend_cuda_graph_launch(be, B)) die("graph_launch", be->err.msg);
            }
            if (be->ops->download(be, host_lp, f.lp, lp_bytes)) die("download", be->err.msg);
            double t0 = now_s();
            for (int s = 1; s <= steps; s++) {
                fwd_inputs(&f, s0 + s);
                if (mode == 0 ? fwd_compute(&f) : gn_backend_cuda_graph_launch(be, B))
                    die("step", be->err.msg);
                if (be->ops->download(be, host_lp, f.lp, lp_bytes)) die("download", be->err.msg);
            }
            t[mode] = (now_s() - t0) / steps;
        }
        fwd_free(&f);
        printf("  %-3s %5d %14.3f %14.3f %8.2fx %8.1f%%\n", name, B, 1e3 * t[0], 1e3 * t[1], t[0] / t[1],
               100.0 * wb / t[1] / 1e9 / copy_gbps);
    }
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
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

    const int batches[4] = {1, 8, 32, 64};
    const int prompt_len = 32;
    const int ctx = 128; /* prompt + warm-up + timed steps fit */
    float *lp_base = malloc((size_t)64 * 32000 * sizeof(float));
    float *lp_arm = malloc((size_t)64 * 32000 * sizeof(float));
    double base_tps[4] = {0};
    gn_model *m1 = NULL, *m7 = NULL;
    gn_runner *r1 = NULL, *r7 = NULL;

    printf("\ndecode (prompt %d tokens per sequence, then timed steps of one token each;\n"
           "        log-probs of every sequence downloaded every step)\n", prompt_len);
    const shape *shapes[2] = {&k_1b, &k_7b};
    for (int si = 0; si < (quick ? 1 : 2); si++) {
        const shape *s = shapes[si];
        gn_model *m = load_random_model(be, s, root, 1000 * (uint64_t)(si + 1));
        gn_runner *r = make_runner(m, ctx);
        double wb = step_weight_bytes(m);
        int steps = quick ? 8 : si == 0 ? 48 : 24;
        printf("  %-3s %5s %10s %10s %12s %9s\n", "", "batch", "ms/step", "tokens/s", "weights GB/s",
               "roofline");
        for (int bi = 0; bi < 4; bi++) {
            int B = batches[bi];
            decoder d;
            start_batch(&d, m, r, B, prompt_len, lp_base);
            decode_steps(&d, NULL, B, 3, lp_base, lp_arm); /* warm-up */
            double t = decode_steps(&d, NULL, B, steps, lp_base, lp_arm);
            end_batch(&d, B);
            double sps = steps / t;
            printf("  %-3s %5d %10.2f %10.1f %12.0f %8.1f%%\n", s->name, B, 1e3 / sps, sps * B,
                   wb * sps / 1e9, 100.0 * wb * sps / 1e9 / copy_gbps);
            if (si == 1) base_tps[bi] = sps * B;
        }
        printf("  %s decode step written against the backend ops (runner order), eager vs CUDA graph:\n",
               s->name);
        bench_graph(be, m, s->name, wb, copy_gbps, lp_base);
        if (si == 0) m1 = m, r1 = r;
        else m7 = m, r7 = r;
    }

    if (m1 && m7) {
        printf("\nguided decoding: 7B base + 1B ARM on one GPU, both stepped every token,\n"
               "log-probs combined on the host (alpha 1) and the argmax fed back\n");
        printf("  %5s %14s %14s %8s\n", "batch", "base tokens/s", "guided tok/s", "ratio");
        for (int bi = 0; bi < 4; bi++) {
            int B = batches[bi];
            decoder db, da;
            start_batch(&db, m7, r7, B, prompt_len, lp_base);
            start_batch(&da, m1, r1, B, prompt_len, lp_arm);
            decode_steps(&db, &da, B, 3, lp_base, lp_arm);
            int steps = 16;
            double t = decode_steps(&db, &da, B, steps, lp_base, lp_arm);
            end_batch(&db, B);
            end_batch(&da, B);
            double tps = steps * B / t;
            printf("  %5d %14.1f %14.1f %7.2fx\n", B, base_tps[bi], tps, tps / base_tps[bi]);
        }
    }
    gn_runner_free(r1);
    gn_runner_free(r7);
    gn_model_free(m1);
    gn_model_free(m7);
    free(lp_base);
    free(lp_arm);
    be->ops->destroy(be);
    return 0;
}
#endif
