/* gn_tensor.h — element types and the non-owning 2-D tensor view that the
 * loaders, the engine and every backend pass around. */
#ifndef GN_TENSOR_H
#define GN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum gn_dtype {
    GN_F32 = 0,
    GN_F16 = 1,
    GN_BF16 = 2,
} gn_dtype;

/* Bytes per element. */
static inline size_t gn_dtype_size(gn_dtype t) { return t == GN_F32 ? 4 : 2; }

/* "F32", "F16", "BF16" — the safetensors spelling. */
const char *gn_dtype_name(gn_dtype t);

/* A view on row-major memory owned by someone else (a mapped file, a backend
 * buffer). A 1-D tensor of n elements is rows = 1, cols = n. data == NULL means
 * "absent" (e.g. no bias). For a device backend, data is a device pointer. */
typedef struct gn_tensor {
    void *data;
    gn_dtype dtype;
    int64_t rows; /* outer dimension: output features for a weight matrix */
    int64_t cols; /* inner, contiguous dimension */
} gn_tensor;

static inline size_t gn_tensor_nbytes(const gn_tensor *t) {
    return (size_t)t->rows * (size_t)t->cols * gn_dtype_size(t->dtype);
}

#endif
