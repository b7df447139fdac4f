/* sampler.h — drawing the next token from a combined GenARM score row.
 *
 * The sampler sees one score row per step (guidance.h: base log-probs plus the
 * weighted ARM log-probs) and draws from
 *
 *     p(v) ∝ exp(score(v) / T)   restricted to the tokens the filters keep.
 *
 * Filters act on the combined score only, in Hugging Face's order
 * (transformers' generate(): TemperatureLogitsWarper, TopKLogitsWarper,
 * TopPLogitsWarper, MinPLogitsWarper):
 *
 *   1. temperature  z(v) = score(v) / T.  T = 0 means greedy: the highest score,
 *                   ties going to the lowest id; the filters and the RNG are
 *                   then not used.
 *   2. top-k        keep every token whose z >= the k-th largest z (like HF,
 *                   tokens tied with the k-th are all kept). 0 = off.
 *   3. top-p        order the kept tokens by z descending (ties: lower id
 *                   first); keep the shortest prefix whose softmax(z) mass,
 *                   renormalised over the tokens kept so far, reaches top_p
 *                   (at least one token). 1 = off.
 *   4. min-p        keep tokens with prob >= min_p · max prob, i.e.
 *                   z >= z_max + log(min_p). 0 = off.
 *
 * and finally draws from softmax(z) over what is left.
 *
 * Precision: weights exp(z - z_max) are float32 (a polynomial exp, relative
 * error < 2.5e-7; d = z - z_max rounded to float), sums and probabilities are
 * double. Tokens whose weight is below e^-87 (probability < 1.7e-38 of the
 * argmax's) are dropped: no draw could reach them. Temperatures below 2^-128
 * act as 2^-128.
 *
 * Randomness: each sequence owns a gn_rng (xoshiro256**, 256-bit state,
 * seeded through SplitMix64 — Blackman & Vigna, "Scrambled linear pseudorandom
 * number generators", 2021). One draw per sampled token, so the same seed and
 * the same score rows give the same tokens on every platform.
 *
 * Memory: a gn_sampler holds scratch for n_vocab candidates, allocated once at
 * create; sampling never allocates. A gn_sampler is used by one thread at a
 * time and may serve any number of sequences (their state is the gn_rng). */
#ifndef GN_SAMPLER_H
#define GN_SAMPLER_H

#include <stdint.h>

#include "gn_err.h"

typedef struct gn_sampler_params {
    float temperature; /* >= 0; 0 = greedy */
    int top_k;         /* >= 0; 0 = off */
    float top_p;       /* (0, 1]; 1 = off */
    float min_p;       /* [0, 1]; 0 = off */
    uint64_t seed;     /* seeds the sequence's gn_rng */
} gn_sampler_params;

/* temperature 1, top_k 0, top_p 1, min_p 0, seed 0 (a fixed default, so runs
 * are reproducible unless the caller picks another seed). */
gn_sampler_params gn_sampler_default_params(void);

/* 0, or GN_EINVAL naming the bad field ("top_p must be in (0, 1] (got 1.5)"). */
int gn_sampler_validate_params(const gn_sampler_params *p, gn_err *err);

/* ---- random numbers ---------------------------------------------------- */

typedef struct gn_rng {
    uint64_t s[4];
} gn_rng;

/* Seeds r from a 64-bit seed (SplitMix64 expands it to the 256-bit state). */
void gn_rng_seed(gn_rng *r, uint64_t seed);
/* Next 64 random bits (xoshiro256**). */
uint64_t gn_rng_next(gn_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double gn_rng_uniform(gn_rng *r);

/* ---- sampling ---------------------------------------------------------- */

typedef struct gn_sampler gn_sampler;

/* Scratch for rows of up to n_vocab scores. NULL and err on failure. */
gn_sampler *gn_sampler_create(int n_vocab, gn_err *err);
void gn_sampler_free(gn_sampler *s); /* NULL is a no-op */

/* Draws a token from score[0..n) under p, advancing rng by one draw (no draw
 * when greedy). Returns the token id (>= 0), or a negative GN_E* code: n out
 * of range (GN_ERANGE), invalid params (GN_EINVAL), or a row with a NaN or
 * without any finite score (GN_EINVAL). */
int gn_sampler_sample(gn_sampler *s, const gn_sampler_params *p, gn_rng *rng, const float *score,
                      int n, gn_err *err);

/* The distribution gn_sampler_sample draws from: on success *ids and *probs
 * point into s's scratch (valid until the next call on s) and hold *n_out
 * tokens with their probabilities (summing to 1, in double precision), in an
 * unspecified order. Greedy gives the one argmax token with probability 1.
 * Same failures as gn_sampler_sample. */
int gn_sampler_dist(gn_sampler *s, const gn_sampler_params *p, const float *score, int n,
                    const int32_t **ids, const double **probs, int *n_out, gn_err *err);

/* ---- kernels ------------------------------------------------------------ */

/* The per-row passes run in plain C (the reference) or in AVX2 / AVX-512
 * code chosen at run time. They evaluate the same float operations in the same
 * order, so every kernel set gives the same tokens and probabilities bit for
 * bit; the choice changes only the speed. A sampler starts on AUTO (the widest
 * set this CPU runs); tests and benchmarks pick one to compare them. */
enum {
    GN_SAMPLER_KERNELS_AUTO = 0,
    GN_SAMPLER_KERNELS_REF = 1,
    GN_SAMPLER_KERNELS_AVX2 = 2,   /* AVX2 + FMA */
    GN_SAMPLER_KERNELS_AVX512 = 3, /* AVX-512 F/BW/VL/DQ for the weights pass, AVX2 elsewhere */
};

/* Picks s's kernel set. 0, or GN_EINVAL when the CPU or the build lacks it
 * (s keeps its current set). Not thread-safe with a sampling call on s. */
int gn_sampler_set_kernels(gn_sampler *s, int kernels, gn_err *err);
/* The kernel set s uses now (never AUTO). */
int gn_sampler_kernels(const gn_sampler *s);

#endif
