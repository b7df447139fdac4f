#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gn_alloc.h"

int gn_fs_read_file(const char *path, size_t max_bytes, char **out, size_t *len, gn_err *err) {
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int code = errno == ENOENT ? GN_ENOTFOUND : GN_EIO;
        return gn_errf(err, code, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return gn_errf(err, GN_EIO, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        close(fd);
        return gn_errf(err, GN_ERANGE, "%s: %lld bytes, more than the %zu allowed", path,
                       (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = gn_malloc(n + 1);
    if (!buf) {
        close(fd);
        return gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(fd);
            gn_free(buf);
            return gn_errf(err, GN_EIO, "%s: read: %s", path, r < 0 ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int gn_fs_write_file(const char *path, const void *data, size_t len, gn_err *err) {
    size_t plen = strlen(path);
    char *tmp = gn_malloc(plen + 5);
    if (!tmp) return gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int rc = gn_errf(err, GN_EIO, "%s: %s", tmp, strerror(errno));
        gn_free(tmp);
        return rc;
    }
    int ok = len == 0 || fwrite(data, 1, len, f) == len;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int rc = gn_errf(err, GN_EIO, "writing %s: %s", path, strerror(errno));
        unlink(tmp);
        gn_free(tmp);
        return rc;
    }
    gn_free(tmp);
    return 0;
}

int gn_fs_copy_file(const char *src, const char *dst, gn_err *err) {
    char *buf;
    size_t len;
    int rc = gn_fs_read_file(src, (size_t)1 << 31, &buf, &len, err);
    if (rc) return rc;
    rc = gn_fs_write_file(dst, buf, len, err);
    gn_free(buf);
    return rc;
}

int gn_fs_mkdirs(const char *path, gn_err *err) {
    if (!path[0]) return gn_errf(err, GN_EINVAL, "mkdir: empty path");
    char *p = gn_strdup(path);
    if (!p) return gn_errf(err, GN_ENOMEM, "out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                int rc = gn_errf(err, GN_EIO, "mkdir %s: %s", p, strerror(errno));
                gn_free(p);
                return rc;
            }
            *s = c;
            if (c == '\0') break;
        }
    }
    gn_free(p);
    if (!gn_fs_is_dir(path)) return gn_errf(err, GN_EIO, "%s: not a directory", path);
    return 0;
}

int gn_fs_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int gn_fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *gn_fs_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    if (a == 0) return gn_strdup(name);
    while (a > 1 && dir[a - 1] == '/') a--;
    char *s = gn_malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    size_t k = a;
    if (dir[a - 1] != '/') s[k++] = '/';
    memcpy(s + k, name, b + 1);
    return s;
}

int gn_fs_write_json(const char *dir, const char *name, json_t *j, size_t flags, gn_err *err) {
    if (!j) return gn_errf(err, GN_ENOMEM, "building %s: out of memory", name);
    char *s = json_dumps(j, flags);
    json_decref(j);
    char *path = gn_fs_join(dir, name);
    int rc;
    if (!s || !path) {
        rc = gn_errf(err, GN_ENOMEM, "writing %s: out of memory", name);
    } else {
        size_t l = strlen(s);
        s[l] = '\n'; /* over the NUL: l + 1 bytes written */
        rc = gn_fs_write_file(path, s, l + 1, err);
    }
    free(s); /* json_dumps allocates with malloc */
    gn_free(path);
    return rc;
}
