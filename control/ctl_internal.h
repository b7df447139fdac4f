/* ctl_internal.h — shared plumbing of the control-plane library (not public):
 * the connection object, the one command helper (reconnect once, map Redis
 * errors to GN_E* codes) and reply-shape checks. */
#ifndef GN_CTL_INTERNAL_H
#define GN_CTL_INTERNAL_H

#include <hiredis/hiredis.h>

#include "control.h"

struct gn_ctl {
    redisContext *rc;   /* NULL or broken between a failure and the next reconnect */
    char host[256];
    int port;
    int timeout_ms;
    int last_rc;        /* GN_E* code of the last failed command (for callers with err == NULL) */
    int n_channels;     /* > 0: the connection is subscribed (pub/sub mode) */
    char channels[GN_CTL_MAX_CHANNELS][GN_CTL_CHANNEL_MAX];
};

/* (Re)opens the connection; used by the pub/sub code to resubscribe. */
int ctl_open(gn_ctl *c, gn_err *err);

#define CTL_RC(c) ((c)->last_rc ? (c)->last_rc : GN_EIO)

#define CTL_MAX_ARGS 64

/* Sends one command (binary-safe argv) and returns its reply, or NULL with err
 * set. A broken connection is re-opened once and the command retried. An
 * error reply becomes NULL too: "NOTFOUND ..." -> GN_ENOTFOUND, "INVAL ..." ->
 * GN_EINVAL, "MISMATCH ..." -> GN_EMISMATCH (our Lua scripts), "WRONGTYPE" ->
 * GN_EFORMAT, anything else GN_EIO. extra_ms widens the socket timeout for
 * blocking commands (XREADGROUP BLOCK). Free the reply with freeReplyObject. */
redisReply *ctl_cmdv(gn_ctl *c, gn_err *err, int extra_ms, int argc, const char **argv,
                     const size_t *lens);

/* Convenience: NULL-terminated list of C strings. */
redisReply *ctl_cmd(gn_ctl *c, gn_err *err, const char *arg0, ...) __attribute__((sentinel));

/* Reply checks: each returns 0 or GN_EFORMAT naming `what`. */
int ctl_want_status_ok(redisReply *r, const char *what, gn_err *err);
int ctl_want_int(redisReply *r, long long *out, const char *what, gn_err *err);
/* STRING (or STATUS) copied into buf (cap bytes incl. NUL); longer -> GN_EFORMAT. */
int ctl_want_str(redisReply *r, char *buf, size_t cap, const char *what, gn_err *err);
int ctl_want_array(redisReply *r, size_t min_elems, const char *what, gn_err *err);

/* Parses a decimal integer held in a string field; GN_EFORMAT otherwise. */
int ctl_parse_ll(const char *s, size_t len, long long *out, const char *what, gn_err *err);

/* Validates an identifier argument; GN_EINVAL naming `what`. */
int ctl_check_id(const char *s, const char *what, gn_err *err);

/* Builds "prefix" + parts into buf (cap); GN_ERANGE when it does not fit. */
int ctl_key(char *buf, size_t cap, gn_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sorted copy of an array reply of strings into a gn_malloc'd strv. */
int ctl_reply_strv(redisReply *r, char ***out, size_t *n, const char *what, gn_err *err);

int64_t ctl_now_ms(void);

#endif
