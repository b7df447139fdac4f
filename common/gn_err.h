/* gn_err.h — errors as values.
 *
 * Every fallible library function returns 0 on success or a negative GN_E*
 * code, and writes a human-readable message into a caller-owned gn_err (which
 * may be NULL when the caller does not want the text). There is no global error
 * state: a gn_err belongs to one thread at a time. */
#ifndef GN_ERR_H
#define GN_ERR_H

#include <stddef.h>

enum {
    GN_OK = 0,
    GN_EINVAL = -1,  /* bad argument or malformed input (file, frame, request) */
    GN_ENOMEM = -2,  /* allocation failed */
    GN_EIO = -3,     /* open/read/map/write failed */
    GN_EFORMAT = -4, /* a file or message does not follow its format */
    GN_EUNSUP = -5,  /* valid input the project does not support (yet) */
    GN_EBACKEND = -6,/* a device/backend call failed */
    GN_ERANGE = -7,  /* a value or size out of bounds (overflow, too many tokens) */
    GN_ENOTFOUND = -8,
    GN_EMISMATCH = -9, /* two inputs that must agree do not (tokenizers, shapes) */
};

#define GN_ERR_MSG_MAX 512

typedef struct gn_err {
    int code;                  /* last GN_E* code written, 0 if none */
    char msg[GN_ERR_MSG_MAX];  /* NUL-terminated message, "" if none */
} gn_err;

/* Writes code and a printf-style message into e (if e is non-NULL) and returns
 * code, so callers can write `return gn_errf(e, GN_EIO, "open %s: %s", ...)`. */
int gn_errf(gn_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in e with more context ("loading model X: ").
 * Returns e->code (or GN_EINVAL when e is NULL). */
int gn_err_prefix(gn_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears e (safe on NULL). */
void gn_err_clear(gn_err *e);

/* Static description of a GN_E* code; never NULL. */
const char *gn_strerror(int code);

#endif
