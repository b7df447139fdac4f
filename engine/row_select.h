/* row_select.h — a sparse view of one log-prob row: its k largest values and
 * what bounds all the others. The worker side of the sparse exchange (see
 * draw.h for how the coordinator uses it): a 128k-column row becomes k ids
 * and values plus three numbers.
 *
 * For a row x[0..n) (log_softmax output: finite values, or -inf for a token
 * that can never be drawn) and k >= 1, the selection is
 *
 *   ids/vals   the min(k, n) largest values, largest first; among equal values
 *              the lower id comes first (so the set is unique: the same row
 *              always gives the same list);
 *   floor      the largest value NOT listed (every unlisted value <= floor);
 *              -inf when every token is listed;
 *   row_min    the smallest value of the whole row;
 *   tail_lse   an upper bound of log(sum of exp(x[v]) over the unlisted v),
 *              at most 1e-5 (relative, in the sum) above the exact value, and
 *              never below it; -inf when every token is listed.
 *
 * Kernels: a plain-C reference (always compiled) and an AVX2 version chosen at
 * run time, like sampler.h. Both give the same ids, vals, floor and row_min
 * bit for bit; tail_lse may differ between them within the bound above.
 *
 * Memory: a gn_row_selector holds scratch for rows of up to n_cols values,
 * allocated once; selecting never allocates. One thread at a time. */
#ifndef GN_ROW_SELECT_H
#define GN_ROW_SELECT_H

#include <stdint.h>

#include "gn_err.h"

typedef struct gn_row_tail {
    float floor;    /* every unlisted value <= floor; -inf when all are listed */
    float row_min;  /* every value >= row_min */
    float tail_lse; /* >= log sum_{unlisted} exp(value), rounded up; -inf when none */
} gn_row_tail;

typedef struct gn_row_selector gn_row_selector;

/* Scratch for rows of up to n_cols values. NULL and err on failure. */
gn_row_selector *gn_row_selector_create(int n_cols, gn_err *err);
void gn_row_selector_free(gn_row_selector *s); /* NULL is a no-op */

/* Selects from row[0..n) (n <= the selector's n_cols, k >= 1) as described
 * above: writes min(k, n) ids and values (largest first) to ids/vals (room
 * for k each) and *tail, returns the count (>= 1). Negative GN_E* code: n or
 * k out of range (GN_ERANGE), a NaN or +inf in the row (GN_EINVAL naming the
 * token). */
int gn_row_select(gn_row_selector *s, const float *row, int n, int k, int32_t *ids, float *vals,
                  gn_row_tail *tail, gn_err *err);

enum {
    GN_ROW_SELECT_KERNELS_AUTO = 0,
    GN_ROW_SELECT_KERNELS_REF = 1,
    GN_ROW_SELECT_KERNELS_AVX2 = 2,
};

/* Picks s's kernels (tests and benchmarks compare them). 0, or GN_EINVAL when
 * this CPU or build lacks them. */
int gn_row_selector_set_kernels(gn_row_selector *s, int kernels, gn_err *err);

#endif
