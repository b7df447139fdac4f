#include "gn_alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static long g_fail_countdown = -1; /* < 0: never fail */
static long g_count;

static int should_fail(void) {
    g_count++;
    if (g_fail_countdown < 0) return 0;
    if (g_fail_countdown == 0) {
        g_fail_countdown = -1;
        return 1;
    }
    g_fail_countdown--;
    return 0;
}

long gn_alloc_fail_after(long n) {
    long c = g_count;
    g_count = 0;
    g_fail_countdown = n;
    return c;
}

void *gn_malloc(size_t n) { return should_fail() ? NULL : malloc(n ? n : 1); }

void *gn_calloc(size_t count, size_t size) {
    return should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *gn_realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n ? n : 1); }

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
