/* test_threadpool.c — every task of every job runs exactly once, on any
 * number of threads, also when several pools compete for the two cores (the
 * oversubscribed case where late-waking workers must not run stale jobs). */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "gn_threadpool.h"

typedef struct {
    atomic_int *hits; /* one counter per task */
    int job;          /* which job this is, for the stale-run check */
    atomic_int *wrong;
    int *job_of_hits; /* job that owns hits right now */
} job_ctx;

static void count_task(void *ctx, int task, int thread) {
    job_ctx *j = ctx;
    (void)thread;
    if (*j->job_of_hits != j->job) atomic_fetch_add(j->wrong, 1);
    atomic_fetch_add_explicit(&j->hits[task], 1, memory_order_relaxed);
}

/* Runs n_jobs jobs of varying size on p; returns the number of tasks that ran
 * a wrong number of times or for the wrong job. */
static int hammer(gn_pool *p, int n_jobs, int max_tasks, unsigned seed) {
    atomic_int *hits = calloc((size_t)max_tasks, sizeof *hits);
    atomic_int wrong = 0;
    int owner = -1, bad = 0;
    for (int job = 0; job < n_jobs; job++) {
        seed = seed * 1103515245u + 12345u;
        int n = 1 + (int)((seed >> 8) % (unsigned)max_tasks);
        for (int i = 0; i < n; i++) atomic_store(&hits[i], 0);
        owner = job;
        job_ctx c = {hits, job, &wrong, &owner};
        gn_pool_run(p, count_task, &c, n);
        for (int i = 0; i < n; i++) bad += atomic_load(&hits[i]) != 1;
    }
    free(hits);
    return bad + atomic_load(&wrong);
}

typedef struct {
    int threads, jobs;
    unsigned seed;
    int bad;
} hammer_arg;

static void *hammer_thread(void *arg) {
    hammer_arg *a = arg;
    gn_pool *p = gn_pool_create(a->threads);
    a->bad = p ? hammer(p, a->jobs, 64, a->seed) : -1;
    gn_pool_free(p);
    return NULL;
}

static void big_task(void *ctx, int task, int thread) {
    (void)thread;
    atomic_fetch_add_explicit((atomic_long *)ctx, task, memory_order_relaxed);
}

int main(void) {
    for (int threads = 1; threads <= 4; threads++) {
        gn_pool *p = gn_pool_create(threads);
        CHECK(p && gn_pool_size(p) == threads, "pool of %d", threads);
        int bad = hammer(p, 3000, 97, 7u + (unsigned)threads);
        CHECK(bad == 0, "%d threads: %d tasks ran a wrong number of times or for a stale job", threads,
              bad);
        gn_pool_free(p);
    }

    /* Three pools of two threads each, driven at once on a 2-core machine:
     * workers get descheduled mid-job all the time. */
    pthread_t th[3];
    hammer_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (hammer_arg){2, 4000, 100u + (unsigned)i, 0};
        pthread_create(&th[i], NULL, hammer_thread, &args[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].bad == 0, "oversubscribed pool %d: %d bad tasks", i, args[i].bad);
    }

    /* More tasks than one job word can count: run in slices, each task once. */
    {
        gn_pool *p = gn_pool_create(2);
        atomic_long sum = 0;
        int n = (1 << 20) + 12345;
        gn_pool_run(p, big_task, &sum, n);
        long want = (long)n * (n - 1) / 2;
        CHECK(atomic_load(&sum) == want, "sliced job: sum %ld want %ld", (long)atomic_load(&sum), want);
        gn_pool_run(p, big_task, &sum, 0); /* no tasks: a no-op */
        gn_pool_free(p);
    }

    /* Creation fails cleanly when an allocation fails. */
    for (long k = 0; k < 4; k++) {
        gn_alloc_fail_after(k);
        gn_pool *p = gn_pool_create(3);
        gn_alloc_fail_after(-1);
        if (p) {
            CHECK(hammer(p, 50, 16, 1) == 0, "pool made after %ld allocations works", k);
            gn_pool_free(p);
        } else {
            CHECK(1, "allocation %ld failed cleanly", k);
        }
    }
    gn_pool_free(NULL);
    GN_TEST_MAIN_END();
}
