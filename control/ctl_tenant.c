/* ctl_tenant.c — tenants, hashed API keys and per-tenant preference profiles. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl_internal.h"
#include "gn_alloc.h"
#include "sha256.h"

/* ---------------------------------------------------------------- tenants */

static const char LUA_TENANT_ADD[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then\n"
    "  return redis.error_reply('INVAL tenant ' .. ARGV[1] .. ' already exists')\n"
    "end\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "redis.call('HSET', KEYS[2], 'name', ARGV[2], 'created_ms', ARGV[3])\n"
    "return 1\n";

int gn_ctl_tenant_add(gn_ctl *c, const char *id, const char *display_name, gn_err *err) {
    int rc = ctl_check_id(id, "tenant", err);
    if (rc) return rc;
    char k_tenant[128], ms[32];
    if ((rc = ctl_key(k_tenant, sizeof k_tenant, err, "genarm:tenant:%s", id)) != 0) return rc;
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_TENANT_ADD, "2", "genarm:tenants", k_tenant, id,
                            display_name ? display_name : id, ms, NULL);
    if (!r) return CTL_RC(c);
    long long one = 0;
    rc = ctl_want_int(r, &one, "tenant add", err);
    freeReplyObject(r);
    return rc;
}

static const char LUA_TENANT_DEL[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then\n"
    "  return redis.error_reply('NOTFOUND tenant ' .. ARGV[1] .. ' does not exist')\n"
    "end\n"
    "local keys = redis.call('SMEMBERS', KEYS[3])\n"
    "for _, h in ipairs(keys) do redis.call('DEL', 'genarm:apikey:' .. h) end\n"
    "redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])\n"
    "redis.call('SREM', KEYS[1], ARGV[1])\n"
    "return #keys\n";

int gn_ctl_tenant_del(gn_ctl *c, const char *id, gn_err *err) {
    int rc = ctl_check_id(id, "tenant", err);
    if (rc) return rc;
    char k_t[128], k_keys[128], k_prof[128];
    if ((rc = ctl_key(k_t, sizeof k_t, err, "genarm:tenant:%s", id)) ||
        (rc = ctl_key(k_keys, sizeof k_keys, err, "genarm:tenant:%s:keys", id)) ||
        (rc = ctl_key(k_prof, sizeof k_prof, err, "genarm:tenant:%s:profiles", id)))
        return rc;
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_TENANT_DEL, "4", "genarm:tenants", k_t, k_keys,
                            k_prof, id, NULL);
    if (!r) return CTL_RC(c);
    long long n = 0;
    rc = ctl_want_int(r, &n, "tenant del", err);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_tenant_exists(gn_ctl *c, const char *id, gn_err *err) {
    int rc = ctl_check_id(id, "tenant", err);
    if (rc) return rc;
    redisReply *r = ctl_cmd(c, err, "SISMEMBER", "genarm:tenants", id, NULL);
    if (!r) return CTL_RC(c);
    long long v = 0;
    rc = ctl_want_int(r, &v, "tenant exists", err);
    freeReplyObject(r);
    return rc ? rc : (v ? 1 : 0);
}

static int require_tenant(gn_ctl *c, const char *id, gn_err *err) {
    int rc = gn_ctl_tenant_exists(c, id, err);
    if (rc < 0) return rc;
    if (rc == 0) return gn_errf(err, GN_ENOTFOUND, "tenant %s does not exist", id);
    return 0;
}

static int strv_checked(redisReply *r, char ***out, size_t *n, const char *what, gn_err *err) {
    int rc = ctl_reply_strv(r, out, n, what, err);
    for (size_t i = 0; rc == 0 && i < *n; i++) {
        if (!gn_ctl_id_valid((*out)[i])) {
            rc = gn_errf(err, GN_EFORMAT, "%s: redis holds an invalid identifier \"%.60s\"", what, (*out)[i]);
            gn_ctl_strv_free(*out, *n);
            *out = NULL;
            *n = 0;
        }
    }
    return rc;
}

int gn_ctl_tenant_list(gn_ctl *c, char ***ids, size_t *n, gn_err *err) {
    *ids = NULL;
    *n = 0;
    redisReply *r = ctl_cmd(c, err, "SMEMBERS", "genarm:tenants", NULL);
    if (!r) return CTL_RC(c);
    int rc = strv_checked(r, ids, n, "tenant list", err);
    freeReplyObject(r);
    return rc;
}

/* ---------------------------------------------------------------- API keys */

void gn_ctl_key_hash(const char *raw_key, char out[GN_CTL_HASH_HEX]) {
    gn_sha256 s;
    uint8_t d[32];
    gn_sha256_init(&s);
    gn_sha256_update(&s, raw_key, strlen(raw_key));
    gn_sha256_final(&s, d);
    gn_sha256_hex(d, out);
}

static int read_urandom(uint8_t *buf, size_t n, gn_err *err) {
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return gn_errf(err, GN_EIO, "open /dev/urandom failed");
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k <= 0) {
            close(fd);
            return gn_errf(err, GN_EIO, "read /dev/urandom failed");
        }
        got += (size_t)k;
    }
    close(fd);
    return 0;
}

static const char LUA_KEY_CREATE[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then\n"
    "  return redis.error_reply('NOTFOUND tenant ' .. ARGV[1] .. ' does not exist')\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "  return redis.error_reply('INVAL key hash collision')\n"
    "end\n"
    "redis.call('HSET', KEYS[3], 'tenant', ARGV[1], 'created_ms', ARGV[3])\n"
    "redis.call('SADD', KEYS[2], ARGV[2])\n"
    "return 1\n";

int gn_ctl_key_create(gn_ctl *c, const char *tenant, char key_out[GN_CTL_KEY_LEN + 1],
                      char *key_id_out, gn_err *err) {
    key_out[0] = 0;
    int rc = ctl_check_id(tenant, "tenant", err);
    if (rc) return rc;
    uint8_t rnd[32];
    if ((rc = read_urandom(rnd, sizeof rnd, err)) != 0) return rc;
    char key[GN_CTL_KEY_LEN + 1], hex[65], hash[GN_CTL_HASH_HEX];
    gn_sha256_hex(rnd, hex); /* plain hex of the 32 random bytes */
    snprintf(key, sizeof key, "gnk_%s", hex);
    memset(rnd, 0, sizeof rnd);
    gn_ctl_key_hash(key, hash);
    char k_keys[128], k_api[128], ms[32];
    if ((rc = ctl_key(k_keys, sizeof k_keys, err, "genarm:tenant:%s:keys", tenant)) ||
        (rc = ctl_key(k_api, sizeof k_api, err, "genarm:apikey:%s", hash)))
        return rc;
    snprintf(ms, sizeof ms, "%lld", (long long)ctl_now_ms());
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_KEY_CREATE, "3", "genarm:tenants", k_keys, k_api,
                            tenant, hash, ms, NULL);
    if (!r) return CTL_RC(c);
    long long one;
    rc = ctl_want_int(r, &one, "key create", err);
    freeReplyObject(r);
    if (rc) return rc;
    memcpy(key_out, key, sizeof key);
    if (key_id_out) {
        memcpy(key_id_out, hash, GN_CTL_KEY_ID_LEN);
        key_id_out[GN_CTL_KEY_ID_LEN] = 0;
    }
    return 0;
}

int gn_ctl_key_lookup(gn_ctl *c, const char *raw_key, char tenant_out[GN_CTL_ID_MAX], gn_err *err) {
    tenant_out[0] = 0;
    if (!raw_key || !*raw_key || strlen(raw_key) > 256)
        return gn_errf(err, GN_ENOTFOUND, "unknown API key");
    char hash[GN_CTL_HASH_HEX], k_api[128];
    gn_ctl_key_hash(raw_key, hash);
    int rc = ctl_key(k_api, sizeof k_api, err, "genarm:apikey:%s", hash);
    if (rc) return rc;
    redisReply *r = ctl_cmd(c, err, "HGET", k_api, "tenant", NULL);
    if (!r) return CTL_RC(c);
    if (r->type == REDIS_REPLY_NIL) {
        rc = gn_errf(err, GN_ENOTFOUND, "unknown API key");
    } else if ((rc = ctl_want_str(r, tenant_out, GN_CTL_ID_MAX, "key lookup", err)) == 0 &&
               !gn_ctl_id_valid(tenant_out)) {
        rc = gn_errf(err, GN_EFORMAT, "key lookup: redis holds an invalid tenant id for this key");
        tenant_out[0] = 0;
    }
    freeReplyObject(r);
    return rc;
}

static int is_hex(const char *s) {
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

int gn_ctl_key_list(gn_ctl *c, const char *tenant, char ***key_ids, size_t *n, gn_err *err) {
    *key_ids = NULL;
    *n = 0;
    int rc = require_tenant(c, tenant, err);
    if (rc) return rc;
    char k_keys[128];
    if ((rc = ctl_key(k_keys, sizeof k_keys, err, "genarm:tenant:%s:keys", tenant)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "SMEMBERS", k_keys, NULL);
    if (!r) return CTL_RC(c);
    rc = ctl_reply_strv(r, key_ids, n, "key list", err);
    freeReplyObject(r);
    for (size_t i = 0; rc == 0 && i < *n; i++) {
        char *h = (*key_ids)[i];
        if (strlen(h) != 64 || !is_hex(h)) {
            rc = gn_errf(err, GN_EFORMAT, "key list: tenant %s holds a malformed key hash", tenant);
            gn_ctl_strv_free(*key_ids, *n);
            *key_ids = NULL;
            *n = 0;
        } else {
            h[GN_CTL_KEY_ID_LEN] = 0;
        }
    }
    return rc;
}

static const char LUA_KEY_REVOKE[] =
    "if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then\n"
    "  return redis.error_reply('NOTFOUND no such key for this tenant')\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "return 1\n";

int gn_ctl_key_revoke(gn_ctl *c, const char *tenant, const char *key_or_id, gn_err *err) {
    int rc = require_tenant(c, tenant, err);
    if (rc) return rc;
    if (!key_or_id || !*key_or_id) return gn_errf(err, GN_EINVAL, "key revoke: empty key");
    char hash[GN_CTL_HASH_HEX] = "";
    char k_keys[128], k_api[128];
    if ((rc = ctl_key(k_keys, sizeof k_keys, err, "genarm:tenant:%s:keys", tenant)) != 0) return rc;
    if (strncmp(key_or_id, "gnk_", 4) == 0) {
        gn_ctl_key_hash(key_or_id, hash);
    } else {
        size_t plen = strlen(key_or_id);
        if (plen < 8 || plen > 64 || !is_hex(key_or_id))
            return gn_errf(err, GN_EINVAL, "key revoke: \"%.80s\" is neither a key (gnk_...) nor a key id (hex)", key_or_id);
        char **v = NULL;
        size_t n = 0;
        redisReply *r = ctl_cmd(c, err, "SMEMBERS", k_keys, NULL);
        if (!r) return CTL_RC(c);
        rc = ctl_reply_strv(r, &v, &n, "key revoke", err);
        freeReplyObject(r);
        if (rc) return rc;
        int matches = 0;
        for (size_t i = 0; i < n; i++) {
            if (strncmp(v[i], key_or_id, plen) == 0 && strlen(v[i]) == 64) {
                if (!matches) memcpy(hash, v[i], 65);
                matches++;
            }
        }
        gn_ctl_strv_free(v, n);
        if (matches == 0) return gn_errf(err, GN_ENOTFOUND, "key revoke: tenant %s has no key %s", tenant, key_or_id);
        if (matches > 1) return gn_errf(err, GN_EINVAL, "key revoke: key id %s is ambiguous", key_or_id);
    }
    if ((rc = ctl_key(k_api, sizeof k_api, err, "genarm:apikey:%s", hash)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "EVAL", LUA_KEY_REVOKE, "2", k_keys, k_api, hash, NULL);
    if (!r) return CTL_RC(c);
    long long one;
    rc = ctl_want_int(r, &one, "key revoke", err);
    freeReplyObject(r);
    return rc;
}

/* ---------------------------------------------------------------- profiles */

static int arm_has_current(gn_ctl *c, const char *arm, gn_err *err) {
    char k_arm[128];
    int rc = ctl_key(k_arm, sizeof k_arm, err, "genarm:arm:%s", arm);
    if (rc) return rc;
    redisReply *r = ctl_cmd(c, err, "HGET", k_arm, "current", NULL);
    if (!r) return CTL_RC(c);
    rc = (r->type == REDIS_REPLY_STRING && r->len > 0) ? 1 : 0;
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)
        rc = gn_errf(err, GN_EFORMAT, "ARM %s: current pointer is not a string", arm);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_profile_set(gn_ctl *c, const char *tenant, const gn_ctl_profile *p, gn_err *err) {
    int rc = ctl_check_id(tenant, "tenant", err);
    if (rc) return rc;
    if ((rc = gn_ctl_profile_validate(p, err)) != 0) return rc;
    if ((rc = require_tenant(c, tenant, err)) != 0) return rc;
    for (int i = 0; i < p->n_arms; i++) {
        rc = arm_has_current(c, p->arms[i].name, err);
        if (rc < 0) return rc;
        if (rc == 0)
            return gn_errf(err, GN_ENOTFOUND, "profile %s: ARM %s is not registered (or has no current version)",
                           p->name, p->arms[i].name);
    }
    char *json = NULL;
    if ((rc = gn_ctl_profile_to_json(p, &json, err)) != 0) return rc;
    char k_prof[128];
    if ((rc = ctl_key(k_prof, sizeof k_prof, err, "genarm:tenant:%s:profiles", tenant)) != 0) {
        gn_free(json);
        return rc;
    }
    redisReply *r = ctl_cmd(c, err, "HSET", k_prof, p->name, json, NULL);
    gn_free(json);
    if (!r) return CTL_RC(c);
    long long added;
    rc = ctl_want_int(r, &added, "profile set", err);
    freeReplyObject(r);
    return rc;
}

int gn_ctl_profile_get(gn_ctl *c, const char *tenant, const char *name, gn_ctl_profile *out,
                       gn_err *err) {
    gn_ctl_profile_init(out);
    int rc = ctl_check_id(tenant, "tenant", err);
    if (rc || (rc = ctl_check_id(name, "profile", err))) return rc;
    char k_prof[128];
    if ((rc = ctl_key(k_prof, sizeof k_prof, err, "genarm:tenant:%s:profiles", tenant)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "HGET", k_prof, name, NULL);
    if (!r) return CTL_RC(c);
    if (r->type == REDIS_REPLY_NIL) {
        rc = gn_errf(err, GN_ENOTFOUND, "tenant %s has no profile %s", tenant, name);
    } else if (r->type != REDIS_REPLY_STRING || !r->str) {
        rc = gn_errf(err, GN_EFORMAT, "profile %s of tenant %s: redis reply is not a string", name, tenant);
    } else {
        rc = gn_ctl_profile_parse(r->str, r->len, out, err);
        if (rc) {
            gn_err_prefix(err, "stored profile %s of tenant %s is malformed: ", name, tenant);
            rc = GN_EFORMAT;
            if (err) err->code = rc;
        } else if (strcmp(out->name, name) != 0) {
            rc = gn_errf(err, GN_EFORMAT, "stored profile %s of tenant %s is malformed: it names itself %s",
                         name, tenant, out->name);
        }
        if (rc) gn_ctl_profile_init(out);
    }
    freeReplyObject(r);
    return rc;
}

int gn_ctl_profile_del(gn_ctl *c, const char *tenant, const char *name, gn_err *err) {
    int rc = ctl_check_id(tenant, "tenant", err);
    if (rc || (rc = ctl_check_id(name, "profile", err))) return rc;
    char k_prof[128];
    if ((rc = ctl_key(k_prof, sizeof k_prof, err, "genarm:tenant:%s:profiles", tenant)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "HDEL", k_prof, name, NULL);
    if (!r) return CTL_RC(c);
    long long n = 0;
    rc = ctl_want_int(r, &n, "profile del", err);
    freeReplyObject(r);
    if (rc == 0 && n == 0) rc = gn_errf(err, GN_ENOTFOUND, "tenant %s has no profile %s", tenant, name);
    return rc;
}

int gn_ctl_profile_list(gn_ctl *c, const char *tenant, char ***names, size_t *n, gn_err *err) {
    *names = NULL;
    *n = 0;
    int rc = require_tenant(c, tenant, err);
    if (rc) return rc;
    char k_prof[128];
    if ((rc = ctl_key(k_prof, sizeof k_prof, err, "genarm:tenant:%s:profiles", tenant)) != 0) return rc;
    redisReply *r = ctl_cmd(c, err, "HKEYS", k_prof, NULL);
    if (!r) return CTL_RC(c);
    rc = strv_checked(r, names, n, "profile list", err);
    freeReplyObject(r);
    return rc;
}
