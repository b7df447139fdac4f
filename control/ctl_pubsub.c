/* ctl_pubsub.c — a subscriber connection for the swap and load channels.
 * Waits with poll() on the socket so a timeout never breaks the hiredis
 * context (a socket read timeout would). */
#include <errno.h>
#include <poll.h>
#include <string.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

static int channel_valid(const char *ch) {
    if (!ch || !*ch || strlen(ch) >= GN_CTL_CHANNEL_MAX) return 0;
    for (; *ch; ch++)
        if ((unsigned char)*ch <= 0x20 || (unsigned char)*ch >= 0x7f) return 0;
    return 1;
}

/* Sends SUBSCRIBE for one channel and checks the confirmation. */
static int sub_one(gn_ctl *c, const char *ch, gn_err *err) {
    const char *argv[] = {"SUBSCRIBE", ch};
    size_t lens[] = {9, strlen(ch)};
    redisReply *r = redisCommandArgv(c->rc, 2, argv, lens);
    if (!r) return gn_errf(err, GN_EIO, "redis %s:%d: SUBSCRIBE %s: %s", c->host, c->port, ch, c->rc->errstr);
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "subscribe") != 0)
        rc = gn_errf(err, GN_EFORMAT, "SUBSCRIBE %s: unexpected reply", ch);
    freeReplyObject(r);
    return rc;
}

static int resubscribe(gn_ctl *c, gn_err *err) {
    int rc = ctl_open(c, err);
    for (int i = 0; rc == 0 && i < c->n_channels; i++) rc = sub_one(c, c->channels[i], err);
    if (rc && c->rc) {
        redisFree(c->rc);
        c->rc = NULL;
    }
    return rc;
}

int gn_ctl_subscribe(gn_ctl *c, const char *channel, gn_err *err) {
    if (!channel_valid(channel)) return gn_errf(err, GN_EINVAL, "subscribe: bad channel name");
    if (c->n_channels == GN_CTL_MAX_CHANNELS) return gn_errf(err, GN_ERANGE, "subscribe: too many channels");
    for (int i = 0; i < c->n_channels; i++)
        if (strcmp(c->channels[i], channel) == 0) return 0;
    memcpy(c->channels[c->n_channels], channel, strlen(channel) + 1);
    c->n_channels++;
    int rc = (c->rc && !c->rc->err) ? sub_one(c, channel, err) : GN_EIO;
    if (rc) rc = resubscribe(c, err); /* broken connection: one retry */
    if (rc) c->n_channels--;
    return rc;
}

/* 1: a message (filled in), 0: a reply that is not a message (skipped),
 * negative: malformed. */
static int take_message(redisReply *r, char *channel_out, char **payload, size_t *len, gn_err *err) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return gn_errf(err, GN_EFORMAT, "pub/sub: unexpected reply shape");
    for (size_t i = 0; i < 3; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING && r->element[i]->type != REDIS_REPLY_INTEGER)
            return gn_errf(err, GN_EFORMAT, "pub/sub: unexpected element type");
    redisReply *kind = r->element[0], *ch = r->element[1], *body = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "message") != 0) return 0;
    if (ch->type != REDIS_REPLY_STRING || body->type != REDIS_REPLY_STRING || ch->len >= GN_CTL_CHANNEL_MAX)
        return gn_errf(err, GN_EFORMAT, "pub/sub: malformed message");
    char *p = gn_malloc(body->len + 1);
    if (!p) return gn_errf(err, GN_ENOMEM, "pub/sub: out of memory");
    memcpy(p, body->str, body->len);
    p[body->len] = 0;
    memcpy(channel_out, ch->str, ch->len);
    channel_out[ch->len] = 0;
    *payload = p;
    *len = body->len;
    return 1;
}

int gn_ctl_sub_next(gn_ctl *c, int timeout_ms, char channel_out[GN_CTL_CHANNEL_MAX], char **payload,
                    size_t *len, gn_err *err) {
    *payload = NULL;
    *len = 0;
    channel_out[0] = 0;
    if (c->n_channels == 0) return gn_errf(err, GN_EINVAL, "sub next: not subscribed");
    if (timeout_ms < 0) return gn_errf(err, GN_EINVAL, "sub next: timeout_ms < 0");
    int64_t deadline = ctl_now_ms() + timeout_ms;
    int reopened = 0;
    for (;;) {
        if (!c->rc || c->rc->err) {
            if (reopened) return gn_errf(err, GN_EIO, "redis %s:%d: subscriber connection lost", c->host, c->port);
            reopened = 1;
            int rc = resubscribe(c, err);
            if (rc) return rc;
        }
        void *reply = NULL;
        if (redisGetReplyFromReader(c->rc, &reply) != REDIS_OK) continue; /* broken: reopen */
        if (reply) {
            int rc = take_message(reply, channel_out, payload, len, err);
            freeReplyObject(reply);
            if (rc != 0) return rc;
            continue;
        }
        int64_t left = deadline - ctl_now_ms();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = c->rc->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return gn_errf(err, GN_EIO, "sub next: poll failed");
        if (pr == 0) return 0;
        if (redisBufferRead(c->rc) != REDIS_OK) continue; /* c->rc->err set: reopen once */
    }
}
