#include "gn_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int gn_errf(gn_err *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int gn_err_prefix(gn_err *e, const char *fmt, ...) {
    if (!e) return GN_EINVAL;
    char head[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    size_t hl = n < 0 ? 0 : (size_t)n < sizeof head ? (size_t)n : sizeof head - 1;
    size_t ol = strnlen(e->msg, sizeof e->msg - 1);
    if (hl + ol > sizeof e->msg - 1) ol = sizeof e->msg - 1 - hl; /* the tail is cut, not the context */
    memmove(e->msg + hl, e->msg, ol);
    memcpy(e->msg, head, hl);
    e->msg[hl + ol] = '\0';
    return e->code ? e->code : GN_EINVAL;
}

void gn_err_clear(gn_err *e) {
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

const char *gn_strerror(int code) {
    switch (code) {
    case GN_OK: return "ok";
    case GN_EINVAL: return "invalid argument or input";
    case GN_ENOMEM: return "out of memory";
    case GN_EIO: return "I/O error";
    case GN_EFORMAT: return "malformed data";
    case GN_EUNSUP: return "unsupported";
    case GN_EBACKEND: return "backend failure";
    case GN_ERANGE: return "out of range";
    case GN_ENOTFOUND: return "not found";
    case GN_EMISMATCH: return "mismatch";
    default: return "unknown error";
    }
}

#include "gn_tensor.h"

const char *gn_dtype_name(gn_dtype t) {
    switch (t) {
    case GN_F32: return "F32";
    case GN_F16: return "F16";
    case GN_BF16: return "BF16";
    }
    return "?";
}
