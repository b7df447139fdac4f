/* sampler.c — temperature / top-k / top-p / min-p sampling over a combined
 * score row (see sampler.h for the exact semantics and their order).
 *
 * Work per token is a few O(n_vocab) passes and no full sort: top-k uses
 * quickselect, top-p a radix-style selection on z (top_p_select) that sorts
 * only the handful of tokens around the cut.
 * All probabilities are computed in double from z = score / T. */
#include "sampler.h"

#include <math.h>

#include "gn_alloc.h"

typedef struct cand {
    double z; /* score / T */
    double w; /* exp(z - z_max): unnormalised probability, in (0, 1] */
    int32_t id;
} cand;

struct gn_sampler {
    int cap;       /* n_vocab the scratch is sized for */
    cand *c;       /* (cap) working candidates */
    int32_t *ids;  /* (cap) result of gn_sampler_dist */
    double *probs; /* (cap) */
};

gn_sampler_params gn_sampler_default_params(void) {
    gn_sampler_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 0;
    return p;
}

int gn_sampler_validate_params(const gn_sampler_params *p, gn_err *err) {
    if (!p)
        return gn_errf(err, GN_EINVAL, "sampler: no parameters");
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return gn_errf(err, GN_EINVAL, "temperature must be >= 0 (got %g)", (double)p->temperature);
    if (p->top_k < 0)
        return gn_errf(err, GN_EINVAL, "top_k must be >= 0 (got %d)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return gn_errf(err, GN_EINVAL, "top_p must be in (0, 1] (got %g)", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return gn_errf(err, GN_EINVAL, "min_p must be in [0, 1] (got %g)", (double)p->min_p);
    return 0;
}

/* ---- xoshiro256** seeded by SplitMix64 ---------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void gn_rng_seed(gn_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t gn_rng_next(gn_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double gn_rng_uniform(gn_rng *r) { return (double)(gn_rng_next(r) >> 11) * 0x1.0p-53; }

/* ---- sampler ------------------------------------------------------------ */

gn_sampler *gn_sampler_create(int n_vocab, gn_err *err) {
    if (n_vocab <= 0) {
        gn_errf(err, GN_EINVAL, "sampler: n_vocab must be > 0 (got %d)", n_vocab);
        return NULL;
    }
    gn_sampler *s = gn_calloc(1, sizeof *s);
    if (!s)
        goto oom;
    s->cap = n_vocab;
    s->c = gn_malloc((size_t)n_vocab * sizeof *s->c);
    s->ids = gn_malloc((size_t)n_vocab * sizeof *s->ids);
    s->probs = gn_malloc((size_t)n_vocab * sizeof *s->probs);
    if (!s->c || !s->ids || !s->probs)
        goto oom;
    return s;
oom:
    gn_sampler_free(s);
    gn_errf(err, GN_ENOMEM, "sampler: out of memory for %d candidates", n_vocab);
    return NULL;
}

void gn_sampler_free(gn_sampler *s) {
    if (!s)
        return;
    gn_free(s->c);
    gn_free(s->ids);
    gn_free(s->probs);
    gn_free(s);
}

/* The total order every filter uses: higher z first, then lower id. */
static inline int before(const cand *a, const cand *b) {
    return a->z > b->z || (a->z == b->z && a->id < b->id);
}

static inline void swap_cand(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Sorts c[0..n) into the total order without allocating (libc qsort may
 * malloc): quicksort on the larger-than-16 ranges with a depth limit that
 * falls back to heapsort (introsort), then one insertion-sort pass. */
static void sift_down(cand *c, int root, int n) {
    for (;;) {
        int child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && before(&c[child], &c[child + 1]))
            child++;
        if (!before(&c[root], &c[child]))
            return;
        swap_cand(&c[root], &c[child]);
        root = child;
    }
}

static void heap_sort(cand *c, int n) { /* max-heap on "after": ends in order */
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(c, i, n);
    for (int end = n - 1; end > 0; end--) {
        swap_cand(&c[0], &c[end]);
        sift_down(c, 0, end);
    }
}

static void intro_sort(cand *c, int n, int depth) {
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(c, n);
            return;
        }
        int mid = n / 2, hi = n - 1;
        if (before(&c[mid], &c[0]))
            swap_cand(&c[mid], &c[0]);
        if (before(&c[hi], &c[0]))
            swap_cand(&c[hi], &c[0]);
        if (before(&c[mid], &c[hi]))
            swap_cand(&c[mid], &c[hi]);
        cand pivot = c[hi];
        int store = 0;
        for (int i = 0; i < hi; i++)
            if (before(&c[i], &pivot))
                swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[hi]);
        /* recurse into the smaller side, loop on the larger */
        if (store < n - store - 1) {
            intro_sort(c, store, depth);
            c += store + 1;
            n -= store + 1;
        } else {
            intro_sort(c + store + 1, n - store - 1, depth);
            n = store;
        }
    }
}

static void sort_cands(cand *c, int n) {
    int depth = 0;
    for (int k = n; k > 1; k >>= 1)
        depth += 2;
    intro_sort(c, n, depth);
    for (int i = 1; i < n; i++) { /* insertion sort finishes the short ranges */
        cand x = c[i];
        int j = i - 1;
        while (j >= 0 && before(&x, &c[j])) {
            c[j + 1] = c[j];
            j--;
        }
        c[j + 1] = x;
    }
}

/* Rearranges c[0..n) so that c[k] is the element of rank k in the total order
 * (Hoare's quickselect, median-of-three pivot, Lomuto partition). */
static void select_rank(cand *c, int n, int k) {
    int lo = 0, hi = n - 1;
    while (hi > lo) {
        int mid = lo + (hi - lo) / 2;
        if (before(&c[mid], &c[lo]))
            swap_cand(&c[mid], &c[lo]);
        if (before(&c[hi], &c[lo]))
            swap_cand(&c[hi], &c[lo]);
        if (before(&c[mid], &c[hi]))
            swap_cand(&c[mid], &c[hi]); /* median now at hi */
        cand pivot = c[hi];
        int store = lo;
        for (int i = lo; i < hi; i++)
            if (before(&c[i], &pivot))
                swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[hi]);
        if (store == k)
            return;
        if (k < store)
            hi = store - 1;
        else
            lo = store + 1;
    }
}

/* Moves the candidates with z >= thr to the front; returns their count. */
static int keep_z_at_least(cand *c, int m, double thr) {
    int j = 0;
    for (int i = 0; i < m; i++)
        if (c[i].z >= thr)
            c[j++] = c[i];
    return j;
}

/* top-p without sorting the vocabulary: radix-style selection on z. A mass
 * histogram of the region that holds the top-p boundary (TOPP_BUCKETS equal
 * z intervals; bucket order is z order) splits it into buckets surely kept,
 * the one bucket where the cumulative mass crosses the target (the new
 * region), and buckets surely cut. Each level shrinks the z range 256-fold and
 * the region by at least one token; only the last region (a few tokens, or
 * all tied) is sorted. */
#define TOPP_BUCKETS 256
#define TOPP_SORT_MAX 64

static inline int bucket_of(double zhi, double scale, double z) {
    double d = (zhi - z) * scale;
    return d < (double)(TOPP_BUCKETS - 1) ? (int)d : TOPP_BUCKETS - 1;
}

/* Moves the shortest prefix (in the total order) of c[0..m) whose mass
 * reaches target to the front, in no particular order; returns its length
 * (>= 1). */
static int top_p_select(cand *c, int m, double target) {
    int lo = 0, hi = m; /* c[0..lo): kept; c[lo..hi): the region; c[hi..m): cut */
    double above = 0.0; /* mass of c[0..lo), always < target */
    for (;;) {
        int n = hi - lo;
        double zhi = -INFINITY, zlo = INFINITY;
        for (int i = lo; i < hi; i++) {
            if (c[i].z > zhi)
                zhi = c[i].z;
            if (c[i].z < zlo)
                zlo = c[i].z;
        }
        if (n <= TOPP_SORT_MAX || !(zhi > zlo)) {
            sort_cands(c + lo, n);
            int k = 0;
            for (double cum = above; k < n && (lo + k == 0 || cum < target);)
                cum += c[lo + k++].w;
            return lo + k;
        }
        const double scale = TOPP_BUCKETS / (zhi - zlo);
        double mass[TOPP_BUCKETS] = {0};
        for (int i = lo; i < hi; i++)
            mass[bucket_of(zhi, scale, c[i].z)] += c[i].w;
        int b = 0;
        while (b < TOPP_BUCKETS - 1 && above + mass[b] < target)
            above += mass[b++];
        /* three-way partition of the region: buckets < b | == b | > b */
        int i = lo, lt = lo, gt = hi;
        while (i < gt) {
            int bi = bucket_of(zhi, scale, c[i].z);
            if (bi < b)
                swap_cand(&c[i++], &c[lt++]);
            else if (bi > b)
                swap_cand(&c[i], &c[--gt]);
            else
                i++;
        }
        lo = lt;
        hi = gt;
    }
}

/* Scans the row: argmax (lowest id on ties) and validity. */
static int scan_row(const float *score, int n, int *argmax, gn_err *err) {
    int best = -1;
    float bv = -INFINITY;
    for (int v = 0; v < n; v++) {
        float x = score[v];
        if (x != x)
            return gn_errf(err, GN_EINVAL, "sampler: score of token %d is NaN", v);
        if (x > bv) {
            bv = x;
            best = v;
        }
    }
    if (best < 0)
        return gn_errf(err, GN_EINVAL, "sampler: no token has a finite score");
    if (isinf(bv))
        return gn_errf(err, GN_EINVAL, "sampler: score of token %d is +inf", best);
    *argmax = best;
    return 0;
}

/* Builds the filtered candidate set in s->c; returns its size (>= 1) or a
 * negative error. Each kept candidate carries w = exp(z - z_max) > 0. */
static int build(gn_sampler *s, const gn_sampler_params *p, const float *score, int n,
                 gn_err *err) {
    int rc = gn_sampler_validate_params(p, err);
    if (rc)
        return rc;
    if (n <= 0 || n > s->cap)
        return gn_errf(err, GN_ERANGE, "sampler: row of %d scores (sampler sized for %d)", n,
                       s->cap);
    int amax = 0;
    if ((rc = scan_row(score, n, &amax, err)))
        return rc;
    cand *c = s->c;
    if (p->temperature == 0.0f) { /* greedy: filters cannot move the argmax */
        c[0].id = amax;
        c[0].z = score[amax];
        c[0].w = 1.0;
        return 1;
    }

    /* 1. temperature. Tokens with probability exactly 0 (score -inf, or an
     * exp that underflows) can never be drawn and are dropped here. */
    const double T = p->temperature;
    const double zmax = (double)score[amax] / T;
    int m = 0;
    for (int v = 0; v < n; v++) {
        double z = (double)score[v] / T;
        double w = exp(z - zmax);
        if (w > 0.0) {
            c[m].z = z;
            c[m].w = w;
            c[m].id = v;
            m++;
        }
    }

    /* 2. top-k: everything tied with the k-th largest stays (HF semantics). */
    if (p->top_k > 0 && p->top_k < m) {
        select_rank(c, m, p->top_k - 1);
        m = keep_z_at_least(c, m, c[p->top_k - 1].z);
    }

    /* 3. top-p: the shortest descending prefix whose mass reaches top_p. */
    if (p->top_p < 1.0f) {
        double total = 0.0;
        for (int i = 0; i < m; i++)
            total += c[i].w;
        m = top_p_select(c, m, (double)p->top_p * total);
    }

    /* 4. min-p: prob >= min_p * max prob, i.e. w >= min_p (w_max = 1). */
    if (p->min_p > 0.0f) {
        int j = 0;
        for (int i = 0; i < m; i++)
            if (c[i].w >= (double)p->min_p)
                c[j++] = c[i];
        m = j; /* the argmax has w = 1 >= min_p, so m >= 1 */
    }
    return m;
}

int gn_sampler_dist(gn_sampler *s, const gn_sampler_params *p, const float *score, int n,
                    const int32_t **ids, const double **probs, int *n_out, gn_err *err) {
    int m = build(s, p, score, n, err);
    if (m < 0)
        return m;
    double total = 0.0;
    for (int i = 0; i < m; i++)
        total += s->c[i].w;
    for (int i = 0; i < m; i++) {
        s->ids[i] = s->c[i].id;
        s->probs[i] = s->c[i].w / total;
    }
    *ids = s->ids;
    *probs = s->probs;
    *n_out = m;
    return 0;
}

int gn_sampler_sample(gn_sampler *s, const gn_sampler_params *p, gn_rng *rng, const float *score,
                      int n, gn_err *err) {
    int m = build(s, p, score, n, err);
    if (m < 0)
        return m;
    if (m == 1 && p->temperature == 0.0f)
        return s->c[0].id; /* greedy: no draw */
    double total = 0.0;
    for (int i = 0; i < m; i++)
        total += s->c[i].w;
    double u = gn_rng_uniform(rng) * total, cum = 0.0;
    for (int i = 0; i < m; i++) {
        cum += s->c[i].w;
        if (u < cum)
            return s->c[i].id;
    }
    return s->c[m - 1].id; /* u within rounding of total */
}
