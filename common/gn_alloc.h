/* gn_alloc.h — the one allocation wrapper.
 *
 * All library code allocates through these functions so that tests can make
 * the Nth allocation fail (gn_alloc_fail_after) and prove every error path frees
 * what it took. They behave like their libc namesakes; gn_free(NULL) is a no-op.
 * The failure injection counter is process-global and meant for single-threaded
 * tests only. */
#ifndef GN_ALLOC_H
#define GN_ALLOC_H

#include <stddef.h>

void *gn_malloc(size_t n);
void *gn_calloc(size_t count, size_t size);
void *gn_realloc(void *p, size_t n);
char *gn_strdup(const char *s);
char *gn_strndup(const char *s, size_t n);
void gn_free(void *p);

/* Grows *buf (gn_realloc, contents kept) to at least need bytes, recording
 * the size in *cap; never shrinks. 0, or GN_ENOMEM with *buf untouched. */
int gn_grow(void **buf, size_t *cap, size_t need);

/* Makes the allocation after the next n succeed-calls fail (n = 0: the very
 * next one). n < 0 disables injection. Returns the number of allocations made
 * since the last call, which lets a test loop over every allocation point. */
long gn_alloc_fail_after(long n);
/* The same, but the count consecutive allocations from there on fail (count
 * >= 1; 1 is gn_alloc_fail_after), then injection is disabled again. */
long gn_alloc_fail_run(long n, long count);

/* Aligned allocation (alignment a power of two >= sizeof(void*)); free with
 * gn_free_aligned. Size is rounded up to a multiple of the alignment. */
void *gn_malloc_aligned(size_t n, size_t alignment);
void gn_free_aligned(void *p);

/* Overflow-checked size arithmetic: returns 0 and writes *out on success,
 * -1 on overflow. */
int gn_size_mul(size_t a, size_t b, size_t *out);
int gn_size_add(size_t a, size_t b, size_t *out);

#endif
