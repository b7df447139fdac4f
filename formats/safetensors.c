/* safetensors.c — parser, mapped files, sharded sets and writer (see
 * safetensors.h). The JSON header is parsed with jansson; every number taken
 * from it is range-checked before use. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "gn_alloc.h"

#define FN(f) ((f) ? (f) : "<buffer>")

/* ---- parser ---------------------------------------------------------------- */

/* Dtypes of the format that this project does not compute with. */
static const char *const k_other_dtypes[] = {
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "F8_E5M2",
    "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
};

static int parse_dtype(const char *s, const char *fname, const char *tname, gn_dtype *out,
                       gn_err *err) {
    if (!strcmp(s, "F32")) *out = GN_F32;
    else if (!strcmp(s, "F16")) *out = GN_F16;
    else if (!strcmp(s, "BF16")) *out = GN_BF16;
    else {
        for (size_t i = 0; i < sizeof k_other_dtypes / sizeof k_other_dtypes[0]; i++)
            if (!strcmp(s, k_other_dtypes[i]))
                return gn_errf(err, GN_EUNSUP,
                               "%s: tensor '%s': dtype %s is not supported (only F32, F16, BF16)",
                               fname, tname, s);
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': unknown dtype '%.32s'", fname, tname, s);
    }
    return 0;
}

/* A non-negative JSON integer as uint64. */
static int get_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (uint64_t)x;
    return 0;
}

static int parse_tensor(const char *name, const json_t *obj, const char *fname, uint64_t data_len,
                        gn_st_tensor *t, gn_err *err) {
    if (!json_is_object(obj))
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': entry is not a JSON object", fname, name);
    const json_t *jd = json_object_get(obj, "dtype");
    const json_t *js = json_object_get(obj, "shape");
    const json_t *jo = json_object_get(obj, "data_offsets");
    if (!jd || !js || !jo)
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': missing field \"%s\"", fname, name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': dtype is not a string", fname, name);
    int rc = parse_dtype(json_string_value(jd), fname, name, &t->dtype, err);
    if (rc) return rc;

    if (!json_is_array(js))
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': shape is not an array", fname, name);
    size_t nd = json_array_size(js);
    if (nd > GN_ST_MAX_DIMS)
        return gn_errf(err, GN_EUNSUP, "%s: tensor '%s': %zu dimensions (at most %d supported)",
                       fname, name, nd, GN_ST_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (get_u64(json_array_get(js, i), &d) != 0)
            return gn_errf(err, GN_EFORMAT,
                           "%s: tensor '%s': shape[%zu] is not a non-negative integer", fname,
                           name, i);
        t->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) overflow = 1;
        else numel *= d;
    }
    uint64_t esize = gn_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / esize) {
        /* A zero dimension anywhere makes the product 0, overflow or not. */
        int has_zero = 0;
        for (int i = 0; i < t->n_dims; i++) has_zero |= t->shape[i] == 0;
        if (!has_zero)
            return gn_errf(err, GN_ERANGE, "%s: tensor '%s': shape size overflows", fname, name);
        numel = 0;
    }
    uint64_t nbytes = numel * esize;

    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        get_u64(json_array_get(jo, 0), &t->begin) != 0 ||
        get_u64(json_array_get(jo, 1), &t->end) != 0)
        return gn_errf(err, GN_EFORMAT,
                       "%s: tensor '%s': data_offsets must be [begin, end] non-negative integers",
                       fname, name);
    if (t->begin > t->end)
        return gn_errf(err, GN_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed",
                       fname, name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_len)
        return gn_errf(err, GN_EFORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run past the data area "
                       "(%llu bytes)",
                       fname, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                       (unsigned long long)data_len);
    if (t->end - t->begin != nbytes)
        return gn_errf(err, GN_EFORMAT,
                       "%s: tensor '%s': shape x %s is %llu bytes but data_offsets span %llu",
                       fname, name, gn_dtype_name(t->dtype), (unsigned long long)nbytes,
                       (unsigned long long)(t->end - t->begin));
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const gn_st_tensor *)a)->name, ((const gn_st_tensor *)b)->name);
}

static int cmp_offset_ptr(const void *a, const void *b) {
    const gn_st_tensor *x = *(const gn_st_tensor *const *)a, *y = *(const gn_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The tensors must tile [0, data_len) exactly, as the reference requires. */
static int check_tiling(gn_st_header *h, const char *fname, gn_err *err) {
    if (h->n_tensors == 0) {
        if (h->data_len)
            return gn_errf(err, GN_EFORMAT, "%s: no tensors but %llu bytes of data", fname,
                           (unsigned long long)h->data_len);
        return 0;
    }
    const gn_st_tensor **order = gn_malloc(sizeof *order * (size_t)h->n_tensors);
    if (!order) return gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
    for (int i = 0; i < h->n_tensors; i++) order[i] = &h->tensors[i];
    qsort(order, (size_t)h->n_tensors, sizeof *order, cmp_offset_ptr);
    uint64_t pos = 0;
    int rc = 0;
    for (int i = 0; i < h->n_tensors && !rc; i++) {
        const gn_st_tensor *t = order[i];
        if (t->begin < pos)
            rc = gn_errf(err, GN_EFORMAT, "%s: tensor '%s' [%llu, %llu) overlaps tensor '%s'",
                         fname, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         order[i - 1]->name);
        else if (t->begin > pos)
            rc = gn_errf(err, GN_EFORMAT,
                         "%s: tensor '%s' starts at %llu, leaving a gap of %llu unindexed bytes",
                         fname, t->name, (unsigned long long)t->begin,
                         (unsigned long long)(t->begin - pos));
        pos = t->end;
    }
    if (!rc && pos != h->data_len)
        rc = gn_errf(err, GN_EFORMAT,
                     "%s: %llu bytes after the last tensor '%s' are not covered by any tensor",
                     fname, (unsigned long long)(h->data_len - pos),
                     order[h->n_tensors - 1]->name);
    gn_free(order);
    return rc;
}

static int parse_metadata(const json_t *m, const char *fname, gn_st_header *h, gn_err *err) {
    if (json_is_null(m)) return 0;
    if (!json_is_object(m))
        return gn_errf(err, GN_EFORMAT, "%s: __metadata__ is not a JSON object", fname);
    size_t n = json_object_size(m);
    if (n == 0) return 0;
    h->meta_keys = gn_calloc(n, sizeof(char *));
    h->meta_values = gn_calloc(n, sizeof(char *));
    if (!h->meta_keys || !h->meta_values) return gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)m, key, v) {
        if (!json_is_string(v))
            return gn_errf(err, GN_EFORMAT, "%s: __metadata__[\"%s\"] is not a string", fname, key);
        h->meta_keys[h->n_meta] = gn_strdup(key);
        h->meta_values[h->n_meta] = gn_strdup(json_string_value(v));
        if (!h->meta_keys[h->n_meta] || !h->meta_values[h->n_meta]) {
            gn_free(h->meta_keys[h->n_meta]);
            gn_free(h->meta_values[h->n_meta]);
            h->meta_keys[h->n_meta] = h->meta_values[h->n_meta] = NULL;
            return gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
        }
        h->n_meta++;
    }
    return 0;
}

int gn_st_parse(const uint8_t *buf, size_t len, const char *fname, gn_st_header *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    fname = FN(fname);
    if (len < 8)
        return gn_errf(err, GN_EFORMAT, "%s: %zu bytes, too short for a safetensors file", fname,
                       len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > GN_ST_MAX_HEADER)
        return gn_errf(err, GN_EFORMAT, "%s: header length %llu exceeds the %u byte limit", fname,
                       (unsigned long long)n, GN_ST_MAX_HEADER);
    if (n > len - 8)
        return gn_errf(err, GN_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                       fname, (unsigned long long)n, len);
    if (n < 2 || buf[8] != '{')
        return gn_errf(err, GN_EFORMAT, "%s: header does not start with a JSON object", fname);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return gn_errf(err, GN_EFORMAT, "%s: header is not valid JSON (line %d, column %d): %s",
                       fname, jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = gn_errf(err, GN_EFORMAT, "%s: header is not a JSON object", fname);
        goto done;
    }
    out->data_start = 8 + n;
    out->data_len = len - out->data_start;

    size_t cap = json_object_size(root);
    if (cap) {
        out->tensors = gn_calloc(cap, sizeof *out->tensors);
        if (!out->tensors) {
            rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
            goto done;
        }
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            rc = parse_metadata(val, fname, out, err);
            if (rc) goto done;
            continue;
        }
        if (key[0] == '\0') {
            rc = gn_errf(err, GN_EFORMAT, "%s: a tensor has an empty name", fname);
            goto done;
        }
        gn_st_tensor *t = &out->tensors[out->n_tensors];
        rc = parse_tensor(key, val, fname, out->data_len, t, err);
        if (rc) goto done;
        t->name = gn_strdup(key);
        if (!t->name) {
            rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
            goto done;
        }
        out->n_tensors++;
    }
    if (out->n_tensors > 1)
        qsort(out->tensors, (size_t)out->n_tensors, sizeof *out->tensors, cmp_name);
    for (int i = 1; i < out->n_tensors; i++)
        if (!strcmp(out->tensors[i - 1].name, out->tensors[i].name)) {
            rc = gn_errf(err, GN_EFORMAT, "%s: tensor '%s' appears twice", fname, out->tensors[i].name);
            goto done;
        }
    rc = check_tiling(out, fname, err);
done:
    json_decref(root);
    if (rc) gn_st_header_free(out);
    return rc;
}

void gn_st_header_free(gn_st_header *h) {
    if (!h) return;
    for (int i = 0; i < h->n_tensors; i++) gn_free(h->tensors[i].name);
    gn_free(h->tensors);
    for (int i = 0; i < h->n_meta; i++) {
        gn_free(h->meta_keys[i]);
        gn_free(h->meta_values[i]);
    }
    gn_free(h->meta_keys);
    gn_free(h->meta_values);
    memset(h, 0, sizeof *h);
}

const gn_st_tensor *gn_st_header_find(const gn_st_header *h, const char *name) {
    int lo = 0, hi = h->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, h->tensors[mid].name);
        if (c == 0) return &h->tensors[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

uint64_t gn_st_tensor_numel(const gn_st_tensor *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= (uint64_t)t->shape[i];
    return n;
}

/* ---- mapped files -------------------------------------------------------- */

gn_st_file *gn_st_open(const char *path, gn_err *err) {
    gn_st_file *f = gn_calloc(1, sizeof *f);
    if (!f || !(f->path = gn_strdup(path))) {
        gn_free(f);
        gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        gn_errf(err, errno == ENOENT ? GN_ENOTFOUND : GN_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        gn_errf(err, GN_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        close(fd);
        gn_errf(err, GN_EFORMAT, "%s: %lld bytes, too short for a safetensors file", path,
                (long long)st.st_size);
        goto fail;
    }
    if ((unsigned long long)st.st_size > SIZE_MAX) {
        close(fd);
        gn_errf(err, GN_ERANGE, "%s: too large to map", path);
        goto fail;
    }
    f->size = (size_t)st.st_size;
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (m == MAP_FAILED) {
        gn_errf(err, GN_EIO, "%s: mmap: %s", path, strerror(map_errno));
        goto fail;
    }
    f->map = m;
    if (gn_st_parse(f->map, f->size, path, &f->hdr, err) != 0) goto fail;
    return f;
fail:
    gn_st_close(f);
    return NULL;
}

void gn_st_close(gn_st_file *f) {
    if (!f) return;
    if (f->map) munmap((void *)f->map, f->size);
    gn_st_header_free(&f->hdr);
    gn_free(f->path);
    gn_free(f);
}

const void *gn_st_data(const gn_st_file *f, const gn_st_tensor *t) {
    return f->map + f->hdr.data_start + t->begin;
}

gn_tensor gn_st_view(const gn_st_file *f, const gn_st_tensor *t) {
    gn_tensor v;
    v.data = (void *)gn_st_data(f, t);
    v.dtype = t->dtype;
    v.cols = t->n_dims ? t->shape[t->n_dims - 1] : 1;
    v.rows = 1;
    for (int i = 0; i + 1 < t->n_dims; i++) v.rows *= t->shape[i];
    return v;
}

/* ---- sets ------------------------------------------------------------------ */

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const gn_st_entry *)a)->name, ((const gn_st_entry *)b)->name);
}

void gn_st_set_close(gn_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) gn_st_close(s->files[i]);
    gn_free(s->files);
    gn_free(s->entries);
    gn_free(s);
}

gn_st_set *gn_st_set_open_file(const char *path, gn_err *err) {
    gn_st_set *s = gn_calloc(1, sizeof *s);
    if (!s || !(s->files = gn_calloc(1, sizeof *s->files))) {
        gn_free(s);
        gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    gn_st_file *f = gn_st_open(path, err);
    if (!f) goto fail;
    s->files[0] = f;
    s->n_files = 1;
    if (f->hdr.n_tensors) {
        s->entries = gn_calloc((size_t)f->hdr.n_tensors, sizeof *s->entries);
        if (!s->entries) {
            gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
    }
    for (int i = 0; i < f->hdr.n_tensors; i++) {
        s->entries[i].name = f->hdr.tensors[i].name;
        s->entries[i].file = f;
        s->entries[i].tensor = &f->hdr.tensors[i];
    }
    s->n_entries = f->hdr.n_tensors; /* already sorted by name */
    return s;
fail:
    gn_st_set_close(s);
    return NULL;
}

void gn_st_index_free(char **names, char **files, int n) {
    for (int i = 0; i < n; i++) {
        if (names) gn_free(names[i]);
        if (files) gn_free(files[i]);
    }
    gn_free(names);
    gn_free(files);
}

int gn_st_index_parse(const char *json, size_t len, const char *fname, char ***names_out,
                      char ***files_out, int *n_out, gn_err *err) {
    *names_out = *files_out = NULL;
    *n_out = 0;
    fname = FN(fname);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return gn_errf(err, GN_EFORMAT, "%s: not valid JSON (line %d, column %d): %s", fname,
                       jerr.line, jerr.column, jerr.text);
    int rc = 0, n = 0;
    char **names = NULL, **files = NULL;
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        rc = gn_errf(err, GN_EFORMAT, "%s: missing object \"weight_map\"", fname);
        goto done;
    }
    size_t cap = json_object_size(wm);
    if (cap > (size_t)1 << 24) {
        rc = gn_errf(err, GN_ERANGE, "%s: weight_map has %zu entries", fname, cap);
        goto done;
    }
    names = gn_calloc(cap ? cap : 1, sizeof *names);
    files = gn_calloc(cap ? cap : 1, sizeof *files);
    if (!names || !files) {
        rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *file = json_string_value(v);
        if (!file) {
            rc = gn_errf(err, GN_EFORMAT, "%s: weight_map[\"%s\"] is not a string", fname, key);
            goto done;
        }
        if (!file[0] || strchr(file, '/') || !strcmp(file, ".") || !strcmp(file, "..")) {
            rc = gn_errf(err, GN_EFORMAT,
                         "%s: weight_map[\"%s\"] = \"%s\" is not a plain file name in the model "
                         "directory",
                         fname, key, file);
            goto done;
        }
        names[n] = gn_strdup(key);
        files[n] = gn_strdup(file);
        n++;
        if (!names[n - 1] || !files[n - 1]) {
            rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", fname);
            goto done;
        }
    }
done:
    json_decref(root);
    if (rc) {
        gn_st_index_free(names, files, n);
        return rc;
    }
    *names_out = names;
    *files_out = files;
    *n_out = n;
    return 0;
}

static gn_st_set *open_sharded(const char *dir, const char *index_path, gn_err *err) {
    char *json = NULL, **names = NULL, **files = NULL;
    size_t len = 0;
    int n = 0;
    gn_st_set *s = NULL;
    if (gn_fs_read_file(index_path, (size_t)256 << 20, &json, &len, err) != 0) return NULL;
    if (gn_st_index_parse(json, len, index_path, &names, &files, &n, err) != 0) goto fail;
    s = gn_calloc(1, sizeof *s);
    if (!s || !(s->files = gn_calloc((size_t)(n ? n : 1), sizeof *s->files)) ||
        !(s->entries = gn_calloc((size_t)(n ? n : 1), sizeof *s->entries))) {
        gn_errf(err, GN_ENOMEM, "%s: out of memory", index_path);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        /* Find (or open) the shard. Shards are few; a linear scan is fine. */
        gn_st_file *f = NULL;
        for (int j = 0; j < s->n_files && !f; j++) {
            const char *base = strrchr(s->files[j]->path, '/');
            if (!strcmp(base ? base + 1 : s->files[j]->path, files[i])) f = s->files[j];
        }
        if (!f) {
            char *p = gn_fs_join(dir, files[i]);
            if (!p) {
                gn_errf(err, GN_ENOMEM, "out of memory");
                goto fail;
            }
            f = gn_st_open(p, err);
            gn_free(p);
            if (!f) {
                gn_err_prefix(err, "shard of %s: ", index_path);
                goto fail;
            }
            s->files[s->n_files++] = f;
        }
        const gn_st_tensor *t = gn_st_header_find(&f->hdr, names[i]);
        if (!t) {
            gn_errf(err, GN_ENOTFOUND, "%s: tensor '%s' is listed in %s but missing from that shard",
                    index_path, names[i], files[i]);
            goto fail;
        }
        s->entries[i].name = t->name;
        s->entries[i].file = f;
        s->entries[i].tensor = t;
        s->n_entries++;
    }
    qsort(s->entries, (size_t)s->n_entries, sizeof *s->entries, cmp_entry);
    gn_st_index_free(names, files, n);
    gn_free(json);
    return s;
fail:
    gn_st_index_free(names, files, n);
    gn_free(json);
    gn_st_set_close(s);
    return NULL;
}

gn_st_set *gn_st_set_open(const char *dir, gn_err *err) {
    char *index = gn_fs_join(dir, "model.safetensors.index.json");
    char *single = gn_fs_join(dir, "model.safetensors");
    gn_st_set *s = NULL;
    if (!index || !single) {
        gn_errf(err, GN_ENOMEM, "out of memory");
    } else if (gn_fs_is_file(index)) {
        s = open_sharded(dir, index, err);
    } else if (gn_fs_is_file(single)) {
        s = gn_st_set_open_file(single, err);
    } else {
        char *bin = gn_fs_join(dir, "pytorch_model.bin");
        if (bin && gn_fs_is_file(bin))
            gn_errf(err, GN_EUNSUP,
                    "%s: only pytorch_model.bin found; convert the model to safetensors", dir);
        else
            gn_errf(err, GN_ENOTFOUND, "%s: no model.safetensors or model.safetensors.index.json",
                    dir);
        gn_free(bin);
    }
    gn_free(index);
    gn_free(single);
    return s;
}

const gn_st_entry *gn_st_set_find(const gn_st_set *s, const char *name) {
    gn_st_entry key = {.name = name};
    if (!s->n_entries) return NULL;
    return bsearch(&key, s->entries, (size_t)s->n_entries, sizeof *s->entries, cmp_entry);
}

/* ---- writer ---------------------------------------------------------------- */

/* Builds the padded header; on success *out (gn_malloc'd) has *out_len bytes
 * and *data_len the size of the data area. */
static int build_header(const gn_st_write_tensor *t, int n, const char *const *meta_kv,
                        const char *path, char **out, size_t *out_len, uint64_t *data_len,
                        gn_err *err) {
    int rc = 0;
    json_t *root = json_object();
    if (!root) return gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
    if (meta_kv && meta_kv[0]) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0) {
            rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        for (int i = 0; meta_kv[i]; i += 2) {
            if (!meta_kv[i + 1] || json_object_set_new(m, meta_kv[i], json_string(meta_kv[i + 1])) != 0) {
                rc = gn_errf(err, GN_EINVAL, "%s: bad metadata entry '%s'", path, meta_kv[i]);
                goto done;
            }
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i].name || !t[i].name[0] || !strcmp(t[i].name, "__metadata__") ||
            t[i].n_dims < 0 || t[i].n_dims > GN_ST_MAX_DIMS ||
            json_object_get(root, t[i].name)) {
            rc = gn_errf(err, GN_EINVAL, "%s: tensor %d ('%s'): bad or duplicate name or rank", path,
                         i, t[i].name ? t[i].name : "(null)");
            goto done;
        }
        uint64_t numel = 1;
        json_t *shape = json_array();
        json_t *e = json_object();
        json_t *offs = json_array();
        int bad = !shape || !e || !offs;
        for (int d = 0; d < t[i].n_dims && !bad; d++) {
            if (t[i].shape[d] < 0 || (t[i].shape[d] && numel > UINT64_MAX / (uint64_t)t[i].shape[d])) {
                bad = 1;
                break;
            }
            numel *= (uint64_t)t[i].shape[d];
            bad |= json_array_append_new(shape, json_integer(t[i].shape[d])) != 0;
        }
        uint64_t nbytes = numel * gn_dtype_size(t[i].dtype);
        if (!bad && (numel > UINT64_MAX / 8 || off + nbytes < off || off + nbytes > (uint64_t)INT64_MAX))
            bad = 1;
        if (!bad) {
            bad |= json_object_set_new(e, "dtype", json_string(gn_dtype_name(t[i].dtype))) != 0;
            bad |= json_object_set_new(e, "shape", shape) != 0;
            shape = NULL;
            bad |= json_array_append_new(offs, json_integer((json_int_t)off)) != 0;
            bad |= json_array_append_new(offs, json_integer((json_int_t)(off + nbytes))) != 0;
            bad |= json_object_set_new(e, "data_offsets", offs) != 0;
            offs = NULL;
            bad |= json_object_set_new(root, t[i].name, e) != 0;
            e = NULL;
        }
        json_decref(shape);
        json_decref(offs);
        json_decref(e);
        if (bad) {
            rc = gn_errf(err, GN_EINVAL, "%s: tensor '%s': bad shape, name or out of memory", path,
                         t[i].name);
            goto done;
        }
        off += nbytes;
    }
    char *js = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!js) {
        rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t jl = strlen(js);
    size_t padded = (jl + 7) / 8 * 8;
    char *buf = gn_malloc(padded);
    if (!buf) {
        free(js);
        rc = gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    memcpy(buf, js, jl);
    memset(buf + jl, ' ', padded - jl);
    free(js); /* json_dumps uses jansson's allocator (malloc) */
    *out = buf;
    *out_len = padded;
    *data_len = off;
done:
    json_decref(root);
    return rc;
}

int gn_st_write(const char *path, const gn_st_write_tensor *t, int n, const char *const *meta_kv,
                gn_err *err) {
    char *hdr = NULL, *tmp = NULL;
    size_t hlen = 0;
    uint64_t dlen = 0;
    if (n < 0) return gn_errf(err, GN_EINVAL, "%s: negative tensor count", path);
    int rc = build_header(t, n, meta_kv, path, &hdr, &hlen, &dlen, err);
    if (rc) return rc;
    size_t plen = strlen(path);
    tmp = gn_malloc(plen + 5);
    if (!tmp) {
        gn_free(hdr);
        return gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    /* Streamed, so a large model never needs a second in-memory copy. */
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    ok = ok && fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;
    for (int i = 0; i < n && ok; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].n_dims; d++) numel *= (size_t)t[i].shape[d];
        size_t nb = numel * gn_dtype_size(t[i].dtype);
        ok = nb == 0 || fwrite(t[i].data, 1, nb, f) == nb;
    }
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        rc = gn_errf(err, GN_EIO, "writing %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    gn_free(tmp);
    gn_free(hdr);
    return rc;
}

int gn_st_write_index(const char *dir, const char *const *names, const char *const *files, int n,
                      uint64_t total_size, gn_err *err) {
    char *path = gn_fs_join(dir, "model.safetensors.index.json");
    if (!path) return gn_errf(err, GN_ENOMEM, "out of memory");
    int rc = 0;
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    int bad = !root || !meta || !wm;
    if (!bad) {
        bad |= json_object_set_new(meta, "total_size", json_integer((json_int_t)total_size)) != 0;
        bad |= json_object_set(root, "metadata", meta) != 0;
        bad |= json_object_set(root, "weight_map", wm) != 0;
        for (int i = 0; i < n && !bad; i++)
            bad |= json_object_set_new(wm, names[i], json_string(files[i])) != 0;
    }
    char *js = bad ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(meta);
    json_decref(wm);
    json_decref(root);
    if (!js) {
        rc = gn_errf(err, GN_EINVAL, "%s: cannot build the index (bad name or out of memory)", path);
    } else {
        size_t l = strlen(js);
        js[l] = '\n'; /* replaces the NUL; we write l + 1 bytes and never read js as a string again */
        rc = gn_fs_write_file(path, js, l + 1, err);
        free(js);
    }
    gn_free(path);
    return rc;
}
