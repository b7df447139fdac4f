/* kvcache.h — the block allocator of a paged KV cache.
 *
 * The KV storage itself is a gn_kv_pool (backend.h) of n_blocks blocks; this
 * object only hands out block ids. Allocation is all-or-nothing, so a caller
 * that needs blocks for several sequences can check, take and give back
 * without leaving a half-done state. Not thread-safe (one runner, one thread). */
#ifndef GN_KVCACHE_H
#define GN_KVCACHE_H

#include <stdint.h>

#include "gn_err.h"

typedef struct gn_kvcache gn_kvcache;

/* A free list of block ids [0, n_blocks). NULL and err on failure. */
gn_kvcache *gn_kvcache_create(int n_blocks, gn_err *err);
void gn_kvcache_free(gn_kvcache *kc);

/* Takes n free blocks into ids[0..n). Returns 0, or GN_ERANGE (nothing taken)
 * when fewer than n are free. */
int gn_kvcache_alloc(gn_kvcache *kc, int n, int32_t *ids);

/* Returns n blocks taken by gn_kvcache_alloc (each exactly once). */
void gn_kvcache_release(gn_kvcache *kc, const int32_t *ids, int n);

int gn_kvcache_n_free(const gn_kvcache *kc);
int gn_kvcache_n_blocks(const gn_kvcache *kc);

#endif
