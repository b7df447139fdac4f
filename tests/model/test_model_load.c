/* test_model_load.c — gn_model_load on models written by the model maker:
 * every architecture and dtype, shapes and dtypes of every tensor, weights
 * used in place from the read-only mapping (host backend) versus copied
 * (device-style backend), sharded == unsharded, tied embeddings, a BF16
 * model's resident memory, LoRA merging against an independent computation,
 * and the errors for broken directories. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cpu.h"
#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"
#include "model.h"
#include "model_maker.h"
#include "safetensors.h"
#include "tokenizer.h"

static char g_root[256];
static gn_backend *g_host;   /* cpu-ref: weights used in place */
static gn_backend *g_copy;   /* cpu-ref with is_host = 0: every weight alloc'd + uploaded */

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_root, name); }

static int make(const char *name, const gn_make_model_params *p, char *dir, size_t cap) {
    path_in(dir, cap, name);
    gn_err e = {0};
    int rc = gn_make_model(p, dir, &e);
    CHECK(rc == 0, "make %s: %s", name, e.msg);
    return rc;
}

static gn_model *load(const char *dir, gn_backend *be, const char *lora, int tok, gn_err *e) {
    gn_model_params mp = gn_model_default_params();
    mp.lora_dir = lora;
    mp.load_tokenizer = tok;
    return gn_model_load(dir, be, &mp, e);
}

/* All tensors of a model as (name, view) pairs; present ones only. */
typedef struct named {
    char name[96];
    gn_tensor t;
} named;

static int list_tensors(const gn_model *m, named *out) {
    const gn_weights *w = gn_model_weights(m);
    const gn_model_config *c = gn_model_cfg(m);
    int n = 0;
#define ADD(nm, tt)                                                   \
    do {                                                              \
        if ((tt).data) {                                              \
            snprintf(out[n].name, sizeof out[n].name, "%s", nm);      \
            out[n++].t = (tt);                                        \
        }                                                             \
    } while (0)
    ADD("model.embed_tokens.weight", w->embed);
    ADD("model.norm.weight", w->final_norm);
    if (!c->tie_embeddings) ADD("lm_head.weight", w->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        char b[96];
#define ADDL(leaf, tt)                                             \
    do {                                                           \
        snprintf(b, sizeof b, "model.layers.%d.%s", l, leaf);      \
        ADD(b, tt);                                                \
    } while (0)
        ADDL("input_layernorm.weight", L->attn_norm);
        ADDL("self_attn.q_proj.weight", L->wq);
        ADDL("self_attn.k_proj.weight", L->wk);
        ADDL("self_attn.v_proj.weight", L->wv);
        ADDL("self_attn.q_proj.bias", L->bq);
        ADDL("self_attn.k_proj.bias", L->bk);
        ADDL("self_attn.v_proj.bias", L->bv);
        ADDL("self_attn.q_norm.weight", L->q_norm);
        ADDL("self_attn.k_norm.weight", L->k_norm);
        ADDL("self_attn.o_proj.weight", L->wo);
        ADDL("post_attention_layernorm.weight", L->ffn_norm);
        ADDL("mlp.gate_proj.weight", L->w_gate);
        ADDL("mlp.up_proj.weight", L->w_up);
        ADDL("mlp.down_proj.weight", L->w_down);
    }
    return n;
}

/* 1 when p lies in a read-only private file mapping of a file whose name
 * contains `file` (from /proc/self/maps). */
static int in_file_mapping(const void *p, const char *file) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[1024];
    int found = 0;
    uintptr_t a = (uintptr_t)p;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        int off = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &off) < 3) continue;
        if (a >= lo && a < hi) found = !strcmp(perms, "r--p") && strstr(line + off, file) != NULL;
    }
    fclose(f);
    return found;
}

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') v = atol(line + kl + 1);
    fclose(f);
    return v;
}

static const char *const k_arches[] = {"llama", "llama3", "mistral", "qwen2", "qwen3"};
static const gn_dtype k_dtypes[] = {GN_BF16, GN_F16, GN_F32, GN_BF16, GN_F32};

static void check_model(const gn_model *m, const gn_make_model_params *p, const char *arch, int host) {
    const gn_model_config *c = gn_model_cfg(m);
    int hd = p->dim / p->n_heads;
    CHECK(c->dim == p->dim && c->n_layers == p->n_layers && c->n_heads == p->n_heads &&
              c->n_kv_heads == p->n_kv_heads && c->head_dim == hd && c->ffn_dim == p->ffn_dim,
          "%s: config dims", arch);
    int q2 = !strcmp(arch, "qwen2"), q3 = !strcmp(arch, "qwen3");
    CHECK(c->attn_bias == q2 && c->qk_norm == q3 && c->tie_embeddings == (q2 || q3), "%s: flags", arch);
    CHECK((c->rope_scaling == GN_ROPE_LLAMA3) == !strcmp(arch, "llama3"), "%s: rope scaling", arch);
    CHECK((c->sliding_window == 16) == !strcmp(arch, "mistral"), "%s: sliding window %d", arch,
          c->sliding_window);
    const gn_weights *w = gn_model_weights(m);
    const int64_t D = p->dim, Q = (int64_t)p->n_heads * hd, KV = (int64_t)p->n_kv_heads * hd,
                  F = p->ffn_dim;
    int ok = w->embed.rows == c->n_vocab && w->embed.cols == D && w->final_norm.rows == 1 &&
             w->final_norm.cols == D && w->lm_head.rows == c->n_vocab && w->lm_head.cols == D;
    for (int l = 0; l < c->n_layers; l++) {
        const gn_layer_weights *L = &w->layers[l];
        ok &= L->wq.rows == Q && L->wq.cols == D && L->wk.rows == KV && L->wk.cols == D &&
              L->wv.rows == KV && L->wo.rows == D && L->wo.cols == Q && L->w_gate.rows == F &&
              L->w_up.cols == D && L->w_down.rows == D && L->w_down.cols == F &&
              L->attn_norm.cols == D && L->ffn_norm.cols == D;
        ok &= (L->bq.data != NULL) == q2 && (L->bk.data != NULL) == q2 && (L->bv.data != NULL) == q2;
        if (q2) ok &= L->bq.rows == 1 && L->bq.cols == Q && L->bk.cols == KV && L->bv.cols == KV;
        ok &= (L->q_norm.data != NULL) == q3 && (L->k_norm.data != NULL) == q3;
        if (q3) ok &= L->q_norm.cols == hd && L->k_norm.cols == hd;
    }
    CHECK(ok, "%s: tensor shapes", arch);
    if (c->tie_embeddings) CHECK(w->lm_head.data == w->embed.data, "%s: tied lm_head shares embed", arch);
    else CHECK(w->lm_head.data != w->embed.data, "%s: untied", arch);

    named *t = calloc(512, sizeof *t);
    int n = list_tensors(m, t);
    size_t bytes = 0;
    int dt_ok = 1, where_ok = 1;
    for (int i = 0; i < n; i++) {
        bytes += gn_tensor_nbytes(&t[i].t);
        dt_ok &= t[i].t.dtype == p->dtype;
        int mapped = in_file_mapping(t[i].t.data, ".safetensors");
        if (mapped != host) {
            where_ok = 0;
            fprintf(stderr, "%s: %s mapped %d host %d\n", arch, t[i].name, mapped, host);
        }
    }
    CHECK(dt_ok, "%s: every tensor keeps dtype %s", arch, gn_dtype_name(p->dtype));
    CHECK(where_ok, "%s: tensors %s the read-only mapping", arch, host ? "point into" : "are copied out of");
    CHECK(gn_model_weight_bytes(m) == bytes, "%s: weight bytes %zu vs %zu", arch, gn_model_weight_bytes(m),
          bytes);
    free(t);
}

static void test_arches(void) {
    for (int a = 0; a < 5; a++) {
        gn_make_model_params p = gn_make_model_default_params();
        p.arch = k_arches[a];
        p.dtype = k_dtypes[a];
        p.seed = 100 + (uint64_t)a;
        char dir[512], name[64];
        snprintf(name, sizeof name, "arch_%s", p.arch);
        if (make(name, &p, dir, sizeof dir)) continue;
        gn_err e = {0};
        for (int host = 1; host >= 0; host--) {
            gn_model *m = load(dir, host ? g_host : g_copy, NULL, 1, &e);
            CHECK(m != NULL, "%s: load (host %d): %s", p.arch, host, e.msg);
            if (!m) continue;
            check_model(m, &p, p.arch, host);
            const struct gn_tokenizer *tok = gn_model_tokenizer(m);
            CHECK(tok != NULL && gn_model_n_out(m) == gn_tok_n_vocab(tok) && gn_model_n_out(m) == 512,
                  "%s: n_out %d", p.arch, gn_model_n_out(m));
            CHECK(!strcmp(gn_model_dir(m), dir) && gn_model_backend(m) == (host ? g_host : g_copy), "%s: accessors",
                  p.arch);
            const gn_model_config *c = gn_model_cfg(m);
            CHECK(c->bos_token_id == 510 && c->n_eos == 1 && c->eos_token_ids[0] == 511, "%s: bos/eos", p.arch);
            gn_model_free(m);
        }
        /* Without the tokenizer, n_out is the row count. */
        gn_model *m = load(dir, g_host, NULL, 0, &e);
        CHECK(m && gn_model_tokenizer(m) == NULL && gn_model_n_out(m) == 512, "%s: no tokenizer", p.arch);
        gn_model_free(m);
    }
    gn_model_free(NULL);
}

static int same_tensor(const gn_tensor *a, const gn_tensor *b) {
    return a->dtype == b->dtype && a->rows == b->rows && a->cols == b->cols &&
           !memcmp(a->data, b->data, gn_tensor_nbytes(a));
}

static void test_sharded_and_tied(void) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = "llama";
    p.n_vocab = 600; /* 88 padding rows beyond the tokenizer */
    char d1[512], d2[512], d3[512];
    make("unsharded", &p, d1, sizeof d1);
    p.shards = 4;
    make("sharded", &p, d2, sizeof d2);
    CHECK(gn_fs_is_file(strcat(strcpy(d3, d2), "/model.safetensors.index.json")), "index written");
    gn_err e = {0};
    gn_model *a = load(d1, g_host, NULL, 1, &e), *b = load(d2, g_host, NULL, 1, &e);
    CHECK(a && b, "load sharded/unsharded: %s", e.msg);
    if (a && b) {
        named *ta = calloc(512, sizeof *ta), *tb = calloc(512, sizeof *tb);
        int na = list_tensors(a, ta), nb = list_tensors(b, tb), same = na == nb;
        for (int i = 0; same && i < na; i++) same &= same_tensor(&ta[i].t, &tb[i].t);
        CHECK(same && na == 3 + 9 * 2, "sharded == unsharded bytes (%d tensors)", na);
        CHECK(gn_model_weight_bytes(a) == gn_model_weight_bytes(b), "weight bytes equal");
        CHECK(gn_model_cfg(a)->n_vocab == 600 && gn_model_n_out(a) == 512,
              "padding rows: n_vocab %d n_out %d", gn_model_cfg(a)->n_vocab, gn_model_n_out(a));
        free(ta);
        free(tb);
    }
    gn_model_free(a);
    gn_model_free(b);

    /* A tied llama, and a tied file that still carries lm_head (transformers ignores it). */
    p = gn_make_model_default_params();
    p.tied = 1;
    make("tied", &p, d1, sizeof d1);
    gn_model *m = load(d1, g_host, NULL, 0, &e);
    CHECK(m && gn_model_cfg(m)->tie_embeddings && gn_model_weights(m)->lm_head.data == gn_model_weights(m)->embed.data,
          "tied llama: %s", e.msg);
    size_t tied_bytes = m ? gn_model_weight_bytes(m) : 0;
    gn_model_free(m);
    p.tied = 0;
    make("tied_with_head", &p, d2, sizeof d2);
    char cfg[600], cfg1[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", d2);
    snprintf(cfg1, sizeof cfg1, "%s/config.json", d1);
    CHECK(gn_fs_copy_file(cfg1, cfg, &e) == 0, "copy config");
    m = load(d2, g_host, NULL, 0, &e);
    CHECK(m && gn_model_weights(m)->lm_head.data == gn_model_weights(m)->embed.data &&
              gn_model_weight_bytes(m) == tied_bytes,
          "tied config + lm_head in file: %s", e.msg);
    gn_model_free(m);
}

/* head_std draws lm_head alone with its own standard deviation: every other
 * tensor keeps its bytes. */
static void test_head_std(void) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = "llama";
    p.dtype = GN_F32;
    char d1[512], d2[512];
    make("head_plain", &p, d1, sizeof d1);
    p.head_std = 0.5f;
    make("head_peaked", &p, d2, sizeof d2);
    gn_err e = {0};
    gn_model *a = load(d1, g_host, NULL, 0, &e), *b = load(d2, g_host, NULL, 0, &e);
    CHECK(a && b, "load head_std models: %s", e.msg);
    if (a && b) {
        named *ta = calloc(512, sizeof *ta), *tb = calloc(512, sizeof *tb);
        int na = list_tensors(a, ta), nb = list_tensors(b, tb), others_same = na == nb, head_differs = 0;
        for (int i = 0; i < na && i < nb; i++) {
            int same = same_tensor(&ta[i].t, &tb[i].t);
            if (strcmp(ta[i].name, "lm_head.weight") == 0) head_differs = !same;
            else others_same &= same;
        }
        CHECK(others_same && head_differs, "only lm_head changes (%d tensors)", na);
        const gn_tensor *h = &gn_model_weights(b)->lm_head;
        size_t n = (size_t)h->rows * (size_t)h->cols;
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)((const float *)h->data)[i] * ((const float *)h->data)[i];
        double sd = sqrt(ss / (double)n);
        CHECK(fabs(sd - 0.5) < 0.01, "lm_head standard deviation %.4f, want 0.5", sd);
        free(ta);
        free(tb);
    }
    gn_model_free(a);
    gn_model_free(b);
}

/* Models carrying the real tokenizers unpacked by tests/tokenizer (Llama-2,
 * Llama-3, Qwen3), with Qwen3's padded vocabulary. */
static void test_real_tokenizers(void) {
    const char *bd = getenv("GN_BUILD_DIR");
    static const struct {
        const char *tok, *arch;
        int vocab, n_tok, bos, eos;
    } cases[] = {
        {"llama2", "llama", 0, 32000, 1, 2},
        {"llama3", "llama3", 0, 128256, 128000, -1},
        {"qwen3", "qwen3", 151936, 151669, -1, 151645},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char from[512];
        snprintf(from, sizeof from, "%s/fixtures/tokenizers/%s", bd ? bd : ".", cases[i].tok);
        if (!bd || !gn_fs_is_dir(from)) {
            printf("note: %s missing, real-tokenizer models not tested\n", from);
            return;
        }
        gn_make_model_params p = gn_make_model_default_params();
        p.arch = cases[i].arch;
        p.dim = 32;
        p.n_layers = 1;
        p.n_heads = 2;
        p.n_kv_heads = 1;
        p.ffn_dim = 64;
        p.tied = 1;
        p.n_vocab = cases[i].vocab;
        p.tokenizer_from = from;
        char dir[512], name[64];
        snprintf(name, sizeof name, "realtok_%s", cases[i].tok);
        if (make(name, &p, dir, sizeof dir)) continue;
        gn_err e = {0};
        gn_model *m = load(dir, g_host, NULL, 1, &e);
        CHECK(m != NULL, "%s: load with tokenizer: %s", cases[i].tok, e.msg);
        if (!m) continue;
        const gn_model_config *c = gn_model_cfg(m);
        int want_rows = cases[i].vocab ? cases[i].vocab : cases[i].n_tok;
        CHECK(c->n_vocab == want_rows && gn_model_n_out(m) == cases[i].n_tok &&
                  gn_tok_n_vocab(gn_model_tokenizer(m)) == cases[i].n_tok,
              "%s: rows %d n_out %d", cases[i].tok, c->n_vocab, gn_model_n_out(m));
        CHECK(c->bos_token_id == cases[i].bos, "%s: bos %d", cases[i].tok, c->bos_token_id);
        if (cases[i].eos >= 0)
            CHECK(c->n_eos >= 1 && c->eos_token_ids[0] == cases[i].eos, "%s: eos %d", cases[i].tok,
                  c->n_eos ? c->eos_token_ids[0] : -1);
        gn_model_free(m);
    }
}

/* The loaded BF16 weights take no anonymous memory on the host backend (they
 * are the page cache), and about their size when copied. */
static void test_rss(void) {
    gn_make_model_params p = gn_make_model_default_params();
    p.dim = 256;
    p.n_layers = 4;
    p.n_heads = 4;
    p.n_kv_heads = 4;
    p.ffn_dim = 1024;
    p.n_vocab = 4096;
    char dir[512];
    if (make("rss", &p, dir, sizeof dir)) return;
    if (status_kb("RssAnon") < 0) {
        CHECK(1, "no /proc/self/status RssAnon: skipped");
        return;
    }
    long sums[2] = {0, 0}, anon_delta[2] = {0, 0};
    size_t bytes = 0;
    for (int host = 1; host >= 0; host--) {
        gn_err e = {0};
        long before = status_kb("RssAnon");
        gn_model *m = load(dir, host ? g_host : g_copy, NULL, 0, &e);
        CHECK(m != NULL, "rss load: %s", e.msg);
        if (!m) return;
        named *t = calloc(512, sizeof *t);
        int n = list_tensors(m, t);
        long s = 0;
        for (int i = 0; i < n; i++) { /* touch every page */
            const unsigned char *d = t[i].t.data;
            for (size_t k = 0; k < gn_tensor_nbytes(&t[i].t); k += 512) s += d[k];
        }
        free(t);
        anon_delta[host] = status_kb("RssAnon") - before;
        sums[host] = s;
        bytes = gn_model_weight_bytes(m);
        gn_model_free(m);
    }
    long kb = (long)(bytes / 1024);
    CHECK(sums[0] == sums[1], "same bytes both ways");
    CHECK(anon_delta[1] < kb / 10, "mapped BF16 model: +%ld kB anonymous for %ld kB of weights", anon_delta[1], kb);
    CHECK(anon_delta[0] > kb / 2, "copied model: +%ld kB anonymous for %ld kB of weights", anon_delta[0], kb);
}

/* ---- LoRA ---------------------------------------------------------------------- */

static double to_d(const void *p, gn_dtype t, size_t i) {
    if (t == GN_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return t == GN_F16 ? gn_f16_to_f32(h) : gn_bf16_to_f32(h);
}

static float round_to(double v, gn_dtype t) {
    if (t == GN_F32) return (float)v;
    if (t == GN_F16) return gn_f16_to_f32(gn_f32_to_f16((float)v));
    return gn_bf16_to_f32(gn_f32_to_bf16((float)v));
}

/* Distance in units of the dtype's last place at want. */
static double ulps(double got, double want, gn_dtype t) {
    int bits = t == GN_F32 ? 24 : t == GN_F16 ? 11 : 8;
    double a = fabs(want) > 1e-30 ? fabs(want) : 1e-30;
    double ulp = ldexp(1.0, (int)floor(log2(a)) - bits + 1);
    if (t == GN_F16 && ulp < ldexp(1.0, -24)) ulp = ldexp(1.0, -24);
    return fabs(got - want) / ulp;
}

static void test_lora_merge(gn_dtype dt, const char *arch) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.dtype = dt;
    p.seed = 7;
    char dir[512], lora[600], name[64];
    snprintf(name, sizeof name, "lora_%s_%s", arch, gn_dtype_name(dt));
    path_in(dir, sizeof dir, name);
    snprintf(lora, sizeof lora, "%s/adapter", dir);
    p.lora_out = lora;
    gn_err e = {0};
    if (gn_make_model(&p, dir, &e) != 0) {
        CHECK(0, "make lora model: %s", e.msg);
        return;
    }
    gn_model *base = load(dir, g_host, NULL, 0, &e);
    gn_model *m = load(dir, g_host, lora, 0, &e);
    gn_model *mc = load(dir, g_copy, lora, 0, &e);
    CHECK(base && m && mc, "load with adapter: %s", e.msg);
    char ap[700];
    snprintf(ap, sizeof ap, "%s/adapter_model.safetensors", lora);
    gn_st_file *af = gn_st_open(ap, &e);
    CHECK(af != NULL, "open adapter: %s", e.msg);
    if (!base || !m || !mc || !af) goto done;
    const double scale = 16.0 / 8.0;
    double worst = 0;
    int n_checked = 0, placement_ok = 1;
    for (int l = 0; l < p.n_layers; l++) {
        const gn_layer_weights *B = &gn_model_weights(base)->layers[l], *M = &gn_model_weights(m)->layers[l],
                               *MC = &gn_model_weights(mc)->layers[l];
        const gn_tensor *bw[3] = {&B->wq, &B->wk, &B->wv}, *mw[3] = {&M->wq, &M->wk, &M->wv},
                        *mcw[3] = {&MC->wq, &MC->wk, &MC->wv};
        static const char *const mods[3] = {"q_proj", "k_proj", "v_proj"};
        for (int k = 0; k < 3; k++) {
            char an[160], bn[160];
            snprintf(an, sizeof an, "base_model.model.model.layers.%d.self_attn.%s.lora_A.weight", l, mods[k]);
            snprintf(bn, sizeof bn, "base_model.model.model.layers.%d.self_attn.%s.lora_B.weight", l, mods[k]);
            gn_tensor A = gn_st_view(af, gn_st_header_find(&af->hdr, an));
            gn_tensor Bt = gn_st_view(af, gn_st_header_find(&af->hdr, bn));
            const gn_tensor *W = bw[k];
            for (int64_t o = 0; o < W->rows; o++)
                for (int64_t j = 0; j < W->cols; j++) {
                    double d = 0, mag = 0;
                    for (int64_t r = 0; r < A.rows; r++) {
                        double x = to_d(Bt.data, Bt.dtype, (size_t)(o * Bt.cols + r)) *
                                   to_d(A.data, A.dtype, (size_t)(r * A.cols + j));
                        d += x;
                        mag += fabs(x);
                    }
                    size_t idx = (size_t)(o * W->cols + j);
                    double w0 = to_d(W->data, dt, idx);
                    double want = round_to(w0 + scale * d, dt);
                    double got = to_d(mw[k]->data, dt, idx);
                    /* One rounding to the dtype: at most 1 ulp apart from the
                     * double reference, except where float32 accumulation
                     * error (relative to the magnitude of the terms) decides
                     * a cancellation. */
                    double u = ulps(got, want, dt);
                    if (fabs(got - want) <= 8 * 1.1920929e-7 * (fabs(w0) + scale * mag)) u = 0;
                    if (u > worst) worst = u;
                    if (to_d(mcw[k]->data, dt, idx) != got) worst = 1e9; /* both backends agree */
                    n_checked++;
                }
            placement_ok &= !in_file_mapping(mw[k]->data, ".safetensors") && mw[k]->data != W->data;
        }
        /* Untargeted weights stay in the mapping, unchanged. */
        placement_ok &= M->wo.data == B->wo.data || !memcmp(M->wo.data, B->wo.data, gn_tensor_nbytes(&B->wo));
        placement_ok &= in_file_mapping(M->wo.data, ".safetensors") && in_file_mapping(M->w_up.data, ".safetensors");
    }
    CHECK(n_checked > 1000 && worst <= 1.0, "%s %s LoRA merge vs double reference: worst %.3g ulp over %d",
          arch, gn_dtype_name(dt), worst, n_checked);
    CHECK(placement_ok, "%s: merged weights in new buffers, others mapped", arch);
    /* The merge changed something (B is random). */
    CHECK(memcmp(gn_model_weights(m)->layers[0].wq.data, gn_model_weights(base)->layers[0].wq.data,
                 gn_tensor_nbytes(&gn_model_weights(base)->layers[0].wq)) != 0,
          "merge changes q_proj");
done:
    gn_st_close(af);
    gn_model_free(base);
    gn_model_free(m);
    gn_model_free(mc);
}

/* ---- error cases ------------------------------------------------------------------- */

/* Rewrites dir/model.safetensors without tensor `drop` (NULL: keep all),
 * renaming tensor `rename_from` to `rename_to` when given. */
static int rewrite_weights(const char *dir, const char *drop, const char *rename_from, const char *rename_to) {
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    gn_err e = {0};
    gn_st_file *f = gn_st_open(p, &e);
    if (!f) return -1;
    gn_st_write_tensor *w = calloc((size_t)f->hdr.n_tensors, sizeof *w);
    int n = 0;
    for (int i = 0; i < f->hdr.n_tensors; i++) {
        const gn_st_tensor *t = &f->hdr.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        w[n].name = rename_from && !strcmp(t->name, rename_from) ? rename_to : t->name;
        w[n].dtype = t->dtype;
        w[n].n_dims = t->n_dims;
        memcpy(w[n].shape, t->shape, sizeof t->shape);
        w[n].data = gn_st_data(f, t);
        n++;
    }
    char tmp[620];
    snprintf(tmp, sizeof tmp, "%s.new", p);
    int rc = gn_st_write(tmp, w, n, NULL, &e);
    free(w);
    gn_st_close(f);
    if (rc == 0) rc = rename(tmp, p);
    return rc;
}

/* Replaces the first occurrence of `from` in dir/name with `to`. */
static int edit_file(const char *dir, const char *name, const char *from, const char *to) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *s;
    size_t n;
    gn_err e = {0};
    if (gn_fs_read_file(p, 1 << 24, &s, &n, &e)) return -1;
    char *hit = strstr(s, from);
    if (!hit) {
        gn_free(s);
        return -1;
    }
    size_t fl = strlen(from), tl = strlen(to);
    char *o = malloc(n - fl + tl + 1);
    memcpy(o, s, (size_t)(hit - s));
    memcpy(o + (hit - s), to, tl);
    memcpy(o + (hit - s) + tl, hit + fl, n - (size_t)(hit - s) - fl);
    int rc = gn_fs_write_file(p, o, n - fl + tl, &e);
    free(o);
    gn_free(s);
    return rc;
}

static void expect_fail(const char *what, const char *dir, const char *lora, int code, const char *n1,
                        const char *n2) {
    gn_err e = {0};
    gn_model *m = load(dir, g_host, lora, 0, &e);
    CHECK(m == NULL && e.code == code, "%s: want code %d, got %d: %s", what, code, e.code, e.msg);
    if (n1) CHECK(strstr(e.msg, n1) != NULL, "%s: message lacks '%s': %s", what, n1, e.msg);
    if (n2) CHECK(strstr(e.msg, n2) != NULL, "%s: message lacks '%s': %s", what, n2, e.msg);
    gn_model_free(m);
}

static void test_errors(void) {
    gn_make_model_params p = gn_make_model_default_params();
    char d[512];
    gn_err e = {0};

    make("err_missing", &p, d, sizeof d);
    CHECK(rewrite_weights(d, "model.layers.1.mlp.up_proj.weight", NULL, NULL) == 0, "rewrite");
    expect_fail("missing tensor", d, NULL, GN_ENOTFOUND, "model.layers.1.mlp.up_proj.weight", "missing");

    make("err_lm_head", &p, d, sizeof d);
    CHECK(rewrite_weights(d, "lm_head.weight", NULL, NULL) == 0, "rewrite");
    expect_fail("missing lm_head", d, NULL, GN_ENOTFOUND, "lm_head.weight", "tie_word_embeddings");

    make("err_shape", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"intermediate_size\": 128", "\"intermediate_size\": 96") == 0, "edit");
    expect_fail("wrong shape", d, NULL, GN_EMISMATCH, "model.layers.0.mlp.gate_proj.weight", "[128, 64]");

    make("err_heads", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4") == 0, "edit");
    expect_fail("wrong kv heads", d, NULL, GN_EMISMATCH, "k_proj.weight", "[64, 64]");

    make("err_field", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"hidden_size\": 64,", "") == 0, "edit");
    expect_fail("missing config field", d, NULL, GN_EFORMAT, "hidden_size", "config.json");

    make("err_layers", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1") == 0, "edit");
    expect_fail("extra layer in file", d, NULL, GN_EFORMAT, "unexpected tensor 'model.layers.1.", NULL);

    make("err_layers3", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3") == 0, "edit");
    expect_fail("missing layer", d, NULL, GN_ENOTFOUND, "model.layers.2.", NULL);

    make("err_rename", &p, d, sizeof d);
    CHECK(rewrite_weights(d, NULL, "model.norm.weight", "model.final_norm.weight") == 0, "rewrite");
    expect_fail("renamed tensor", d, NULL, GN_ENOTFOUND, "model.norm.weight", NULL);

    make("err_vocab", &p, d, sizeof d);
    CHECK(edit_file(d, "config.json", "\"vocab_size\": 512", "\"vocab_size\": 520") == 0, "edit");
    expect_fail("vocab mismatch", d, NULL, GN_EMISMATCH, "model.embed_tokens.weight", "[512, 64]");

    path_in(d, sizeof d, "err_nothing");
    gn_fs_mkdirs(d, &e);
    expect_fail("empty dir", d, NULL, GN_ENOTFOUND, "config.json", NULL);

    /* Tokenizer larger than the model: fewer embedding rows than ids. */
    make("err_tok", &p, d, sizeof d);
    {
        gn_make_model_params q = p;
        q.tok_merges = 300; /* a 558-id tokenizer over 512 rows */
        char d2[512];
        make("err_tok_big", &q, d2, sizeof d2);
        char src[600], dst[600];
        snprintf(src, sizeof src, "%s/tokenizer.json", d2);
        snprintf(dst, sizeof dst, "%s/tokenizer.json", d);
        CHECK(gn_fs_copy_file(src, dst, &e) == 0, "copy tokenizer");
        snprintf(src, sizeof src, "%s/tokenizer_config.json", d2);
        snprintf(dst, sizeof dst, "%s/tokenizer_config.json", d);
        CHECK(gn_fs_copy_file(src, dst, &e) == 0, "copy tokenizer config");
        gn_model *m = load(d, g_host, NULL, 1, &e);
        CHECK(m == NULL && e.code == GN_EMISMATCH && strstr(e.msg, "tokenizer"), "tokenizer too big: %s", e.msg);
        gn_model_free(m);
    }

    /* A file whose data area starts at an odd offset: tensors get copied to
     * aligned memory, values unchanged. */
    make("odd_align", &p, d, sizeof d);
    {
        char f[600];
        snprintf(f, sizeof f, "%s/model.safetensors", d);
        char *s;
        size_t n;
        CHECK(gn_fs_read_file(f, 1 << 24, &s, &n, &e) == 0, "read");
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)s[i];
        char *o = malloc(n + 1);
        for (int i = 0; i < 8; i++) o[i] = (char)((hl + 1) >> (8 * i));
        memcpy(o + 8, s + 8, hl);
        o[8 + hl] = ' ';
        memcpy(o + 9 + hl, s + 8 + hl, n - 8 - hl);
        CHECK(gn_fs_write_file(f, o, n + 1, &e) == 0, "write odd");
        free(o);
        gn_free(s);
        char d0[512];
        make("odd_align_ref", &p, d0, sizeof d0);
        gn_model *m = load(d, g_host, NULL, 0, &e), *r = load(d0, g_host, NULL, 0, &e);
        CHECK(m && r, "load odd-aligned: %s", e.msg);
        if (m && r) {
            const gn_tensor *t = &gn_model_weights(m)->layers[0].wq;
            CHECK(((uintptr_t)t->data & 1) == 0 && same_tensor(t, &gn_model_weights(r)->layers[0].wq),
                  "odd file: aligned copy with the same values");
        }
        gn_model_free(m);
        gn_model_free(r);
    }

    /* LoRA errors. */
    char lora[600];
    path_in(d, sizeof d, "err_lora");
    snprintf(lora, sizeof lora, "%s/adapter", d);
    p.lora_out = lora;
    CHECK(gn_make_model(&p, d, &e) == 0, "make lora: %s", e.msg);
    p.lora_out = NULL;
    CHECK(edit_file(lora, "adapter_config.json", "\"r\": 8", "\"r\": 4") == 0, "edit r");
    expect_fail("lora rank mismatch", d, lora, GN_EMISMATCH, "lora_A", "r=4");
    CHECK(edit_file(lora, "adapter_config.json", "\"r\": 4", "\"r\": 8") == 0, "edit r back");
    CHECK(edit_file(lora, "adapter_config.json", "\"q_proj\"", "\"foo_proj\"") == 0, "edit target");
    expect_fail("unknown target module", d, lora, GN_EUNSUP, "foo_proj", "target");
    CHECK(edit_file(lora, "adapter_config.json", "\"foo_proj\"", "\"o_proj\"") == 0, "edit target 2");
    expect_fail("tensor of an untargeted module", d, lora, GN_EMISMATCH, "q_proj", "target_modules");
    CHECK(edit_file(lora, "adapter_config.json", "\"o_proj\"", "\"q_proj\"") == 0, "edit target back");
    CHECK(edit_file(lora, "adapter_config.json", "\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true") == 0,
          "edit fan");
    expect_fail("fan_in_fan_out", d, lora, GN_EUNSUP, "fan_in_fan_out", NULL);
    CHECK(edit_file(lora, "adapter_config.json", "\"fan_in_fan_out\": true", "\"fan_in_fan_out\": false") == 0,
          "edit fan back");
    /* An adapter for a model with more layers. */
    {
        gn_make_model_params q = gn_make_model_default_params();
        q.n_layers = 3;
        char d3[512], l3[600];
        path_in(d3, sizeof d3, "err_lora3");
        snprintf(l3, sizeof l3, "%s/adapter", d3);
        q.lora_out = l3;
        CHECK(gn_make_model(&q, d3, &e) == 0, "make 3-layer lora");
        expect_fail("adapter layer beyond the model", d, l3, GN_EMISMATCH, "model.layers.2.self_attn", "no weight");
        /* An adapter of a wider model: in_features mismatch. */
        q.n_layers = 2;
        q.dim = 96;
        q.n_heads = 4;
        path_in(d3, sizeof d3, "err_lora_wide");
        snprintf(l3, sizeof l3, "%s/adapter", d3);
        q.lora_out = l3;
        CHECK(gn_make_model(&q, d3, &e) == 0, "make wide lora");
        expect_fail("adapter shape mismatch", d, l3, GN_EMISMATCH, "q_proj", "lora_A");
    }
    char nol[600];
    snprintf(nol, sizeof nol, "%s/no_such_adapter", d);
    expect_fail("missing adapter dir", d, nol, GN_ENOTFOUND, "adapter_config.json", NULL);
    gn_model *ok = load(d, g_host, lora, 0, &e);
    CHECK(ok != NULL, "restored adapter loads: %s", e.msg);
    gn_model_free(ok);
}

/* Every allocation of gn_model_load (model, adapter) can fail cleanly. */
static void test_alloc_failures(void) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = "qwen2";
    p.shards = 2;
    char d[512], lora[600];
    path_in(d, sizeof d, "alloc");
    snprintf(lora, sizeof lora, "%s/adapter", d);
    p.lora_out = lora;
    gn_err e = {0};
    CHECK(gn_make_model(&p, d, &e) == 0, "make: %s", e.msg);
    for (int be = 0; be < 2; be++) {
        int points = 0, clean = 1;
        for (long n = 0; n < 5000; n++) {
            gn_alloc_fail_after(n);
            gn_model *m = load(d, be ? g_copy : g_host, lora, 0, &e);
            gn_alloc_fail_after(-1);
            if (m) {
                gn_model_free(m);
                break;
            }
            points++;
            if (e.code != GN_ENOMEM) {
                clean = 0;
                fprintf(stderr, "alloc point %ld: %s\n", n, e.msg);
            }
        }
        CHECK(points > 20 && clean, "model load (backend %d): %d failure points, all GN_ENOMEM %d", be, points,
              clean);
    }
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_model_XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    gn_err e = {0};
    g_host = gn_backend_cpu_create(1, 1, &e);
    g_copy = gn_backend_cpu_create(1, 1, &e);
    if (!g_host || !g_copy) {
        fprintf(stderr, "cpu backend: %s\n", e.msg);
        return 1;
    }
    g_copy->is_host = 0; /* same host memory, but the loader must alloc + upload every tensor */
    test_arches();
    test_sharded_and_tied();
    test_head_std();
    test_rss();
    test_real_tokenizers();
    test_lora_merge(GN_BF16, "llama");
    test_lora_merge(GN_F16, "mistral");
    test_lora_merge(GN_F32, "qwen2");
    test_errors();
    test_alloc_failures();
    g_host->ops->destroy(g_host);
    g_copy->ops->destroy(g_copy);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    GN_TEST_MAIN_END();
}
