/* backend_cpu.h — the CPU backend (engine/backend.h on host memory).
 *
 * Two op tables share one backend object type:
 *   "cpu-ref"  plain, obviously-correct scalar C, single-threaded. It stays in
 *              the tree forever as the reference every other implementation
 *              (the fast CPU table, the CUDA backend) is tested against.
 *   "cpu"      multi-threaded (common/gn_threadpool) and SIMD with runtime
 *              dispatch: AVX-512 (F/BW/VL/DQ), AVX2+FMA+F16C, or portable
 *              scalar C, picked once at create from what the CPU supports.
 *
 * Backend memory is host memory (is_host = 1): weights are used in place
 * (pointing into the mapped safetensors files). KV pools are float32: on CPU
 * decode is bound by the weight stream, the KV rows of a step are a small
 * fraction of it at the contexts we serve, and f32 keeps the fast attention
 * bit-comparable with the reference (no f16 rounding of K/V).
 *
 * Batch invariance (both tables): every op computes row i of its output
 * from row i of its input (and the weights, the KV pool) in an order that
 * depends neither on the number of rows, nor on row i's place among them,
 * nor on the thread count; attention computes a token the same way whether
 * it comes in a prefill or in a decode step. So a sequence's log-probs are
 * bit-identical whatever else shares its step (same seed, same tokens,
 * whatever the server's load), and a prompt prefilled in one step, in
 * chunks or token by token gives the same bits. This holds per SIMD level:
 * scalar, AVX2 and AVX-512 round differently from each other (within the
 * tolerances test_cpu_ops checks), so two processes agree bit for bit only
 * on the same level (GN_CPU_ISA pins it). tests/backend_cpu/
 * test_batch_invariance.c checks it. */
#ifndef GN_BACKEND_CPU_H
#define GN_BACKEND_CPU_H

#include "backend.h"

/* Creates a CPU backend. reference != 0: the "cpu-ref" table (n_threads is
 * ignored, always one thread). Otherwise the fast "cpu" table with n_threads
 * workers (<= 0: all online cores). Returns NULL and fills err on failure.
 * Free with be->ops->destroy(be) (or gn_backend_free). */
gn_backend *gn_backend_cpu_create(int reference, int n_threads, gn_err *err);

/* SIMD levels of the fast table. */
typedef enum gn_cpu_isa {
    GN_CPU_SCALAR = 0, /* portable C, any x86-64 (or other) CPU */
    GN_CPU_AVX2 = 1,   /* AVX2 + FMA + F16C */
    GN_CPU_AVX512 = 2, /* AVX-512 F/BW/VL/DQ (+ the AVX2 set) */
} gn_cpu_isa;

/* The best level this CPU supports. */
gn_cpu_isa gn_cpu_isa_detect(void);

/* "scalar", "avx2", "avx512". */
const char *gn_cpu_isa_name(gn_cpu_isa isa);

/* Forces the fast table of be (made by gn_backend_cpu_create with
 * reference == 0) down to `isa`, for tests and benchmarks that compare the
 * SIMD paths. Returns GN_EUNSUP (message in be->err) when the CPU lacks it
 * or be is the reference table. The environment variable GN_CPU_ISA
 * (scalar|avx2|avx512) does the same at create. Not thread-safe with ops. */
int gn_backend_cpu_set_isa(gn_backend *be, gn_cpu_isa isa);

/* The level be currently runs (GN_CPU_SCALAR for the reference table). */
gn_cpu_isa gn_backend_cpu_isa(const gn_backend *be);

#endif
