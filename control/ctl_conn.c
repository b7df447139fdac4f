/* ctl_conn.c — connection, the command helper and reply-shape checks. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

static struct timeval ms_to_tv(int ms) {
    struct timeval tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return tv;
}

int ctl_open(gn_ctl *c, gn_err *err) {
    if (c->rc) {
        redisFree(c->rc);
        c->rc = NULL;
    }
    redisContext *rc = redisConnectWithTimeout(c->host, c->port, ms_to_tv(c->timeout_ms));
    if (!rc) return gn_errf(err, GN_ENOMEM, "redis %s:%d: cannot allocate a context", c->host, c->port);
    if (rc->err) {
        gn_errf(err, GN_EIO, "redis %s:%d: connect: %s", c->host, c->port, rc->errstr);
        redisFree(rc);
        return GN_EIO;
    }
    if (redisSetTimeout(rc, ms_to_tv(c->timeout_ms)) != REDIS_OK) {
        gn_errf(err, GN_EIO, "redis %s:%d: set timeout: %s", c->host, c->port, rc->errstr);
        redisFree(rc);
        return GN_EIO;
    }
    c->rc = rc;
    return 0;
}

gn_ctl *gn_ctl_connect(const char *host, int port, int timeout_ms, gn_err *err) {
    if (!host || !*host || strlen(host) >= sizeof(((gn_ctl *)0)->host))
        return gn_errf(err, GN_EINVAL, "redis: bad host"), NULL;
    if (port <= 0 || port > 65535) return gn_errf(err, GN_EINVAL, "redis: bad port %d", port), NULL;
    if (timeout_ms <= 0) return gn_errf(err, GN_EINVAL, "redis: timeout_ms must be > 0"), NULL;
    gn_ctl *c = gn_calloc(1, sizeof *c);
    if (!c) return gn_errf(err, GN_ENOMEM, "redis: out of memory"), NULL;
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    c->timeout_ms = timeout_ms;
    if (ctl_open(c, err) != 0) {
        gn_free(c);
        return NULL;
    }
    return c;
}

void gn_ctl_free(gn_ctl *c) {
    if (!c) return;
    if (c->rc) redisFree(c->rc);
    gn_free(c);
}

static int map_error_reply(const redisReply *r, gn_err *err) {
    const char *s = r->str ? r->str : "";
    struct { const char *prefix; int code; } map[] = {
        {"NOTFOUND ", GN_ENOTFOUND}, {"INVAL ", GN_EINVAL}, {"MISMATCH ", GN_EMISMATCH},
        {"FORMAT ", GN_EFORMAT},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        size_t n = strlen(map[i].prefix);
        if (strncmp(s, map[i].prefix, n) == 0) return gn_errf(err, map[i].code, "%s", s + n);
    }
    if (strncmp(s, "WRONGTYPE", 9) == 0)
        return gn_errf(err, GN_EFORMAT, "redis holds a key of an unexpected type: %s", s);
    return gn_errf(err, GN_EIO, "redis error: %s", s);
}

redisReply *ctl_cmdv(gn_ctl *c, gn_err *err, int extra_ms, int argc, const char **argv,
                     const size_t *lens) {
    int reconnected = 0;
    c->last_rc = GN_EIO;
    if (c->n_channels > 0) {
        c->last_rc = gn_errf(err, GN_EINVAL, "redis: this connection is subscribed; use another for %.20s", argv[0]);
        return NULL;
    }
    if (!c->rc || c->rc->err) {
        if (ctl_open(c, err) != 0) return NULL;
        reconnected = 1;
    }
    for (;;) {
        if (extra_ms > 0) redisSetTimeout(c->rc, ms_to_tv(c->timeout_ms + extra_ms));
        redisReply *r = redisCommandArgv(c->rc, argc, argv, lens);
        if (r && extra_ms > 0) redisSetTimeout(c->rc, ms_to_tv(c->timeout_ms));
        if (r) {
            if (r->type == REDIS_REPLY_ERROR) {
                c->last_rc = map_error_reply(r, err);
                freeReplyObject(r);
                return NULL;
            }
            return r;
        }
        /* The context is unusable now (I/O error, EOF, timeout). */
        char why[128];
        snprintf(why, sizeof why, "%s", c->rc->errstr[0] ? c->rc->errstr : "connection lost");
        if (reconnected) {
            gn_errf(err, GN_EIO, "redis %s:%d: %.20s: %s", c->host, c->port, argv[0], why);
            redisFree(c->rc);
            c->rc = NULL;
            c->last_rc = GN_EIO;
            return NULL;
        }
        if (ctl_open(c, err) != 0) return NULL;
        reconnected = 1;
    }
}

redisReply *ctl_cmd(gn_ctl *c, gn_err *err, const char *arg0, ...) {
    const char *argv[CTL_MAX_ARGS];
    size_t lens[CTL_MAX_ARGS];
    int argc = 0;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a; a = va_arg(ap, const char *)) {
        if (argc == CTL_MAX_ARGS) {
            va_end(ap);
            c->last_rc = gn_errf(err, GN_ERANGE, "redis: too many arguments");
            return NULL;
        }
        argv[argc] = a;
        lens[argc] = strlen(a);
        argc++;
    }
    va_end(ap);
    return ctl_cmdv(c, err, 0, argc, argv, lens);
}

int gn_ctl_ping(gn_ctl *c, gn_err *err) {
    redisReply *r = ctl_cmd(c, err, "PING", NULL);
    if (!r) return CTL_RC(c);
    int rc = 0;
    if (r->type != REDIS_REPLY_STATUS || !r->str || strcmp(r->str, "PONG") != 0)
        rc = gn_errf(err, GN_EFORMAT, "redis: PING did not answer PONG");
    freeReplyObject(r);
    return rc;
}

static const char *type_name(int t) {
    switch (t) {
    case REDIS_REPLY_STRING: return "string";
    case REDIS_REPLY_ARRAY: return "array";
    case REDIS_REPLY_INTEGER: return "integer";
    case REDIS_REPLY_NIL: return "nil";
    case REDIS_REPLY_STATUS: return "status";
    case REDIS_REPLY_ERROR: return "error";
    default: return "unknown";
    }
}

int ctl_want_status_ok(redisReply *r, const char *what, gn_err *err) {
    if (r->type != REDIS_REPLY_STATUS || !r->str || strcmp(r->str, "OK") != 0)
        return gn_errf(err, GN_EFORMAT, "%s: expected status OK, got %s", what, type_name(r->type));
    return 0;
}

int ctl_want_int(redisReply *r, long long *out, const char *what, gn_err *err) {
    if (r->type != REDIS_REPLY_INTEGER)
        return gn_errf(err, GN_EFORMAT, "%s: expected an integer reply, got %s", what, type_name(r->type));
    *out = r->integer;
    return 0;
}

int ctl_want_str(redisReply *r, char *buf, size_t cap, const char *what, gn_err *err) {
    if ((r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS) || !r->str)
        return gn_errf(err, GN_EFORMAT, "%s: expected a string reply, got %s", what, type_name(r->type));
    if (r->len >= cap || memchr(r->str, 0, r->len))
        return gn_errf(err, GN_EFORMAT, "%s: value of %zu bytes is too long or holds NUL", what,
                       (size_t)r->len);
    memcpy(buf, r->str, r->len);
    buf[r->len] = 0;
    return 0;
}

int ctl_want_array(redisReply *r, size_t min_elems, const char *what, gn_err *err) {
    if (r->type != REDIS_REPLY_ARRAY)
        return gn_errf(err, GN_EFORMAT, "%s: expected an array reply, got %s", what, type_name(r->type));
    if (r->elements < min_elems)
        return gn_errf(err, GN_EFORMAT, "%s: expected at least %zu elements, got %zu", what,
                       min_elems, (size_t)r->elements);
    return 0;
}

int ctl_parse_ll(const char *s, size_t len, long long *out, const char *what, gn_err *err) {
    char buf[32];
    if (!s || len == 0 || len >= sizeof buf)
        return gn_errf(err, GN_EFORMAT, "%s: not an integer", what);
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || end != buf + len) return gn_errf(err, GN_EFORMAT, "%s: not an integer: \"%s\"", what, buf);
    *out = v;
    return 0;
}

int gn_ctl_id_valid(const char *s) {
    if (!s) return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        if (!ok || n + 1 >= GN_CTL_ID_MAX) return 0;
    }
    return n > 0;
}

int ctl_check_id(const char *s, const char *what, gn_err *err) {
    if (!gn_ctl_id_valid(s))
        return gn_errf(err, GN_EINVAL, "%s \"%.80s\" is not a valid identifier (1-%d chars of A-Z a-z 0-9 . _ -)",
                       what, s ? s : "(null)", GN_CTL_ID_MAX - 1);
    return 0;
}

int ctl_key(char *buf, size_t cap, gn_err *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) return gn_errf(err, GN_ERANGE, "redis key too long");
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void gn_ctl_strv_free(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) gn_free(v[i]);
    gn_free(v);
}

int ctl_reply_strv(redisReply *r, char ***out, size_t *n, const char *what, gn_err *err) {
    *out = NULL;
    *n = 0;
    int rc = ctl_want_array(r, 0, what, err);
    if (rc) return rc;
    char **v = gn_calloc(r->elements ? r->elements : 1, sizeof *v);
    if (!v) return gn_errf(err, GN_ENOMEM, "%s: out of memory", what);
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !e->str || memchr(e->str, 0, e->len)) {
            gn_ctl_strv_free(v, i);
            return gn_errf(err, GN_EFORMAT, "%s: element %zu is not a string", what, i);
        }
        v[i] = gn_strndup(e->str, e->len);
        if (!v[i]) {
            gn_ctl_strv_free(v, i);
            return gn_errf(err, GN_ENOMEM, "%s: out of memory", what);
        }
    }
    qsort(v, r->elements, sizeof *v, cmp_str);
    *out = v;
    *n = r->elements;
    return 0;
}

int64_t ctl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
