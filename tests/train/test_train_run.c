/* test_train_run.c — whole training runs through gn_train_run:
 *   - LM training on a tiny corpus lowers the loss a lot (fixed seed);
 *   - the saved model (F32) runs through the engine (gn_runner_step) with the
 *     log-probs of the trainer's own forward;
 *   - ARM training (LoRA) on toy preference pairs raises the chosen-vs-
 *     rejected margin; the PEFT adapter loads through gn_model_load with
 *     lora_dir and matches the trainer's forward with the adapters;
 *   - a run resumed from a checkpoint follows the uninterrupted run's loss
 *     trajectory exactly and ends with the same parameters. */
#include <stdint.h>
#include <string.h>

#include "backend_cpu.h"
#include "fsutil.h"
#include "gn_alloc.h"
#include "model.h"
#include "runner.h"
#include "tokenizer.h"
#include "train_model.h"
#include "trainer.h"
#include "train_test_util.h"

#define MAX_STEPS 400

typedef struct trace {
    int n;
    double loss[MAX_STEPS + 1], margin[MAX_STEPS + 1], acc[MAX_STEPS + 1];
} trace;

static void on_step(void *ctx, const gn_train_step_info *i) {
    trace *t = ctx;
    if (i->step <= MAX_STEPS) {
        t->loss[i->step] = i->loss;
        t->margin[i->step] = i->margin;
        t->acc[i->step] = i->accuracy;
        t->n = i->step;
    }
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int make_model(const char *dir, const char *arch) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.dim = 32;
    p.n_layers = 2;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.ffn_dim = 64;
    p.tok_merges = 60;
    p.dtype = GN_F32;
    p.seed = 11;
    gn_err err = {0};
    int rc = gn_make_model(&p, dir, &err);
    if (rc) fprintf(stderr, "make model: %s\n", err.msg);
    return rc;
}

static const char k_corpus[] =
    "the cat sat on the mat. the dog sat on the log. the cat saw the dog.\n"
    "a bird sang in the tree. the dog ran to the park. the cat ran to the tree.\n"
    "the bird saw the cat on the mat. a dog and a cat sat in the park.\n";

/* Per-position target log-probs of `dir` (+ lora_dir) through the engine. */
static int engine_logp(const char *dir, const char *lora_dir, const int32_t *tok, int n,
                       float *logp) {
    gn_err err = {0};
    gn_backend *be = gn_backend_cpu_create(1, 1, &err);
    gn_model_params mp = gn_model_default_params();
    mp.lora_dir = lora_dir;
    gn_model *m = be ? gn_model_load(dir, be, &mp, &err) : NULL;
    gn_runner_params rp = gn_runner_default_params();
    gn_runner *r = m ? gn_runner_create(m, &rp, &err) : NULL;
    gn_seq *s = r ? gn_seq_create(r, &err) : NULL;
    int rc = -1;
    if (s) {
        int V = gn_model_n_out(m);
        float *out = gn_malloc((size_t)n * (size_t)V * sizeof(float));
        gn_step_item it = {s, tok, n, 1};
        if (out && gn_runner_step(r, &it, 1, out, &err) == 0) {
            for (int t = 0; t + 1 < n; t++) logp[t] = out[(size_t)t * V + tok[t + 1]];
            rc = 0;
        }
        gn_free(out);
    }
    if (rc) fprintf(stderr, "engine: %s\n", err.msg);
    gn_seq_free(s);
    gn_runner_free(r);
    gn_model_free(m);
    gn_backend_free(be);
    return rc;
}

/* The same through the trainer's forward (model dir, optional LoRA params from
 * a checkpoint's trainer_state.safetensors). */
static int trainer_logp(const char *dir, const char *lora_ckpt, int rank, float alpha,
                        const int32_t *tok, int n, float *logp, const char *save_merged) {
    gn_err err = {0};
    gn_train_model *m = gn_train_model_load(dir, 2, &err);
    int rc = m ? 0 : -1;
    if (!rc && lora_ckpt) {
        rc = gn_train_model_add_lora(m, rank, alpha, 0x7fu, 1, &err);
        char path[800];
        snprintf(path, sizeof path, "%s/trainer_state.safetensors", lora_ckpt);
        gn_st_file *f = rc ? NULL : gn_st_open(path, &err);
        if (!f || tt_fixture(f, "params", gn_train_params(m), gn_train_n_params(m))) rc = -1;
        gn_st_close(f);
    }
    if (!rc) {
        int32_t tgt[256];
        for (int t = 0; t < n; t++) tgt[t] = t + 1 < n ? tok[t + 1] : -1;
        gn_train_batch b = {1, n, tok, tgt};
        rc = gn_train_forward(m, &b, logp, &err);
    }
    if (!rc && save_merged) rc = gn_train_model_save(m, dir, save_merged, GN_F32, &err);
    if (rc) fprintf(stderr, "trainer: %s\n", err.msg);
    gn_train_model_free(m);
    return rc;
}

static int encode(const char *model_dir, const char *text, int32_t *ids, int cap) {
    gn_err err = {0};
    gn_tokenizer *tk = gn_tok_load(model_dir, &err);
    int32_t *p = NULL;
    int n = 0;
    if (!tk || gn_tok_encode(tk, text, strlen(text), 1, &p, &n, &err)) n = 0;
    if (n > cap) n = cap;
    if (n) memcpy(ids, p, (size_t)n * sizeof *ids);
    gn_free(p);
    gn_tok_free(tk);
    return n;
}

static void test_lm(const char *tmp, const char *base) {
    char data[700], out[700];
    snprintf(data, sizeof data, "%s/corpus.txt", tmp);
    snprintf(out, sizeof out, "%s/lm_out", tmp);
    write_file(data, k_corpus);
    trace tr = {0};
    gn_train_opts p = gn_train_default_opts();
    p.model_dir = base;
    p.data_path = data;
    p.out_dir = out;
    p.steps = 150;
    p.batch = 4;
    p.seq_len = 24;
    p.lr = 1e-2f;
    p.warmup = 10;
    p.wd = 0.01f;
    p.threads = 2;
    p.save_dtype = GN_F32;
    p.on_step = on_step;
    p.on_step_ctx = &tr;
    gn_err err = {0};
    int rc = gn_train_run(&p, &err);
    CHECK(rc == 0, "lm run: %s", err.msg);
    if (rc) return;
    double first = tr.loss[1], last = (tr.loss[146] + tr.loss[147] + tr.loss[148] + tr.loss[149] + tr.loss[150]) / 5;
    printf("lm: loss %.3f -> %.3f\n", first, last);
    CHECK(tr.n == 150 && first > 5.0 && last < 0.35 * first, "lm loss %.3f -> %.3f", first, last);

    /* the trained model through the engine == the trainer's forward */
    int32_t tok[64];
    int n = encode(out, "the dog saw the cat in the park.", tok, 64);
    float a[64], b[64];
    CHECK(n > 4, "encode");
    if (n > 4 && engine_logp(out, NULL, tok, n, a) == 0 && trainer_logp(out, NULL, 0, 0, tok, n, b, NULL) == 0) {
        gn_t_close("engine vs trainer log-probs (trained LM)", a, b, (size_t)n - 1, 1e-4f, 1e-4f);
        double mean = 0;
        for (int t = 0; t + 1 < n; t++) mean -= a[t];
        mean /= n - 1;
        CHECK(mean < 0.5 * first, "held-out sentence loss %.3f not far below the start %.3f", mean, first);
    } else {
        CHECK(0, "engine/trainer forward failed");
    }
}

static const char *const k_good[] = {"good", "kind", "happy", "great", "nice"};
static const char *const k_bad[] = {"bad", "sad", "awful", "mean", "ugly"};
static const char *const k_subj[] = {"the day", "my cat", "the food", "this park", "our trip",
                                     "the song", "a friend", "the book"};

static void write_pairs(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = 0; i < 24; i++)
        fprintf(f, "{\"prompt\":\"Tell me about %s.\",\"chosen\":\"It was %s and %s.\",\"rejected\":\"It was %s and %s.\"}\n",
                k_subj[i % 8], k_good[i % 5], k_good[(i + 2) % 5], k_bad[i % 5], k_bad[(i + 3) % 5]);
    fclose(f);
}

static gn_train_opts arm_opts(const char *base, const char *pairs, const char *out, trace *tr) {
    gn_train_opts p = gn_train_default_opts();
    p.mode = GN_TRAIN_ARM;
    p.model_dir = base;
    p.data_path = pairs;
    p.out_dir = out;
    p.steps = 40;
    p.batch = 8;
    p.accum = 3; /* every step sees all 24 pairs */
    p.seq_len = 40;
    p.lr = 2e-2f;
    p.warmup = 4;
    p.beta_r = 0.5f;
    p.threads = 1;
    p.lora_rank = 4;
    p.lora_alpha = 8.0f;
    p.lora_targets = 0x7fu; /* every projection */
    p.on_step = on_step;
    p.on_step_ctx = tr;
    return p;
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t lx = 0, ly = 0;
    int same = !gn_fs_read_file(a, 1 << 26, &x, &lx, NULL) && !gn_fs_read_file(b, 1 << 26, &y, &ly, NULL) &&
               lx == ly && !memcmp(x, y, lx);
    gn_free(x);
    gn_free(y);
    return same;
}

static void test_arm_lora_resume(const char *tmp, const char *base) {
    char pairs[700], out_a[700], out_b[700], ck[800], pa[900], pb[900];
    snprintf(pairs, sizeof pairs, "%s/pairs.jsonl", tmp);
    snprintf(out_a, sizeof out_a, "%s/arm_a", tmp);
    snprintf(out_b, sizeof out_b, "%s/arm_b", tmp);
    write_pairs(pairs);
    trace ta = {0}, tb = {0};
    gn_train_opts p = arm_opts(base, pairs, out_a, &ta);
    p.save_every = 20;
    gn_err err = {0};
    int rc = gn_train_run(&p, &err);
    CHECK(rc == 0, "arm run: %s", err.msg);
    if (rc) return;
    double m0 = ta.margin[1], m1 = (ta.margin[38] + ta.margin[39] + ta.margin[40]) / 3;
    printf("arm: margin %.3f -> %.3f, accuracy %.2f -> %.2f, loss %.3f -> %.3f\n", m0, m1, ta.acc[1],
           ta.acc[40], ta.loss[1], ta.loss[40]);
    CHECK(m1 > m0 + 5.0 && m1 > 0 && ta.acc[40] >= 0.75 && ta.loss[40] < 0.5 * ta.loss[1],
          "arm margin %.3f -> %.3f", m0, m1);

    /* resume from step 20 == uninterrupted */
    snprintf(ck, sizeof ck, "%s/checkpoint-20", out_a);
    gn_train_opts q = arm_opts(base, pairs, out_b, &tb);
    q.resume_dir = ck;
    rc = gn_train_run(&q, &err);
    CHECK(rc == 0, "resumed run: %s", err.msg);
    int same = tb.n == 40;
    for (int s = 21; s <= 40; s++) same &= tb.loss[s] == ta.loss[s] && tb.margin[s] == ta.margin[s];
    CHECK(same, "resumed losses differ: step 21 %.9g vs %.9g, step 40 %.9g vs %.9g", tb.loss[21],
          ta.loss[21], tb.loss[40], ta.loss[40]);
    snprintf(pa, sizeof pa, "%s/trainer_state.safetensors", out_a);
    snprintf(pb, sizeof pb, "%s/trainer_state.safetensors", out_b);
    CHECK(same_file(pa, pb), "resumed final state differs from the uninterrupted run's");
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", out_a);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", out_b);
    CHECK(same_file(pa, pb), "resumed adapter differs");

    /* the PEFT adapter through the engine == the trainer's forward with LoRA */
    int32_t tok[64];
    char text[] = "Tell me about the food. It was good and happy.";
    int n = encode(base, text, tok, 64);
    float a[64], b[64], c[64];
    char merged[800];
    snprintf(merged, sizeof merged, "%s/merged", tmp);
    if (n > 4 && engine_logp(base, out_a, tok, n, a) == 0 &&
        trainer_logp(base, out_a, 4, 8.0f, tok, n, b, merged) == 0 &&
        engine_logp(merged, NULL, tok, n, c) == 0) {
        gn_t_close("engine+adapter vs trainer+LoRA log-probs", a, b, (size_t)n - 1, 1e-4f, 1e-4f);
        gn_t_close("engine on the merged save vs engine+adapter", c, a, (size_t)n - 1, 1e-4f, 1e-4f);
    } else {
        CHECK(0, "adapter forward failed");
    }
    /* a bad resume directory is a clear error */
    q.resume_dir = out_b;
    q.lora_rank = 0;
    rc = gn_train_run(&q, &err);
    CHECK(rc != 0 && strstr(err.msg, "trainer_state.json") && strstr(err.msg, "lora_rank 4"),
          "mismatched resume: %s", err.msg);
}

static void test_full_resume(const char *tmp, const char *base) {
    char data[700], out_a[700], out_b[700], ck[800], pa[900], pb[900];
    snprintf(data, sizeof data, "%s/sft.jsonl", tmp);
    snprintf(out_a, sizeof out_a, "%s/sft_a", tmp);
    snprintf(out_b, sizeof out_b, "%s/sft_b", tmp);
    FILE *f = fopen(data, "w");
    if (!f) return;
    for (int i = 0; i < 10; i++)
        fprintf(f, "{\"prompt\":\"Q%d: what is %s?\",\"response\":\"It is %s.\"}\n", i, k_subj[i % 8],
                k_good[i % 5]);
    fclose(f);
    trace ta = {0}, tb = {0};
    gn_train_opts p = gn_train_default_opts();
    p.model_dir = base;
    p.data_path = data;
    p.out_dir = out_a;
    p.steps = 6;
    p.batch = 3;
    p.accum = 2;
    p.seq_len = 32;
    p.lr = 5e-3f;
    p.wd = 0.1f;
    p.warmup = 2;
    p.threads = 2;
    p.save_every = 3;
    p.on_step = on_step;
    p.on_step_ctx = &ta;
    gn_err err = {0};
    int rc = gn_train_run(&p, &err);
    CHECK(rc == 0, "sft run: %s", err.msg);
    gn_train_opts q = p;
    q.out_dir = out_b;
    snprintf(ck, sizeof ck, "%s/checkpoint-3", out_a);
    q.resume_dir = ck;
    q.on_step_ctx = &tb;
    q.threads = 1; /* results do not depend on the thread count */
    rc = gn_train_run(&q, &err);
    CHECK(rc == 0, "sft resume: %s", err.msg);
    int same = ta.n == 6 && tb.n == 6;
    for (int s = 4; s <= 6; s++) same &= ta.loss[s] == tb.loss[s];
    CHECK(same, "full fine-tune resume: step 4 %.9g vs %.9g", tb.loss[4], ta.loss[4]);
    CHECK(ta.loss[6] < ta.loss[1], "sft loss %.4f -> %.4f", ta.loss[1], ta.loss[6]);
    snprintf(pa, sizeof pa, "%s/model.safetensors", out_a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", out_b);
    CHECK(same_file(pa, pb), "resumed model differs");
    snprintf(pa, sizeof pa, "%s/tokenizer.json", out_a);
    CHECK(gn_fs_is_file(pa), "tokenizer copied into the checkpoint");
}

int main(void) {
    char tmp[512], base[600];
    tt_tmpdir(tmp, sizeof tmp, "run");
    snprintf(base, sizeof base, "%s/base", tmp);
    if (make_model(base, "llama") == 0) {
        test_lm(tmp, base);
        test_arm_lora_resume(tmp, base);
        test_full_resume(tmp, base);
    } else {
        CHECK(0, "make base model");
    }
    tt_rmrf(tmp);
    GN_TEST_MAIN_END();
}
