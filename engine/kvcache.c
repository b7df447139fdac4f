/* kvcache.c — a stack of free block ids. Freed blocks are reused first,
 * which keeps the touched part of the pool small and warm. */
#include "kvcache.h"

#include "gn_alloc.h"

struct gn_kvcache {
    int n_blocks;
    int n_free;
    int32_t *free_ids; /* (n_blocks) stack, top at n_free - 1 */
};

gn_kvcache *gn_kvcache_create(int n_blocks, gn_err *err) {
    if (n_blocks <= 0) {
        gn_errf(err, GN_EINVAL, "kv cache: %d blocks", n_blocks);
        return NULL;
    }
    gn_kvcache *kc = gn_calloc(1, sizeof *kc);
    if (kc) kc->free_ids = gn_malloc(sizeof(int32_t) * (size_t)n_blocks);
    if (!kc || !kc->free_ids) {
        gn_kvcache_free(kc);
        gn_errf(err, GN_ENOMEM, "kv cache: out of memory for %d block ids", n_blocks);
        return NULL;
    }
    kc->n_blocks = n_blocks;
    kc->n_free = n_blocks;
    /* Pop order 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) kc->free_ids[i] = n_blocks - 1 - i;
    return kc;
}

void gn_kvcache_free(gn_kvcache *kc) {
    if (!kc) return;
    gn_free(kc->free_ids);
    gn_free(kc);
}

int gn_kvcache_alloc(gn_kvcache *kc, int n, int32_t *ids) {
    if (n < 0 || n > kc->n_free) return GN_ERANGE;
    for (int i = 0; i < n; i++) ids[i] = kc->free_ids[--kc->n_free];
    return 0;
}

void gn_kvcache_release(gn_kvcache *kc, const int32_t *ids, int n) {
    /* Released in reverse so that alloc + release restores the exact stack. */
    for (int i = n - 1; i >= 0 && kc->n_free < kc->n_blocks; i--) kc->free_ids[kc->n_free++] = ids[i];
}

int gn_kvcache_n_free(const gn_kvcache *kc) { return kc->n_free; }
int gn_kvcache_n_blocks(const gn_kvcache *kc) { return kc->n_blocks; }
