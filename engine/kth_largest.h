/* kth_largest.h — the k-th largest element of an array by quickselect
 * (Hoare partition around a median of three), for the sampler's top-k over a
 * float row (sampler.c) and the sparse draw's top-k over double candidate
 * scores (draw.c): one algorithm, instantiated per element type.
 *
 * GN_DEFINE_KTH_LARGEST(name, T) defines
 *     static T name(T *a, int n, int k);
 * which returns the k-th largest of a[0..n) (1 <= k <= n, no NaN), reordering
 * a. Ties are counted with multiplicity, as a sort in descending order would.
 *
 * Internal to the engine's kernels: no state, no allocation. */
#ifndef GN_KTH_LARGEST_H
#define GN_KTH_LARGEST_H

#define GN_DEFINE_KTH_LARGEST(name, T)                                                     \
    static T name(T *a, int n, int k) {                                                    \
        int lo = 0, hi = n - 1, want = k - 1; /* rank in descending order */               \
        while (lo < hi) {                                                                  \
            int mid = lo + (hi - lo) / 2;                                                  \
            T x = a[lo], y = a[mid], z = a[hi];                                            \
            T piv = (x > y) ? ((y > z) ? y : (x > z ? z : x)) : ((x > z) ? x : (y > z ? z : y)); \
            int i = lo, j = hi;                                                            \
            while (i <= j) {                                                               \
                while (a[i] > piv)                                                         \
                    i++;                                                                   \
                while (a[j] < piv)                                                         \
                    j--;                                                                   \
                if (i <= j) {                                                              \
                    T t = a[i];                                                            \
                    a[i++] = a[j];                                                         \
                    a[j--] = t;                                                            \
                }                                                                          \
            }                                                                              \
            if (want <= j)                                                                 \
                hi = j;                                                                    \
            else if (want >= i)                                                            \
                lo = i;                                                                    \
            else                                                                           \
                return piv; /* a[j+1 .. i-1] all equal the pivot */                        \
        }                                                                                  \
        return a[want];                                                                    \
    }

#endif
