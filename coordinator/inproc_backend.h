/* inproc_backend.h — a gn_coord_backend that generates in this process with
 * engine/generate.h: one base model and named ARMs loaded from Hugging Face
 * directories, real GenARM guided decoding on the CPU (or any backend
 * device). Jobs run one at a time, in arrival order, on one worker thread (the
 * n choices of a job run as one batch); the distributed step loop that batches
 * many requests replaces it in production. It makes the HTTP layer testable
 * end to end with real generation and no worker processes.
 *
 * Prompts: completions feed the prompt text to every model (each with its own
 * tokenizer, BOS added as HF encode() does). Chat renders the messages with
 * each model's own chat template (tokenizer_config.json's chat_template,
 * chat/chat_template.h, generation prompt on, no extra special tokens); a
 * model without a template gets the fallback "<role>: <content>\n" lines
 * followed by "assistant:".
 *
 * A job names ARMs by name; ARMs it does not name get weight 0 (skipped by
 * the combination rule). An unknown name is refused at submit (GN_ENOTFOUND).
 *
 * Thread-safety: submit/cancel/ready from any thread. */
#ifndef GN_INPROC_BACKEND_H
#define GN_INPROC_BACKEND_H

#include "coord_backend.h"
#include "gn_err.h"
#include "metrics.h"

#define GN_INPROC_MAX_ARMS 16

typedef struct gn_inproc_params {
    const char *base_dir;                          /* required */
    const char *arm_dirs[GN_INPROC_MAX_ARMS];      /* n_arms model directories */
    const char *arm_names[GN_INPROC_MAX_ARMS];     /* their names (identifiers) */
    int n_arms;
    const char *device;    /* "cpu" (default), "cpu-ref", "cuda:0" */
    int n_threads;         /* CPU threads, 0 = all cores */
    const char *model_id;  /* served model name; default: the base directory's basename */
    gn_coord_metrics *metrics; /* optional (borrowed): running/waiting gauges */
} gn_inproc_params;

typedef struct gn_inproc gn_inproc;

/* Loads the models (tokenizers included), checks that every ARM shares the
 * base's tokenizer, parses each chat template, starts the worker thread.
 * NULL with err on failure. */
gn_inproc *gn_inproc_create(const gn_inproc_params *p, gn_err *err);

/* The backend interface over x (x must outlive every use of it). */
gn_coord_backend gn_inproc_backend(gn_inproc *x);

/* The base model's tokenizer hash (gn_tok_hash), e.g. to register ARMs. */
const char *gn_inproc_tokenizer_hash(const gn_inproc *x);

/* Cancels queued jobs (their done() reports "abort"), finishes the running
 * one, stops the thread, frees the models. NULL is a no-op. */
void gn_inproc_free(gn_inproc *x);

#endif
