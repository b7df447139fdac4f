/* wire.c — protobuf-c codec, validation and tensor packing (see wire.h). */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_half.h"

gn_wire_limits gn_wire_default_limits(void) {
    gn_wire_limits l = {.max_frame_bytes = (size_t)64 << 20, .max_seqs = 256, .max_tokens = 65536};
    return l;
}

/* protobuf-c allocates through gn_alloc, so tests can fail the Nth
 * allocation of an unpack. */
static void *pb_alloc(void *ud, size_t n) {
    (void)ud;
    return gn_malloc(n ? n : 1);
}
static void pb_free(void *ud, void *p) {
    (void)ud;
    gn_free(p);
}
static ProtobufCAllocator g_pb_alloc = {pb_alloc, pb_free, NULL};

/* ---- dtypes and tensors --------------------------------------------------- */

int gn_wire_dtype_from_proto(int v, gn_dtype *out) {
    switch (v) {
    case GENARM__V1__DTYPE__DTYPE_F32: *out = GN_F32; return 0;
    case GENARM__V1__DTYPE__DTYPE_F16: *out = GN_F16; return 0;
    case GENARM__V1__DTYPE__DTYPE_BF16: *out = GN_BF16; return 0;
    default: return GN_EINVAL;
    }
}

Genarm__V1__DType gn_wire_dtype_to_proto(gn_dtype dt) {
    switch (dt) {
    case GN_F16: return GENARM__V1__DTYPE__DTYPE_F16;
    case GN_BF16: return GENARM__V1__DTYPE__DTYPE_BF16;
    default: return GENARM__V1__DTYPE__DTYPE_F32;
    }
}

int gn_wire_tensor_nbytes(gn_dtype dt, uint64_t rows, uint64_t cols, size_t *out) {
    size_t n;
    if (rows > SIZE_MAX || cols > SIZE_MAX || gn_size_mul((size_t)rows, (size_t)cols, &n) ||
        gn_size_mul(n, gn_dtype_size(dt), out))
        return GN_ERANGE;
    return 0;
}

void gn_wire_le32_write(const void *src, size_t n, void *dst) {
    if (GN_WIRE_HOST_LE) {
        if (dst != src) memcpy(dst, src, 4 * n);
        return;
    }
    const uint8_t *s = src;
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) { /* each value read whole before its bytes are written */
        uint32_t u;
        memcpy(&u, s + 4 * i, 4);
        d[4 * i] = (uint8_t)u;
        d[4 * i + 1] = (uint8_t)(u >> 8);
        d[4 * i + 2] = (uint8_t)(u >> 16);
        d[4 * i + 3] = (uint8_t)(u >> 24);
    }
}

/* The inverse: n little-endian 4-byte values at src into host int32 / float
 * at dst (a copy on a little-endian host). */
static void le32_read(const uint8_t *src, size_t n, void *dst) {
    if (GN_WIRE_HOST_LE) {
        memcpy(dst, src, 4 * n);
        return;
    }
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 | (uint32_t)src[4 * i + 2] << 16 |
                     (uint32_t)src[4 * i + 3] << 24;
        memcpy(d + 4 * i, &u, 4);
    }
}

int gn_wire_pack_f32(const float *src, size_t n, gn_dtype dt, uint8_t *dst, size_t dst_cap,
                     gn_err *err) {
    size_t need;
    if (gn_size_mul(n, gn_dtype_size(dt), &need) || need > dst_cap)
        return gn_errf(err, GN_ERANGE, "pack: %zu values of %s need more than %zu bytes", n,
                       gn_dtype_name(dt), dst_cap);
    /* Little-endian on any host: a plain copy where the host is little-endian,
     * byte by byte elsewhere. */
    if (dt == GN_F32) {
        gn_wire_le32_write(src, n, dst);
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h = dt == GN_F16 ? gn_f32_to_f16(src[i]) : gn_f32_to_bf16(src[i]);
            dst[2 * i] = (uint8_t)h;
            dst[2 * i + 1] = (uint8_t)(h >> 8);
        }
    }
    return 0;
}

int gn_wire_unpack_f32(const uint8_t *src, size_t src_len, gn_dtype dt, size_t n, float *dst,
                       gn_err *err) {
    size_t need;
    if (gn_size_mul(n, gn_dtype_size(dt), &need) || need != src_len)
        return gn_errf(err, GN_EFORMAT, "unpack: %zu bytes is not %zu values of %s", src_len, n,
                       gn_dtype_name(dt));
    if (dt == GN_F32) {
        le32_read(src, n, dst);
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
            dst[i] = dt == GN_F16 ? gn_f16_to_f32(h) : gn_bf16_to_f32(h);
        }
    }
    return 0;
}

int gn_wire_tensor_check(const Genarm__V1__Tensor *t, gn_dtype *dt, gn_err *err) {
    if (!t)
        return gn_errf(err, GN_EFORMAT, "tensor missing");
    if (gn_wire_dtype_from_proto((int)t->dtype, dt))
        return gn_errf(err, GN_EINVAL, "tensor: unknown dtype %d", (int)t->dtype);
    size_t need;
    if (gn_wire_tensor_nbytes(*dt, t->rows, t->cols, &need))
        return gn_errf(err, GN_EFORMAT, "tensor: shape (%llu, %llu) overflows",
                       (unsigned long long)t->rows, (unsigned long long)t->cols);
    if (need != t->data.len)
        return gn_errf(err, GN_EFORMAT, "tensor: shape (%llu, %llu) of %s needs %zu bytes, got %zu",
                       (unsigned long long)t->rows, (unsigned long long)t->cols,
                       gn_dtype_name(*dt), need, t->data.len);
    if (need && !t->data.data)
        return gn_errf(err, GN_EFORMAT, "tensor: no data");
    return 0;
}

/* ---- envelopes ------------------------------------------------------------ */

void gn_wire_env_init(gn_wire_env *env, uint64_t request_id) {
    gn_wire_env e = GENARM__V1__ENVELOPE__INIT;
    e.protocol_version = GN_WIRE_PROTOCOL_VERSION;
    e.request_id = request_id;
    *env = e;
}

int gn_wire_decode(const uint8_t *buf, size_t len, const gn_wire_limits *lim, gn_wire_env **out,
                   int *wire_code, uint64_t *request_id, gn_err *err) {
    gn_wire_limits dl = gn_wire_default_limits();
    if (!lim)
        lim = &dl;
    *out = NULL;
    *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME;
    *request_id = 0;
    if (len > lim->max_frame_bytes) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        return gn_errf(err, GN_ERANGE, "frame of %zu bytes exceeds the limit of %zu", len,
                       lim->max_frame_bytes);
    }
    if (len == 0)
        return gn_errf(err, GN_EFORMAT, "empty frame");
    gn_wire_env *e = genarm__v1__envelope__unpack(&g_pb_alloc, len, buf);
    if (!e)
        return gn_errf(err, GN_EFORMAT, "frame of %zu bytes is not a valid Envelope", len);
    *request_id = e->request_id;
    if (e->protocol_version != GN_WIRE_PROTOCOL_VERSION) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_VERSION;
        gn_errf(err, GN_EFORMAT, "protocol version %u, this peer speaks %u", e->protocol_version,
                GN_WIRE_PROTOCOL_VERSION);
        gn_wire_env_free(e);
        return GN_EFORMAT;
    }
    if (e->body_case == GENARM__V1__ENVELOPE__BODY__NOT_SET) {
        gn_errf(err, GN_EFORMAT, "envelope has no body");
        gn_wire_env_free(e);
        return GN_EFORMAT;
    }
    *out = e;
    *wire_code = 0;
    return 0;
}

void gn_wire_env_free(gn_wire_env *env) {
    if (env)
        genarm__v1__envelope__free_unpacked(env, &g_pb_alloc);
}

int gn_wire_encode(const gn_wire_env *env, uint8_t **out, size_t *len, gn_err *err) {
    size_t n = genarm__v1__envelope__get_packed_size(env);
    uint8_t *b = gn_malloc(n ? n : 1);
    if (!b)
        return gn_errf(err, GN_ENOMEM, "encode: out of memory (%zu bytes)", n);
    *len = genarm__v1__envelope__pack(env, b);
    *out = b;
    return 0;
}

int gn_wire_step_check(const gn_wire_step_req *req, const gn_wire_limits *lim, int *wire_code,
                       gn_err *err) {
    gn_wire_limits dl = gn_wire_default_limits();
    if (!lim)
        lim = &dl;
    gn_dtype dt;
    if (gn_wire_dtype_from_proto((int)req->dtype, &dt)) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE;
        return gn_errf(err, GN_EINVAL, "dtype %d is not F32, F16 or BF16", (int)req->dtype);
    }
    if (req->n_seqs == 0) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
        return gn_errf(err, GN_EINVAL, "step request without sequences");
    }
    if (req->n_seqs > (size_t)lim->max_seqs) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        return gn_errf(err, GN_ERANGE, "%zu sequences in one step, the limit is %d", req->n_seqs,
                       lim->max_seqs);
    }
    uint64_t total = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        const Genarm__V1__SeqStep *s = req->seqs[i];
        if (s->n_tokens == 0) {
            *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
            return gn_errf(err, GN_EINVAL, "seq %llu: no tokens", (unsigned long long)s->seq_id);
        }
        if (s->top_k > 0 && s->all_logits) {
            *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
            return gn_errf(err, GN_EINVAL,
                           "seq %llu: top_k %u with all_logits (a sparse row is one row: the last token's)",
                           (unsigned long long)s->seq_id, s->top_k);
        }
        total += s->n_tokens;
        if (total > (uint64_t)lim->max_tokens) {
            *wire_code = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
            return gn_errf(err, GN_ERANGE, "more than %lld tokens in one step",
                           (long long)lim->max_tokens);
        }
        /* Quadratic, but n_seqs <= max_seqs (hundreds) and it runs once per step. */
        for (size_t j = 0; j < i; j++)
            if (req->seqs[j]->seq_id == s->seq_id) {
                *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
                return gn_errf(err, GN_EINVAL, "seq %llu appears twice in one step",
                               (unsigned long long)s->seq_id);
            }
    }
    *wire_code = 0;
    return 0;
}

/* Checks that a bytes field holds a whole number of 4-byte entries: their
 * count in *n. */
static int entries4(const ProtobufCBinaryData *b, const char *what, size_t *n, gn_err *err) {
    if (b->len % 4)
        return gn_errf(err, GN_EFORMAT, "%s: %zu bytes is not a whole number of 4-byte entries", what,
                       b->len);
    if (b->len && !b->data)
        return gn_errf(err, GN_EFORMAT, "%s: no data", what);
    *n = b->len / 4;
    return 0;
}

/* The candidates of a StepResponse: cand_ids and cand_values hold the same
 * whole number of 4-byte entries, their count in *n. */
static int cand_entries(const gn_wire_step_resp *resp, size_t *n, gn_err *err) {
    size_t n_vals = 0;
    if (entries4(&resp->cand_ids, "cand_ids", n, err) || entries4(&resp->cand_values, "cand_values", &n_vals, err))
        return GN_EFORMAT;
    if (*n != n_vals)
        return gn_errf(err, GN_EFORMAT, "cand_ids holds %zu entries, cand_values %zu", *n, n_vals);
    return 0;
}

/* Checks that the cnt entries at off lie inside the have sent; the error
 * names the result as "<who> <idx>" and the entries as what. */
static int range_check(uint64_t off, uint32_t cnt, size_t have, const char *who, unsigned long long idx,
                       const char *what, gn_err *err) {
    if (off > have || cnt > have - off)
        return gn_errf(err, GN_EFORMAT, "%s %llu: %s [%llu, +%u) outside the %zu sent", who, idx, what,
                       (unsigned long long)off, cnt, have);
    return 0;
}

int gn_wire_step_resp_check(const gn_wire_step_resp *resp, gn_err *err) {
    size_t n_ids = 0;
    if (cand_entries(resp, &n_ids, err))
        return GN_EFORMAT;
    if (resp->n_results == 0)
        return 0;
    uint64_t rows = 0;
    if (resp->logprobs) {
        gn_dtype dt;
        if (gn_wire_tensor_check(resp->logprobs, &dt, err))
            return GN_EFORMAT;
        rows = resp->logprobs->rows;
    }
    for (size_t i = 0; i < resp->n_results; i++) {
        const Genarm__V1__SeqResult *r = resp->results[i];
        if (r->n_cand > 0) {
            if (r->n_rows != 0)
                return gn_errf(err, GN_EFORMAT, "result %zu: a sparse result with %u dense rows", i,
                               r->n_rows);
            if (range_check(r->cand_offset, r->n_cand, n_ids, "result", i, "candidates", err))
                return GN_EFORMAT;
            continue;
        }
        if (r->n_rows && !resp->logprobs)
            return gn_errf(err, GN_EFORMAT, "result %zu: %u rows but no tensor", i, r->n_rows);
        if (r->row_offset > rows || r->n_rows > rows - r->row_offset)
            return gn_errf(err, GN_EFORMAT, "result %zu: rows [%llu, +%u) outside the tensor's %llu",
                           i, (unsigned long long)r->row_offset, r->n_rows, (unsigned long long)rows);
    }
    return 0;
}

/* ---- sparse rows and fetched values --------------------------------------- */

/* 1 when n 4-byte entries at p can be read in place as host int32/float. */
static int in_place(const uint8_t *p) {
    return GN_WIRE_HOST_LE && ((uintptr_t)p % 4) == 0;
}

int gn_wire_sparse_row(const gn_wire_step_resp *resp, const Genarm__V1__SeqResult *r,
                       int32_t *ids_scratch, float *vals_scratch, size_t cap, const int32_t **ids,
                       const float **vals, gn_err *err) {
    size_t n_ids = 0;
    if (cand_entries(resp, &n_ids, err))
        return GN_EFORMAT;
    if (r->n_cand == 0)
        return gn_errf(err, GN_EFORMAT, "seq %llu: not a sparse result", (unsigned long long)r->seq_id);
    if (range_check(r->cand_offset, r->n_cand, n_ids, "seq", (unsigned long long)r->seq_id, "candidates", err))
        return GN_EFORMAT;
    const uint8_t *pi = resp->cand_ids.data + (size_t)r->cand_offset * 4;
    const uint8_t *pv = resp->cand_values.data + (size_t)r->cand_offset * 4;
    size_t n = r->n_cand;
    if (in_place(pi) && in_place(pv)) {
        *ids = (const int32_t *)(const void *)pi;
        *vals = (const float *)(const void *)pv;
        return 0;
    }
    if (n > cap || !ids_scratch || !vals_scratch)
        return gn_errf(err, GN_ERANGE, "seq %llu: %zu candidates, scratch for %zu",
                       (unsigned long long)r->seq_id, n, cap);
    le32_read(pi, n, ids_scratch);
    le32_read(pv, n, vals_scratch);
    *ids = ids_scratch;
    *vals = vals_scratch;
    return 0;
}

int gn_wire_fetch_result_check(const Genarm__V1__RowFetchResult *res, gn_err *err) {
    size_t n_vals = 0;
    if (entries4(&res->values, "values", &n_vals, err))
        return GN_EFORMAT;
    for (size_t i = 0; i < res->n_results; i++)
        if (range_check(res->results[i]->offset, res->results[i]->n, n_vals, "fetch result", i, "values", err))
            return GN_EFORMAT;
    return 0;
}

int gn_wire_fetch_values(const Genarm__V1__RowFetchResult *res, const Genarm__V1__FetchResult *r,
                         float *scratch, size_t cap, const float **vals, gn_err *err) {
    size_t n_vals = 0;
    if (entries4(&res->values, "values", &n_vals, err) ||
        range_check(r->offset, r->n, n_vals, "seq", (unsigned long long)r->seq_id, "values", err))
        return GN_EFORMAT;
    const uint8_t *p = res->values.data ? res->values.data + (size_t)r->offset * 4 : NULL;
    static const float none[1] = {0};
    if (r->n == 0) {
        *vals = none;
        return 0;
    }
    if (in_place(p)) {
        *vals = (const float *)(const void *)p;
        return 0;
    }
    if (r->n > cap || !scratch)
        return gn_errf(err, GN_ERANGE, "seq %llu: %u values, scratch for %zu",
                       (unsigned long long)r->seq_id, r->n, cap);
    le32_read(p, r->n, scratch);
    *vals = scratch;
    return 0;
}

int gn_wire_fetch_check(const Genarm__V1__RowFetch *req, const gn_wire_limits *lim, int *wire_code,
                        gn_err *err) {
    gn_wire_limits dl = gn_wire_default_limits();
    if (!lim)
        lim = &dl;
    if (req->n_seqs == 0) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
        return gn_errf(err, GN_EINVAL, "row fetch without sequences");
    }
    if (req->n_seqs > (size_t)lim->max_seqs) {
        *wire_code = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        return gn_errf(err, GN_ERANGE, "%zu sequences in one row fetch, the limit is %d", req->n_seqs,
                       lim->max_seqs);
    }
    uint64_t total = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        total += req->seqs[i]->n_ids;
        if (total > (uint64_t)lim->max_tokens) {
            *wire_code = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
            return gn_errf(err, GN_ERANGE, "more than %lld ids in one row fetch",
                           (long long)lim->max_tokens);
        }
    }
    *wire_code = 0;
    return 0;
}

const char *gn_wire_code_name(int c) {
    static const char *const names[] = {
        "UNSPECIFIED", "BAD_FRAME",      "BAD_VERSION", "BAD_DTYPE", "BAD_REQUEST",
        "TOKEN_RANGE", "UNKNOWN_SEQ",    "POS_MISMATCH", "TOO_LARGE", "CAPACITY",
        "UNKNOWN_MODEL", "UNSUPPORTED", "INTERNAL",    "SHUTTING_DOWN", "CONTEXT_OVERFLOW",
        "ROW_GONE",
    };
    if (c < 0 || c >= (int)(sizeof names / sizeof names[0]))
        return "UNKNOWN";
    return names[c];
}

void gn_wire_log(const char *level, const char *comp, const char *fmt, ...) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char fields[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s comp=%s %s\n",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            (int)(tv.tv_usec / 1000), level, comp, fields);
}

/* ---- per-sequence errors -------------------------------------------------- */

int gn_wire_err_pool_reserve(gn_wire_err_pool *ep, size_t n) {
    if (n <= ep->cap) return 0;
    gn_wire_err_pool np = {0};
    np.e = gn_calloc(n, sizeof *np.e);
    np.p = gn_calloc(n, sizeof *np.p);
    np.msg = gn_calloc(n, sizeof *np.msg);
    if (!np.e || !np.p || !np.msg) {
        gn_wire_err_pool_free(&np);
        return GN_ENOMEM;
    }
    np.cap = n;
    gn_wire_err_pool_free(ep);
    *ep = np;
    return 0;
}

void gn_wire_err_pool_free(gn_wire_err_pool *ep) {
    gn_free(ep->e);
    gn_free(ep->p);
    gn_free(ep->msg);
    memset(ep, 0, sizeof *ep);
}

void gn_wire_err_pool_add(gn_wire_err_pool *ep, size_t base, Genarm__V1__Error ***list, size_t *n,
                          uint64_t seq_id, int wire_code, const char *fmt, ...) {
    size_t k = base + *n;
    if (k >= ep->cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ep->msg[k], GN_WIRE_ERR_MSG_MAX, fmt, ap);
    va_end(ap);
    Genarm__V1__Error er = GENARM__V1__ERROR__INIT;
    er.code = (Genarm__V1__ErrorCode)wire_code;
    er.message = ep->msg[k];
    er.seq_id = seq_id;
    er.has_seq = 1;
    ep->e[k] = er;
    ep->p[k] = &ep->e[k];
    *list = &ep->p[base];
    (*n)++;
}
