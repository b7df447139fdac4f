/* safetensors.h — the safetensors file format: a pure header parser, a
 * read-only mapped file layer, sharded model sets and a writer.
 *
 * Layout of a file (https://huggingface.co/docs/safetensors):
 *   [8 bytes: N, little-endian u64] [N bytes: JSON header] [data area]
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [begin,
 * end]} (offsets relative to the data area) plus an optional "__metadata__"
 * object of string -> string.
 *
 * Like the reference implementation (the Rust `safetensors` crate), the parser
 * is strict: the tensors must tile the data area exactly (no gaps, no overlap,
 * nothing after the last tensor), every shape × dtype size must equal its byte
 * span (overflow-checked), names are unique and non-empty. Every error names
 * the file and, where there is one, the tensor. Supported dtypes are F32, F16
 * and BF16; any other dtype is GN_EUNSUP naming the tensor.
 *
 * Thread-safety: parsing and the writer are reentrant; an opened gn_st_file or
 * gn_st_set is read-only after opening and may be shared between threads. */
#ifndef GN_SAFETENSORS_H
#define GN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"
#include "gn_tensor.h"

#define GN_ST_MAX_DIMS 8
/* Largest JSON header accepted (same limit as the Rust crate). */
#define GN_ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct gn_st_tensor {
    char *name;                      /* NUL-terminated, owned by the header */
    gn_dtype dtype;
    int n_dims;                      /* 0 (scalar) .. GN_ST_MAX_DIMS */
    int64_t shape[GN_ST_MAX_DIMS];
    uint64_t begin, end;             /* byte span, relative to the data area */
} gn_st_tensor;

typedef struct gn_st_header {
    uint64_t data_start;   /* absolute file offset of the data area (8 + N) */
    uint64_t data_len;     /* bytes of the data area (file length - data_start) */
    int n_tensors;
    gn_st_tensor *tensors; /* sorted by name (strcmp) */
    int n_meta;
    char **meta_keys;      /* __metadata__ entries, n_meta each, in file order */
    char **meta_values;
} gn_st_header;

/* Parses and validates the header of the safetensors file whose complete
 * contents are buf[0..len). `fname` is only used in error messages (may be
 * NULL). Pure: no I/O. On success fills *out (free with gn_st_header_free) and
 * returns 0; on failure returns GN_EFORMAT (malformed), GN_EUNSUP (unsupported
 * dtype / too many dims), GN_ERANGE (size overflow) or GN_ENOMEM, leaves *out
 * empty and writes a message naming the file and tensor into err. */
int gn_st_parse(const uint8_t *buf, size_t len, const char *fname, gn_st_header *out, gn_err *err);

/* Frees what gn_st_parse allocated and zeroes h (NULL or empty h is fine). */
void gn_st_header_free(gn_st_header *h);

/* Binary search by name; NULL when absent. */
const gn_st_tensor *gn_st_header_find(const gn_st_header *h, const char *name);

/* Number of elements of t (product of shape; 1 for a scalar). The parser has
 * already checked that it does not overflow. */
uint64_t gn_st_tensor_numel(const gn_st_tensor *t);

/* ---- mapped files ------------------------------------------------------ */

typedef struct gn_st_file {
    char *path;
    const uint8_t *map;  /* whole file, mmap(PROT_READ, MAP_PRIVATE) */
    size_t size;
    gn_st_header hdr;
} gn_st_file;

/* Maps `path` read-only and parses its header. NULL and err on failure. */
gn_st_file *gn_st_open(const char *path, gn_err *err);

/* Unmaps and frees (NULL is a no-op). Views obtained from f become invalid. */
void gn_st_close(gn_st_file *f);

/* Pointer to the first byte of t's data inside the mapping. */
const void *gn_st_data(const gn_st_file *f, const gn_st_tensor *t);

/* A 2-D view of t pointing into the mapping: cols = last dimension, rows =
 * product of the others (a scalar is 1x1, a vector is 1 x n). The view is
 * const in spirit: the mapping is read-only, writing through it faults. */
gn_tensor gn_st_view(const gn_st_file *f, const gn_st_tensor *t);

/* ---- model directories (single file or shards) -------------------------- */

typedef struct gn_st_entry {
    const char *name;            /* points into the owning file's header */
    const gn_st_file *file;
    const gn_st_tensor *tensor;
} gn_st_entry;

typedef struct gn_st_set {
    int n_files;
    gn_st_file **files;
    int n_entries;
    gn_st_entry *entries;        /* every tensor of the set, sorted by name */
} gn_st_set;

/* Opens the weights of a Hugging Face model directory: model.safetensors.index.json
 * (whose "weight_map" names the shard holding each tensor; every listed
 * tensor must be in its shard, a tensor must not appear twice) when present,
 * else model.safetensors. NULL and err on failure. */
gn_st_set *gn_st_set_open(const char *dir, gn_err *err);

/* Opens a set made of exactly one file (e.g. adapter_model.safetensors). */
gn_st_set *gn_st_set_open_file(const char *path, gn_err *err);

void gn_st_set_close(gn_st_set *s);

/* Entry for `name`, NULL when the set has no such tensor. */
const gn_st_entry *gn_st_set_find(const gn_st_set *s, const char *name);

/* Pure parser of model.safetensors.index.json: on success *names and *files
 * are gn_malloc'd arrays of *n gn_malloc'd strings (weight_map in file order;
 * free with gn_st_index_free). Shard file names must be plain file names
 * (no '/', not "." or ".."). `fname` is for messages. */
int gn_st_index_parse(const char *json, size_t len, const char *fname, char ***names,
                      char ***files, int *n, gn_err *err);
void gn_st_index_free(char **names, char **files, int n);

/* ---- writer --------------------------------------------------------------- */

typedef struct gn_st_write_tensor {
    const char *name;
    gn_dtype dtype;
    int n_dims;
    int64_t shape[GN_ST_MAX_DIMS];
    const void *data;   /* numel * dtype size bytes, little-endian */
} gn_st_write_tensor;

/* Writes a safetensors file with the tensors in the given order (contiguous,
 * header padded with spaces to a multiple of 8 bytes so every tensor starts
 * 8-byte aligned relative to the data area). meta_kv is NULL or a NULL-
 * terminated list of key, value, key, value... for "__metadata__". Output is a
 * deterministic function of the inputs. The file is written to path.tmp and
 * renamed into place. Returns 0 or GN_EINVAL / GN_EIO / GN_ENOMEM. */
int gn_st_write(const char *path, const gn_st_write_tensor *t, int n, const char *const *meta_kv,
                gn_err *err);

/* Writes model.safetensors.index.json into dir: {"metadata": {"total_size":
 * total_size}, "weight_map": {names[i]: files[i]}} (keys in the given order). */
int gn_st_write_index(const char *dir, const char *const *names, const char *const *files, int n,
                      uint64_t total_size, gn_err *err);

#endif
