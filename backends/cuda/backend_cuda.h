/* backend_cuda.h — the CUDA backend (cuBLAS + own kernels) behind engine/backend.h.
 *
 * One gn_backend per device. Every op is enqueued on the backend's own CUDA
 * stream and returns at once; download() and synchronize() wait for the
 * stream. Weights stay in their stored dtype on the device (BF16/F16/F32);
 * projections use a GEMV kernel for small batches and cuBLAS (fp32
 * accumulation, TF32 off) above; matmul_multi fuses weights that share their
 * input (q/k/v, gate/up) into one GEMV launch. The optional fused ops
 * add_rmsnorm, rope_qk and rope_attention are provided, and in a
 * decode-shaped batch (one token per sequence) attention writes the new K/V
 * rows (and rope_attention rotates q and k) inside the attention kernel
 * instead of separate launches (see set_fuse). Kernels are launched with
 * programmatic dependent launch where the device has it (see set_pdl), and
 * the vtable's graph hooks record ops into CUDA graphs (see capture_begin).
 * The KV pool element type is F16 by default
 * (be->kv_dtype; the attention op reads whatever dtype the pool says, so a
 * caller may set be->kv_dtype = GN_F32 before creating runners for an exact
 * cache).
 *
 * Every CUDA and cuBLAS call is checked: a failure (also an asynchronous one,
 * reported by a later call) becomes GN_EBACKEND with statement, file and line
 * in be->err; nothing here exits or aborts. After a sticky device error
 * (illegal address) the backend is unusable and must be destroyed.
 *
 * Thread-safety: one thread at a time per backend object (backend.h). Each op
 * selects the backend's device first, so backends on different devices may be
 * driven from one thread. */
#ifndef GN_BACKEND_CUDA_H
#define GN_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" { /* the engine headers are C: give their declarations C linkage */
#endif

#include "backend.h"
#include "gn_err.h"
#include "gn_tensor.h"

/* Number of CUDA devices visible to this process; 0 when there is none or the
 * driver/runtime cannot be initialised (never fails otherwise). */
int gn_backend_cuda_device_count(void);

/* Creates a backend on CUDA device `device` (0-based), named "cuda:N".
 * Returns NULL and fills err (may be NULL) when the device does not exist or
 * the stream, cuBLAS handle or staging buffers cannot be created. The result
 * is freed through its ops->destroy (or gn_backend_free). */
gn_backend *gn_backend_cuda_create(int device, gn_err *err);

/* --- Extras for tests and benchmarks (not part of the vtable). ---------- */

/* Largest batch (rows of x) for which matmul and matmul_multi use the GEMV
 * kernel instead of cuBLAS; 0 = always cuBLAS. Default 4 (GEMV wins at n = 2..4
 * on 7B shapes, cuBLAS at 8; H200), or the environment
 * variable GN_CUDA_GEMV_MAX when set at creation. Returns the previous value.
 * (matmul_multi: one GEMV launch over all the weights when they share a dtype
 * and are 16-byte aligned; above the threshold x is converted once and each
 * weight gets its own GEMM.) */
int gn_backend_cuda_set_gemv_max(gn_backend *be, int n);

/* Fills n elements of dtype `dt` at device pointer dst with deterministic
 * pseudo-random values, uniform in [-scale, scale] (plus `offset`), from
 * `seed`. Asynchronous on the backend's stream. For benchmark weights that are
 * too large to write to disk first. */
int gn_backend_cuda_fill_random(gn_backend *be, void *dst, gn_dtype dt, size_t n, uint64_t seed,
                                float scale, float offset);

/* Measures device-to-device copy bandwidth with a buffer of `nbytes` copied
 * `iters` times (after one warm-up copy). Writes *gbps = bytes read + bytes
 * written per second / 1e9, i.e. the HBM traffic rate. Synchronises. */
int gn_backend_cuda_copy_bandwidth(gn_backend *be, size_t nbytes, int iters, double *gbps);

/* Programmatic dependent launch (sm_90+): each kernel may start while the
 * previous one finishes (it waits for it before touching memory; the GEMV
 * kernel streams its first weights before that). Probed at creation and used
 * when it works, unless the environment variable GN_CUDA_PDL=0 was set then.
 * set_pdl(be, 0/1) switches it (1 only takes effect where the probe passed)
 * and returns the previous state. */
int gn_backend_cuda_set_pdl(gn_backend *be, int on);

/* The fused decode ops: add_rmsnorm, rope_qk and rope_attention in the op
 * table, and the KV write (and RoPE) folded into the attention kernel for
 * one-token-per-sequence batches.
 * On unless the environment variable GN_CUDA_FUSE=0 was set at creation.
 * set_fuse(be, 0/1) swaps be->ops between the table with and without the
 * optional ops and returns the previous state; switch only between steps,
 * before creating the runners meant to use the new state (a recorded step
 * keeps the kernels it was recorded with). For A/B measurements and tests. */
int gn_backend_cuda_set_fuse(gn_backend *be, int on);

/* Bytes of the cuBLAS input-conversion scratch allocated now (it grows on
 * demand outside graph capture; see below). */
size_t gn_backend_cuda_scratch_bytes(gn_backend *be);

/* --- CUDA graphs: the vtable's graph_begin / graph_end / graph_launch.
 * Between capture_begin and capture_end the backend's ops are recorded, not
 * run, into a graph that capture_end instantiates in `slot` (0 <= slot <
 * GN_GRAPH_SLOTS, replacing what was there; slot -1 discards the capture,
 * e.g. after a failed op). graph_launch replays the slot on the backend's
 * stream. Kernel arguments (pointers, shapes) are frozen at capture: replay
 * with the same buffers and batch shape and refresh the device-side inputs
 * (token ids, positions, block tables) with upload() before each launch. The
 * attention kernels size their grids from the pool and the batch, never from
 * the context length, so a recorded step stays valid as sequences grow.
 * While capturing, upload/download/synchronize/alloc/free fail with
 * GN_EINVAL, and a cuBLAS matmul whose conversion scratch would have to grow
 * fails too (run one eager step of the same shape first). */
int gn_backend_cuda_capture_begin(gn_backend *be);
/* Graphs launched so far on be (tests check that a runner replays). */
unsigned long long gn_backend_cuda_graph_launches(gn_backend *be);
int gn_backend_cuda_capture_end(gn_backend *be, int slot);
int gn_backend_cuda_graph_launch(gn_backend *be, int slot);

/* Per-op GPU time (for benchmarks; profile.cu). profile(be, 1) starts
 * counting from zero (0 stops and frees). While on, every eager op enqueued
 * is timed with CUDA events from its enqueue to the next op's; totals are
 * taken whenever the host waits for the stream. A replayed graph is not
 * broken down, and the events cost programmatic dependent launch its
 * overlap: profile eager steps, and compare with unprofiled timings.
 * profile_report(be, f, per) prints each op label (op and shape) with calls,
 * ms, share and us per call, counts and ms divided by `per` (e.g. the
 * number of steps profiled). */
int gn_backend_cuda_profile(gn_backend *be, int on);
int gn_backend_cuda_profile_report(gn_backend *be, FILE *f, double per);

/* Device name and memory (free/total bytes); any out pointer may be NULL. */
int gn_backend_cuda_device_info(gn_backend *be, char *name, size_t name_cap, size_t *free_bytes,
                                size_t *total_bytes);

#ifdef __cplusplus
}
#endif

#endif
