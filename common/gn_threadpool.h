/* gn_threadpool.h — a fixed set of worker threads running parallel-for jobs.
 *
 * gn_pool_run(p, fn, ctx, n_tasks) calls fn(ctx, task, thread) for every task in
 * [0, n_tasks) spread over the pool's threads (the calling thread takes part as
 * thread 0) and returns when all are done. Workers spin briefly between jobs so
 * that back-to-back small jobs (one transformer op after another) do not pay a
 * futex wake-up each; then they sleep.
 *
 * A pool is driven by one thread at a time (jobs do not nest). */
#ifndef GN_THREADPOOL_H
#define GN_THREADPOOL_H

typedef struct gn_pool gn_pool;

typedef void (*gn_pool_fn)(void *ctx, int task, int thread);

/* n_threads <= 0: number of online CPUs. NULL on failure. */
gn_pool *gn_pool_create(int n_threads);
void gn_pool_free(gn_pool *p);
int gn_pool_size(const gn_pool *p);
void gn_pool_run(gn_pool *p, gn_pool_fn fn, void *ctx, int n_tasks);

#endif
