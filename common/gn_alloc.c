#include "gn_alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gn_err.h"

/* Atomic so that allocating from several threads is race-free; the
 * injection itself is only meaningful in single-threaded tests. */
static atomic_long g_fail_countdown = -1; /* < 0: never fail */
static atomic_long g_fail_more;           /* failures still to come after the first */
static atomic_long g_count;

static int should_fail(void) {
    atomic_fetch_add_explicit(&g_count, 1, memory_order_relaxed);
    if (atomic_load_explicit(&g_fail_countdown, memory_order_relaxed) < 0) return 0;
    long left = atomic_fetch_sub_explicit(&g_fail_countdown, 1, memory_order_relaxed);
    if (left == 0) { /* now -1: disabled again, unless more of a run are to fail */
        if (atomic_fetch_sub_explicit(&g_fail_more, 1, memory_order_relaxed) > 0)
            atomic_store_explicit(&g_fail_countdown, 0, memory_order_relaxed);
        return 1;
    }
    return 0;
}

long gn_alloc_fail_run(long n, long count) {
    long c = atomic_exchange_explicit(&g_count, 0, memory_order_relaxed);
    atomic_store_explicit(&g_fail_more, count > 1 ? count - 1 : 0, memory_order_relaxed);
    atomic_store_explicit(&g_fail_countdown, n, memory_order_relaxed);
    return c;
}

long gn_alloc_fail_after(long n) { return gn_alloc_fail_run(n, 1); }

void *gn_malloc(size_t n) { return should_fail() ? NULL : malloc(n ? n : 1); }

void *gn_calloc(size_t count, size_t size) {
    return should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *gn_realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n ? n : 1); }

int gn_grow(void **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    void *nb = gn_realloc(*buf, need);
    if (!nb) return GN_ENOMEM;
    *buf = nb;
    *cap = need;
    return 0;
}

char *gn_strndup(const char *s, size_t n) {
    size_t len = strnlen(s, n);
    char *d = gn_malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *gn_strdup(const char *s) { return gn_strndup(s, SIZE_MAX); }

void gn_free(void *p) { free(p); }

void *gn_malloc_aligned(size_t n, size_t alignment) {
    if (should_fail()) return NULL;
    size_t rounded = (n + alignment - 1) / alignment * alignment;
    if (rounded < n) return NULL;
    return aligned_alloc(alignment, rounded ? rounded : alignment);
}

void gn_free_aligned(void *p) { free(p); }

int gn_size_mul(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int gn_size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}
