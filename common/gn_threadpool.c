#include "gn_threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "gn_alloc.h"

/* One 64-bit word publishes a job and hands out its tasks:
 *
 *     bits 63..44  generation (which job)     20 bits
 *     bits 43..22  n_tasks of that job        22 bits
 *     bits 21..0   next task index to claim   22 bits
 *
 * A thread claims a task with one fetch_add. Because the claim carries the
 * job's generation and size, a worker that wakes late (descheduled on a busy
 * machine) can never run a task of the wrong job: it either claims a valid
 * index of the job that is live now, or an index past the end and goes back
 * to waiting. The caller waits for n_tasks completed tasks, not for every
 * worker to check in, so a descheduled worker never stalls a job: the
 * threads that are running simply take all of its tasks. */
#define GEN_SHIFT 44
#define NT_SHIFT 22
#define IDX_MASK ((UINT64_C(1) << NT_SHIFT) - 1)
/* Failed claims (one per thread per job) also bump the index: keep it far
 * below the field's limit so it never carries into n_tasks. */
#define MAX_TASKS (1 << 20)

struct gn_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t job;  /* see above */
    atomic_int n_done;     /* tasks of the live job completed */
    atomic_int stop;
    gn_pool_fn fn;         /* written before the job word is published */
    void *ctx;
};

typedef struct {
    gn_pool *p;
    int id;
} worker_arg;

static inline uint64_t gen_of(uint64_t w) { return w >> GEN_SHIFT; }

/* Claims and runs tasks while the claimed index is inside the job it belongs
 * to. Returns the generation of the last claim. */
static uint64_t run_tasks(gn_pool *p, int thread) {
    for (;;) {
        uint64_t w = atomic_fetch_add_explicit(&p->job, 1, memory_order_acq_rel);
        int n_tasks = (int)((w >> NT_SHIFT) & IDX_MASK);
        int t = (int)(w & IDX_MASK);
        if (t >= n_tasks) return gen_of(w);
        /* The job cannot end before this task does, so fn/ctx are this job's. */
        p->fn(p->ctx, t, thread);
        atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    gn_pool *p = wa->p;
    int id = wa->id;
    gn_free(wa);
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (gen_of(atomic_load_explicit(&p->job, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop)) {
            if (++spins < 20000) {
#if defined(__x86_64__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (gen_of(atomic_load(&p->job)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = run_tasks(p, id);
    }
}

gn_pool *gn_pool_create(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    gn_pool *p = gn_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (n_threads > 1) {
        p->threads = gn_calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) goto fail;
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = gn_malloc(sizeof *wa);
            if (!wa) goto fail_started;
            wa->p = p;
            wa->id = i;
            if (pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
                gn_free(wa);
                goto fail_started;
            }
            continue;
        fail_started:
            p->n_threads = i; /* threads 1..i-1 are running */
            gn_pool_free(p);
            return NULL;
        }
    }
    return p;
fail:
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    gn_free(p);
    return NULL;
}

void gn_pool_free(gn_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
    gn_free(p->threads);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    gn_free(p);
}

int gn_pool_size(const gn_pool *p) { return p->n_threads; }

/* A job of more than MAX_TASKS tasks runs as consecutive slices. */
typedef struct {
    gn_pool_fn fn;
    void *ctx;
    int offset;
} slice_job;

static void slice_task(void *ctx, int task, int thread) {
    slice_job *s = ctx;
    s->fn(s->ctx, s->offset + task, thread);
}

void gn_pool_run(gn_pool *p, gn_pool_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    if (n_tasks > MAX_TASKS) {
        for (int off = 0; off < n_tasks; off += MAX_TASKS) {
            slice_job s = {fn, ctx, off};
            gn_pool_run(p, slice_task, &s, n_tasks - off < MAX_TASKS ? n_tasks - off : MAX_TASKS);
        }
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    uint64_t gen = gen_of(atomic_load_explicit(&p->job, memory_order_relaxed)) + 1;
    uint64_t w = ((gen & ((UINT64_C(1) << (64 - GEN_SHIFT)) - 1)) << GEN_SHIFT) |
                 ((uint64_t)n_tasks << NT_SHIFT);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->job, w, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    /* Every task was claimed; wait for those still running elsewhere. After a
     * short spin give the core away: the thread we wait for may need it. */
    int spins = 0;
    while (atomic_load_explicit(&p->n_done, memory_order_acquire) < n_tasks) {
        if (++spins < 2000) {
#if defined(__x86_64__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
}
