/* fsutil.h — the few file-system helpers the format readers and writers share:
 * whole-file reads with a size cap, atomic whole-file writes, path joining.
 *
 * All functions are reentrant. Strings and buffers returned through
 * out-pointers are gn_malloc'd and owned by the caller (gn_free). */
#ifndef GN_FSUTIL_H
#define GN_FSUTIL_H

#include <stddef.h>

#include "gn_err.h"

/* Reads the whole regular file `path` (at most max_bytes, else GN_ERANGE) into
 * a gn_malloc'd buffer with a NUL appended (not counted in *len). Returns 0,
 * GN_ENOTFOUND when the file does not exist, GN_EIO / GN_ERANGE / GN_ENOMEM. */
int gn_fs_read_file(const char *path, size_t max_bytes, char **out, size_t *len, gn_err *err);

/* Writes len bytes to path.tmp, then renames it onto path. 0 or GN_EIO/GN_ENOMEM. */
int gn_fs_write_file(const char *path, const void *data, size_t len, gn_err *err);

/* Copies the regular file src to dst (through gn_fs_write_file). */
int gn_fs_copy_file(const char *src, const char *dst, gn_err *err);

/* Creates directory `path` and its missing parents (mode 0755); an existing
 * directory is fine. 0 or GN_EIO. */
int gn_fs_mkdirs(const char *path, gn_err *err);

/* 1 when path names an existing regular file, else 0. */
int gn_fs_is_file(const char *path);
/* 1 when path names an existing directory, else 0. */
int gn_fs_is_dir(const char *path);

/* "dir/name" (no doubled '/'); gn_malloc'd, NULL on allocation failure. */
char *gn_fs_join(const char *dir, const char *name);

/* Writes j (a jansson json_t, stolen: decref'd here, also when NULL means an
 * allocation failed while building it) to dir/name with json_dumps(j, flags)
 * and a trailing newline, through gn_fs_write_file. */
struct json_t;
int gn_fs_write_json(const char *dir, const char *name, struct json_t *j, size_t flags, gn_err *err);

#endif
