/* simd.h — AVX-512 / AVX2 helpers of the fast CPU table: weight loads that
 * widen BF16 / F16 / F32 to float32 in registers, and a vector exp.
 *
 * Every function carries a target attribute, so the file is compiled for the
 * baseline x86-64 and the wide code only runs after the runtime check in
 * backend_cpu.c chose it. Functions meant to be specialised on a constant
 * dtype are always_inline. */
#ifndef GN_CPU_SIMD_H
#define GN_CPU_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include "gn_tensor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GN_CPU_X86 1
#include <immintrin.h>

#define GN_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define GN_T256 __attribute__((target("avx2,fma,f16c")))
#define GN_AI inline __attribute__((always_inline))

/* ---- AVX-512: 16 lanes ---- */

/* Elements [i, i+16) of a weight row as float. */
static GN_AI GN_T512 __m512 gn_ld16(const void *w, size_t i, gn_dtype dt) {
    if (dt == GN_F32) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    if (dt == GN_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The first popcount(m) elements from i, zeros elsewhere (never reads past them). */
static GN_AI GN_T512 __m512 gn_ld16_mask(const void *w, size_t i, gn_dtype dt, __mmask16 m) {
    if (dt == GN_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (dt == GN_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

static GN_AI GN_T512 __mmask16 gn_mask16(int n) {
    return (__mmask16)(n >= 16 ? 0xffffu : ((1u << n) - 1u));
}

/* exp(x) to about 2 ulp: 2^n * p(r), r = x - n ln2, |r| <= ln2/2, degree-6
 * polynomial (Cephes expf); scalef handles the range, NaN propagates. */
static GN_AI GN_T512 __m512 gn_exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* ---- AVX2: 8 lanes ---- */

static GN_AI GN_T256 __m256 gn_ld8(const void *w, size_t i, gn_dtype dt) {
    if (dt == GN_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dt == GN_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

static GN_AI GN_T256 float gn_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x), same scheme as gn_exp16 with the exponent built by integer add;
 * inputs below -87 give about 1e-38 instead of 0, which softmax ignores. */
static GN_AI GN_T256 __m256 gn_exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif /* x86 */

#endif
