/* row_select.c — the k largest values of a log-prob row, and what bounds the
 * others (row_select.h). A worker runs it on every sparse row it sends, so
 * the row is read in three vectorised passes and only a short list is ever
 * sorted:
 *
 *   scan      NaN / +inf check, the row's minimum, and block maxima: block j
 *             holds the ids v = j (mod nb), nb = 4k blocks (rounded up to a
 *             multiple of 8, at most n). Any t at or below the k-th largest
 *             block maximum keeps at least k tokens (the k blocks whose
 *             maxima reach t hold one token >= t each); two 11-bit histogram
 *             levels over the nb maxima give such a t within a relative 2^-13
 *             of it, with no scatter over the row. When the largest values
 *             sit at random places t keeps about k + k^2 / (2 nb) = 1.125 k
 *             tokens. Blocks are interleaved (not contiguous) so that a run
 *             of neighbouring ids holding the top values lands in different
 *             blocks.
 *   collect   the tokens at or above t, in id order, as 64-bit keys (value's
 *             order code << 32 | ~id: ordering the keys orders by value
 *             descending and then id ascending, the contract's order, and
 *             every key is distinct); and the largest value below t.
 *   select    (scalar, shared by the kernel sets) a stable LSD radix sort of
 *             the short list by value (it is in id order, so ties stay in id
 *             order); a long list (ties, flat rows) is cut to its first k by
 *             nth_element and those are sorted. The first k keys are the
 *             listed tokens; floor is the largest of the rest of the list and
 *             of the largest value below t.
 *   tail      sum of exp(x - ref) over the row's values below the last listed
 *             value vk, plus the unlisted tokens equal to vk (counted in the
 *             list), in double; ref = ceil(floor).
 *
 * -0 and +0 are equal values (the order code uses x + 0, which turns -0 into
 * +0), so floor and row_min are returned with +0 for a zero. vals are copied
 * from the row (the caller's bits). Ties of many tokens (flat rows, quantised
 * rows) only make the short list longer: slower (O(list) selection), exact.
 *
 * Kernels: scan, collect and tail exist in plain C (the reference) and in
 * AVX2 + FMA chosen at run time (__builtin_cpu_supports, as sampler.c does).
 * scan and collect compute values that do not depend on the order of
 * operations (maxima, minima, comparisons), so ids, vals, floor and row_min
 * agree bit for bit between the sets; only tail_lse differs, within its bound.
 *
 * tail_lse = ref + log(S), S = sum over unlisted v of exp(x_v - ref), where
 * ref = ceil(floor) is an integer in [floor, floor + 1) (rows with a positive
 * floor — not log-probs — use the reference kernel with ref = floor). Every
 * term is <= 1 and the floor token's is >= e^-1, so S >= e^-1 and nothing
 * overflows or underflows in a way that matters. Error analysis:
 *   - d = x - ref is exact: in float in the AVX2 kernel (ref is an integer,
 *     see tail8), in double in the reference (exact wherever exp(d) is not
 *     negligible);
 *   - each term: the reference uses libm's exp in double (< 1 ulp); the AVX2
 *     kernel sampler.c's E(x) (Cody-Waite reduction, Cephes' polynomial, in
 *     float): relative error < 2.5e-7 over [-87, 0] (test_sampler holds it
 *     there; it measures 7.9e-8), and two vectors' terms are added in float
 *     before the double sums (2^-24 = 6e-8 more); terms with d < -87 are
 *     dropped (each < 2^-125, so at most n 2^-125 in all: added back below);
 *   - the sum of n positive doubles: relative error < n 2^-53 (2e-11 for a
 *     152k row);
 *   - log and the final additions in double: absolute error below
 *     (|ref| + |log S|) 2^-51, added back as well.
 * The computed sum underestimates S by less than 3.2e-7 (relative), so
 * log S <= log(S' + n 2^-125) + TAIL_MARGIN with TAIL_MARGIN = 4e-7, and the
 * result is rounded up to the next float: never below the exact value. It is
 * above it by at most TAIL_MARGIN + 3.2e-7 (7.2e-7, relative in the sum;
 * test_row_select measures 4.3e-7) plus the float rounding: one float spacing
 * of tail_lse, at most 3.8e-6 for |tail_lse| < 64 and 7.6e-6 below 128 —
 * within the contract's 1e-5 (log(1 + 1e-5) = 9.99995e-6). From |tail_lse| >=
 * 128 on a float cannot resolve 1e-5 and the excess is one float spacing (the
 * bound itself always holds). Log-prob rows have tail_lse <= 0, and a tail
 * below e^-128 is negligible for every use. */
#include "row_select.h"

#include <math.h>
#include <string.h>

#include "exp_neg.h"
#include "gn_alloc.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GN_RS_X86 1
#include <immintrin.h>
#define GN_T256 __attribute__((target("avx2,fma")))
#endif

#define BLOCKS_PER_K 4    /* block maxima per listed token */
#define TAIL_MARGIN 4e-7  /* see the error analysis above */
#define SMALL_SORT 16     /* insertion sort at or below this */
#define RADIX 2048        /* histogram buckets (11-bit digits) */
/* short lists up to this long are radix-sorted whole; longer ones selected first */
#define RADIX_LIST_MAX(k) (4 * (long)(k) + 4096)

typedef struct kernels {
    /* *vmin = the row's minimum, *bad = 1 when a NaN or +inf occurs;
     * bm[j] = max of x[v] over v = j (mod nb), j < nb (nb <= n). */
    void (*scan)(const float *x, int n, float *bm, int nb, float *vmin, int *bad);
    /* Appends key(x[v], v) for every x[v] >= t in id order, returns how
     * many; *below = the largest x[v] < t (-inf when none). */
    int (*collect)(const float *x, int n, float t, uint64_t *out, float *below);
    /* Sum over x[v] < vk of exp(x[v] - ref), ref >= every such x[v]; the
     * AVX2 kernel needs ref to be an integer <= 0 (see tail8). */
    double (*tail)(const float *x, int n, float vk, float ref);
} kernels;

struct gn_row_selector {
    int cap; /* n_cols */
    const kernels *k;
    float *bm;      /* (cap) block maxima */
    uint64_t *list; /* (cap) the short list's keys */
    uint64_t *tmp;  /* (cap) radix sort scratch */
    uint32_t *cnt;  /* (RADIX) histogram */
};

/* ---- keys ------------------------------------------------------------------ */

/* Order-preserving map of a non-NaN float to uint32 (-0 and +0 both map to
 * +0's code: the caller passes x + 0.0f). */
static inline uint32_t ord(float x) {
    uint32_t u = gn_exp_f2u(x + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float unord(uint32_t o) {
    return gn_exp_u2f((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

/* Larger key: larger value, then lower id. */
static inline uint64_t key_of(float x, int v) {
    return ((uint64_t)ord(x) << 32) | (uint64_t)(~(uint32_t)v);
}

static inline int32_t key_id(uint64_t key) { return (int32_t)~(uint32_t)key; }

/* ---- selection and sorting of keys (descending) ----------------------------- */

static inline void swap_u64(uint64_t *a, uint64_t *b) {
    uint64_t t = *a;
    *a = *b;
    *b = t;
}

static void insertion_desc(uint64_t *a, int n) {
    for (int i = 1; i < n; i++) {
        uint64_t x = a[i];
        int j = i - 1;
        while (j >= 0 && a[j] < x) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = x;
    }
}

static void sift_min(uint64_t *h, int n, int i) { /* min-heap: the root is the smallest */
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < n && h[l] < h[m])
            m = l;
        if (l + 1 < n && h[l + 1] < h[m])
            m = l + 1;
        if (m == i)
            return;
        swap_u64(&h[i], &h[m]);
        i = m;
    }
}

/* Heapsort, descending: the fallback that keeps both routines O(n log n). */
static void heapsort_desc(uint64_t *a, int n) {
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_min(a, n, i);
    for (int end = n - 1; end > 0; end--) {
        swap_u64(&a[0], &a[end]); /* the smallest goes last */
        sift_min(a, end, 0);
    }
}

/* Median of a[lo], a[mid], a[hi] as the pivot; Hoare partition around it.
 * Afterwards a[lo..*j] >= p, a[*i..hi] <= p and everything between equals p.
 * Equal keys stop both scans, so runs of equal keys split evenly. */
static void partition_desc(uint64_t *a, int lo, int hi, int *pi, int *pj) {
    int mid = lo + (hi - lo) / 2;
    if (a[mid] > a[lo])
        swap_u64(&a[mid], &a[lo]);
    if (a[hi] > a[lo])
        swap_u64(&a[hi], &a[lo]);
    if (a[hi] > a[mid])
        swap_u64(&a[hi], &a[mid]);
    uint64_t p = a[mid];
    int i = lo, j = hi;
    while (i <= j) {
        while (a[i] > p)
            i++;
        while (a[j] < p)
            j--;
        if (i <= j) {
            swap_u64(&a[i], &a[j]);
            i++;
            j--;
        }
    }
    *pi = i;
    *pj = j;
}

static int depth_limit(int n) {
    int d = 0;
    while (n > 1) {
        n >>= 1;
        d++;
    }
    return 2 * d + 4;
}

/* Moves the kth largest key (0-based) to a[kth], larger ones before it and
 * smaller ones after (nth_element, descending). */
static void nth_desc(uint64_t *a, int n, int kth) {
    int lo = 0, hi = n - 1, budget = depth_limit(n);
    while (hi - lo > SMALL_SORT) {
        if (budget-- == 0) {
            heapsort_desc(a + lo, hi - lo + 1);
            return;
        }
        int i, j;
        partition_desc(a, lo, hi, &i, &j);
        if (kth <= j)
            hi = j;
        else if (kth >= i)
            lo = i;
        else
            return; /* a[kth] equals the pivot */
    }
    insertion_desc(a + lo, hi - lo + 1);
}

static void sort_rec(uint64_t *a, int lo, int hi, int budget) {
    while (hi - lo > SMALL_SORT) {
        if (budget-- == 0) {
            heapsort_desc(a + lo, hi - lo + 1);
            return;
        }
        int i, j;
        partition_desc(a, lo, hi, &i, &j);
        if (j - lo < hi - i) { /* recurse into the smaller side */
            sort_rec(a, lo, j, budget);
            lo = i;
        } else {
            sort_rec(a, i, hi, budget);
            hi = j;
        }
    }
    insertion_desc(a + lo, hi - lo + 1);
}

static void sort_desc(uint64_t *a, int n) {
    if (n > 1)
        sort_rec(a, 0, n - 1, depth_limit(n));
}

/* ---- reference kernels ------------------------------------------------------- */

static void scan_ref(const float *x, int n, float *bm, int nb, float *vmin, int *bad) {
    float lo = INFINITY;
    int b = 0;
    for (int v = 0; v < n; v++) {
        float a = x[v];
        b |= !(a < INFINITY); /* NaN or +inf */
        lo = a < lo ? a : lo;
    }
    memcpy(bm, x, (size_t)nb * sizeof *bm);
    for (int o = nb; o < n; o += nb) {
        int len = n - o < nb ? n - o : nb;
        for (int j = 0; j < len; j++)
            bm[j] = x[o + j] > bm[j] ? x[o + j] : bm[j];
    }
    *vmin = lo;
    *bad = b;
}

static int collect_ref(const float *x, int n, float t, uint64_t *out, float *below) {
    float bmax = -INFINITY;
    int m = 0;
    for (int v = 0; v < n; v++) {
        float a = x[v];
        if (a >= t)
            out[m++] = key_of(a, v);
        else if (a > bmax)
            bmax = a;
    }
    *below = bmax;
    return m;
}

static double tail_ref(const float *x, int n, float vk, float ref) {
    double s = 0.0;
    for (int v = 0; v < n; v++)
        if (x[v] < vk && x[v] > -INFINITY)
            s += exp((double)x[v] - (double)ref);
    return s;
}

static const kernels kern_ref = {scan_ref, collect_ref, tail_ref};

/* ---- AVX2 kernels ------------------------------------------------------------- */

#ifdef GN_RS_X86


static GN_T256 void scan_avx2(const float *x, int n, float *bm, int nb, float *vmin, int *bad) {
    const __m256 pinf = _mm256_set1_ps(INFINITY);
    __m256 mn = pinf, bd = _mm256_setzero_ps();
    float lo = INFINITY;
    int b = 0;
    for (int o = 0; o < n; o += nb) {
        const int len = n - o < nb ? n - o : nb;
        const float *xo = x + o;
        int j = 0;
        for (; j + 8 <= len; j += 8) {
            __m256 a = _mm256_loadu_ps(xo + j);
            mn = _mm256_min_ps(mn, a);
            bd = _mm256_or_ps(bd, _mm256_cmp_ps(a, pinf, _CMP_NLT_UQ)); /* NaN or +inf */
            _mm256_storeu_ps(bm + j, o == 0 ? a : _mm256_max_ps(a, _mm256_loadu_ps(bm + j)));
        }
        for (; j < len; j++) {
            float a = xo[j];
            b |= !(a < INFINITY);
            lo = a < lo ? a : lo;
            bm[j] = o == 0 || a > bm[j] ? a : bm[j];
        }
    }
    float l[8];
    _mm256_storeu_ps(l, mn);
    for (int i = 0; i < 8; i++)
        lo = l[i] < lo ? l[i] : lo;
    *vmin = lo;
    *bad = b | (_mm256_movemask_ps(bd) != 0);
}

static GN_T256 int collect_avx2(const float *x, int n, float t, uint64_t *out, float *below) {
    const __m256 vt = _mm256_set1_ps(t), ninf = _mm256_set1_ps(-INFINITY);
    __m256 bmax = ninf;
    int m = 0, v = 0;
    for (; v + 8 <= n; v += 8) {
        __m256 a = _mm256_loadu_ps(x + v);
        __m256 ge = _mm256_cmp_ps(a, vt, _CMP_GE_OQ);
        bmax = _mm256_max_ps(bmax, _mm256_blendv_ps(a, ninf, ge));
        unsigned mask = (unsigned)_mm256_movemask_ps(ge);
        while (mask) {
            int l = __builtin_ctz(mask);
            mask &= mask - 1;
            out[m++] = key_of(x[v + l], v + l);
        }
    }
    float bl[8], b = -INFINITY;
    _mm256_storeu_ps(bl, bmax);
    for (int i = 0; i < 8; i++)
        b = bl[i] > b ? bl[i] : b;
    for (; v < n; v++) {
        if (x[v] >= t)
            out[m++] = key_of(x[v], v);
        else if (x[v] > b)
            b = x[v];
    }
    *below = b;
    return m;
}

/* One vector of the tail: exp(a - ref) in the lanes with a < vk, else 0.
 * a - ref is exact wherever the term is kept (d >= GN_EXP_MIN): ref is an
 * integer <= 0 and a <= ref. If |a| < 2^24, ulp(a) is a power of two <= 1,
 * so it divides ref, and |a - ref| <= |a|: a - ref is a multiple of ulp(a)
 * no larger than a, a float. If |a| >= 2^24, d >= -87 puts a within a factor
 * 2 of ref (Sterbenz). (A term whose exact d is just below -87 may be kept
 * with a rounded d: it is below 2^-125, its error negligible.) -inf lanes
 * give d = -inf: dropped. */
static inline GN_T256 __m256 tail8(__m256 a, __m256 vk, __m256 ref) {
    const __m256 dmin = _mm256_set1_ps(GN_EXP_MIN);
    __m256 d = _mm256_sub_ps(a, ref);
    __m256 ok = _mm256_and_ps(_mm256_cmp_ps(a, vk, _CMP_LT_OQ), _mm256_cmp_ps(d, dmin, _CMP_GE_OQ));
    return _mm256_and_ps(gn_exp_neg8(_mm256_max_ps(d, dmin)), ok);
}

/* Two vectors' terms are added in float (one more rounding: 2^-24 relative,
 * inside the error budget) before the double sums. */
static inline GN_T256 __m256d add2(__m256d s, __m256 w) {
    return _mm256_add_pd(s, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(w)),
                                          _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1))));
}

static GN_T256 double tail_avx2(const float *x, int n, float vk, float ref) {
    const __m256 vvk = _mm256_set1_ps(vk), vref = _mm256_set1_ps(ref);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int v = 0;
    for (; v + 32 <= n; v += 32) {
        __m256 w0 = _mm256_add_ps(tail8(_mm256_loadu_ps(x + v), vvk, vref),
                                  tail8(_mm256_loadu_ps(x + v + 8), vvk, vref));
        __m256 w1 = _mm256_add_ps(tail8(_mm256_loadu_ps(x + v + 16), vvk, vref),
                                  tail8(_mm256_loadu_ps(x + v + 24), vvk, vref));
        s0 = add2(s0, w0);
        s1 = add2(s1, w1);
    }
    for (; v < n; v += 8) { /* the rest, padded with -inf (weight 0) */
        float pad[8];
        for (int j = 0; j < 8; j++)
            pad[j] = v + j < n ? x[v + j] : -INFINITY;
        s0 = add2(s0, tail8(_mm256_loadu_ps(pad), vvk, vref));
    }
    double s[4];
    _mm256_storeu_pd(s, _mm256_add_pd(s0, s1));
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static const kernels kern_avx2 = {scan_avx2, collect_avx2, tail_avx2};

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int have_avx2(void) { return 0; }
#endif

/* ---- selector ------------------------------------------------------------------ */

int gn_row_selector_set_kernels(gn_row_selector *s, int which, gn_err *err) {
    if (which == GN_ROW_SELECT_KERNELS_AUTO)
        which = have_avx2() ? GN_ROW_SELECT_KERNELS_AVX2 : GN_ROW_SELECT_KERNELS_REF;
    if (which != GN_ROW_SELECT_KERNELS_REF && which != GN_ROW_SELECT_KERNELS_AVX2)
        return gn_errf(err, GN_EINVAL, "row_select: unknown kernel set %d", which);
    if (which == GN_ROW_SELECT_KERNELS_AVX2 && !have_avx2())
        return gn_errf(err, GN_EINVAL, "row_select: this CPU or build cannot run AVX2 kernels");
#ifdef GN_RS_X86
    s->k = which == GN_ROW_SELECT_KERNELS_AVX2 ? &kern_avx2 : &kern_ref;
#else
    s->k = &kern_ref;
#endif
    return 0;
}

gn_row_selector *gn_row_selector_create(int n_cols, gn_err *err) {
    if (n_cols <= 0) {
        gn_errf(err, GN_EINVAL, "row_select: n_cols must be > 0 (got %d)", n_cols);
        return NULL;
    }
    gn_row_selector *s = gn_calloc(1, sizeof *s);
    if (!s)
        goto oom;
    s->cap = n_cols;
    s->bm = gn_malloc((size_t)n_cols * sizeof *s->bm);
    s->list = gn_malloc((size_t)n_cols * sizeof *s->list);
    s->tmp = gn_malloc((size_t)n_cols * sizeof *s->tmp);
    s->cnt = gn_malloc(RADIX * sizeof *s->cnt);
    if (!s->bm || !s->list || !s->tmp || !s->cnt)
        goto oom;
    gn_row_selector_set_kernels(s, GN_ROW_SELECT_KERNELS_AUTO, NULL);
    return s;
oom:
    gn_row_selector_free(s);
    gn_errf(err, GN_ENOMEM, "row_select: out of memory for rows of %d values", n_cols);
    return NULL;
}

void gn_row_selector_free(gn_row_selector *s) {
    if (!s)
        return;
    gn_free(s->bm);
    gn_free(s->list);
    gn_free(s->tmp);
    gn_free(s->cnt);
    gn_free(s);
}

/* The smallest float >= t (t a finite double or -inf). */
static float float_up(double t) {
    float f = (float)t;
    if ((double)f < t)
        f = nextafterf(f, INFINITY);
    return f;
}

/* A threshold t <= the kk-th largest of bm[0..nb): the lower edge of the
 * bucket of 2^10 order codes that holds it, found by two 11-bit histogram
 * levels of ord() (no comparison sort, no data-dependent branches but the
 * bucket test). Any t at or below the kk-th largest block maximum keeps
 * >= kk tokens; a bucket spans a relative 2^-13 of a value, so the few extra
 * tokens it admits do not matter. */
static float block_threshold(const float *bm, int nb, int kk, uint32_t *cnt) {
    memset(cnt, 0, RADIX * sizeof *cnt);
    for (int j = 0; j < nb; j++)
        cnt[ord(bm[j]) >> 21]++;
    long above = 0;
    int b = RADIX - 1;
    for (; b > 0 && above + cnt[b] < (uint32_t)kk; b--)
        above += cnt[b];
    memset(cnt, 0, RADIX * sizeof *cnt);
    for (int j = 0; j < nb; j++) {
        uint32_t o = ord(bm[j]);
        if ((int)(o >> 21) == b)
            cnt[(o >> 10) & (RADIX - 1)]++;
    }
    int b2 = RADIX - 1;
    for (; b2 > 0 && above + cnt[b2] < (uint32_t)kk; b2--)
        above += cnt[b2];
    uint32_t code = ((uint32_t)b << 21) | ((uint32_t)b2 << 10);
    const uint32_t ninf = 0x007fffffu; /* ord(-inf): lower codes are NaNs */
    return unord(code > ninf ? code : ninf);
}

/* Sorts m keys that are in id order by value, descending and stably (so
 * ties stay in id order: exactly the keys' order), with three LSD passes of
 * 11, 11 and 10 bits over the value's order code. Returns a or tmp, wherever
 * the result ended. A pass whose digit is the same for every key is skipped. */
static uint64_t *radix_sort_desc(uint64_t *a, uint64_t *tmp, int m, uint32_t *cnt) {
    static const int shift[3] = {32, 43, 54};
    uint64_t *src = a, *dst = tmp;
    for (int p = 0; p < 3; p++) {
        const int sh = shift[p];
        const uint32_t mask = p == 2 ? 1023u : RADIX - 1;
        memset(cnt, 0, RADIX * sizeof *cnt);
        for (int i = 0; i < m; i++)
            cnt[mask - ((uint32_t)(src[i] >> sh) & mask)]++;
        if (cnt[mask - ((uint32_t)(src[0] >> sh) & mask)] == (uint32_t)m)
            continue;
        uint32_t pos = 0;
        for (uint32_t d = 0; d <= mask; d++) {
            uint32_t c = cnt[d];
            cnt[d] = pos;
            pos += c;
        }
        for (int i = 0; i < m; i++)
            dst[cnt[mask - ((uint32_t)(src[i] >> sh) & mask)]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    return src;
}

int gn_row_select(gn_row_selector *s, const float *row, int n, int k, int32_t *ids, float *vals,
                  gn_row_tail *tail, gn_err *err) {
    if (!s || !row || !ids || !vals || !tail)
        return gn_errf(err, GN_EINVAL, "row_select: bad arguments");
    if (n < 1 || n > s->cap)
        return gn_errf(err, GN_ERANGE, "row_select: row of %d values (selector sized for %d)", n,
                       s->cap);
    if (k < 1)
        return gn_errf(err, GN_ERANGE, "row_select: k must be >= 1 (got %d)", k);
    const int kk = k < n ? k : n;
    /* nb >= k blocks (the threshold's guarantee), 8-aligned for the AVX2 scan */
    long want = ((long)BLOCKS_PER_K * kk + 7) / 8 * 8;
    const int nb = want < n ? (int)want : n;
    float vmin;
    int bad;
    s->k->scan(row, n, s->bm, nb, &vmin, &bad);
    if (bad)
        for (int v = 0; v < n; v++)
            if (!(row[v] < INFINITY))
                return gn_errf(err, GN_EINVAL, "row_select: value of token %d is %s", v,
                               row[v] != row[v] ? "NaN" : "+inf");

    /* the short list, in id order (t = -inf when every token is listed) */
    float t = kk < n ? block_threshold(s->bm, nb, kk, s->cnt) : -INFINITY, below;
    int m = s->k->collect(row, n, t, s->list, &below);
    if (m < kk) /* cannot happen (see the scan); stay correct regardless */
        m = s->k->collect(row, n, -INFINITY, s->list, &below);
    /* its first kk keys in the order; the rest are unlisted */
    uint64_t *l = s->list;
    if (m <= RADIX_LIST_MAX(kk)) {
        l = radix_sort_desc(s->list, s->tmp, m, s->cnt);
    } else { /* long lists (ties, flat rows): select, then sort kk keys */
        nth_desc(l, m, kk - 1);
        sort_desc(l, kk);
    }
    for (int i = 0; i < kk; i++) {
        ids[i] = key_id(l[i]);
        vals[i] = row[ids[i]];
    }
    /* floor: the largest of the rest of the list and of the values below t;
     * ties: unlisted tokens equal to the last listed value (all in the list) */
    const uint32_t ok = ord(vals[kk - 1]);
    uint32_t fo = ord(below);
    int ties = 0;
    for (int i = kk; i < m; i++) {
        uint32_t o = (uint32_t)(l[i] >> 32);
        fo = o > fo ? o : fo;
        ties += o == ok;
    }
    tail->row_min = vmin + 0.0f;
    tail->floor = kk < n ? unord(fo) : -INFINITY;
    tail->tail_lse = -INFINITY;
    if (tail->floor > -INFINITY) {
        /* sums relative to ref, an integer in [floor, floor + 1) when floor
         * <= 0 (what the AVX2 kernel needs); rows with a positive floor (not
         * log-probs) take the reference kernel, exact in double for any ref */
        const kernels *kt = s->k;
        float ref = ceilf(tail->floor);
        if (!(ref <= 0.0f)) {
            kt = &kern_ref;
            ref = tail->floor;
        }
        double sum = kt->tail(row, n, vals[kk - 1], ref);
        if (ties)
            sum += ties * exp((double)vals[kk - 1] - (double)ref);
        double ls = log(sum + (double)n * 0x1p-125);
        double lse = (double)ref + ls;
        tail->tail_lse = float_up(lse + TAIL_MARGIN + (fabs((double)ref) + fabs(ls)) * 0x1p-51);
    }
    return kk;
}
