/* ctl_worker.c — the live worker registry: one hash per worker with a
 * heartbeat TTL, an index set pruned lazily, and ARM placement lookup. */
#include <stdio.h>
#include <string.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

static int ref_valid(const char *ref) {
    const char *at = strchr(ref, '@');
    if (!at || strchr(at + 1, '@')) return 0;
    size_t n = (size_t)(at - ref);
    char name[GN_CTL_ID_MAX];
    if (n == 0 || n >= sizeof name) return 0;
    memcpy(name, ref, n);
    name[n] = 0;
    return gn_ctl_id_valid(name) && gn_ctl_id_valid(at + 1);
}

static int endpoint_valid(const char *e) {
    if (!e || !*e || strlen(e) >= GN_CTL_PATH_MAX) return 0;
    for (; *e; e++)
        if ((unsigned char)*e <= 0x20) return 0;
    return 1;
}

/* A hostname: printable, no spaces, may be empty. */
static int host_valid(const char *h) {
    if (strlen(h) >= GN_CTL_HOST_MAX) return 0;
    for (; *h; h++)
        if ((unsigned char)*h <= 0x20 || (unsigned char)*h == 0x7f) return 0;
    return 1;
}

/* "" or an ipc:// endpoint. */
static int ipc_valid(const char *e) {
    return !*e || (strncmp(e, "ipc://", 6) == 0 && e[6] && endpoint_valid(e));
}

static const char LUA_HEARTBEAT[] =
    "redis.call('DEL', KEYS[2])\n"
    "redis.call('HSET', KEYS[2], 'kind', ARGV[2], 'endpoint', ARGV[3], 'arms', ARGV[4],\n"
    "  'capacity', ARGV[5], 'load', ARGV[6], 'updated_ms', ARGV[7], 'host', ARGV[9], 'ipc', ARGV[10])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[8])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "return 1\n";

int gn_ctl_worker_heartbeat(gn_ctl *c, const gn_ctl_worker *w, int ttl_ms, gn_err *err) {
    int rc = ctl_check_id(w->id, "worker id", err);
    if (rc) return rc;
    if (w->kind != GN_CTL_WORKER_BASE && w->kind != GN_CTL_WORKER_REWARD)
        return gn_errf(err, GN_EINVAL, "worker %s: bad kind %d", w->id, w->kind);
    if (!endpoint_valid(w->endpoint)) return gn_errf(err, GN_EINVAL, "worker %s: bad endpoint", w->id);
    if (w->n_arms < 0 || w->n_arms > GN_CTL_WORKER_MAX_ARMS)
        return gn_errf(err, GN_EINVAL, "worker %s: n_arms %d out of range", w->id, w->n_arms);
    if (w->capacity < 0 || w->load < 0) return gn_errf(err, GN_EINVAL, "worker %s: negative capacity/load", w->id);
    if (ttl_ms <= 0) return gn_errf(err, GN_EINVAL, "worker %s: ttl_ms must be > 0", w->id);
    if (!memchr(w->host, 0, sizeof w->host) || !host_valid(w->host))
        return gn_errf(err, GN_EINVAL, "worker %s: bad host name", w->id);
    if (!memchr(w->ipc, 0, sizeof w->ipc) || !ipc_valid(w->ipc))
        return gn_errf(err, GN_EINVAL, "worker %s: ipc endpoint \"%.100s\" is not ipc://...", w->id, w->ipc);
    char arms[GN_CTL_WORKER_MAX_ARMS * GN_CTL_REF_MAX];
    size_t off = 0;
    arms[0] = 0;
    for (int i = 0; i < w->n_arms; i++) {
        if (!ref_valid(w->arms[i]))
            return gn_errf(err, GN_EINVAL, "worker %s: ARM \"%.130s\" is not name@version", w->id, w->arms[i]);
        off += (size_t)snprintf(arms + off, sizeof arms - off, "%s%s", i ? "," : "", w->arms[i]);
    }
    char key[128], cap[24], load[24], ms[32], ttl[24];
    if ((rc = ctl_key(key, sizeof key, err, "genarm:worker:%s", w->id))) return rc;
    snprintf(cap, sizeof cap, "%d", w->capacity);
    snprintf(load, sizeof load, "%d", w->load);
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_HEARTBEAT, "2", "genarm:workers", key, w->id,
                            w->kind == GN_CTL_WORKER_BASE ? "base" : "reward", w->endpoint, arms, cap,
                            load, ms, ttl, w->host, w->ipc, NULL);
    if (!r) return CTL_RC(c);
    long long one;
    rc = ctl_want_int(r, &one, "worker heartbeat", err);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_worker_remove(gn_ctl *c, const char *id, gn_err *err) {
    int rc = ctl_check_id(id, "worker id", err);
    if (rc) return rc;
    char key[128];
    if ((rc = ctl_key(key, sizeof key, err, "genarm:worker:%s", id))) return rc;
    redisReply *r = ctl_cmd(c, err, "DEL", key, NULL);
    if (!r) return CTL_RC(c);
    long long n = 0;
    rc = ctl_want_int(r, &n, "worker remove", err);
    freeReplyObject(r);
    if (rc) return rc;
    r = ctl_cmd(c, err, "SREM", "genarm:workers", id, NULL);
    if (!r) return CTL_RC(c);
    long long m = 0;
    rc = ctl_want_int(r, &m, "worker remove", err);
    freeReplyObject(r);
    if (!rc && n == 0 && m == 0) rc = gn_errf(err, GN_ENOTFOUND, "worker %s is not registered", id);
    return rc;
}

static redisReply *field(redisReply *arr, const char *name) {
    for (size_t i = 0; i + 1 < arr->elements; i += 2)
        if (arr->element[i]->len == strlen(name) && memcmp(arr->element[i]->str, name, arr->element[i]->len) == 0)
            return arr->element[i + 1];
    return NULL;
}

static int want_field_str(redisReply *h, const char *name, char *buf, size_t cap, const char *id,
                          gn_err *err) {
    redisReply *v = field(h, name);
    if (!v) return gn_errf(err, GN_EFORMAT, "worker %s: field %s is missing", id, name);
    char what[128];
    snprintf(what, sizeof what, "worker %s: field %s", id, name);
    return ctl_want_str(v, buf, cap, what, err);
}

static int want_field_int(redisReply *h, const char *name, long long lo, long long hi,
                          long long *out, const char *id, gn_err *err) {
    redisReply *v = field(h, name);
    if (!v) return gn_errf(err, GN_EFORMAT, "worker %s: field %s is missing", id, name);
    char what[128];
    snprintf(what, sizeof what, "worker %s: field %s", id, name);
    int rc = ctl_parse_ll(v->str, v->len, out, what, err);
    if (!rc && (*out < lo || *out > hi)) rc = gn_errf(err, GN_EFORMAT, "%s out of range", what);
    return rc;
}

/* Parses one worker hash (HGETALL reply, shape unchecked). */
static int parse_worker(redisReply *h, const char *id, gn_ctl_worker *w, gn_err *err) {
    memset(w, 0, sizeof *w);
    for (size_t i = 0; i < h->elements; i++)
        if (h->element[i]->type != REDIS_REPLY_STRING || !h->element[i]->str)
            return gn_errf(err, GN_EFORMAT, "worker %s: hash reply holds a non-string", id);
    if (h->elements % 2) return gn_errf(err, GN_EFORMAT, "worker %s: hash reply of odd length", id);
    memcpy(w->id, id, strlen(id) + 1);
    char kind[16], arms[GN_CTL_WORKER_MAX_ARMS * GN_CTL_REF_MAX];
    long long cap, load, ms;
    int rc;
    if ((rc = want_field_str(h, "kind", kind, sizeof kind, id, err)) ||
        (rc = want_field_str(h, "endpoint", w->endpoint, sizeof w->endpoint, id, err)) ||
        (rc = want_field_str(h, "arms", arms, sizeof arms, id, err)) ||
        (rc = want_field_int(h, "capacity", 0, 1 << 30, &cap, id, err)) ||
        (rc = want_field_int(h, "load", 0, 1 << 30, &load, id, err)) ||
        (rc = want_field_int(h, "updated_ms", 0, (long long)1 << 60, &ms, id, err)))
        return rc;
    if (strcmp(kind, "base") == 0) w->kind = GN_CTL_WORKER_BASE;
    else if (strcmp(kind, "reward") == 0) w->kind = GN_CTL_WORKER_REWARD;
    else return gn_errf(err, GN_EFORMAT, "worker %s: kind \"%.15s\" is neither base nor reward", id, kind);
    if (!endpoint_valid(w->endpoint)) return gn_errf(err, GN_EFORMAT, "worker %s: malformed endpoint", id);
    w->capacity = (int)cap;
    w->load = (int)load;
    w->updated_ms = ms;
    /* host and ipc came later: a record without them reads as "" (none). */
    if (field(h, "host") && (rc = want_field_str(h, "host", w->host, sizeof w->host, id, err))) return rc;
    if (field(h, "ipc") && (rc = want_field_str(h, "ipc", w->ipc, sizeof w->ipc, id, err))) return rc;
    if (!host_valid(w->host)) return gn_errf(err, GN_EFORMAT, "worker %s: malformed host", id);
    if (!ipc_valid(w->ipc)) return gn_errf(err, GN_EFORMAT, "worker %s: malformed ipc endpoint", id);
    char *p = arms;
    while (*p) {
        char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (w->n_arms == GN_CTL_WORKER_MAX_ARMS || n == 0 || n >= GN_CTL_REF_MAX)
            return gn_errf(err, GN_EFORMAT, "worker %s: malformed ARM list", id);
        memcpy(w->arms[w->n_arms], p, n);
        w->arms[w->n_arms][n] = 0;
        if (!ref_valid(w->arms[w->n_arms]))
            return gn_errf(err, GN_EFORMAT, "worker %s: ARM \"%.130s\" is not name@version", id,
                           w->arms[w->n_arms]);
        w->n_arms++;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

int gn_ctl_worker_list(gn_ctl *c, gn_ctl_worker **out, size_t *n, gn_err *err) {
    *out = NULL;
    *n = 0;
    redisReply *r = ctl_cmd(c, err, "SMEMBERS", "genarm:workers", NULL);
    if (!r) return CTL_RC(c);
    char **ids = NULL;
    size_t nid = 0;
    int rc = ctl_reply_strv(r, &ids, &nid, "worker list", err);
    freeReplyObject(r);
    if (rc) return rc;
    gn_ctl_worker *w = nid ? gn_calloc(nid, sizeof *w) : NULL;
    if (nid && !w) rc = gn_errf(err, GN_ENOMEM, "worker list: out of memory");
    size_t live = 0;
    for (size_t i = 0; !rc && i < nid; i++) {
        char key[128];
        if (!gn_ctl_id_valid(ids[i])) {
            rc = gn_errf(err, GN_EFORMAT, "worker list: redis holds an invalid worker id");
            break;
        }
        if ((rc = ctl_key(key, sizeof key, err, "genarm:worker:%s", ids[i]))) break;
        redisReply *h = ctl_cmd(c, err, "HGETALL", key, NULL);
        if (!h) {
            rc = CTL_RC(c);
            break;
        }
        if ((rc = ctl_want_array(h, 0, "worker list", err)) == 0) {
            if (h->elements == 0) { /* TTL expired: prune the index */
                redisReply *s = ctl_cmd(c, err, "SREM", "genarm:workers", ids[i], NULL);
                if (!s) rc = CTL_RC(c);
                else freeReplyObject(s);
            } else if ((rc = parse_worker(h, ids[i], &w[live], err)) == 0) {
                live++;
            }
        }
        freeReplyObject(h);
    }
    gn_ctl_strv_free(ids, nid);
    if (rc || live == 0) {
        gn_free(w);
        return rc;
    }
    *out = w;
    *n = live;
    return 0;
}

int gn_ctl_worker_find_arm(gn_ctl *c, const char *arm, const char *version, gn_ctl_worker *out,
                           gn_err *err) {
    memset(out, 0, sizeof *out);
    int rc = ctl_check_id(arm, "ARM name", err);
    if (rc || (rc = ctl_check_id(version, "ARM version", err))) return rc;
    char ref[GN_CTL_REF_MAX];
    snprintf(ref, sizeof ref, "%s@%s", arm, version);
    gn_ctl_worker *w = NULL;
    size_t n = 0;
    if ((rc = gn_ctl_worker_list(c, &w, &n, err))) return rc;
    long best = -1;
    double best_load = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i].kind != GN_CTL_WORKER_REWARD) continue;
        int holds = 0;
        for (int j = 0; j < w[i].n_arms && !holds; j++) holds = strcmp(w[i].arms[j], ref) == 0;
        if (!holds) continue;
        double l = w[i].capacity > 0 ? (double)w[i].load / w[i].capacity : 1e30;
        if (best < 0 || l < best_load) {
            best = (long)i;
            best_load = l;
        }
    }
    if (best >= 0) *out = w[best];
    gn_free(w);
    if (best < 0) return gn_errf(err, GN_ENOTFOUND, "no live reward worker holds ARM %s", ref);
    return 0;
}
