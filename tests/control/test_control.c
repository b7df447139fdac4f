/* test_control.c — the Redis control plane against a real redis-server:
 * tenants, hashed keys, profiles, the ARM registry, workers, the queue. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "redis_harness.h"

static const char H1[] = "1111111111111111111111111111111111111111111111111111111111111111";
static const char H2[] = "2222222222222222222222222222222222222222222222222222222222222222";

static void raw_ok(redisContext *r, const char *cmd) {
    redisReply *x = redisCommand(r, cmd);
    if (!x || x->type == REDIS_REPLY_ERROR) fprintf(stderr, "raw command failed: %s\n", cmd);
    if (x) freeReplyObject(x);
}

static int contains(char **v, size_t n, const char *s) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0) return 1;
    return 0;
}

static void test_connect(int port) {
    gn_err e = {0};
    int dead = gn_free_port();
    gn_ctl *c = gn_ctl_connect("127.0.0.1", dead, 500, &e);
    CHECK(c == NULL && e.code == GN_EIO, "connect to a closed port: %d %s", e.code, e.msg);
    CHECK(gn_ctl_connect("127.0.0.1", 0, 500, &e) == NULL && e.code == GN_EINVAL, "port 0 refused");
    c = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    CHECK(c != NULL, "connect: %s", e.msg);
    CHECK(gn_ctl_ping(c, &e) == 0, "ping: %s", e.msg);
    gn_ctl_free(c);
    gn_ctl_free(NULL);
}

static void test_ids(void) {
    CHECK(gn_ctl_id_valid("acme-1.prod_x"), "valid id");
    CHECK(!gn_ctl_id_valid(""), "empty id");
    CHECK(!gn_ctl_id_valid("a:b"), "colon refused");
    CHECK(!gn_ctl_id_valid("a b"), "space refused");
    CHECK(!gn_ctl_id_valid("a@b"), "@ refused");
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = 0;
    CHECK(!gn_ctl_id_valid(longid), "65 chars refused");
    longid[64] = 0;
    CHECK(gn_ctl_id_valid(longid), "64 chars accepted");
}

static void test_tenants(gn_ctl *c) {
    gn_err e = {0};
    CHECK(gn_ctl_tenant_add(c, "acme", "Acme Corp", &e) == 0, "add acme: %s", e.msg);
    CHECK(gn_ctl_tenant_add(c, "beta", NULL, &e) == 0, "add beta: %s", e.msg);
    CHECK(gn_ctl_tenant_add(c, "acme", NULL, &e) == GN_EINVAL && strstr(e.msg, "already exists"),
          "duplicate tenant: %s", e.msg);
    CHECK(gn_ctl_tenant_add(c, "bad:id", NULL, &e) == GN_EINVAL, "bad tenant id refused");
    CHECK(gn_ctl_tenant_exists(c, "acme", &e) == 1, "acme exists");
    CHECK(gn_ctl_tenant_exists(c, "nobody", &e) == 0, "nobody does not exist");
    char **v = NULL;
    size_t n = 0;
    CHECK(gn_ctl_tenant_list(c, &v, &n, &e) == 0 && n == 2, "list: %zu", n);
    CHECK(n == 2 && strcmp(v[0], "acme") == 0 && strcmp(v[1], "beta") == 0, "list sorted");
    gn_ctl_strv_free(v, n);
    CHECK(gn_ctl_tenant_del(c, "nobody", &e) == GN_ENOTFOUND, "del unknown: %s", e.msg);
}

/* Every key and every value in the database, as one text blob per item. */
static int db_contains(redisContext *r, const char *needle) {
    int found = 0;
    char cursor[32] = "0";
    do {
        redisReply *s = redisCommand(r, "SCAN %s COUNT 1000", cursor);
        if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2) {
            if (s) freeReplyObject(s);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", s->element[0]->str);
        redisReply *keys = s->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            if (strstr(k, needle)) found = 1;
            redisReply *t = redisCommand(r, "TYPE %s", k);
            const char *cmds[][2] = {{"string", "GET %s"},          {"hash", "HGETALL %s"},
                                     {"set", "SMEMBERS %s"},        {"zset", "ZRANGE %s 0 -1"},
                                     {"list", "LRANGE %s 0 -1"},    {"stream", "XRANGE %s - +"}};
            for (size_t j = 0; t && j < 6; j++) {
                if (strcmp(t->str, cmds[j][0]) != 0) continue;
                redisReply *v = redisCommand(r, cmds[j][1], k);
                /* flatten: check strings two levels deep (streams: 3) */
                if (v && v->type == REDIS_REPLY_STRING && strstr(v->str, needle)) found = 1;
                for (size_t a = 0; v && v->type == REDIS_REPLY_ARRAY && a < v->elements; a++) {
                    redisReply *x = v->element[a];
                    if (x->type == REDIS_REPLY_STRING && strstr(x->str, needle)) found = 1;
                    for (size_t b = 0; x->type == REDIS_REPLY_ARRAY && b < x->elements; b++) {
                        redisReply *y = x->element[b];
                        if (y->type == REDIS_REPLY_STRING && strstr(y->str, needle)) found = 1;
                        for (size_t d = 0; y->type == REDIS_REPLY_ARRAY && d < y->elements; d++)
                            if (y->element[d]->type == REDIS_REPLY_STRING && strstr(y->element[d]->str, needle))
                                found = 1;
                    }
                }
                if (v) freeReplyObject(v);
            }
            if (t) freeReplyObject(t);
        }
        freeReplyObject(s);
    } while (strcmp(cursor, "0") != 0);
    return found;
}

static void test_keys(gn_ctl *c, redisContext *raw) {
    gn_err e = {0};
    char key[GN_CTL_KEY_LEN + 1], kid[GN_CTL_KEY_ID_LEN + 1], key2[GN_CTL_KEY_LEN + 1], kid2[32];
    CHECK(gn_ctl_key_create(c, "acme", key, kid, &e) == 0, "key create: %s", e.msg);
    CHECK(strlen(key) == GN_CTL_KEY_LEN && strncmp(key, "gnk_", 4) == 0, "key format %s", key);
    CHECK(strlen(kid) == GN_CTL_KEY_ID_LEN, "key id length");
    CHECK(gn_ctl_key_create(c, "acme", key2, kid2, &e) == 0, "second key: %s", e.msg);
    CHECK(strcmp(key, key2) != 0, "keys differ");
    char key3[GN_CTL_KEY_LEN + 1];
    CHECK(gn_ctl_key_create(c, "nobody", key3, NULL, &e) == GN_ENOTFOUND && key3[0] == 0,
          "key for unknown tenant: %s", e.msg);
    char bkey[GN_CTL_KEY_LEN + 1];
    CHECK(gn_ctl_key_create(c, "beta", bkey, NULL, &e) == 0, "beta key");

    char t[GN_CTL_ID_MAX];
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == 0 && strcmp(t, "acme") == 0, "lookup -> acme (%s)", e.msg);
    CHECK(gn_ctl_key_lookup(c, bkey, t, &e) == 0 && strcmp(t, "beta") == 0, "lookup -> beta");
    char wrong[GN_CTL_KEY_LEN + 1];
    memcpy(wrong, key, sizeof wrong);
    wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
    CHECK(gn_ctl_key_lookup(c, wrong, t, &e) == GN_ENOTFOUND && t[0] == 0, "wrong key not found");
    CHECK(gn_ctl_key_lookup(c, "", t, &e) == GN_ENOTFOUND, "empty key not found");

    /* The raw key is never stored: not in any key name nor any value. Its hash is. */
    char hash[GN_CTL_HASH_HEX];
    gn_ctl_key_hash(key, hash);
    CHECK(db_contains(raw, key + 4) == 0, "raw key (its random part) appears nowhere in redis");
    CHECK(db_contains(raw, key2 + 4) == 0, "second raw key appears nowhere in redis");
    CHECK(db_contains(raw, hash) == 1, "the hash is what is stored");

    char **ids = NULL;
    size_t n = 0;
    CHECK(gn_ctl_key_list(c, "acme", &ids, &n, &e) == 0 && n == 2, "acme has 2 keys");
    CHECK(contains(ids, n, kid) && contains(ids, n, kid2), "key ids listed");
    gn_ctl_strv_free(ids, n);

    CHECK(gn_ctl_key_revoke(c, "beta", kid, &e) == GN_ENOTFOUND, "beta cannot revoke acme's key: %s", e.msg);
    CHECK(gn_ctl_key_revoke(c, "acme", "xyz", &e) == GN_EINVAL, "junk key id refused");
    CHECK(gn_ctl_key_revoke(c, "acme", kid, &e) == 0, "revoke by id: %s", e.msg);
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == GN_ENOTFOUND, "revoked key not found");
    CHECK(gn_ctl_key_revoke(c, "acme", key2, &e) == 0, "revoke by raw key: %s", e.msg);
    CHECK(gn_ctl_key_lookup(c, key2, t, &e) == GN_ENOTFOUND, "second revoked key not found");
    CHECK(gn_ctl_key_revoke(c, "acme", key2, &e) == GN_ENOTFOUND, "double revoke: not found");
    CHECK(gn_ctl_key_list(c, "acme", &ids, &n, &e) == 0 && n == 0, "acme has no keys left");
    gn_ctl_strv_free(ids, n);
    /* a fresh key for acme survives until the tenant is deleted (test_tenant_del) */
}

static void test_profiles_pure(void) {
    gn_err e = {0};
    gn_ctl_profile p;
    const char *good = "{\"name\":\"helpful\",\"arms\":[{\"name\":\"hh\",\"weight\":1.5},"
                       "{\"name\":\"harmless\",\"weight\":-0.5}],\"beta\":0.5,"
                       "\"defaults\":{\"temperature\":0.7,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"max_tokens\":128}}";
    CHECK(gn_ctl_profile_parse(good, strlen(good), &p, &e) == 0, "good profile: %s", e.msg);
    CHECK(p.n_arms == 2 && p.arms[0].weight == 1.5 && p.arms[1].weight == -0.5 && p.beta == 0.5, "fields");
    CHECK(p.has == (GN_CTL_HAS_TEMPERATURE | GN_CTL_HAS_TOP_P | GN_CTL_HAS_TOP_K | GN_CTL_HAS_MIN_P |
                    GN_CTL_HAS_MAX_TOKENS) && p.top_k == 40 && p.max_tokens == 128, "defaults");
    char *json = NULL;
    CHECK(gn_ctl_profile_to_json(&p, &json, &e) == 0, "to json");
    gn_ctl_profile q;
    CHECK(json && gn_ctl_profile_parse(json, strlen(json), &q, &e) == 0 && memcmp(&p, &q, sizeof p) == 0,
          "round trip");
    gn_free(json);

    struct { const char *json; int code; const char *word; } bad[] = {
        {"{not json", GN_EFORMAT, "invalid JSON"},
        {"[]", GN_EFORMAT, "object"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":0}", GN_EINVAL, "beta"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":-2}", GN_EINVAL, "beta"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}]}", GN_EFORMAT, "beta"},
        {"{\"name\":\"p\",\"arms\":[],\"beta\":1}", GN_EINVAL, "arms"},
        {"{\"name\":\"p\",\"arms\":\"hh\",\"beta\":1}", GN_EFORMAT, "arms"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":\"1\"}],\"beta\":1}", GN_EFORMAT, "weight"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\"}],\"beta\":1}", GN_EFORMAT, "weight"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1},{\"name\":\"a\",\"weight\":2}],\"beta\":1}", GN_EINVAL, "twice"},
        {"{\"name\":\"p:x\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1}", GN_EINVAL, "identifier"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"x\":1}", GN_EFORMAT, "unknown"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"defaults\":{\"top_p\":0}}", GN_EINVAL, "top_p"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"defaults\":{\"temperature\":-1}}", GN_EINVAL, "temperature"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"defaults\":{\"top_k\":1.5}}", GN_EFORMAT, "top_k"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"defaults\":{\"max_tokens\":0}}", GN_EINVAL, "max_tokens"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1,\"defaults\":{\"min_p\":2}}", GN_EINVAL, "min_p"},
        {"{\"name\":\"p\",\"name\":\"q\",\"arms\":[{\"name\":\"a\",\"weight\":1}],\"beta\":1}", GN_EFORMAT, "duplicate"},
        {"{\"name\":\"p\",\"arms\":[{\"name\":\"a\",\"weight\":1e999}],\"beta\":1}", GN_EFORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gn_err_clear(&e);
        int rc = gn_ctl_profile_parse(bad[i].json, strlen(bad[i].json), &p, &e);
        CHECK(rc == bad[i].code && strstr(e.msg, bad[i].word), "bad profile %zu: rc %d msg \"%s\" (want %d, \"%s\")",
              i, rc, e.msg, bad[i].code, bad[i].word);
    }
    gn_ctl_profile_init(&p);
    snprintf(p.name, sizeof p.name, "x");
    p.n_arms = 1;
    snprintf(p.arms[0].name, sizeof p.arms[0].name, "a");
    p.arms[0].weight = NAN;
    CHECK(gn_ctl_profile_validate(&p, &e) == GN_EINVAL && strstr(e.msg, "finite"), "NaN weight: %s", e.msg);
    p.arms[0].weight = INFINITY;
    CHECK(gn_ctl_profile_validate(&p, &e) == GN_EINVAL, "inf weight");
    p.arms[0].weight = 1;
    p.beta = INFINITY;
    CHECK(gn_ctl_profile_validate(&p, &e) == GN_EINVAL && strstr(e.msg, "beta"), "inf beta");
    p.beta = NAN;
    CHECK(gn_ctl_profile_validate(&p, &e) == GN_EINVAL, "NaN beta");
    p.beta = 2;
    CHECK(gn_ctl_profile_validate(&p, &e) == 0, "valid");
    json = NULL;
    p.beta = 0;
    CHECK(gn_ctl_profile_to_json(&p, &json, &e) == GN_EINVAL && json == NULL, "to_json validates");
}

static void make_profile(gn_ctl_profile *p, const char *name, const char *arm, double w, double beta) {
    gn_ctl_profile_init(p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->n_arms = 1;
    snprintf(p->arms[0].name, sizeof p->arms[0].name, "%s", arm);
    p->arms[0].weight = w;
    p->beta = beta;
}

static void test_arms_and_profiles(gn_ctl *c, int port) {
    gn_err e = {0};
    /* registry */
    CHECK(gn_ctl_arm_register(c, "hh", "1", "/models/hh-1", H1, &e) == 0, "register hh@1: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "hh", "2", "/models/hh-2", H1, &e) == 0, "register hh@2: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "hh", "2", "/models/x", H1, &e) == GN_EINVAL && strstr(e.msg, "already"),
          "duplicate version: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "hh", "3", "/models/x", "abc", &e) == GN_EINVAL, "short hash refused");
    CHECK(gn_ctl_arm_register(c, "hh", "3", "/models/x", H2, &e) == GN_EMISMATCH,
          "hash differing from the current version refused: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "bad name", "1", "/x", H1, &e) == GN_EINVAL, "bad ARM name");
    CHECK(gn_ctl_base_set(c, "/models/base", H1, &e) == 0, "base set: %s", e.msg);
    char bh[GN_CTL_HASH_HEX], bp[GN_CTL_PATH_MAX];
    CHECK(gn_ctl_base_get(c, bp, bh, &e) == 0 && strcmp(bh, H1) == 0 && strcmp(bp, "/models/base") == 0, "base get");
    CHECK(gn_ctl_arm_register(c, "other", "1", "/models/o", H2, &e) == GN_EMISMATCH && strstr(e.msg, "base"),
          "ARM with another tokenizer than the base refused: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "harmless", "a", "/models/harmless-a", H1, &e) == 0, "register harmless");

    gn_ctl_arm_version v;
    CHECK(gn_ctl_arm_get(c, "hh", NULL, &v, &e) == 0 && strcmp(v.version, "1") == 0 &&
          strcmp(v.path, "/models/hh-1") == 0 && strcmp(v.tokenizer_hash, H1) == 0 && v.created_ms > 0,
          "first version is current: %s", e.msg);
    CHECK(gn_ctl_arm_get(c, "hh", "2", &v, &e) == 0 && strcmp(v.path, "/models/hh-2") == 0, "get hh@2");
    CHECK(gn_ctl_arm_get(c, "hh", "9", &v, &e) == GN_ENOTFOUND, "unknown version");
    CHECK(gn_ctl_arm_get(c, "nope", NULL, &v, &e) == GN_ENOTFOUND, "unknown ARM: %s", e.msg);

    /* promote publishes on the channel and appends to the stream */
    redisContext *sub = gn_redis_raw();
    redisReply *sr = redisCommand(sub, "SUBSCRIBE genarm:swaps");
    CHECK(sr && sr->type == REDIS_REPLY_ARRAY, "subscribe");
    if (sr) freeReplyObject(sr);
    char prev[GN_CTL_ID_MAX];
    CHECK(gn_ctl_arm_promote(c, "hh", "2", prev, &e) == 0 && strcmp(prev, "1") == 0, "promote hh@2: %s", e.msg);
    void *msg = NULL;
    CHECK(redisGetReply(sub, &msg) == REDIS_OK && msg, "swap message published");
    if (msg) {
        redisReply *m = msg;
        CHECK(m->type == REDIS_REPLY_ARRAY && m->elements == 3 && strstr(m->element[2]->str, "\"version\":\"2\"") &&
              strstr(m->element[2]->str, "\"arm\":\"hh\""), "swap message content");
        freeReplyObject(m);
    }
    redisFree(sub);
    CHECK(gn_ctl_arm_promote(c, "hh", "2", prev, &e) == 0 && strcmp(prev, "2") == 0, "promote again: no-op");
    CHECK(gn_ctl_arm_promote(c, "hh", "7", prev, &e) == GN_ENOTFOUND, "promote unknown version");
    gn_ctl_swap s;
    CHECK(gn_ctl_swap_next(c, "0", 0, &s, &e) == 1 && strcmp(s.arm, "hh") == 0 && strcmp(s.version, "2") == 0 &&
          strcmp(s.previous, "1") == 0 && s.ts_ms > 0, "swap stream entry: %s", e.msg);
    gn_ctl_swap s2;
    CHECK(gn_ctl_swap_next(c, s.id, 0, &s2, &e) == 0, "only one swap (no-op promote published nothing)");
    CHECK(gn_ctl_swap_next(c, s.id, 100, &s2, &e) == 0, "blocking swap read times out");
    /* swap reports: pushed by reward workers, read in order by coordinators; a bad entry is skipped */
    gn_ctl_swap_report rep;
    CHECK(gn_ctl_swap_report_next(c, "0", &rep, &e) == 0, "no reports yet");
    CHECK(gn_ctl_swap_report_push(c, "rw1", "hh", "2", 49, &e) == 0, "report: %s", e.msg);
    CHECK(gn_ctl_swap_report_push(c, "rw1", "bad arm", "2", 49, &e) == GN_EINVAL, "bad ARM name refused");
    CHECK(gn_ctl_swap_report_push(c, "rw1", "hh", "2", -1, &e) == GN_EINVAL, "negative duration refused");
    redisContext *raw = gn_redis_raw();
    redisReply *junk = redisCommand(raw, "XADD genarm:swap_reports * worker rw2 arm hh");
    freeReplyObject(junk);
    redisFree(raw);
    CHECK(gn_ctl_swap_report_push(c, "rw2", "hh", "2", 120, &e) == 0, "second report");
    CHECK(gn_ctl_swap_report_next(c, "0", &rep, &e) == 1 && strcmp(rep.worker, "rw1") == 0 &&
              strcmp(rep.arm, "hh") == 0 && strcmp(rep.version, "2") == 0 && rep.swap_ms == 49,
          "first report: %s", e.msg);
    CHECK(gn_ctl_swap_report_next(c, rep.id, &rep, &e) < 0 && rep.id[0], "the malformed one fails but can be skipped");
    CHECK(gn_ctl_swap_report_next(c, rep.id, &rep, &e) == 1 && strcmp(rep.worker, "rw2") == 0 && rep.swap_ms == 120,
          "then the next one");
    CHECK(gn_ctl_swap_report_next(c, rep.id, &rep, &e) == 0, "and no more");
    CHECK(gn_ctl_arm_get(c, "hh", "", &v, &e) == 0 && strcmp(v.version, "2") == 0, "current is 2");

    /* retire rules */
    CHECK(gn_ctl_arm_retire(c, "hh", "2", &e) == GN_EINVAL && strstr(e.msg, "current"), "retire current refused: %s", e.msg);
    CHECK(gn_ctl_arm_retire(c, "hh", "1", &e) == 0, "retire hh@1: %s", e.msg);
    CHECK(gn_ctl_arm_retire(c, "hh", "1", &e) == GN_ENOTFOUND, "retire twice");
    CHECK(gn_ctl_arm_get(c, "hh", "1", &v, &e) == GN_ENOTFOUND, "retired version gone");
    CHECK(gn_ctl_arm_promote(c, "hh", "1", prev, &e) == GN_ENOTFOUND, "cannot promote a retired version");

    gn_ctl_arm_info *arms = NULL;
    size_t na = 0;
    CHECK(gn_ctl_arm_list(c, &arms, &na, &e) == 0 && na == 2, "arm list: %zu %s", na, e.msg);
    if (na == 2) {
        CHECK(strcmp(arms[0].name, "harmless") == 0 && strcmp(arms[0].current, "a") == 0 && arms[0].n_versions == 1,
              "harmless listed");
        CHECK(strcmp(arms[1].name, "hh") == 0 && strcmp(arms[1].current, "2") == 0 && arms[1].n_versions == 1 &&
              strcmp(arms[1].versions[0].version, "2") == 0, "hh listed");
    }
    gn_ctl_arm_list_free(arms, na);

    /* profiles: registered ARMs only, tenant isolation */
    gn_ctl_profile p, q;
    make_profile(&p, "helpful", "hh", 1.0, 0.5);
    p.has = GN_CTL_HAS_TEMPERATURE | GN_CTL_HAS_MAX_TOKENS;
    p.temperature = 0.7;
    p.max_tokens = 64;
    CHECK(gn_ctl_profile_set(c, "acme", &p, &e) == 0, "profile set: %s", e.msg);
    make_profile(&q, "ghost", "unregistered", 1.0, 1.0);
    CHECK(gn_ctl_profile_set(c, "acme", &q, &e) == GN_ENOTFOUND && strstr(e.msg, "unregistered"),
          "unregistered ARM refused: %s", e.msg);
    make_profile(&q, "badbeta", "hh", 1.0, 0.0);
    CHECK(gn_ctl_profile_set(c, "acme", &q, &e) == GN_EINVAL && strstr(e.msg, "beta"), "beta 0 refused");
    make_profile(&q, "inf", "hh", INFINITY, 1.0);
    CHECK(gn_ctl_profile_set(c, "acme", &q, &e) == GN_EINVAL, "inf weight refused");
    make_profile(&q, "x", "hh", 1.0, 1.0);
    CHECK(gn_ctl_profile_set(c, "nobody", &q, &e) == GN_ENOTFOUND, "profile for unknown tenant");
    make_profile(&q, "helpful", "harmless", 2.0, 1.0); /* same name, other tenant */
    CHECK(gn_ctl_profile_set(c, "beta", &q, &e) == 0, "beta's own 'helpful': %s", e.msg);

    gn_ctl_profile g;
    CHECK(gn_ctl_profile_get(c, "acme", "helpful", &g, &e) == 0 && memcmp(&g, &p, sizeof g) == 0,
          "acme reads its own profile: %s", e.msg);
    CHECK(gn_ctl_profile_get(c, "beta", "helpful", &g, &e) == 0 && strcmp(g.arms[0].name, "harmless") == 0 &&
          g.arms[0].weight == 2.0, "beta reads its own, not acme's");
    make_profile(&q, "secret", "hh", 1.0, 1.0);
    CHECK(gn_ctl_profile_set(c, "acme", &q, &e) == 0, "acme secret");
    CHECK(gn_ctl_profile_get(c, "beta", "secret", &g, &e) == GN_ENOTFOUND, "beta cannot read acme's secret");
    CHECK(gn_ctl_profile_del(c, "beta", "secret", &e) == GN_ENOTFOUND, "beta cannot delete acme's secret");
    char **names = NULL;
    size_t nn = 0;
    CHECK(gn_ctl_profile_list(c, "acme", &names, &nn, &e) == 0 && nn == 2 && strcmp(names[0], "helpful") == 0 &&
          strcmp(names[1], "secret") == 0, "acme's profiles");
    gn_ctl_strv_free(names, nn);
    CHECK(gn_ctl_profile_list(c, "beta", &names, &nn, &e) == 0 && nn == 1, "beta has one profile");
    gn_ctl_strv_free(names, nn);
    CHECK(gn_ctl_profile_del(c, "acme", "secret", &e) == 0, "del secret");
    CHECK(gn_ctl_profile_get(c, "acme", "secret", &g, &e) == GN_ENOTFOUND, "secret gone");
    (void)port;
}

static void test_workers(gn_ctl *c) {
    gn_err e = {0};
    gn_ctl_worker w;
    memset(&w, 0, sizeof w);
    snprintf(w.id, sizeof w.id, "rw-short");
    w.kind = GN_CTL_WORKER_REWARD;
    snprintf(w.endpoint, sizeof w.endpoint, "tcp://127.0.0.1:5601");
    w.n_arms = 2;
    snprintf(w.arms[0], sizeof w.arms[0], "hh@2");
    snprintf(w.arms[1], sizeof w.arms[1], "harmless@a");
    w.capacity = 10;
    w.load = 1;
    snprintf(w.host, sizeof w.host, "gpu-node-7.example");
    snprintf(w.ipc, sizeof w.ipc, "tcp://127.0.0.1:5601");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 300, &e) == GN_EINVAL, "an ipc field that is not ipc:// refused");
    snprintf(w.ipc, sizeof w.ipc, "ipc:///tmp/rw short.sock");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 300, &e) == GN_EINVAL, "an ipc endpoint with a space refused");
    snprintf(w.host, sizeof w.host, "two words");
    snprintf(w.ipc, sizeof w.ipc, "ipc:///tmp/rw-short.sock");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 300, &e) == GN_EINVAL, "a host with a space refused");
    snprintf(w.host, sizeof w.host, "gpu-node-7.example");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 300, &e) == 0, "heartbeat short: %s", e.msg);
    w.host[0] = 0;
    w.ipc[0] = 0;
    snprintf(w.id, sizeof w.id, "rw-long");
    w.n_arms = 1;
    w.load = 5;
    snprintf(w.endpoint, sizeof w.endpoint, "tcp://127.0.0.1:5602");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 10000, &e) == 0, "heartbeat long: %s", e.msg);
    gn_ctl_worker b;
    memset(&b, 0, sizeof b);
    snprintf(b.id, sizeof b.id, "base-0");
    b.kind = GN_CTL_WORKER_BASE;
    snprintf(b.endpoint, sizeof b.endpoint, "tcp://127.0.0.1:5600");
    b.capacity = 64;
    CHECK(gn_ctl_worker_heartbeat(c, &b, 10000, &e) == 0, "heartbeat base");
    snprintf(w.arms[0], sizeof w.arms[0], "noversion");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 1000, &e) == GN_EINVAL, "ARM ref without @ refused");
    snprintf(w.arms[0], sizeof w.arms[0], "hh@2");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 0, &e) == GN_EINVAL, "ttl 0 refused");

    gn_ctl_worker *list = NULL;
    size_t n = 0;
    CHECK(gn_ctl_worker_list(c, &list, &n, &e) == 0 && n == 3, "3 live workers: %zu %s", n, e.msg);
    if (n == 3) {
        CHECK(strcmp(list[0].id, "base-0") == 0 && list[0].kind == GN_CTL_WORKER_BASE && list[0].n_arms == 0, "base listed");
        CHECK(strcmp(list[2].id, "rw-short") == 0 && list[2].n_arms == 2 && strcmp(list[2].arms[1], "harmless@a") == 0 &&
              list[2].capacity == 10 && list[2].load == 1 && list[2].updated_ms > 0, "reward worker fields");
        CHECK(!strcmp(list[2].host, "gpu-node-7.example") && !strcmp(list[2].ipc, "ipc:///tmp/rw-short.sock"),
              "host and ipc endpoint: %s %s", list[2].host, list[2].ipc);
        CHECK(list[1].host[0] == 0 && list[1].ipc[0] == 0, "none given: empty");
    }
    gn_free(list);
    gn_ctl_worker f;
    CHECK(gn_ctl_worker_find_arm(c, "hh", "2", &f, &e) == 0 && strcmp(f.id, "rw-short") == 0, "least loaded holder");
    CHECK(gn_ctl_worker_find_arm(c, "harmless", "a", &f, &e) == 0 && strcmp(f.id, "rw-short") == 0, "only holder");
    CHECK(gn_ctl_worker_find_arm(c, "hh", "1", &f, &e) == GN_ENOTFOUND, "nobody holds hh@1: %s", e.msg);

    gn_sleep_ms(700); /* rw-short's TTL (300 ms) expires */
    CHECK(gn_ctl_worker_list(c, &list, &n, &e) == 0 && n == 2, "expired worker gone: %zu", n);
    gn_free(list);
    CHECK(gn_ctl_worker_find_arm(c, "harmless", "a", &f, &e) == GN_ENOTFOUND, "expired holder not found");
    CHECK(gn_ctl_worker_find_arm(c, "hh", "2", &f, &e) == 0 && strcmp(f.id, "rw-long") == 0, "other holder found");
    CHECK(gn_ctl_worker_remove(c, "rw-long", &e) == 0, "remove: %s", e.msg);
    CHECK(gn_ctl_worker_remove(c, "rw-long", &e) == GN_ENOTFOUND, "remove twice");
    CHECK(gn_ctl_worker_list(c, &list, &n, &e) == 0 && n == 1, "one worker left");
    gn_free(list);
}

static void test_queue(gn_ctl *c, int port) {
    gn_err e = {0};
    gn_ctl *c2 = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    CHECK(gn_ctl_queue_init(c, &e) == 0, "queue init: %s", e.msg);
    CHECK(gn_ctl_queue_init(c2, &e) == 0, "queue init is idempotent: %s", e.msg);
    char id[GN_CTL_STREAM_ID_MAX];
    const char bin[] = {'a', 0, 'b'}; /* payloads are binary-safe */
    CHECK(gn_ctl_queue_push(c, bin, 3, id, &e) == 0 && id[0], "push binary");
    CHECK(gn_ctl_queue_has(c, id, &e) == 1, "the entry is on the stream: %s", e.msg);
    CHECK(gn_ctl_queue_has(c, "1-1", &e) == 0, "an id never pushed is not");
    CHECK(gn_ctl_queue_has(c, "", &e) == GN_EINVAL, "an empty id is refused");
    for (int i = 1; i < 6; i++) {
        char body[32];
        int len = snprintf(body, sizeof body, "{\"req\":%d}", i);
        CHECK(gn_ctl_queue_push(c, body, (size_t)len, NULL, &e) == 0, "push %d", i);
    }
    long waiting = -1, pending = -1;
    CHECK(gn_ctl_queue_depth(c, &waiting, &pending, &e) == 0 && waiting == 6 && pending == 0, "depth 6/0: %ld %ld", waiting, pending);

    /* two coordinators share the stream: every message goes to exactly one */
    int seen[6] = {0}, by_a = 0, by_b = 0;
    for (int round = 0; round < 3; round++) {
        gn_ctl_msg m;
        CHECK(gn_ctl_queue_read(c, "coord-a", 0, &m, &e) == 1, "a reads: %s", e.msg);
        int k = m.len == 3 && memcmp(m.payload, bin, 3) == 0 ? 0 : (m.payload ? m.payload[7] - '0' : -1);
        if (k >= 0 && k < 6) seen[k]++;
        by_a++;
        CHECK(gn_ctl_queue_has(c, m.id, &e) == 1, "taken, not acknowledged: still on the stream");
        CHECK(gn_ctl_queue_ack(c, m.id, &e) == 0, "a acks: %s", e.msg);
        CHECK(gn_ctl_queue_has(c, m.id, &e) == 0, "acknowledged: gone");
        gn_ctl_msg_clear(&m);
        CHECK(gn_ctl_queue_read(c2, "coord-b", 0, &m, &e) == 1, "b reads");
        k = m.len == 3 && memcmp(m.payload, bin, 3) == 0 ? 0 : (m.payload ? m.payload[7] - '0' : -1);
        if (k >= 0 && k < 6) seen[k]++;
        by_b++;
        if (round < 2) CHECK(gn_ctl_queue_ack(c2, m.id, &e) == 0, "b acks");
        else { /* b "crashes" holding its last message */
            CHECK(gn_ctl_queue_depth(c, &waiting, &pending, &e) == 0 && waiting == 0 && pending == 1, "1 pending");
            CHECK(gn_ctl_queue_ack(c, "1-1", &e) == GN_ENOTFOUND, "ack of an unknown id: %s", e.msg);
            gn_ctl_msg cl;
            CHECK(gn_ctl_queue_claim(c, "coord-a", 60000, &cl, &e) == 0, "nothing idle for 60 s yet");
            gn_sleep_ms(150);
            CHECK(gn_ctl_queue_claim(c, "coord-a", 100, &cl, &e) == 1 && strcmp(cl.id, m.id) == 0 &&
                  cl.len == m.len && memcmp(cl.payload, m.payload, m.len) == 0 && cl.deliveries == 2,
                  "a claims b's pending message (deliveries %ld): %s", cl.deliveries, e.msg);
            CHECK(gn_ctl_queue_ack(c, cl.id, &e) == 0, "a acks the claimed message");
            gn_ctl_msg_clear(&cl);
            CHECK(gn_ctl_queue_claim(c, "coord-a", 0, &cl, &e) == 0, "nothing left to claim");
        }
        gn_ctl_msg_clear(&m);
    }
    int all_once = 1;
    for (int i = 0; i < 6; i++) all_once &= seen[i] == 1;
    CHECK(all_once && by_a == 3 && by_b == 3, "each message delivered exactly once across a and b");
    gn_ctl_msg m;
    CHECK(gn_ctl_queue_read(c, "coord-a", 0, &m, &e) == 0, "queue empty");
    CHECK(gn_ctl_queue_read(c, "coord-a", 150, &m, &e) == 0, "blocking read times out");
    /* a blocking read wakes up when another process pushes */
    pid_t child = fork();
    if (child == 0) {
        gn_sleep_ms(150);
        gn_ctl *p = gn_ctl_connect("127.0.0.1", port, 2000, NULL);
        int ok = p && gn_ctl_queue_push(p, "late", 4, NULL, NULL) == 0;
        gn_ctl_free(p);
        _exit(ok ? 0 : 1); /* _exit: the parent's atexit handlers own redis */
    }
    int64_t t0 = (int64_t)time(NULL);
    CHECK(gn_ctl_queue_read(c, "coord-a", 5000, &m, &e) == 1 && strcmp(m.payload, "late") == 0,
          "blocking read gets the late push: %s", e.msg);
    CHECK((int64_t)time(NULL) - t0 < 4, "woke up early");
    int st = 0;
    CHECK(child > 0 && waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "pusher ok");
    CHECK(gn_ctl_queue_ack(c, m.id, &e) == 0, "ack late");
    gn_ctl_msg_clear(&m);
    CHECK(gn_ctl_queue_depth(c, &waiting, &pending, &e) == 0 && waiting == 0 && pending == 0, "depth 0/0");

    /* waiting for an ARM */
    redisContext *sub = gn_redis_raw();
    redisReply *sr = redisCommand(sub, "SUBSCRIBE genarm:load");
    if (sr) freeReplyObject(sr);
    CHECK(gn_ctl_wait_push(c, "hh", "3", "w1", 2, &e) == 0, "wait push: %s", e.msg);
    void *msg = NULL;
    CHECK(redisGetReply(sub, &msg) == REDIS_OK && msg && ((redisReply *)msg)->elements == 3 &&
          strstr(((redisReply *)msg)->element[2]->str, "\"cmd\":\"load\""), "load request published");
    if (msg) freeReplyObject(msg);
    redisFree(sub);
    CHECK(gn_ctl_wait_push(c, "hh", "3", "w2", 2, &e) == 0, "wait push 2");
    CHECK(gn_ctl_wait_push(c, "harmless", "a", "w3", 2, &e) == 0, "wait push 3");
    CHECK(gn_ctl_wait_count(c, &e) == 3, "3 waiting for an ARM");
    char **refs = NULL;
    size_t nrefs = 0;
    CHECK(gn_ctl_wait_arms(c, &refs, &nrefs, &e) == 0 && nrefs == 2 && strcmp(refs[0], "harmless@a") == 0 &&
          strcmp(refs[1], "hh@3") == 0, "ARMs with waiting requests: %s", e.msg);
    gn_ctl_strv_free(refs, nrefs);
    CHECK(gn_ctl_wait_release(c, "hh", "3", &e) == 2, "2 released");
    CHECK(gn_ctl_wait_count(c, &e) == 1, "1 still waiting");
    CHECK(gn_ctl_wait_release(c, "hh", "3", &e) == 0, "nothing more to release");
    CHECK(gn_ctl_queue_read(c, "coord-a", 0, &m, &e) == 1 && strcmp(m.payload, "w1") == 0, "released w1 queued in order");
    CHECK(gn_ctl_queue_ack(c, m.id, &e) == 0, "ack w1");
    gn_ctl_msg_clear(&m);
    CHECK(gn_ctl_queue_read(c2, "coord-b", 0, &m, &e) == 1 && strcmp(m.payload, "w2") == 0, "released w2 queued");
    CHECK(gn_ctl_queue_ack(c2, m.id, &e) == 0, "ack w2");
    gn_ctl_msg_clear(&m);
    CHECK(gn_ctl_wait_release(c, "harmless", "a", &e) == 1 && gn_ctl_wait_count(c, &e) == 0, "all released");
    CHECK(gn_ctl_queue_read(c, "coord-a", 0, &m, &e) == 1 && gn_ctl_queue_ack(c, m.id, &e) == 0, "w3 handled");
    gn_ctl_msg_clear(&m);
    gn_ctl_free(c2);
}

static void test_pubsub(gn_ctl *c, redisContext *raw, int port) {
    gn_err e = {0};
    gn_ctl *sub = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    CHECK(sub != NULL, "subscriber connect");
    if (!sub) return;
    CHECK(gn_ctl_subscribe(sub, "genarm:swaps", &e) == 0, "subscribe swaps: %s", e.msg);
    CHECK(gn_ctl_subscribe(sub, "genarm:load", &e) == 0, "subscribe load: %s", e.msg);
    CHECK(gn_ctl_subscribe(sub, "bad channel", &e) == GN_EINVAL, "bad channel name");
    CHECK(gn_ctl_ping(sub, &e) == GN_EINVAL && strstr(e.msg, "subscribed"), "no plain commands on a subscriber: %s", e.msg);
    char ch[GN_CTL_CHANNEL_MAX], *msg = NULL;
    size_t len = 0;
    CHECK(gn_ctl_sub_next(sub, 100, ch, &msg, &len, &e) == 0 && msg == NULL, "timeout without messages: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "hh", "5", "/models/hh-5", H1, &e) == 0 && gn_ctl_arm_promote(c, "hh", "5", NULL, &e) == 0,
          "promote hh@5: %s", e.msg);
    CHECK(gn_ctl_sub_next(sub, 2000, ch, &msg, &len, &e) == 1 && strcmp(ch, "genarm:swaps") == 0 && msg &&
          strstr(msg, "\"version\":\"5\"") && strstr(msg, "\"previous\":\"2\"") && len == strlen(msg),
          "swap message received: %s", msg ? msg : e.msg);
    gn_free(msg);
    msg = NULL;
    CHECK(gn_ctl_arm_promote(c, "hh", "2", NULL, &e) == 0, "promote back to hh@2");
    CHECK(gn_ctl_wait_push(c, "hh", "9", "q", 1, &e) == 0, "wait push");
    CHECK(gn_ctl_sub_next(sub, 2000, ch, &msg, &len, &e) == 1 && strstr(msg, "\"version\":\"2\""), "second swap");
    gn_free(msg);
    msg = NULL;
    CHECK(gn_ctl_sub_next(sub, 2000, ch, &msg, &len, &e) == 1 && strcmp(ch, "genarm:load") == 0 &&
          strstr(msg, "\"cmd\":\"load\"") && strstr(msg, "\"version\":\"9\""), "load message: %s", msg ? msg : e.msg);
    gn_free(msg);
    msg = NULL;
    CHECK(gn_ctl_wait_release(c, "hh", "9", &e) == 1, "release");
    gn_ctl_msg m;
    CHECK(gn_ctl_queue_read(c, "coord-a", 0, &m, &e) == 1 && gn_ctl_queue_ack(c, m.id, &e) == 0, "drain");
    gn_ctl_msg_clear(&m);
    /* the subscriber's connection is killed: it reconnects and resubscribes */
    redisReply *r = redisCommand(raw, "CLIENT KILL TYPE pubsub");
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "killed the subscriber");
    if (r) freeReplyObject(r);
    CHECK(gn_ctl_sub_next(sub, 200, ch, &msg, &len, &e) == 0, "reconnected, nothing yet: %s", e.msg);
    r = redisCommand(raw, "PUBLISH genarm:load hello");
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "one subscriber again");
    if (r) freeReplyObject(r);
    CHECK(gn_ctl_sub_next(sub, 2000, ch, &msg, &len, &e) == 1 && strcmp(msg, "hello") == 0, "message after resubscribe");
    gn_free(msg);
    gn_ctl_free(sub);
}

/* Allocation-failure loops: every gn_alloc failure point of these calls must
 * give GN_ENOMEM and leak nothing (the ASan build checks the leaks). */
static int g_port;
static int oom_tenant_list(gn_ctl *c, gn_err *e) {
    char **v;
    size_t n;
    int rc = gn_ctl_tenant_list(c, &v, &n, e);
    if (!rc) gn_ctl_strv_free(v, n);
    return rc;
}
static int oom_arm_list(gn_ctl *c, gn_err *e) {
    gn_ctl_arm_info *a;
    size_t n;
    int rc = gn_ctl_arm_list(c, &a, &n, e);
    if (!rc) gn_ctl_arm_list_free(a, n);
    return rc;
}
static int oom_worker_list(gn_ctl *c, gn_err *e) {
    gn_ctl_worker *w;
    size_t n;
    int rc = gn_ctl_worker_list(c, &w, &n, e);
    if (!rc) gn_free(w);
    return rc;
}
static int oom_profile_list(gn_ctl *c, gn_err *e) {
    char **v;
    size_t n;
    int rc = gn_ctl_profile_list(c, "beta", &v, &n, e);
    if (!rc) gn_ctl_strv_free(v, n);
    return rc;
}
static int oom_profile_json(gn_ctl *c, gn_err *e) {
    gn_ctl_profile p;
    char *json = NULL;
    int rc = gn_ctl_profile_get(c, "beta", "helpful", &p, e);
    if (!rc) rc = gn_ctl_profile_to_json(&p, &json, e);
    gn_free(json);
    return rc;
}
static int oom_connect(gn_ctl *c, gn_err *e) {
    (void)c;
    gn_ctl *x = gn_ctl_connect("127.0.0.1", g_port, 2000, e);
    gn_ctl_free(x);
    return x ? 0 : e->code;
}
static int oom_queue_roundtrip(gn_ctl *c, gn_err *e) {
    gn_ctl_msg m;
    int rc = gn_ctl_queue_push(c, "oom", 3, NULL, e);
    if (rc) return rc;
    rc = gn_ctl_queue_read(c, "oom-consumer", 0, &m, e);
    if (rc == GN_ENOMEM) { /* delivered but not returned: it stays pending; take it back */
        gn_ctl_msg cl;
        if (gn_ctl_queue_claim(c, "oom-consumer", 0, &cl, NULL) == 1) {
            gn_ctl_queue_ack(c, cl.id, NULL);
            gn_ctl_msg_clear(&cl);
        }
        return rc;
    }
    if (rc != 1) return rc < 0 ? rc : GN_EINVAL;
    rc = gn_ctl_queue_ack(c, m.id, e);
    gn_ctl_msg_clear(&m);
    return rc;
}

static void oom_loop(gn_ctl *c, const char *what, int (*fn)(gn_ctl *, gn_err *)) {
    int points = 0;
    for (long n = 0; n < 1000; n++) {
        gn_err e = {0};
        gn_alloc_fail_after(n);
        int rc = fn(c, &e);
        long made = gn_alloc_fail_after(-1);
        if (made <= n) {
            CHECK(rc == 0, "%s: succeeds without injected failures: %s", what, e.msg);
            break;
        }
        points++;
        if (rc != GN_ENOMEM) {
            CHECK(rc == GN_ENOMEM, "%s: allocation %ld failing gives rc %d (%s)", what, n, rc, e.msg);
            break;
        }
    }
    CHECK(points > 0, "%s: has allocation points", what);
}

static void test_alloc_failures(gn_ctl *c, int port) {
    g_port = port;
    oom_loop(c, "tenant list", oom_tenant_list);
    oom_loop(c, "arm list", oom_arm_list);
    oom_loop(c, "worker list", oom_worker_list);
    oom_loop(c, "profile list", oom_profile_list);
    oom_loop(c, "profile json", oom_profile_json);
    oom_loop(c, "connect", oom_connect);
    oom_loop(c, "queue roundtrip", oom_queue_roundtrip);
    long w = -1, p = -1;
    CHECK(gn_ctl_queue_depth(c, &w, &p, NULL) == 0 && w == 0 && p == 0, "queue clean after the loops");
}

static void test_malformed(gn_ctl *c, redisContext *raw) {
    gn_err e = {0};
    gn_ctl_profile p;
    raw_ok(raw, "HSET genarm:tenant:acme:profiles broken {not-json");
    CHECK(gn_ctl_profile_get(c, "acme", "broken", &p, &e) == GN_EFORMAT && strstr(e.msg, "malformed") &&
          strstr(e.msg, "invalid JSON"), "bad JSON profile: %s", e.msg);
    raw_ok(raw, "HSET genarm:tenant:acme:profiles wrongtypes {\"name\":\"wrongtypes\",\"arms\":\"hh\",\"beta\":1}");
    CHECK(gn_ctl_profile_get(c, "acme", "wrongtypes", &p, &e) == GN_EFORMAT && strstr(e.msg, "arms"), "arms not an array: %s", e.msg);
    raw_ok(raw, "HSET genarm:tenant:acme:profiles negbeta {\"name\":\"negbeta\",\"arms\":[{\"name\":\"hh\",\"weight\":1}],\"beta\":-1}");
    CHECK(gn_ctl_profile_get(c, "acme", "negbeta", &p, &e) == GN_EFORMAT && strstr(e.msg, "beta"), "planted beta<0: %s", e.msg);
    raw_ok(raw, "HSET genarm:tenant:acme:profiles alias {\"name\":\"helpful\",\"arms\":[{\"name\":\"hh\",\"weight\":1}],\"beta\":1}");
    CHECK(gn_ctl_profile_get(c, "acme", "alias", &p, &e) == GN_EFORMAT, "profile naming itself otherwise: %s", e.msg);
    raw_ok(raw, "SET genarm:tenant:beta:profiles oops");
    CHECK(gn_ctl_profile_get(c, "beta", "helpful", &p, &e) == GN_EFORMAT && strstr(e.msg, "type"),
          "profiles key of the wrong type: %s", e.msg);
    char **v = NULL;
    size_t n = 0;
    CHECK(gn_ctl_profile_list(c, "beta", &v, &n, &e) == GN_EFORMAT, "list on wrong type");
    raw_ok(raw, "HSET genarm:worker:evil kind reward endpoint tcp://127.0.0.1:1 arms hh@2 capacity abc load 0 updated_ms 1");
    raw_ok(raw, "SADD genarm:workers evil");
    gn_ctl_worker *w = NULL;
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == GN_EFORMAT && strstr(e.msg, "capacity") && w == NULL,
          "worker with a non-numeric capacity: %s", e.msg);
    raw_ok(raw, "HSET genarm:worker:evil capacity 4 kind gpu");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == GN_EFORMAT && strstr(e.msg, "kind"), "worker kind: %s", e.msg);
    raw_ok(raw, "HSET genarm:worker:evil kind reward arms hh");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == GN_EFORMAT && strstr(e.msg, "name@version"), "worker arms: %s", e.msg);
    /* A record written before host and ipc existed still parses (as ""); a
     * malformed ipc field does not. */
    raw_ok(raw, "DEL genarm:worker:evil");
    raw_ok(raw, "HSET genarm:worker:evil kind reward endpoint tcp://127.0.0.1:1 arms hh@2 capacity 4 load 0 updated_ms 1");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == 0, "an old record without host/ipc: %s", e.msg);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(w[i].id, "evil")) found = w[i].host[0] == 0 && w[i].ipc[0] == 0 && w[i].capacity == 4;
    CHECK(found, "old record read with empty host and ipc");
    gn_free(w);
    w = NULL;
    raw_ok(raw, "HSET genarm:worker:evil host h1 ipc tcp://nope");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == GN_EFORMAT && strstr(e.msg, "ipc"), "malformed ipc: %s", e.msg);
    raw_ok(raw, "DEL genarm:worker:evil");
    raw_ok(raw, "SET genarm:worker:evil2 x");
    raw_ok(raw, "SADD genarm:workers evil2");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == GN_EFORMAT, "worker key of the wrong type: %s", e.msg);
    raw_ok(raw, "DEL genarm:worker:evil2");
    CHECK(gn_ctl_worker_list(c, &w, &n, &e) == 0, "registry usable again: %s", e.msg);
    gn_free(w);
    raw_ok(raw, "HDEL genarm:arm:hh:v:2 tokenizer_hash");
    gn_ctl_arm_version av;
    CHECK(gn_ctl_arm_get(c, "hh", NULL, &av, &e) == GN_EFORMAT && strstr(e.msg, "tokenizer_hash"), "version missing a field: %s", e.msg);
    raw_ok(raw, "HSET genarm:arm:hh:v:2 tokenizer_hash nothex");
    CHECK(gn_ctl_arm_get(c, "hh", "2", &av, &e) == GN_EFORMAT, "bad stored hash");
    raw_ok(raw, "HSET genarm:arm:harmless:v:a created_ms soon");
    CHECK(gn_ctl_arm_get(c, "harmless", "a", &av, &e) == GN_EFORMAT && strstr(e.msg, "created_ms"), "bad created_ms: %s", e.msg);
    raw_ok(raw, "HSET genarm:apikey:0000000000000000000000000000000000000000000000000000000000000000 tenant bad:id");
    char key[GN_CTL_KEY_LEN + 1], t[GN_CTL_ID_MAX];
    /* plant a hash for a key we know */
    snprintf(key, sizeof key, "gnk_planted");
    char hash[GN_CTL_HASH_HEX];
    gn_ctl_key_hash(key, hash);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "HSET genarm:apikey:%s tenant bad:id", hash);
    raw_ok(raw, cmd);
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == GN_EFORMAT && t[0] == 0, "key mapped to an invalid tenant: %s", e.msg);
    raw_ok(raw, "RPUSH genarm:waiting:x@1 a");
    raw_ok(raw, "SADD genarm:waiting x@1");
    raw_ok(raw, "DEL genarm:waiting:x@1");
    raw_ok(raw, "SET genarm:waiting:x@1 str");
    CHECK(gn_ctl_wait_count(c, &e) == GN_EFORMAT && strstr(e.msg, "not a list"), "waiting list of the wrong type: %s", e.msg);
    raw_ok(raw, "DEL genarm:waiting:x@1");
    CHECK(gn_ctl_wait_count(c, &e) == 0, "stale waiting ref pruned");
    raw_ok(raw, "SADD genarm:waiting no-version");
    raw_ok(raw, "RPUSH genarm:waiting:no-version x");
    char **refs = NULL;
    size_t nrefs = 0;
    CHECK(gn_ctl_wait_arms(c, &refs, &nrefs, &e) == GN_EFORMAT && refs == NULL, "malformed waiting ref: %s", e.msg);
    raw_ok(raw, "DEL genarm:waiting:no-version");
    CHECK(gn_ctl_wait_arms(c, &refs, &nrefs, &e) == 0 && nrefs == 0, "pruned again");
    gn_ctl_strv_free(refs, nrefs);
    raw_ok(raw, "XADD genarm:swaps * cmd swap arm hh");
    gn_ctl_swap s;
    int good = 0, rc;
    char after[GN_CTL_STREAM_ID_MAX] = "0";
    while ((rc = gn_ctl_swap_next(c, after, 0, &s, &e)) == 1) {
        snprintf(after, sizeof after, "%s", s.id);
        good++;
    }
    CHECK(good == 3 && rc == GN_EFORMAT && strstr(e.msg, "version"), "3 good swaps, then a truncated entry: %d %s", good, e.msg);
    raw_ok(raw, "SADD genarm:tenants bad:tenant");
    CHECK(gn_ctl_tenant_list(c, &v, &n, &e) == GN_EFORMAT && v == NULL, "invalid tenant id in the set: %s", e.msg);
    raw_ok(raw, "SREM genarm:tenants bad:tenant");
}

static void test_tenant_del(gn_ctl *c, redisContext *raw) {
    gn_err e = {0};
    char key[GN_CTL_KEY_LEN + 1], t[GN_CTL_ID_MAX];
    CHECK(gn_ctl_key_create(c, "acme", key, NULL, &e) == 0, "key before delete");
    CHECK(gn_ctl_tenant_del(c, "acme", &e) == 0, "delete acme: %s", e.msg);
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == GN_ENOTFOUND, "deleted tenant's key gone");
    gn_ctl_profile p;
    CHECK(gn_ctl_profile_get(c, "acme", "helpful", &p, &e) == GN_ENOTFOUND, "deleted tenant's profile gone");
    redisReply *r = redisCommand(raw, "KEYS genarm:tenant:acme*");
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 0, "no acme keys left");
    if (r) freeReplyObject(r);
    CHECK(gn_ctl_tenant_exists(c, "acme", &e) == 0, "acme gone");
}

static void test_reconnect(gn_ctl *c, redisContext *raw) {
    gn_err e = {0};
    redisReply *r = redisCommand(raw, "CLIENT KILL TYPE normal SKIPME yes");
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer >= 1, "killed the library's connection");
    if (r) freeReplyObject(r);
    CHECK(gn_ctl_tenant_exists(c, "beta", &e) == 1, "call after a dropped connection reconnects: %s", e.msg);
    /* server gone: clean GN_EIO, no crash */
    gn_redis_stop();
    CHECK(gn_ctl_ping(c, &e) == GN_EIO, "ping with the server gone: %d %s", e.code, e.msg);
    char **v = NULL;
    size_t n = 0;
    CHECK(gn_ctl_tenant_list(c, &v, &n, NULL) == GN_EIO, "error code without an err buffer");
}

int main(void) {
    int port = gn_redis_start();
    gn_err e = {0};
    test_ids();
    test_profiles_pure();
    test_connect(port);
    gn_ctl *c = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    if (!c) {
        fprintf(stderr, "connect: %s\n", e.msg);
        return 1;
    }
    redisContext *raw = gn_redis_raw();
    test_tenants(c);
    test_keys(c, raw);
    test_arms_and_profiles(c, port);
    test_workers(c);
    test_queue(c, port);
    test_pubsub(c, raw, port);
    test_alloc_failures(c, port);
    test_malformed(c, raw);
    test_tenant_del(c, raw);
    test_reconnect(c, raw);
    redisFree(raw);
    gn_ctl_free(c);
    GN_TEST_MAIN_END();
}
