/* ctl_queue.c — the shared request queue (stream genarm:requests, consumer
 * group "coordinators") and the per-ARM waiting lists. */
#include <stdio.h>
#include <string.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

#define Q_STREAM "genarm:requests"
#define Q_GROUP "coordinators"

void gn_ctl_msg_clear(gn_ctl_msg *m) {
    if (!m) return;
    gn_free(m->payload);
    memset(m, 0, sizeof *m);
}

int gn_ctl_queue_init(gn_ctl *c, gn_err *err) {
    gn_err e = {0};
    redisReply *r = ctl_cmd(c, &e, "XGROUP", "CREATE", Q_STREAM, Q_GROUP, "0", "MKSTREAM", NULL);
    if (!r) {
        if (strstr(e.msg, "BUSYGROUP")) return 0; /* exists already */
        int code = CTL_RC(c);
        gn_errf(err, code, "queue init: %s", e.msg);
        return code;
    }
    int rc = ctl_want_status_ok(r, "queue init", err);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_queue_push(gn_ctl *c, const void *payload, size_t len, char *id_out, gn_err *err) {
    if (id_out) id_out[0] = 0;
    if (!payload && len) return gn_errf(err, GN_EINVAL, "queue push: NULL payload");
    const char *argv[] = {"XADD", Q_STREAM, "*", "payload", payload ? (const char *)payload : ""};
    size_t lens[] = {4, strlen(Q_STREAM), 1, 7, len};
    redisReply *r = ctl_cmdv(c, err, 0, 5, argv, lens);
    if (!r) return CTL_RC(c);
    char id[GN_CTL_STREAM_ID_MAX];
    int rc = ctl_want_str(r, id, sizeof id, "queue push", err);
    freeReplyObject(r);
    if (!rc && id_out) memcpy(id_out, id, strlen(id) + 1);
    return rc;
}

/* Fills m from one stream entry [id, [field, value, ...]]. Returns 0, or 1
 * when the entry was deleted meanwhile (nil fields), or negative. */
static int parse_entry(redisReply *e, gn_ctl_msg *m, gn_err *err) {
    int rc = ctl_want_array(e, 2, "queue entry", err);
    if (rc) return rc;
    if ((rc = ctl_want_str(e->element[0], m->id, sizeof m->id, "queue entry id", err))) return rc;
    redisReply *f = e->element[1];
    if (f->type == REDIS_REPLY_NIL) return 1;
    if ((rc = ctl_want_array(f, 2, "queue entry fields", err))) return rc;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            return gn_errf(err, GN_EFORMAT, "queue entry %s: non-string field", m->id);
        if (k->len == 7 && memcmp(k->str, "payload", 7) == 0) {
            m->payload = gn_malloc(v->len + 1);
            if (!m->payload) return gn_errf(err, GN_ENOMEM, "queue entry %s: out of memory", m->id);
            memcpy(m->payload, v->str, v->len);
            m->payload[v->len] = 0;
            m->len = v->len;
            return 0;
        }
    }
    return gn_errf(err, GN_EFORMAT, "queue entry %s has no payload field", m->id);
}

int gn_ctl_queue_read(gn_ctl *c, const char *consumer, int block_ms, gn_ctl_msg *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    int rc = ctl_check_id(consumer, "consumer", err);
    if (rc) return rc;
    if (block_ms < 0) return gn_errf(err, GN_EINVAL, "queue read: block_ms < 0");
    char blk[32];
    snprintf(blk, sizeof blk, "%d", block_ms);
    const char *argv[12] = {"XREADGROUP", "GROUP", Q_GROUP, consumer, "COUNT", "1"};
    int argc = 6;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blk;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = Q_STREAM;
    argv[argc++] = ">";
    size_t lens[12];
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    redisReply *r = ctl_cmdv(c, err, block_ms, argc, argv, lens);
    if (!r) return CTL_RC(c);
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return 0;
    }
    if ((rc = ctl_want_array(r, 1, "queue read", err)) == 0 &&
        (rc = ctl_want_array(r->element[0], 2, "queue read: stream", err)) == 0 &&
        (rc = ctl_want_array(r->element[0]->element[1], 0, "queue read: entries", err)) == 0) {
        redisReply *entries = r->element[0]->element[1];
        if (entries->elements == 0) {
            rc = 0;
        } else {
            rc = parse_entry(entries->element[0], out, err);
            if (rc == 1) rc = gn_errf(err, GN_EFORMAT, "queue read: new entry without fields");
            else if (rc == 0) {
                out->deliveries = 1;
                rc = 1;
            }
        }
    }
    freeReplyObject(r);
    if (rc < 0) gn_ctl_msg_clear(out);
    return rc;
}

static const char LUA_ACK[] =
    "local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "if n == 0 then return redis.error_reply('NOTFOUND request ' .. ARGV[2] .. ' is not pending') end\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "return n\n";

int gn_ctl_queue_ack(gn_ctl *c, const char *id, gn_err *err) {
    if (!id || !*id || strlen(id) >= GN_CTL_STREAM_ID_MAX) return gn_errf(err, GN_EINVAL, "queue ack: bad id");
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_ACK, "1", Q_STREAM, Q_GROUP, id, NULL);
    if (!r) return CTL_RC(c);
    long long n;
    int rc = ctl_want_int(r, &n, "queue ack", err);
    freeReplyObject(r);
    return rc;
}

/* Delivery count of a pending entry (XPENDING extended form). */
static int pending_deliveries(gn_ctl *c, const char *id, long *out, gn_err *err) {
    redisReply *r = ctl_cmd(c, err, "XPENDING", Q_STREAM, Q_GROUP, id, id, "1", NULL);
    if (!r) return CTL_RC(c);
    int rc = ctl_want_array(r, 0, "queue pending", err);
    *out = 0;
    if (!rc && r->elements == 1) {
        redisReply *e = r->element[0];
        if ((rc = ctl_want_array(e, 4, "queue pending entry", err)) == 0) {
            long long d;
            if ((rc = ctl_want_int(e->element[3], &d, "queue pending deliveries", err)) == 0) *out = (long)d;
        }
    }
    freeReplyObject(r);
    return rc;
}

int gn_ctl_queue_claim(gn_ctl *c, const char *consumer, long min_idle_ms, gn_ctl_msg *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    int rc = ctl_check_id(consumer, "consumer", err);
    if (rc) return rc;
    if (min_idle_ms < 0) return gn_errf(err, GN_EINVAL, "queue claim: min_idle_ms < 0");
    char idle[32], cursor[GN_CTL_STREAM_ID_MAX] = "0-0";
    snprintf(idle, sizeof idle, "%ld", min_idle_ms);
    for (int iter = 0; iter < 1000; iter++) {
        redisReply *r = ctl_cmd(c, err, "XAUTOCLAIM", Q_STREAM, Q_GROUP, consumer, idle, cursor,
                                "COUNT", "1", NULL);
        if (!r) return CTL_RC(c);
        int found = 0;
        if ((rc = ctl_want_array(r, 2, "queue claim", err)) == 0 &&
            (rc = ctl_want_str(r->element[0], cursor, sizeof cursor, "queue claim cursor", err)) == 0 &&
            (rc = ctl_want_array(r->element[1], 0, "queue claim entries", err)) == 0) {
            redisReply *entries = r->element[1];
            for (size_t i = 0; i < entries->elements && !found && rc == 0; i++) {
                if (entries->element[i]->type == REDIS_REPLY_NIL) continue; /* deleted (Redis 6.2) */
                rc = parse_entry(entries->element[i], out, err);
                if (rc == 1) { /* deleted entry: drop it from the PEL */
                    redisReply *a = ctl_cmd(c, err, "XACK", Q_STREAM, Q_GROUP, out->id, NULL);
                    if (a) freeReplyObject(a);
                    rc = 0;
                    memset(out, 0, sizeof *out);
                } else if (rc == 0) {
                    found = 1;
                }
            }
        }
        freeReplyObject(r);
        if (rc < 0) {
            gn_ctl_msg_clear(out);
            return rc;
        }
        if (found) {
            if ((rc = pending_deliveries(c, out->id, &out->deliveries, err)) < 0) {
                gn_ctl_msg_clear(out);
                return rc;
            }
            return 1;
        }
        if (strcmp(cursor, "0-0") == 0) return 0;
    }
    return 0;
}

int gn_ctl_queue_has(gn_ctl *c, const char *id, gn_err *err) {
    if (!id || !*id || strlen(id) >= GN_CTL_STREAM_ID_MAX) return gn_errf(err, GN_EINVAL, "queue has: bad id");
    redisReply *r = ctl_cmd(c, err, "XRANGE", Q_STREAM, id, id, "COUNT", "1", NULL);
    if (!r) return CTL_RC(c);
    int rc = ctl_want_array(r, 0, "queue has", err);
    if (!rc) rc = r->elements > 0;
    freeReplyObject(r);
    return rc;
}

int gn_ctl_queue_depth(gn_ctl *c, long *waiting, long *pending, gn_err *err) {
    if (waiting) *waiting = 0;
    if (pending) *pending = 0;
    redisReply *r = ctl_cmd(c, err, "XLEN", Q_STREAM, NULL);
    if (!r) return CTL_RC(c);
    long long len = 0, pend = 0;
    int rc = ctl_want_int(r, &len, "queue depth", err);
    freeReplyObject(r);
    if (rc) return rc;
    r = ctl_cmd(c, err, "XPENDING", Q_STREAM, Q_GROUP, NULL);
    if (!r) return CTL_RC(c);
    if ((rc = ctl_want_array(r, 1, "queue depth: pending", err)) == 0)
        rc = ctl_want_int(r->element[0], &pend, "queue depth: pending count", err);
    freeReplyObject(r);
    if (rc) return rc;
    /* Acked entries are deleted, so the stream holds pending + undelivered ones. */
    if (waiting) *waiting = (long)(len > pend ? len - pend : 0);
    if (pending) *pending = (long)pend;
    return 0;
}

/* ---------------------------------------------------------------- waiting for an ARM */

static const char LUA_WAIT_PUSH[] =
    "redis.call('RPUSH', KEYS[2], ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[1] .. '@' .. ARGV[2])\n"
    "redis.call('PUBLISH', 'genarm:load', cjson.encode({cmd='load', arm=ARGV[1], version=ARGV[2]}))\n"
    "return redis.call('LLEN', KEYS[2])\n";

static int wait_key(char *buf, size_t cap, const char *arm, const char *version, gn_err *err) {
    int rc = ctl_check_id(arm, "ARM name", err);
    if (rc || (rc = ctl_check_id(version, "ARM version", err))) return rc;
    return ctl_key(buf, cap, err, "genarm:waiting:%s@%s", arm, version);
}

int gn_ctl_wait_push(gn_ctl *c, const char *arm, const char *version, const void *payload,
                     size_t len, gn_err *err) {
    char key[200];
    int rc = wait_key(key, sizeof key, arm, version, err);
    if (rc) return rc;
    if (!payload && len) return gn_errf(err, GN_EINVAL, "wait push: NULL payload");
    const char *argv[] = {"EVAL", LUA_WAIT_PUSH, "2", "genarm:waiting", key, arm, version,
                          payload ? (const char *)payload : ""};
    size_t lens[8];
    for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
    lens[7] = len;
    redisReply *r = ctl_cmdv(c, err, 0, 8, argv, lens);
    if (!r) return CTL_RC(c);
    long long n;
    rc = ctl_want_int(r, &n, "wait push", err);
    freeReplyObject(r);
    return rc;
}

static const char LUA_WAIT_RELEASE[] =
    "if redis.call('TYPE', KEYS[2]).ok ~= 'list' and redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  return redis.error_reply('FORMAT waiting list ' .. KEYS[2] .. ' is not a list')\n"
    "end\n"
    "local items = redis.call('LRANGE', KEYS[2], 0, -1)\n"
    "for _, p in ipairs(items) do redis.call('XADD', KEYS[3], '*', 'payload', p) end\n"
    "redis.call('DEL', KEYS[2])\n"
    "redis.call('SREM', KEYS[1], ARGV[1])\n"
    "return #items\n";

long gn_ctl_wait_release(gn_ctl *c, const char *arm, const char *version, gn_err *err) {
    char key[200], ref[GN_CTL_REF_MAX];
    int rc = wait_key(key, sizeof key, arm, version, err);
    if (rc) return rc;
    snprintf(ref, sizeof ref, "%s@%s", arm, version);
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_WAIT_RELEASE, "3", "genarm:waiting", key, Q_STREAM,
                            ref, NULL);
    if (!r) return CTL_RC(c);
    long long n = 0;
    rc = ctl_want_int(r, &n, "wait release", err);
    freeReplyObject(r);
    return rc ? rc : (long)n;
}

static const char LUA_WAIT_CANCEL[] =
    "if redis.call('TYPE', KEYS[2]).ok ~= 'list' and redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  return redis.error_reply('FORMAT waiting list ' .. KEYS[2] .. ' is not a list')\n"
    "end\n"
    "local n = redis.call('LREM', KEYS[2], 1, ARGV[2])\n"
    "if redis.call('LLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], ARGV[1]) end\n"
    "return n\n";

long gn_ctl_wait_cancel(gn_ctl *c, const char *arm, const char *version, const void *payload, size_t len,
                        gn_err *err) {
    char key[200], ref[GN_CTL_REF_MAX];
    int rc = wait_key(key, sizeof key, arm, version, err);
    if (rc) return rc;
    if (!payload && len) return gn_errf(err, GN_EINVAL, "wait cancel: NULL payload");
    snprintf(ref, sizeof ref, "%s@%s", arm, version);
    const char *argv[] = {"EVAL", LUA_WAIT_CANCEL, "2", "genarm:waiting", key, ref,
                          payload ? (const char *)payload : ""};
    size_t lens[7];
    for (int i = 0; i < 6; i++) lens[i] = strlen(argv[i]);
    lens[6] = len;
    redisReply *r = ctl_cmdv(c, err, 0, 7, argv, lens);
    if (!r) return CTL_RC(c);
    long long n = 0;
    rc = ctl_want_int(r, &n, "wait cancel", err);
    freeReplyObject(r);
    return rc ? rc : (long)n;
}

static const char LUA_WAIT_COUNT[] =
    "local total = 0\n"
    "for _, ref in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  local k = 'genarm:waiting:' .. ref\n"
    "  local t = redis.call('TYPE', k).ok\n"
    "  if t == 'list' then total = total + redis.call('LLEN', k)\n"
    "  elseif t == 'none' then redis.call('SREM', KEYS[1], ref)\n"
    "  else return redis.error_reply('FORMAT waiting list ' .. k .. ' is a ' .. t .. ', not a list') end\n"
    "end\n"
    "return total\n";

long gn_ctl_wait_count(gn_ctl *c, gn_err *err) {
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_WAIT_COUNT, "1", "genarm:waiting", NULL);
    if (!r) return CTL_RC(c);
    long long n = 0;
    int rc = ctl_want_int(r, &n, "wait count", err);
    freeReplyObject(r);
    return rc ? rc : (long)n;
}

int gn_ctl_wait_arms(gn_ctl *c, char ***refs, size_t *n, gn_err *err) {
    *refs = NULL;
    *n = 0;
    if (gn_ctl_wait_count(c, err) < 0) return CTL_RC(c); /* prunes stale refs */
    redisReply *r = ctl_cmd(c, err, "SMEMBERS", "genarm:waiting", NULL);
    if (!r) return CTL_RC(c);
    int rc = ctl_reply_strv(r, refs, n, "wait arms", err);
    freeReplyObject(r);
    for (size_t i = 0; rc == 0 && i < *n; i++) {
        const char *ref = (*refs)[i], *at = strchr(ref, '@');
        char name[GN_CTL_ID_MAX];
        size_t len = at ? (size_t)(at - ref) : 0;
        int ok = at && len > 0 && len < sizeof name && gn_ctl_id_valid(at + 1);
        if (ok) {
            memcpy(name, ref, len);
            name[len] = 0;
            ok = gn_ctl_id_valid(name);
        }
        if (!ok) {
            rc = gn_errf(err, GN_EFORMAT, "wait arms: redis holds a malformed ARM reference");
            gn_ctl_strv_free(*refs, *n);
            *refs = NULL;
            *n = 0;
        }
    }
    return rc;
}
