/* ctl_arm.c — the base tokenizer record, the ARM registry (versions, the
 * "current" pointer, promote = hot-swap, retire) and the swap stream. */
#include <stdio.h>
#include <string.h>

#include "ctl_internal.h"
#include "gn_alloc.h"

static int hash_valid(const char *h) {
    if (!h || strlen(h) != 64) return 0;
    for (; *h; h++)
        if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f'))) return 0;
    return 1;
}

static int path_valid(const char *p) {
    if (!p || !*p || strlen(p) >= GN_CTL_PATH_MAX) return 0;
    for (; *p; p++)
        if ((unsigned char)*p < 0x20) return 0;
    return 1;
}

/* Finds field `name` in a flat HGETALL-style array; NULL when absent. The
 * array must already be checked by hash_shape_ok. */
static redisReply *hfield(redisReply *arr, const char *name) {
    for (size_t i = 0; i + 1 < arr->elements; i += 2)
        if (arr->element[i]->len == strlen(name) && memcmp(arr->element[i]->str, name, arr->element[i]->len) == 0)
            return arr->element[i + 1];
    return NULL;
}

static int hash_shape_ok(redisReply *r, const char *what, gn_err *err) {
    int rc = ctl_want_array(r, 0, what, err);
    if (rc) return rc;
    if (r->elements % 2) return gn_errf(err, GN_EFORMAT, "%s: field/value reply of odd length", what);
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING || !r->element[i]->str)
            return gn_errf(err, GN_EFORMAT, "%s: field/value reply holds a non-string", what);
    return 0;
}

/* Copies a required string field; GN_EFORMAT when missing/too long. */
static int hget_str(redisReply *arr, const char *field, char *buf, size_t cap, const char *what,
                    gn_err *err) {
    redisReply *v = hfield(arr, field);
    if (!v) return gn_errf(err, GN_EFORMAT, "%s: field %s is missing", what, field);
    char label[160];
    snprintf(label, sizeof label, "%s: field %s", what, field);
    return ctl_want_str(v, buf, cap, label, err);
}

static int hget_ll(redisReply *arr, const char *field, long long *out, const char *what, gn_err *err) {
    redisReply *v = hfield(arr, field);
    if (!v) return gn_errf(err, GN_EFORMAT, "%s: field %s is missing", what, field);
    char label[160];
    snprintf(label, sizeof label, "%s: field %s", what, field);
    return ctl_parse_ll(v->str, v->len, out, label, err);
}

/* ---------------------------------------------------------------- base */

int gn_ctl_base_set(gn_ctl *c, const char *path, const char *tokenizer_hash, gn_err *err) {
    if (!path_valid(path)) return gn_errf(err, GN_EINVAL, "base: bad path");
    if (!hash_valid(tokenizer_hash))
        return gn_errf(err, GN_EINVAL, "base: tokenizer hash must be 64 lower-case hex chars");
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    redisReply *r = ctl_cmd(c, err, "HSET", "genarm:base", "path", path, "tokenizer_hash",
                            tokenizer_hash, "updated_ms", ms, NULL);
    if (!r) return CTL_RC(c);
    long long n;
    int rc = ctl_want_int(r, &n, "base set", err);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_base_get(gn_ctl *c, char path[GN_CTL_PATH_MAX], char hash[GN_CTL_HASH_HEX], gn_err *err) {
    redisReply *r = ctl_cmd(c, err, "HGETALL", "genarm:base", NULL);
    if (!r) return CTL_RC(c);
    int rc = hash_shape_ok(r, "base", err);
    char p[GN_CTL_PATH_MAX], h[GN_CTL_HASH_HEX];
    if (!rc && r->elements == 0) rc = gn_errf(err, GN_ENOTFOUND, "no base model recorded");
    if (!rc) rc = hget_str(r, "path", p, sizeof p, "base", err);
    if (!rc) rc = hget_str(r, "tokenizer_hash", h, sizeof h, "base", err);
    if (!rc && !hash_valid(h)) rc = gn_errf(err, GN_EFORMAT, "base: stored tokenizer hash is malformed");
    freeReplyObject(r);
    if (rc) return rc;
    if (path) memcpy(path, p, strlen(p) + 1);
    if (hash) memcpy(hash, h, sizeof h);
    return 0;
}

/* ---------------------------------------------------------------- ARM registry */

struct arm_keys {
    char arm[128], versions[128], ver[256];
};

static int arm_keys(struct arm_keys *k, const char *name, const char *version, gn_err *err) {
    int rc = ctl_check_id(name, "ARM name", err);
    if (rc) return rc;
    if (version && (rc = ctl_check_id(version, "ARM version", err))) return rc;
    if ((rc = ctl_key(k->arm, sizeof k->arm, err, "genarm:arm:%s", name)) ||
        (rc = ctl_key(k->versions, sizeof k->versions, err, "genarm:arm:%s:versions", name)))
        return rc;
    k->ver[0] = 0;
    if (version) return ctl_key(k->ver, sizeof k->ver, err, "genarm:arm:%s:v:%s", name, version);
    return 0;
}

static const char LUA_ARM_REGISTER[] =
    "local bh = redis.call('HGET', KEYS[5], 'tokenizer_hash')\n"
    "if bh and bh ~= ARGV[4] then\n"
    "  return redis.error_reply('MISMATCH ARM ' .. ARGV[1] .. '@' .. ARGV[2] .. ': tokenizer hash ' ..\n"
    "    ARGV[4] .. ' differs from the base model tokenizer ' .. bh)\n"
    "end\n"
    "if redis.call('ZSCORE', KEYS[3], ARGV[2]) then\n"
    "  return redis.error_reply('INVAL ARM ' .. ARGV[1] .. ' version ' .. ARGV[2] .. ' is already registered')\n"
    "end\n"
    "local cur = redis.call('HGET', KEYS[2], 'current')\n"
    "if cur and cur ~= '' then\n"
    "  local ch = redis.call('HGET', KEYS[2] .. ':v:' .. cur, 'tokenizer_hash')\n"
    "  if ch and ch ~= ARGV[4] then\n"
    "    return redis.error_reply('MISMATCH ARM ' .. ARGV[1] .. '@' .. ARGV[2] .. ': tokenizer hash differs from the current version ' .. cur)\n"
    "  end\n"
    "end\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])\n"
    "redis.call('HSET', KEYS[4], 'path', ARGV[3], 'tokenizer_hash', ARGV[4], 'created_ms', ARGV[5])\n"
    "redis.call('HSETNX', KEYS[2], 'created_ms', ARGV[5])\n"
    "if not cur or cur == '' then\n"
    "  redis.call('HSET', KEYS[2], 'current', ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

int gn_ctl_arm_register(gn_ctl *c, const char *name, const char *version, const char *path,
                        const char *tokenizer_hash, gn_err *err) {
    struct arm_keys k;
    int rc = arm_keys(&k, name, version, err);
    if (rc) return rc;
    if (!path_valid(path)) return gn_errf(err, GN_EINVAL, "ARM %s@%s: bad path", name, version);
    if (!hash_valid(tokenizer_hash))
        return gn_errf(err, GN_EINVAL, "ARM %s@%s: tokenizer hash must be 64 lower-case hex chars", name, version);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_ARM_REGISTER, "5", "genarm:arms", k.arm, k.versions,
                            k.ver, "genarm:base", name, version, path, tokenizer_hash, ms, NULL);
    if (!r) return CTL_RC(c);
    long long cur;
    rc = ctl_want_int(r, &cur, "arm register", err);
    freeReplyObject(r);
    return rc;
}

static const char LUA_ARM_PROMOTE[] =
    "if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then\n"
    "  return redis.error_reply('NOTFOUND ARM ' .. ARGV[1] .. ' has no version ' .. ARGV[2])\n"
    "end\n"
    "local prev = redis.call('HGET', KEYS[1], 'current') or ''\n"
    "if prev == ARGV[2] then return {prev, ''} end\n"
    "redis.call('HSET', KEYS[1], 'current', ARGV[2])\n"
    "local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', 'cmd', 'swap', 'arm', ARGV[1],\n"
    "  'version', ARGV[2], 'previous', prev, 'ts_ms', ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[3], cjson.encode({cmd='swap', arm=ARGV[1], version=ARGV[2],\n"
    "  previous=prev, id=id}))\n"
    "return {prev, id}\n";

int gn_ctl_arm_promote(gn_ctl *c, const char *name, const char *version, char *previous_out,
                       gn_err *err) {
    if (previous_out) previous_out[0] = 0;
    struct arm_keys k;
    int rc = arm_keys(&k, name, version, err);
    if (rc) return rc;
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_ARM_PROMOTE, "3", k.arm, k.versions, "genarm:swaps",
                            name, version, ms, NULL);
    if (!r) return CTL_RC(c);
    char prev[GN_CTL_ID_MAX];
    rc = ctl_want_array(r, 2, "arm promote", err);
    if (!rc) rc = ctl_want_str(r->element[0], prev, sizeof prev, "arm promote: previous", err);
    freeReplyObject(r);
    if (!rc && previous_out) memcpy(previous_out, prev, strlen(prev) + 1);
    return rc;
}

static const char LUA_ARM_RETIRE[] =
    "if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then\n"
    "  return redis.error_reply('NOTFOUND ARM ' .. ARGV[1] .. ' has no version ' .. ARGV[2])\n"
    "end\n"
    "if redis.call('HGET', KEYS[1], 'current') == ARGV[2] then\n"
    "  return redis.error_reply('INVAL ARM ' .. ARGV[1] .. ' version ' .. ARGV[2] ..\n"
    "    ' is the current version; promote another version first')\n"
    "end\n"
    "redis.call('ZREM', KEYS[2], ARGV[2])\n"
    "redis.call('DEL', KEYS[3])\n"
    "return 1\n";

int gn_ctl_arm_retire(gn_ctl *c, const char *name, const char *version, gn_err *err) {
    struct arm_keys k;
    int rc = arm_keys(&k, name, version, err);
    if (rc) return rc;
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_ARM_RETIRE, "3", k.arm, k.versions, k.ver, name,
                            version, NULL);
    if (!r) return CTL_RC(c);
    long long one;
    rc = ctl_want_int(r, &one, "arm retire", err);
    freeReplyObject(r);
    return rc;
}

/* Reads the current-version pointer into cur ("" when none). */
static int arm_current(gn_ctl *c, const char *name, const char *k_arm, char cur[GN_CTL_ID_MAX],
                       int *exists, gn_err *err) {
    cur[0] = 0;
    *exists = 0;
    redisReply *r = ctl_cmd(c, err, "HGETALL", k_arm, NULL);
    if (!r) return CTL_RC(c);
    char what[128];
    snprintf(what, sizeof what, "ARM %s", name);
    int rc = hash_shape_ok(r, what, err);
    if (!rc && r->elements > 0) {
        *exists = 1;
        redisReply *v = hfield(r, "current");
        if (v) rc = ctl_want_str(v, cur, GN_CTL_ID_MAX, what, err);
        if (!rc && cur[0] && !gn_ctl_id_valid(cur))
            rc = gn_errf(err, GN_EFORMAT, "%s: stored current version is not a valid identifier", what);
    }
    freeReplyObject(r);
    return rc;
}

static int read_version(gn_ctl *c, const char *name, const char *version, gn_ctl_arm_version *out,
                        gn_err *err) {
    memset(out, 0, sizeof *out);
    struct arm_keys k;
    int rc = arm_keys(&k, name, version, err);
    if (rc) return rc;
    redisReply *r = ctl_cmd(c, err, "HGETALL", k.ver, NULL);
    if (!r) return CTL_RC(c);
    char what[200];
    snprintf(what, sizeof what, "ARM %s@%s", name, version);
    rc = hash_shape_ok(r, what, err);
    long long created = 0;
    if (!rc && r->elements == 0) rc = gn_errf(err, GN_ENOTFOUND, "ARM %s has no version %s", name, version);
    if (!rc) rc = hget_str(r, "path", out->path, sizeof out->path, what, err);
    if (!rc) rc = hget_str(r, "tokenizer_hash", out->tokenizer_hash, sizeof out->tokenizer_hash, what, err);
    if (!rc) rc = hget_ll(r, "created_ms", &created, what, err);
    if (!rc && !hash_valid(out->tokenizer_hash))
        rc = gn_errf(err, GN_EFORMAT, "%s: stored tokenizer hash is malformed", what);
    if (!rc && !path_valid(out->path)) rc = gn_errf(err, GN_EFORMAT, "%s: stored path is malformed", what);
    freeReplyObject(r);
    if (rc) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    memcpy(out->version, version, strlen(version) + 1);
    out->created_ms = created;
    return 0;
}

int gn_ctl_arm_current(gn_ctl *c, const char *name, char *version, gn_err *err) {
    version[0] = 0;
    struct arm_keys k;
    int rc = arm_keys(&k, name, NULL, err);
    if (rc) return rc;
    int exists = 0;
    if ((rc = arm_current(c, name, k.arm, version, &exists, err)) != 0) return rc;
    if (!exists) return gn_errf(err, GN_ENOTFOUND, "ARM %s is not registered", name);
    if (!version[0]) return gn_errf(err, GN_ENOTFOUND, "ARM %s has no current version", name);
    return 0;
}

int gn_ctl_arm_get(gn_ctl *c, const char *name, const char *version, gn_ctl_arm_version *out,
                   gn_err *err) {
    memset(out, 0, sizeof *out);
    struct arm_keys k;
    int rc = arm_keys(&k, name, NULL, err);
    if (rc) return rc;
    char cur[GN_CTL_ID_MAX];
    if (!version || !*version) {
        if ((rc = gn_ctl_arm_current(c, name, cur, err)) != 0) return rc;
        version = cur;
    }
    return read_version(c, name, version, out, err);
}

void gn_ctl_arm_list_free(gn_ctl_arm_info *arms, size_t n) {
    if (!arms) return;
    for (size_t i = 0; i < n; i++) gn_free(arms[i].versions);
    gn_free(arms);
}

static int list_one(gn_ctl *c, const char *name, gn_ctl_arm_info *a, gn_err *err) {
    struct arm_keys k;
    int rc = arm_keys(&k, name, NULL, err);
    if (rc) return rc;
    memcpy(a->name, name, strlen(name) + 1);
    int exists;
    if ((rc = arm_current(c, name, k.arm, a->current, &exists, err)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "ZRANGE", k.versions, "0", "-1", NULL);
    if (!r) return CTL_RC(c);
    rc = ctl_want_array(r, 0, "arm list: versions", err);
    /* ZRANGE order (by creation time) is kept: do not use the sorting helper. */
    if (!rc && r->elements) {
        a->versions = gn_calloc(r->elements, sizeof *a->versions);
        if (!a->versions) rc = gn_errf(err, GN_ENOMEM, "arm list: out of memory");
    }
    for (size_t i = 0; !rc && i < r->elements; i++) {
        char ver[GN_CTL_ID_MAX];
        rc = ctl_want_str(r->element[i], ver, sizeof ver, "arm list: version", err);
        if (!rc && !gn_ctl_id_valid(ver))
            rc = gn_errf(err, GN_EFORMAT, "ARM %s: stored version name is not a valid identifier", name);
        if (!rc) rc = read_version(c, name, ver, &a->versions[i], err);
        if (!rc) a->n_versions = i + 1;
    }
    freeReplyObject(r);
    return rc;
}

int gn_ctl_arm_list(gn_ctl *c, gn_ctl_arm_info **arms, size_t *n, gn_err *err) {
    *arms = NULL;
    *n = 0;
    redisReply *r = ctl_cmd(c, err, "SMEMBERS", "genarm:arms", NULL);
    if (!r) return CTL_RC(c);
    char **names = NULL;
    size_t nn = 0;
    int rc = ctl_reply_strv(r, &names, &nn, "arm list", err);
    freeReplyObject(r);
    if (rc) return rc;
    gn_ctl_arm_info *a = gn_calloc(nn ? nn : 1, sizeof *a);
    if (!a) rc = gn_errf(err, GN_ENOMEM, "arm list: out of memory");
    for (size_t i = 0; !rc && i < nn; i++) {
        if (!gn_ctl_id_valid(names[i]))
            rc = gn_errf(err, GN_EFORMAT, "arm list: redis holds an invalid ARM name");
        else
            rc = list_one(c, names[i], &a[i], err);
    }
    gn_ctl_strv_free(names, nn);
    if (rc) {
        gn_ctl_arm_list_free(a, nn);
        return rc;
    }
    *arms = a;
    *n = nn;
    return 0;
}

/* ---------------------------------------------------------------- swap stream */

/* Parses one stream entry [id, [field, value, ...]] into a swap. */
static int parse_swap(redisReply *e, gn_ctl_swap *out, gn_err *err) {
    int rc = ctl_want_array(e, 2, "swap entry", err);
    if (rc) return rc;
    if ((rc = ctl_want_str(e->element[0], out->id, sizeof out->id, "swap entry id", err))) return rc;
    redisReply *f = e->element[1];
    if ((rc = hash_shape_ok(f, "swap entry", err))) return rc;
    long long ts = 0;
    if ((rc = hget_str(f, "arm", out->arm, sizeof out->arm, "swap entry", err)) ||
        (rc = hget_str(f, "version", out->version, sizeof out->version, "swap entry", err)) ||
        (rc = hget_str(f, "previous", out->previous, sizeof out->previous, "swap entry", err)) ||
        (rc = hget_ll(f, "ts_ms", &ts, "swap entry", err)))
        return rc;
    if (!gn_ctl_id_valid(out->arm) || !gn_ctl_id_valid(out->version) ||
        (out->previous[0] && !gn_ctl_id_valid(out->previous)))
        return gn_errf(err, GN_EFORMAT, "swap entry %s: invalid identifiers", out->id);
    out->ts_ms = ts;
    return 0;
}

int gn_ctl_swap_next(gn_ctl *c, const char *after_id_in, int block_ms, gn_ctl_swap *out, gn_err *err) {
    char after_id[GN_CTL_STREAM_ID_MAX]; /* copied first: after_id_in may be out->id */
    if (!after_id_in || !*after_id_in || strlen(after_id_in) >= sizeof after_id) {
        memset(out, 0, sizeof *out);
        return gn_errf(err, GN_EINVAL, "swap next: bad stream id");
    }
    memcpy(after_id, after_id_in, strlen(after_id_in) + 1);
    memset(out, 0, sizeof *out);
    if (block_ms < 0) return gn_errf(err, GN_EINVAL, "swap next: block_ms < 0");
    char blk[32];
    snprintf(blk, sizeof blk, "%d", block_ms);
    const char *argv[] = {"XREAD", "COUNT", "1", "BLOCK", blk, "STREAMS", "genarm:swaps", after_id};
    const char *argv_nb[] = {"XREAD", "COUNT", "1", "STREAMS", "genarm:swaps", after_id};
    size_t lens[8];
    int argc = block_ms > 0 ? 8 : 6;
    const char **av = block_ms > 0 ? argv : argv_nb;
    for (int i = 0; i < argc; i++) lens[i] = strlen(av[i]);
    redisReply *r = ctl_cmdv(c, err, block_ms, argc, av, lens);
    if (!r) return CTL_RC(c);
    int rc = 0;
    if (r->type == REDIS_REPLY_NIL) {
        rc = 0;
    } else if ((rc = ctl_want_array(r, 1, "swap next", err)) == 0 &&
               (rc = ctl_want_array(r->element[0], 2, "swap next: stream", err)) == 0 &&
               (rc = ctl_want_array(r->element[0]->element[1], 0, "swap next: entries", err)) == 0) {
        redisReply *entries = r->element[0]->element[1];
        rc = entries->elements ? parse_swap(entries->element[0], out, err) : 0;
        if (rc == 0 && entries->elements) rc = 1;
    }
    freeReplyObject(r);
    if (rc < 0) memset(out, 0, sizeof *out);
    return rc;
}

/* ---------------------------------------------------------------- swap reports */

#define SWAP_REPORTS "genarm:swap_reports"

int gn_ctl_swap_report_push(gn_ctl *c, const char *worker, const char *arm, const char *version, int64_t swap_ms,
                            gn_err *err) {
    if (!gn_ctl_id_valid(worker) || !gn_ctl_id_valid(arm) || !gn_ctl_id_valid(version) || swap_ms < 0)
        return gn_errf(err, GN_EINVAL, "swap report: invalid worker, ARM, version or duration");
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)swap_ms);
    redisReply *r = ctl_cmd(c, err, "XADD", SWAP_REPORTS, "MAXLEN", "~", "10000", "*", "worker", worker, "arm", arm,
                            "version", version, "swap_ms", ms, NULL);
    if (!r) return CTL_RC(c);
    int rc = r->type == REDIS_REPLY_STRING ? 0 : gn_errf(err, GN_EFORMAT, "swap report: unexpected reply");
    freeReplyObject(r);
    return rc;
}

int gn_ctl_swap_report_next(gn_ctl *c, const char *after_id_in, gn_ctl_swap_report *out, gn_err *err) {
    char after_id[GN_CTL_STREAM_ID_MAX]; /* copied first: after_id_in may be out->id */
    if (!after_id_in || !*after_id_in || strlen(after_id_in) >= sizeof after_id) {
        memset(out, 0, sizeof *out);
        return gn_errf(err, GN_EINVAL, "swap report next: bad stream id");
    }
    memcpy(after_id, after_id_in, strlen(after_id_in) + 1);
    memset(out, 0, sizeof *out);
    redisReply *r = ctl_cmd(c, err, "XREAD", "COUNT", "1", "STREAMS", SWAP_REPORTS, after_id, NULL);
    if (!r) return CTL_RC(c);
    int rc = 0;
    if (r->type != REDIS_REPLY_NIL && (rc = ctl_want_array(r, 1, "swap report", err)) == 0 &&
        (rc = ctl_want_array(r->element[0], 2, "swap report: stream", err)) == 0 &&
        (rc = ctl_want_array(r->element[0]->element[1], 0, "swap report: entries", err)) == 0 &&
        r->element[0]->element[1]->elements > 0) {
        redisReply *e = r->element[0]->element[1]->element[0];
        long long ms = -1;
        if ((rc = ctl_want_array(e, 2, "swap report entry", err)) == 0 &&
            (rc = ctl_want_str(e->element[0], out->id, sizeof out->id, "swap report id", err)) == 0 &&
            (rc = hash_shape_ok(e->element[1], "swap report", err)) == 0 &&
            (rc = hget_str(e->element[1], "worker", out->worker, sizeof out->worker, "swap report", err)) == 0 &&
            (rc = hget_str(e->element[1], "arm", out->arm, sizeof out->arm, "swap report", err)) == 0 &&
            (rc = hget_str(e->element[1], "version", out->version, sizeof out->version, "swap report", err)) == 0 &&
            (rc = hget_ll(e->element[1], "swap_ms", &ms, "swap report", err)) == 0) {
            if (ms < 0 || !gn_ctl_id_valid(out->worker) || !gn_ctl_id_valid(out->arm) ||
                !gn_ctl_id_valid(out->version))
                rc = gn_errf(err, GN_EFORMAT, "swap report %s: invalid fields", out->id);
            else {
                out->swap_ms = ms;
                rc = 1;
            }
        }
    }
    freeReplyObject(r);
    if (rc < 0) {
        char id[GN_CTL_STREAM_ID_MAX];
        memcpy(id, out->id, sizeof id);
        memset(out, 0, sizeof *out);
        memcpy(out->id, id, sizeof id); /* a bad entry can still be skipped */
    }
    return rc;
}
