/* trainer.c — the training loop, AdamW, the schedule, checkpoints and resume. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "lora.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "train_data.h"
#include "train_model.h"
#include "trainer.h"

gn_train_opts gn_train_default_opts(void) {
    gn_train_opts p;
    memset(&p, 0, sizeof p);
    p.data_jsonl = -1;
    p.steps = 100;
    p.batch = 8;
    p.seq_len = 128;
    p.accum = 1;
    p.lr = 1e-3f;
    p.min_lr_ratio = 0.1f;
    p.clip = 1.0f;
    p.beta1 = 0.9f;
    p.beta2 = 0.999f;
    p.eps = 1e-8f;
    p.beta_r = 1.0f;
    p.seed = 1;
    p.lora_alpha = 16.0f;
    p.lora_targets = GN_LORA_Q | GN_LORA_K | GN_LORA_V;
    p.save_dtype = -1;
    return p;
}

double gn_train_lr_at(const gn_train_opts *p, int s) {
    if (p->warmup > 0 && s < p->warmup) return (double)p->lr * (s + 1) / p->warmup;
    double lo = (double)p->lr * p->min_lr_ratio;
    int span = p->steps - p->warmup;
    if (span <= 0) return p->lr;
    double frac = (double)(s - p->warmup) / span;
    if (frac > 1) frac = 1;
    return lo + ((double)p->lr - lo) * 0.5 * (1.0 + cos(M_PI * frac));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct run_state {
    gn_train_model *m;
    float *adam_m, *adam_v;
    uint8_t *decay; /* per parameter element: 1 where weight decay applies */
    int step;       /* steps done */
} run_state;

/* ---- checkpoints ----------------------------------------------------------------- */

static int save_state(const gn_train_opts *p, run_state *s, const char *dir, gn_err *err) {
    size_t n = gn_train_n_params(s->m);
    gn_st_write_tensor t[3] = {
        {"adam_m", GN_F32, 1, {(int64_t)n}, s->adam_m},
        {"adam_v", GN_F32, 1, {(int64_t)n}, s->adam_v},
        {"params", GN_F32, 1, {(int64_t)n}, gn_train_params(s->m)},
    };
    char *path = gn_fs_join(dir, "trainer_state.safetensors");
    char *jpath = gn_fs_join(dir, "trainer_state.json");
    json_t *j = json_pack("{s:i, s:s, s:s, s:I, s:i, s:f, s:i, s:I, s:f, s:i}", "step", s->step,
                          "mode", p->mode == GN_TRAIN_ARM ? "arm" : "lm", "base_model", p->model_dir,
                          "n_params", (json_int_t)n, "steps", p->steps, "lr", (double)p->lr,
                          "warmup", p->warmup, "seed", (json_int_t)p->seed, "beta_r",
                          (double)p->beta_r, "lora_rank", p->lora_rank);
    char *js = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    int rc = 0;
    if (!path || !jpath || !js) rc = gn_errf(err, GN_ENOMEM, "out of memory");
    if (!rc) rc = gn_st_write(path, t, 3, NULL, err);
    if (!rc) rc = gn_fs_write_file(jpath, js, strlen(js), err);
    gn_free(path);
    gn_free(jpath);
    free(js);
    return rc;
}

static int save_checkpoint(const gn_train_opts *p, run_state *s, const char *dir, gn_err *err) {
    int rc = gn_fs_mkdirs(dir, err);
    if (rc) return rc;
    if (gn_train_model_has_lora(s->m)) {
        rc = gn_train_lora_save(s->m, p->model_dir, dir, err);
    } else {
        gn_dtype dt = p->save_dtype >= 0 ? (gn_dtype)p->save_dtype : gn_train_model_src_dtype(s->m);
        rc = gn_train_model_save(s->m, p->model_dir, dir, dt, err);
    }
    if (!rc) rc = save_state(p, s, dir, err);
    if (rc) gn_err_prefix(err, "saving checkpoint %s: ", dir);
    return rc;
}

static int load_state(const gn_train_opts *p, run_state *s, gn_err *err) {
    char *jpath = gn_fs_join(p->resume_dir, "trainer_state.json");
    char *path = gn_fs_join(p->resume_dir, "trainer_state.safetensors");
    char *js = NULL;
    size_t jl = 0;
    gn_st_file *f = NULL;
    json_t *j = NULL;
    int rc = (!jpath || !path) ? gn_errf(err, GN_ENOMEM, "out of memory") : 0;
    if (!rc) rc = gn_fs_read_file(jpath, 1 << 20, &js, &jl, err);
    if (!rc) {
        json_error_t je;
        j = json_loadb(js, jl, 0, &je);
        json_t *st = json_object_get(j, "step");
        const char *mode = json_string_value(json_object_get(j, "mode"));
        const char *want = p->mode == GN_TRAIN_ARM ? "arm" : "lm";
        json_t *rank = json_object_get(j, "lora_rank");
        if (!mode || strcmp(mode, want) != 0 || !json_is_integer(rank) ||
            json_integer_value(rank) != p->lora_rank)
            rc = gn_errf(err, GN_EMISMATCH,
                         "%s: the checkpoint is a %s run with lora_rank %lld; this run is %s with "
                         "lora_rank %d", jpath, mode ? mode : "(unknown)",
                         (long long)json_integer_value(rank), want, p->lora_rank);
        else if (!json_is_integer(st) || json_integer_value(st) < 0 || json_integer_value(st) > p->steps)
            rc = gn_errf(err, GN_EFORMAT, "%s: \"step\" missing or out of range [0, %d]", jpath,
                         p->steps);
        else
            s->step = (int)json_integer_value(st);
    }
    if (!rc && !(f = gn_st_open(path, err))) rc = err ? err->code : GN_EIO;
    size_t n = gn_train_n_params(s->m);
    static const char *const names[3] = {"adam_m", "adam_v", "params"};
    float *dst[3] = {s->adam_m, s->adam_v, gn_train_params(s->m)};
    for (int k = 0; !rc && k < 3; k++) {
        const gn_st_tensor *t = gn_st_header_find(&f->hdr, names[k]);
        if (!t || t->dtype != GN_F32 || gn_st_tensor_numel(t) != n)
            rc = gn_errf(err, GN_EMISMATCH, "%s: tensor '%s' missing or not %zu float32 values "
                         "(same model and LoRA settings as the checkpoint?)", path, names[k], n);
        else
            memcpy(dst[k], gn_st_data(f, t), n * sizeof(float));
    }
    gn_st_close(f);
    json_decref(j);
    gn_free(js);
    gn_free(jpath);
    gn_free(path);
    return rc;
}

/* ---- the loop -------------------------------------------------------------------- */

static double grad_norm(const float *g, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

static void adamw(const gn_train_opts *p, run_state *s, double lr) {
    const size_t n = gn_train_n_params(s->m);
    float *w = gn_train_params(s->m), *g = gn_train_grads(s->m);
    const int t = s->step + 1;
    const double bc1 = 1.0 - pow(p->beta1, t), bc2 = 1.0 - pow(p->beta2, t);
    const float b1 = p->beta1, b2 = p->beta2;
    for (size_t i = 0; i < n; i++) {
        if (s->decay[i]) w[i] -= (float)(lr * p->wd) * w[i];
        s->adam_m[i] = b1 * s->adam_m[i] + (1 - b1) * g[i];
        s->adam_v[i] = b2 * s->adam_v[i] + (1 - b2) * g[i] * g[i];
        double mh = s->adam_m[i] / bc1, vh = s->adam_v[i] / bc2;
        w[i] -= (float)(lr * mh / (sqrt(vh) + p->eps));
    }
}

static int check_params(const gn_train_opts *p, gn_err *err) {
    if (!p->model_dir || !p->data_path || !p->out_dir)
        return gn_errf(err, GN_EINVAL, "model, data and output directory are required");
    if (p->steps < 1 || p->batch < 1 || p->batch > 65536 || p->accum < 1 || p->seq_len < 2 || p->warmup < 0 ||
        !(p->lr > 0) || !(p->wd >= 0) || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1) || !(p->eps > 0) || p->save_every < 0 ||
        !(p->min_lr_ratio >= 0 && p->min_lr_ratio <= 1) || p->lora_rank < 0)
        return gn_errf(err, GN_EINVAL,
                       "bad settings: steps %d batch %d accum %d seq-len %d warmup %d lr %g wd %g "
                       "save-every %d lora-rank %d",
                       p->steps, p->batch, p->accum, p->seq_len, p->warmup, (double)p->lr,
                       (double)p->wd, p->save_every, p->lora_rank);
    if (p->mode == GN_TRAIN_ARM && !(p->beta_r > 0))
        return gn_errf(err, GN_EINVAL, "--beta-r must be positive");
    return 0;
}

static int data_is_jsonl(const gn_train_opts *p) {
    if (p->mode == GN_TRAIN_ARM) return 1;
    if (p->data_jsonl >= 0) return p->data_jsonl;
    size_t n = strlen(p->data_path);
    return (n > 6 && !strcmp(p->data_path + n - 6, ".jsonl")) ||
           (n > 5 && !strcmp(p->data_path + n - 5, ".json"));
}

int gn_train_run(const gn_train_opts *p, gn_err *err) {
    int rc = check_params(p, err);
    if (rc) return rc;
    run_state s;
    memset(&s, 0, sizeof s);
    gn_tokenizer *tok = NULL;
    gn_train_data *data = NULL;
    int32_t *tokens = NULL, *targets = NULL;
    float *logp = NULL, *dlogp = NULL, *margins = NULL;

    if (!(s.m = gn_train_model_load(p->model_dir, p->threads, err))) {
        rc = err ? err->code : GN_EIO;
        goto done;
    }
    if (p->lora_rank > 0 &&
        (rc = gn_train_model_add_lora(s.m, p->lora_rank, p->lora_alpha, p->lora_targets, p->seed,
                                      err)) != 0)
        goto done;
    if (!(tok = gn_tok_load(p->model_dir, err))) {
        rc = err ? err->code : GN_EIO;
        goto done;
    }
    gn_train_data_kind kind = p->mode == GN_TRAIN_ARM ? GN_DATA_PAIRS
                              : data_is_jsonl(p)      ? GN_DATA_LM_JSONL
                                                      : GN_DATA_TEXT;
    if (!(data = gn_train_data_load(p->data_path, kind, tok, p->seq_len, err))) {
        rc = err ? err->code : GN_EIO;
        goto done;
    }
    if (p->log)
        fprintf(p->log, "genarm-train: %d examples (%d truncated to %d tokens), %zu trainable "
                "parameters%s\n", gn_train_data_n_examples(data), gn_train_data_n_truncated(data),
                p->seq_len, gn_train_n_params(s.m), gn_train_model_has_lora(s.m) ? " (LoRA)" : "");
    const size_t n = gn_train_n_params(s.m);
    const int spe = gn_train_data_seqs_per_example(data), n_seqs = p->batch * spe;
    const size_t cap = (size_t)n_seqs * (size_t)p->seq_len;
    s.adam_m = gn_calloc(n, sizeof(float));
    s.adam_v = gn_calloc(n, sizeof(float));
    s.decay = gn_calloc(n, 1);
    tokens = gn_malloc(cap * sizeof *tokens);
    targets = gn_malloc(cap * sizeof *targets);
    logp = gn_malloc(cap * sizeof *logp);
    dlogp = gn_malloc(cap * sizeof *dlogp);
    margins = gn_malloc((size_t)p->batch * sizeof *margins);
    if (!s.adam_m || !s.adam_v || !s.decay || !tokens || !targets || !logp || !dlogp || !margins) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < gn_train_n_tensors(s.m); i++) {
        const gn_train_tensor *t = gn_train_tensor_at(s.m, i);
        memset(s.decay + t->offset, t->decay, (size_t)t->rows * (size_t)t->cols);
    }
    if (p->resume_dir && (rc = load_state(p, &s, err)) != 0) goto done;

    for (; s.step < p->steps; s.step++) {
        double t0 = now_s(), loss = 0, margin = 0, correct = 0;
        long n_tok = 0;
        gn_train_zero_grads(s.m);
        for (int a = 0; a < p->accum; a++) {
            int64_t first = ((int64_t)s.step * p->accum + a) * p->batch;
            int T = 0;
            n_tok += gn_train_data_batch(data, p->seed, first, p->batch, tokens, targets, &T);
            gn_train_batch b = {n_seqs, T, tokens, targets};
            if ((rc = gn_train_forward(s.m, &b, logp, err)) != 0) goto done;
            const float scale = 1.0f / (float)p->accum;
            if (p->mode == GN_TRAIN_ARM) {
                loss += gn_train_loss_arm(&b, logp, p->beta_r, scale, dlogp, margins) / p->accum;
                for (int i = 0; i < p->batch; i++) {
                    margin += margins[i];
                    correct += margins[i] > 0;
                }
            } else {
                loss += gn_train_loss_lm(&b, logp, scale, dlogp, NULL) / p->accum;
            }
            if ((rc = gn_train_backward(s.m, dlogp, err)) != 0) goto done;
        }
        float *g = gn_train_grads(s.m);
        double gnorm = grad_norm(g, n);
        if (!isfinite(gnorm)) {
            rc = gn_errf(err, GN_ERANGE, "step %d: gradient norm is %g (diverged; lower --lr)",
                         s.step + 1, gnorm);
            goto done;
        }
        if (p->clip > 0 && gnorm > p->clip) {
            float k = (float)(p->clip / (gnorm + 1e-6));
            for (size_t i = 0; i < n; i++) g[i] *= k;
        }
        double lr = gn_train_lr_at(p, s.step);
        adamw(p, &s, lr);
        double dt = now_s() - t0;
        gn_train_step_info info = {s.step + 1, loss, lr, gnorm, dt > 0 ? n_tok / dt : 0, n_tok, 0, 0};
        if (p->mode == GN_TRAIN_ARM) {
            info.margin = margin / ((double)p->batch * p->accum);
            info.accuracy = correct / ((double)p->batch * p->accum);
        }
        if (p->log) {
            fprintf(p->log, "step %d/%d loss %.5f lr %.3e grad-norm %.4f tok/s %.0f", info.step,
                    p->steps, loss, lr, gnorm, info.tokens_per_s);
            if (p->mode == GN_TRAIN_ARM)
                fprintf(p->log, " margin %.4f acc %.3f", info.margin, info.accuracy);
            fputc('\n', p->log);
            fflush(p->log);
        }
        if (p->on_step) p->on_step(p->on_step_ctx, &info);
        if (p->save_every > 0 && (s.step + 1) % p->save_every == 0 && s.step + 1 < p->steps) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/checkpoint-%d", p->out_dir, s.step + 1);
            int saved = s.step;
            s.step++; /* the state records steps done */
            rc = save_checkpoint(p, &s, dir, err);
            s.step = saved;
            if (rc) goto done;
        }
    }
    rc = save_checkpoint(p, &s, p->out_dir, err);
done:
    gn_free(tokens);
    gn_free(targets);
    gn_free(logp);
    gn_free(dlogp);
    gn_free(margins);
    gn_free(s.adam_m);
    gn_free(s.adam_v);
    gn_free(s.decay);
    gn_train_data_free(data);
    gn_tok_free(tok);
    gn_train_model_free(s.m);
    return rc;
}
