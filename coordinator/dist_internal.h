/* dist_internal.h — what the files of the distributed backend share. Not a
 * public contract (dist_backend.h is): the types of one gn_dist and the calls
 * its parts make into each other.
 *
 *   dist_backend.c   the gn_coord_backend interface: jobs in (prepare, queue,
 *                    cancel), create/free
 *   scheduler.c      the scheduler thread: admission, the per-step loop,
 *                    finishing sequences, handing results to the sinks
 *   step_exchange.c  one step over the workers: links, requests, gathering
 *                    replies, fetching what a draw lacks
 *   arm_pin.c        which version of an ARM a job uses and which reward
 *                    worker holds it (a snapshot kept by a control thread),
 *                    parking jobs whose ARM no worker holds
 *
 * Everything below runs on the scheduler thread unless a field says
 * otherwise. */
#ifndef GN_DIST_INTERNAL_H
#define GN_DIST_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "arm_pin.h"
#include "control.h"
#include "dist_backend.h"
#include "draw.h"
#include "generate.h"
#include "gn_threadpool.h"
#include "gn_time.h"
#include "job_share.h"
#include "prompt_model.h"
#include "step_exchange.h"

#define N_MODELS_MAX (1 + GN_OAI_MAX_ARMS)
#define MAX_MINFO 64
#define MAX_EOS_IDS 16

_Static_assert(N_MODELS_MAX <= GN_DRAW_MAX_MODELS, "a job's models must fit one draw");
_Static_assert(GN_OAI_MAX_ARMS <= GN_GUIDANCE_MAX_ARMS, "a job's ARMs must fit one guidance profile");
_Static_assert(GN_OAI_MAX_TOP <= GN_DRAW_MAX_TOP, "the alternatives a client may ask for must fit a draw");

typedef struct djob djob;

/* One model's part of one sequence: what its worker holds and this step's
 * row (or why there is none). */
typedef struct seq_model {
    uint32_t held;        /* tokens the worker holds for the sequence (after a step: names
                             the step's row for a fetch) */
    /* this step */
    int sent;             /* the step asked this model's worker for a row */
    int has_row;          /* row is set */
    gn_row_view row;      /* into a reply, or into the buffers below */
    int err_code;         /* a genarm.v1.ErrorCode the worker answered for this sequence, 0 = none */
    char err_msg[GN_ERR_MSG_MAX];
    int32_t *ids;         /* a sparse row grown by fetched values: the listed ids, then the ones
                             asked for (n_asked of them, their values still to come) */
    float *vals;
    size_t ids_bytes, vals_bytes; /* capacities */
    int n_asked;
} seq_model;

typedef struct dseq {
    djob *jb;
    int index;     /* choice index in its job */
    uint64_t id;   /* the sequence id every worker knows it by */
    int active;    /* in the running batch */
    int done;
    int failed;
    seq_model m[N_MODELS_MAX];
    gn_row_mode mode;  /* how its rows come, adapted step by step (step_exchange.h) */
    int fetches;       /* fetch rounds this step (0: the draw was certified at once) */
    unsigned fetch_mark; /* the exchange's last fetch round that counted it */
    int32_t *feed[N_MODELS_MAX]; /* this step's tokens for a model, when they mix prompt and
                                    generated ones (freed after the step) */
    int32_t *tokens; /* generated (cap entries) */
    int n_tokens;
    gn_rng rng;
    gn_gen_text *text;
    const char *finish;
    int stepped;       /* sent to the workers this step */
    int drawn;         /* got its token this step */
    int repin;         /* no token this step: every model recomputes its last row next time */
    double wait_until; /* a worker was at capacity: not stepped before this time */
    double wait_since; /* first capacity refusal of the current wait, 0 = none */
    gn_draw_result draw;
    int draw_rc;       /* 0, or why the draw failed (draw_err) */
    gn_err draw_err;
} dseq;

struct djob {
    gn_coord_job j;
    gn_coord_sink *sink;
    atomic_int cancelled;
    double t_submit, t_start;
    double t_pinned; /* when its ARM versions were last pinned: only a registry snapshot taken
                        later can move them */
    int n_arms;
    char arm_ver[GN_OAI_MAX_ARMS][GN_CTL_ID_MAX];
    uint32_t arm_vnum[GN_OAI_MAX_ARMS];
    gn_xlink *arm_link[GN_OAI_MAX_ARMS]; /* the reward worker of each ARM (NULL: not placed) */
    int arm_parked[GN_OAI_MAX_ARMS];
    int need_place;  /* running, but an ARM version must be placed again first */
    int repins;
    double arm_deadline;
    int32_t *prompt[N_MODELS_MAX];
    int n_prompt[N_MODELS_MAX];
    gn_draw_params dp;
    uint64_t kind;   /* hash of its ARMs and sampling settings: jobs of a kind certify alike */
    int cap;
    int n_left;
    int rc;
    gn_err err;
    dseq seqs[GN_OAI_MAX_N];
    djob *next;                /* in the submit queue, pending or running list */
    djob *all_prev, *all_next; /* every live job, under gn_dist.mu (for cancel) */
};

struct gn_dist {
    gn_dist_params p;
    char model_id[256];
    char coord_id[GN_CTL_ID_MAX];
    gn_coord_metrics *metrics;
    /* models as the coordinator sees them: tokenizer + chat template */
    gn_prompt_model base;
    gn_prompt_model arms[MAX_MINFO]; /* under mu_ctl */
    int n_minfo;
    int n_vocab;
    int ctx_limit;
    int eos[MAX_EOS_IDS];
    int n_eos;
    /* the submit path's Redis connection (ARM pinning at submit), under mu_ctl */
    gn_ctl *ctl_submit;
    pthread_mutex_t mu_ctl;
    gn_arm_pin *pin;     /* ARM placement (its own thread and connection) */
    gn_exchange *ex;     /* the workers */
    /* drawing: one drawer per thread */
    gn_drawer **drawers;
    int n_drawers;
    gn_pool *pool; /* NULL: draw on the scheduler thread */
    dseq **active; /* (max_batch) the running batch */
    int n_active;
    dseq **work;   /* (max_batch) scratch list of sequences */
    djob *running; /* admitted jobs (linked) */
    djob *pending; /* accepted, not admitted yet (FIFO, linked) */
    /* submit queue and every live job: under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    djob *in_head, *in_tail;
    int n_in;
    int quit;
    djob *all;
    gn_dist_stats stats; /* under mu */
    pthread_t thread;
    int thread_started;
    uint64_t next_seq;
    gn_metric *m_steps, *m_step_s, *m_wait_s, *m_compute_s, *m_tokens; /* NULL without metrics */
    /* sharing with other coordinators (NULL: off) */
    gn_share *share;
    atomic_int load;     /* sequences of the jobs handed to the scheduler and not retired */
    atomic_int draining; /* stop taking from the shared queue */
    double next_take;    /* when to look at the shared queue again */
    double next_depth;   /* when to refresh the queue-depth gauge */
};

/* scheduler.c */
void *gn_sched_main(void *d);
void gn_sched_job_free(djob *jb);

/* dist_backend.c: prepares (and queues) a job taken from the shared queue */
int gn_dist_job_prepare(gn_dist *d, const gn_coord_job *j, gn_coord_sink *sink, djob **out, gn_err *err);
int gn_dist_job_enqueue(gn_dist *d, djob *jb, gn_err *err);
void gn_dist_cancel_id(void *impl, uint64_t id);
/* dist_backend.c: an ARM version string as the number the wire carries
 * (1 .. 2^32-1): 0, or GN_EINVAL */
int gn_dist_arm_version_num(const char *version, uint32_t *out);

#endif
