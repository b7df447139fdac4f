/* wire.h — the data-plane message layer: protobuf-c codec for the Envelope of
 * proto/genarm.proto (generated at build time into genarm.pb-c.h), frame and
 * request validation, and tensor packing of log-prob rows into raw
 * little-endian fp32 / fp16 / bf16 bytes.
 *
 * Everything here is pure (no I/O, no global state apart from the gn_alloc
 * failure-injection counter) and reentrant. Every decode/unpack has exactly
 * one matching free; all memory goes through gn_alloc. */
#ifndef GN_WIRE_H
#define GN_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "genarm.pb-c.h"
#include "gn_err.h"
#include "gn_tensor.h"

#define GN_WIRE_PROTOCOL_VERSION 1u /* == genarm.v1.PROTOCOL_VERSION_CURRENT */

/* 1 where the host's float layout is the wire's (little-endian IEEE binary32):
 * F32 tensors can then be copied, or read in place, as float arrays. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define GN_WIRE_HOST_LE 1
#else
#define GN_WIRE_HOST_LE 0
#endif

/* Shorter names for the generated types. */
typedef Genarm__V1__Envelope gn_wire_env;
typedef Genarm__V1__StepRequest gn_wire_step_req;
typedef Genarm__V1__StepResponse gn_wire_step_resp;

/* Limits applied to every incoming frame and request. */
typedef struct gn_wire_limits {
    size_t max_frame_bytes;  /* serialized Envelope, default 64 MiB */
    int max_seqs;            /* SeqStep entries in one StepRequest, default 256 */
    int64_t max_tokens;      /* tokens summed over one StepRequest, default 65536 */
} gn_wire_limits;

gn_wire_limits gn_wire_default_limits(void);

/* ---- dtypes and tensors --------------------------------------------------- */

/* Maps a genarm.v1.DType value to gn_dtype. Returns 0, or GN_EINVAL for
 * DTYPE_UNSPECIFIED and unknown values. */
int gn_wire_dtype_from_proto(int proto_dtype, gn_dtype *out);
/* Maps gn_dtype to genarm.v1.DType. */
Genarm__V1__DType gn_wire_dtype_to_proto(gn_dtype dt);

/* Bytes of a (rows, cols) tensor of dt, overflow-checked: 0 and *out, or
 * GN_ERANGE. */
int gn_wire_tensor_nbytes(gn_dtype dt, uint64_t rows, uint64_t cols, size_t *out);

/* Writes n 4-byte host values (int32 or float32) at src as little-endian
 * bytes to dst: a copy on a little-endian host (none when dst == src), byte
 * by byte elsewhere. dst may equal src (in place); no other overlap. */
void gn_wire_le32_write(const void *src, size_t n, void *dst);

/* Converts n float32 values to dt and writes them little-endian into dst
 * (dst_cap bytes, must hold n * size(dt)). Rounds to nearest even for
 * fp16/bf16. Returns 0 or GN_ERANGE (dst too small). */
int gn_wire_pack_f32(const float *src, size_t n, gn_dtype dt, uint8_t *dst, size_t dst_cap,
                     gn_err *err);

/* The inverse: reads n little-endian values of dt from src (src_len bytes,
 * must equal n * size(dt)) into float32 dst. Returns 0 or GN_EFORMAT. */
int gn_wire_unpack_f32(const uint8_t *src, size_t src_len, gn_dtype dt, size_t n, float *dst,
                       gn_err *err);

/* Checks a received Tensor: known dtype, and len(data) == rows * cols *
 * size(dtype) without overflow (a peer's claimed shape is never trusted).
 * Writes the dtype to *dt. Returns 0, GN_EINVAL (dtype) or GN_EFORMAT. */
int gn_wire_tensor_check(const Genarm__V1__Tensor *t, gn_dtype *dt, gn_err *err);

/* ---- envelopes ------------------------------------------------------------ */

/* Initialises *env as an empty version-1 envelope with this request id. */
void gn_wire_env_init(gn_wire_env *env, uint64_t request_id);

/* Decodes one frame into a newly allocated Envelope (free with
 * gn_wire_env_free) and validates it: size <= lim->max_frame_bytes, parsable
 * protobuf, protocol_version == 1, a body set. On failure returns a negative
 * GN_E* code, *out = NULL, *wire_code = the genarm.v1.ErrorCode to answer
 * with (ERROR_BAD_FRAME, ERROR_BAD_VERSION, ERROR_TOO_LARGE) and, when the
 * frame parsed, *request_id = its request id (else 0). lim may be NULL
 * (defaults). */
int gn_wire_decode(const uint8_t *buf, size_t len, const gn_wire_limits *lim, gn_wire_env **out,
                   int *wire_code, uint64_t *request_id, gn_err *err);

/* Frees an Envelope from gn_wire_decode (NULL is a no-op). */
void gn_wire_env_free(gn_wire_env *env);

/* Serializes env into a new gn_malloc'd buffer (*out, *len; caller frees with
 * gn_free). Returns 0 or GN_ENOMEM. */
int gn_wire_encode(const gn_wire_env *env, uint8_t **out, size_t *len, gn_err *err);

/* Validates a StepRequest against lim (lim may be NULL): a known dtype, 1 ..
 * max_seqs sequences, each with >= 1 token, total tokens <= max_tokens,
 * distinct seq_ids. Token ids are the model's business (the worker checks
 * them against its vocabulary). Returns 0 or a negative GN_E* code with
 * *wire_code set (ERROR_BAD_DTYPE, ERROR_BAD_REQUEST, ERROR_TOO_LARGE). */
int gn_wire_step_check(const gn_wire_step_req *req, const gn_wire_limits *lim, int *wire_code,
                       gn_err *err);

/* Validates a received StepResponse: its tensor passes gn_wire_tensor_check,
 * every result's rows lie inside the tensor, cand_ids and cand_values hold
 * the same whole number of 4-byte entries and every sparse result's
 * candidates lie inside them. Returns 0 or GN_EFORMAT. */
int gn_wire_step_resp_check(const gn_wire_step_resp *resp, gn_err *err);

/* ---- sparse rows and fetched values (SeqStep.top_k, RowFetch) ------------- */

/* The sparse row of result r of a received StepResponse (r->n_cand > 0):
 * checks that [cand_offset, cand_offset + n_cand) lies inside cand_ids and
 * cand_values, then points *ids / *vals at them — into resp where the bytes
 * are 4-byte aligned on a little-endian host, else converted into the
 * caller's scratch (cap entries each). Returns 0 or GN_EFORMAT (GN_ERANGE:
 * scratch too small). Id ranges are the caller's business. */
int gn_wire_sparse_row(const gn_wire_step_resp *resp, const Genarm__V1__SeqResult *r,
                       int32_t *ids_scratch, float *vals_scratch, size_t cap, const int32_t **ids,
                       const float **vals, gn_err *err);

/* The values of result r of a received RowFetchResult, the same way (into
 * res where aligned, else converted into scratch of cap floats). Returns 0,
 * GN_EFORMAT or GN_ERANGE. */
int gn_wire_fetch_values(const Genarm__V1__RowFetchResult *res, const Genarm__V1__FetchResult *r,
                         float *scratch, size_t cap, const float **vals, gn_err *err);

/* Validates a received RowFetchResult: values a whole number of floats, every
 * result inside it. Returns 0 or GN_EFORMAT. */
int gn_wire_fetch_result_check(const Genarm__V1__RowFetchResult *res, gn_err *err);

/* Validates a RowFetch against lim (lim may be NULL): 1 .. max_seqs
 * sequences, ids summed over them <= max_tokens. Ids and rows are the
 * worker's business. Returns 0 or a negative GN_E* code with *wire_code set
 * (ERROR_BAD_REQUEST, ERROR_TOO_LARGE). */
int gn_wire_fetch_check(const Genarm__V1__RowFetch *req, const gn_wire_limits *lim, int *wire_code,
                        gn_err *err);

/* Per-sequence Error entries of the responses of a worker's batch: one pool,
 * each response owning a contiguous range of it (at most one error per
 * sequence, so a response of n sequences owns n entries). Reserve before a
 * batch adds anything (growing moves the entries): adding never allocates.
 * Zero-initialise; not thread-safe (one per serving thread). */
#define GN_WIRE_ERR_MSG_MAX 240
typedef struct gn_wire_err_pool {
    size_t cap;
    Genarm__V1__Error *e;                /* (cap) */
    Genarm__V1__Error **p;               /* (cap) */
    char (*msg)[GN_WIRE_ERR_MSG_MAX];    /* (cap) */
} gn_wire_err_pool;

/* Room for n entries in all. 0 or GN_ENOMEM (the pool is left as it was). */
int gn_wire_err_pool_reserve(gn_wire_err_pool *ep, size_t n);
/* Frees the entries and zeroes the pool (a zeroed pool is a no-op). */
void gn_wire_err_pool_free(gn_wire_err_pool *ep);
/* Appends an Error (seq_id, a genarm.v1.ErrorCode, a printf-style message cut
 * at GN_WIRE_ERR_MSG_MAX - 1 bytes) to the list *list / *n whose entries start
 * at pool entry base (pointing *list there). An entry beyond the reserved
 * room is dropped. */
void gn_wire_err_pool_add(gn_wire_err_pool *ep, size_t base, Genarm__V1__Error ***list, size_t *n,
                          uint64_t seq_id, int wire_code, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* Name of a genarm.v1.ErrorCode ("BAD_FRAME"...), never NULL. */
const char *gn_wire_code_name(int wire_code);

/* ---- structured logs ------------------------------------------------------ */

/* Writes one line to stderr: `ts=<ISO-8601 UTC> level=<level> comp=<comp>
 * <fields>` where fields is printf-formatted by the caller as key=value pairs
 * (quote values with spaces). Thread-safe (one fprintf per line). */
void gn_wire_log(const char *level, const char *comp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
