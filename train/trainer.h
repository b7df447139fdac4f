/* trainer.h — the training loop: language-model or GenARM ARM training of a
 * LLaMA-family model (train_model.h) on a data file (train_data.h), with
 * AdamW, linear warmup + cosine decay, global-norm clipping, gradient
 * accumulation, full fine-tuning or LoRA, checkpoints and exact resume.
 *
 * Step s (0-based) uses learning rate
 *   lr · (s + 1) / warmup                                  for s < warmup
 *   lr_min + (lr - lr_min) · (1 + cos(π · (s - warmup) / (steps - warmup))) / 2   after,
 * with lr_min = lr · min_lr_ratio. One step = accum micro-batches of `batch`
 * examples (pairs for ARM); each micro-batch's loss is its mean (over counted
 * tokens for LM, over pairs for ARM) divided by accum. AdamW as in PyTorch:
 * p ← p − lr·wd·p (matrices and embeddings only), then the bias-corrected
 * Adam update.
 *
 * Checkpoints (every save_every steps into out_dir/checkpoint-<step>, and at
 * the end into out_dir): full fine-tuning writes the Hugging Face model
 * (train_model.h gn_train_model_save), LoRA the PEFT adapter; both add
 * trainer_state.safetensors (float32 "params", "adam_m", "adam_v") and
 * trainer_state.json (step and the settings). resume_dir continues such a
 * run: the model is loaded from model_dir as at the start, then parameters,
 * optimizer moments and step come from the checkpoint, and the batch order
 * depends only on (seed, example index), so the loss trajectory equals the
 * uninterrupted run's.
 *
 * Not thread-safe with itself on the same out_dir; reentrant otherwise. */
#ifndef GN_TRAINER_H
#define GN_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "gn_err.h"
#include "gn_tensor.h"

typedef enum gn_train_mode { GN_TRAIN_LM = 0, GN_TRAIN_ARM = 1 } gn_train_mode;

typedef struct gn_train_step_info {
    int step;          /* 1-based number of the step just taken */
    double loss;       /* mean over the step's micro-batches */
    double lr;
    double grad_norm;  /* before clipping */
    double tokens_per_s;
    long tokens;       /* counted target tokens this step */
    double margin;     /* ARM: mean r(chosen) - r(rejected) over the step's pairs */
    double accuracy;   /* ARM: fraction of pairs with margin > 0 */
} gn_train_step_info;

typedef struct gn_train_opts {
    gn_train_mode mode;
    const char *model_dir;   /* Hugging Face model directory to start from */
    const char *data_path;   /* LM: text file or .jsonl {"prompt","response"}; ARM: pairs .jsonl */
    int data_jsonl;          /* LM: -1 = by extension (.jsonl / .json), 0 = text, 1 = JSONL */
    const char *out_dir;
    const char *resume_dir;  /* checkpoint to continue from, or NULL */
    int steps;               /* optimizer steps in all (a resumed run ends at the same step) */
    int batch;               /* examples (ARM: pairs) per micro-batch, default 8 */
    int seq_len;             /* max tokens per sequence, default 128 */
    int accum;               /* micro-batches per step, default 1 */
    int warmup;              /* warmup steps, default 0 */
    float lr;                /* peak learning rate, default 1e-3 */
    float min_lr_ratio;      /* cosine floor as a fraction of lr, default 0.1 */
    float wd;                /* decoupled weight decay, default 0.0 */
    float clip;              /* global gradient norm limit, <= 0: none; default 1.0 */
    float beta1, beta2, eps; /* AdamW, default 0.9, 0.999, 1e-8 */
    float beta_r;            /* ARM loss β_r, default 1.0 */
    int threads;             /* <= 0: all CPUs */
    int save_every;          /* 0: only at the end */
    uint64_t seed;           /* data order and LoRA init, default 1 */
    int lora_rank;           /* 0: full fine-tuning */
    float lora_alpha;        /* default 16 */
    unsigned lora_targets;   /* GN_LORA_* bits, default q|k|v */
    int save_dtype;          /* -1: the base model's dtype, else a gn_dtype */
    FILE *log;               /* per-step log lines (NULL: none) */
    /* called after every step (may be NULL) */
    void (*on_step)(void *ctx, const gn_train_step_info *info);
    void *on_step_ctx;
} gn_train_opts;

gn_train_opts gn_train_default_opts(void);

/* Runs the whole training described by p. 0 or a negative GN_E* code with
 * err naming the file / line / setting at fault. */
int gn_train_run(const gn_train_opts *p, gn_err *err);

/* Learning rate of 0-based step s under p's schedule. */
double gn_train_lr_at(const gn_train_opts *p, int s);

#endif
