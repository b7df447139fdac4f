/* genarm-admin — manages the Redis control plane: tenants, API keys,
 * preference profiles, the base tokenizer record, ARM versions (register,
 * promote = hot-swap, retire) and shows the live workers and queue depth. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "fsutil.h"
#include "gn_alloc.h"
#include "lora_dir.h"
#include "tokenizer.h"

enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_NOTFOUND = 3, EXIT_CONN = 4 };

static const char k_usage[] =
    "usage: genarm-admin [--redis HOST:PORT] [--timeout-ms N] COMMAND ...\n"
    "\n"
    "  tenant add ID [--name TEXT]      create a tenant\n"
    "  tenant list                      list tenants\n"
    "  tenant del ID                    delete a tenant with its keys and profiles\n"
    "  key create TENANT                create an API key; printed ONCE on stdout\n"
    "  key list TENANT                  list key ids\n"
    "  key revoke TENANT KEY|KEY-ID     revoke a key\n"
    "  profile set TENANT NAME --arm NAME:WEIGHT [--arm ...] --beta B\n"
    "              [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--max-tokens N]\n"
    "  profile get TENANT NAME          print the profile as JSON\n"
    "  profile list TENANT | profile del TENANT NAME\n"
    "  base set --path DIR [--tokenizer-hash H]   record the base model's tokenizer\n"
    "  arm register NAME --version V --path DIR [--tokenizer-hash H]\n"
    "                                   (default: hash of DIR/tokenizer.json)\n"
    "  arm promote NAME V               make V current and publish a swap command\n"
    "  arm retire NAME V                remove a version (not the current one)\n"
    "  arm list                         ARMs with their versions\n"
    "  workers                          live workers\n"
    "  queue                            request queue depth and requests waiting for an ARM\n"
    "\n"
    "--redis defaults to $GENARM_REDIS or 127.0.0.1:6379.\n"
    "exit status: 0 ok, 1 failed, 2 usage error, 3 not found, 4 cannot reach Redis\n";

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "genarm-admin: ");
    fprintf(stderr, fmt, arg ? arg : "");
    fprintf(stderr, "\n(run genarm-admin --help for usage)\n");
    return EXIT_USAGE;
}

static int fail(const gn_err *e, int rc) {
    fprintf(stderr, "genarm-admin: error: %s\n", e->msg[0] ? e->msg : gn_strerror(rc));
    if (rc == GN_ENOTFOUND) return EXIT_NOTFOUND;
    if (rc == GN_EIO) return EXIT_CONN;
    return EXIT_FAIL;
}

static int parse_double(const char *s, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

/* Finds "--flag VALUE" in argv[from..argc); NULL when absent. Sets *bad when
 * the flag is present without a value. */
static const char *opt(int argc, char **argv, int from, const char *flag, int *bad) {
    for (int i = from; i < argc; i++)
        if (strcmp(argv[i], flag) == 0) {
            if (i + 1 >= argc) {
                *bad = 1;
                return NULL;
            }
            return argv[i + 1];
        }
    return NULL;
}

/* Every "--x" in argv[from..) must be one of the allowed flags (each takes a value). */
static int check_flags(int argc, char **argv, int from, const char *const *allowed) {
    for (int i = from; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) continue;
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(argv[i], *a) == 0;
        if (!ok) return usage_error("unknown option %s", argv[i]);
        i++; /* skip the value */
    }
    return 0;
}

static void print_time(int64_t ms, char *buf, size_t cap) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else snprintf(buf, cap, "?");
}

static int cmd_tenant(gn_ctl *c, int argc, char **argv) {
    gn_err e = {0};
    if (argc < 1) return usage_error("tenant: add, list or del?%s", "");
    int rc, bad = 0;
    if (strcmp(argv[0], "add") == 0 && argc >= 2) {
        static const char *const fl[] = {"--name", NULL};
        if ((rc = check_flags(argc, argv, 2, fl))) return rc;
        const char *name = opt(argc, argv, 2, "--name", &bad);
        if (bad) return usage_error("--name needs a value%s", "");
        if ((rc = gn_ctl_tenant_add(c, argv[1], name, &e))) return fail(&e, rc);
        printf("tenant %s created\n", argv[1]);
        return 0;
    }
    if (strcmp(argv[0], "list") == 0 && argc == 1) {
        char **v = NULL;
        size_t n = 0;
        if ((rc = gn_ctl_tenant_list(c, &v, &n, &e))) return fail(&e, rc);
        for (size_t i = 0; i < n; i++) printf("%s\n", v[i]);
        gn_ctl_strv_free(v, n);
        return 0;
    }
    if (strcmp(argv[0], "del") == 0 && argc == 2) {
        if ((rc = gn_ctl_tenant_del(c, argv[1], &e))) return fail(&e, rc);
        printf("tenant %s deleted (with its keys and profiles)\n", argv[1]);
        return 0;
    }
    return usage_error("tenant: bad arguments%s", "");
}

static int cmd_key(gn_ctl *c, int argc, char **argv) {
    gn_err e = {0};
    int rc;
    if (argc == 2 && strcmp(argv[0], "create") == 0) {
        char key[GN_CTL_KEY_LEN + 1], id[GN_CTL_KEY_ID_LEN + 1];
        if ((rc = gn_ctl_key_create(c, argv[1], key, id, &e))) return fail(&e, rc);
        fprintf(stderr, "API key %s created for tenant %s. It is shown only this once; only its SHA-256 is stored.\n",
                id, argv[1]);
        printf("%s\n", key);
        memset(key, 0, sizeof key);
        return 0;
    }
    if (argc == 2 && strcmp(argv[0], "list") == 0) {
        char **v = NULL;
        size_t n = 0;
        if ((rc = gn_ctl_key_list(c, argv[1], &v, &n, &e))) return fail(&e, rc);
        for (size_t i = 0; i < n; i++) printf("%s\n", v[i]);
        gn_ctl_strv_free(v, n);
        return 0;
    }
    if (argc == 3 && strcmp(argv[0], "revoke") == 0) {
        if ((rc = gn_ctl_key_revoke(c, argv[1], argv[2], &e))) return fail(&e, rc);
        printf("key revoked\n");
        return 0;
    }
    return usage_error("key: create TENANT, list TENANT or revoke TENANT KEY%s", "");
}

static int profile_set(gn_ctl *c, int argc, char **argv) {
    /* argv: set TENANT NAME options... */
    static const char *const fl[] = {"--arm", "--beta", "--temperature", "--top-p", "--top-k",
                                     "--min-p", "--max-tokens", NULL};
    int rc = check_flags(argc, argv, 3, fl);
    if (rc) return rc;
    gn_ctl_profile p;
    gn_ctl_profile_init(&p);
    if (strlen(argv[2]) >= sizeof p.name) return usage_error("profile name too long: %s", argv[2]);
    memcpy(p.name, argv[2], strlen(argv[2]) + 1);
    int have_beta = 0;
    for (int i = 3; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) return usage_error("unexpected argument %s", argv[i]);
        if (i + 1 >= argc) return usage_error("%s needs a value", argv[i]);
        const char *f = argv[i], *v = argv[++i];
        if (strcmp(f, "--arm") == 0) {
            const char *colon = strrchr(v, ':');
            if (!colon || colon == v) return usage_error("--arm wants NAME:WEIGHT, got %s", v);
            if (p.n_arms == GN_CTL_PROFILE_MAX_ARMS) return usage_error("too many --arm%s", "");
            size_t n = (size_t)(colon - v);
            if (n >= sizeof p.arms[0].name) return usage_error("ARM name too long in %s", v);
            memcpy(p.arms[p.n_arms].name, v, n);
            p.arms[p.n_arms].name[n] = 0;
            if (parse_double(colon + 1, &p.arms[p.n_arms].weight))
                return usage_error("--arm: weight is not a number in %s", v);
            p.n_arms++;
        } else if (strcmp(f, "--beta") == 0) {
            if (parse_double(v, &p.beta)) return usage_error("--beta: not a number: %s", v);
            have_beta = 1;
        } else if (strcmp(f, "--temperature") == 0) {
            if (parse_double(v, &p.temperature)) return usage_error("--temperature: not a number: %s", v);
            p.has |= GN_CTL_HAS_TEMPERATURE;
        } else if (strcmp(f, "--top-p") == 0) {
            if (parse_double(v, &p.top_p)) return usage_error("--top-p: not a number: %s", v);
            p.has |= GN_CTL_HAS_TOP_P;
        } else if (strcmp(f, "--min-p") == 0) {
            if (parse_double(v, &p.min_p)) return usage_error("--min-p: not a number: %s", v);
            p.has |= GN_CTL_HAS_MIN_P;
        } else if (strcmp(f, "--top-k") == 0) {
            if (parse_int(v, &p.top_k)) return usage_error("--top-k: not an integer: %s", v);
            p.has |= GN_CTL_HAS_TOP_K;
        } else if (strcmp(f, "--max-tokens") == 0) {
            if (parse_int(v, &p.max_tokens)) return usage_error("--max-tokens: not an integer: %s", v);
            p.has |= GN_CTL_HAS_MAX_TOKENS;
        }
    }
    if (p.n_arms == 0) return usage_error("profile set needs at least one --arm NAME:WEIGHT%s", "");
    if (!have_beta) return usage_error("profile set needs --beta%s", "");
    gn_err e = {0};
    if ((rc = gn_ctl_profile_set(c, argv[1], &p, &e))) return fail(&e, rc);
    printf("profile %s of tenant %s saved\n", p.name, argv[1]);
    return 0;
}

static int cmd_profile(gn_ctl *c, int argc, char **argv) {
    gn_err e = {0};
    int rc;
    if (argc >= 3 && strcmp(argv[0], "set") == 0) return profile_set(c, argc, argv);
    if (argc == 3 && strcmp(argv[0], "get") == 0) {
        gn_ctl_profile p;
        char *json = NULL;
        if ((rc = gn_ctl_profile_get(c, argv[1], argv[2], &p, &e)) ||
            (rc = gn_ctl_profile_to_json(&p, &json, &e)))
            return fail(&e, rc);
        printf("%s\n", json);
        gn_free(json);
        return 0;
    }
    if (argc == 2 && strcmp(argv[0], "list") == 0) {
        char **v = NULL;
        size_t n = 0;
        if ((rc = gn_ctl_profile_list(c, argv[1], &v, &n, &e))) return fail(&e, rc);
        for (size_t i = 0; i < n; i++) printf("%s\n", v[i]);
        gn_ctl_strv_free(v, n);
        return 0;
    }
    if (argc == 3 && strcmp(argv[0], "del") == 0) {
        if ((rc = gn_ctl_profile_del(c, argv[1], argv[2], &e))) return fail(&e, rc);
        printf("profile %s of tenant %s deleted\n", argv[2], argv[1]);
        return 0;
    }
    return usage_error("profile: set, get, list or del with their arguments%s", "");
}

/* Tokenizer hash from --tokenizer-hash or DIR/tokenizer.json (a PEFT adapter
 * directory without one: its backbone's). */
static int tokenizer_hash(const char *given, const char *dir, char out[GN_CTL_HASH_HEX]) {
    if (given) {
        if (strlen(given) != 64) {
            fprintf(stderr, "genarm-admin: error: --tokenizer-hash must be 64 hex characters\n");
            return EXIT_USAGE;
        }
        memcpy(out, given, 65);
        return 0;
    }
    gn_err e = {0};
    char backbone[4096];
    char *tj = gn_fs_join(dir, "tokenizer.json");
    if (tj && !gn_fs_is_file(tj) && gn_lora_is_adapter_dir(dir)) {
        if (gn_lora_backbone_dir(dir, backbone, sizeof backbone, &e)) {
            gn_free(tj);
            fprintf(stderr, "genarm-admin: error: %s\n", e.msg);
            return EXIT_FAIL;
        }
        dir = backbone;
    }
    gn_free(tj);
    gn_tokenizer *t = gn_tok_load(dir, &e);
    if (!t) {
        fprintf(stderr, "genarm-admin: error: cannot compute the tokenizer hash from %s: %s\n", dir, e.msg);
        return EXIT_FAIL;
    }
    snprintf(out, GN_CTL_HASH_HEX, "%s", gn_tok_hash(t));
    gn_tok_free(t);
    return 0;
}

static int cmd_base(gn_ctl *c, int argc, char **argv) {
    static const char *const fl[] = {"--path", "--tokenizer-hash", NULL};
    if (argc < 1 || strcmp(argv[0], "set") != 0) return usage_error("base: set --path DIR%s", "");
    int rc = check_flags(argc, argv, 1, fl), bad = 0;
    if (rc) return rc;
    const char *path = opt(argc, argv, 1, "--path", &bad);
    const char *hash = opt(argc, argv, 1, "--tokenizer-hash", &bad);
    if (bad || !path) return usage_error("base set needs --path DIR%s", "");
    char h[GN_CTL_HASH_HEX];
    if ((rc = tokenizer_hash(hash, path, h))) return rc;
    gn_err e = {0};
    if ((rc = gn_ctl_base_set(c, path, h, &e))) return fail(&e, rc);
    printf("base %s tokenizer %s\n", path, h);
    return 0;
}

static int cmd_arm(gn_ctl *c, int argc, char **argv) {
    gn_err e = {0};
    int rc;
    if (argc >= 2 && strcmp(argv[0], "register") == 0) {
        static const char *const fl[] = {"--version", "--path", "--tokenizer-hash", NULL};
        int bad = 0;
        if ((rc = check_flags(argc, argv, 2, fl))) return rc;
        const char *ver = opt(argc, argv, 2, "--version", &bad);
        const char *path = opt(argc, argv, 2, "--path", &bad);
        const char *hash = opt(argc, argv, 2, "--tokenizer-hash", &bad);
        if (bad || !ver || !path) return usage_error("arm register NAME --version V --path DIR%s", "");
        char h[GN_CTL_HASH_HEX];
        if ((rc = tokenizer_hash(hash, path, h))) return rc;
        if ((rc = gn_ctl_arm_register(c, argv[1], ver, path, h, &e))) return fail(&e, rc);
        gn_ctl_arm_version cur;
        int is_cur = gn_ctl_arm_get(c, argv[1], NULL, &cur, &e) == 0 && strcmp(cur.version, ver) == 0;
        printf("ARM %s version %s registered (tokenizer %s)%s\n", argv[1], ver, h,
               is_cur ? "; it is the current version" : "; promote it to make it current");
        return 0;
    }
    if (argc == 3 && strcmp(argv[0], "promote") == 0) {
        char prev[GN_CTL_ID_MAX];
        if ((rc = gn_ctl_arm_promote(c, argv[1], argv[2], prev, &e))) return fail(&e, rc);
        if (strcmp(prev, argv[2]) == 0) printf("ARM %s: version %s is already current\n", argv[1], argv[2]);
        else printf("ARM %s: version %s is current (was %s); swap command published\n", argv[1], argv[2],
                    prev[0] ? prev : "none");
        return 0;
    }
    if (argc == 3 && strcmp(argv[0], "retire") == 0) {
        if ((rc = gn_ctl_arm_retire(c, argv[1], argv[2], &e))) return fail(&e, rc);
        printf("ARM %s: version %s retired\n", argv[1], argv[2]);
        return 0;
    }
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        gn_ctl_arm_info *a = NULL;
        size_t n = 0;
        if ((rc = gn_ctl_arm_list(c, &a, &n, &e))) return fail(&e, rc);
        printf("%-20s %-12s %-7s %-20s %-16s %s\n", "ARM", "VERSION", "CURRENT", "CREATED", "TOKENIZER", "PATH");
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < a[i].n_versions; j++) {
                char t[32];
                print_time(a[i].versions[j].created_ms, t, sizeof t);
                printf("%-20s %-12s %-7s %-20s %.16s %s\n", a[i].name, a[i].versions[j].version,
                       strcmp(a[i].current, a[i].versions[j].version) == 0 ? "*" : "", t,
                       a[i].versions[j].tokenizer_hash, a[i].versions[j].path);
            }
        gn_ctl_arm_list_free(a, n);
        return 0;
    }
    return usage_error("arm: register, promote, retire or list with their arguments%s", "");
}

static int cmd_workers(gn_ctl *c) {
    gn_err e = {0};
    gn_ctl_worker *w = NULL;
    size_t n = 0;
    int rc = gn_ctl_worker_list(c, &w, &n, &e);
    if (rc) return fail(&e, rc);
    printf("%-20s %-6s %-28s %-16s %-9s %s\n", "WORKER", "KIND", "ENDPOINT", "HOST", "LOAD/CAP", "ARMS");
    for (size_t i = 0; i < n; i++) {
        char lc[32];
        snprintf(lc, sizeof lc, "%d/%d", w[i].load, w[i].capacity);
        printf("%-20s %-6s %-28s %-16s %-9s ", w[i].id, w[i].kind == GN_CTL_WORKER_BASE ? "base" : "reward",
               w[i].endpoint, w[i].host[0] ? w[i].host : "-", lc);
        for (int j = 0; j < w[i].n_arms; j++) printf("%s%s", j ? "," : "", w[i].arms[j]);
        printf("%s", w[i].n_arms ? "" : "-");
        if (w[i].ipc[0]) printf(" (same host: %s)", w[i].ipc);
        printf("\n");
    }
    gn_free(w);
    return 0;
}

static int cmd_queue(gn_ctl *c) {
    gn_err e = {0};
    long waiting = 0, pending = 0;
    int rc = gn_ctl_queue_depth(c, &waiting, &pending, &e);
    if (rc) return fail(&e, rc);
    long arm = gn_ctl_wait_count(c, &e);
    if (arm < 0) return fail(&e, (int)arm);
    printf("queued %ld\npending %ld\nwaiting_for_arm %ld\n", waiting, pending, arm);
    return 0;
}

int main(int argc, char **argv) {
    const char *redis = getenv("GENARM_REDIS");
    if (!redis || !*redis) redis = "127.0.0.1:6379";
    int timeout_ms = 3000, i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            fputs(k_usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc) {
            redis = argv[++i];
        } else if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], &timeout_ms) || timeout_ms <= 0)
                return usage_error("--timeout-ms: bad value %s", argv[i]);
        } else {
            return usage_error("unknown or incomplete option %s", argv[i]);
        }
    }
    if (i >= argc) {
        fputs(k_usage, stderr);
        return EXIT_USAGE;
    }
    char host[256];
    const char *colon = strrchr(redis, ':');
    int port = 0;
    if (!colon || colon == redis || (size_t)(colon - redis) >= sizeof host || parse_int(colon + 1, &port) ||
        port <= 0 || port > 65535)
        return usage_error("--redis wants HOST:PORT, got %s", redis);
    memcpy(host, redis, (size_t)(colon - redis));
    host[colon - redis] = 0;

    const char *cmd = argv[i];
    int sub_argc = argc - i - 1;
    char **sub = argv + i + 1;
    if (strcmp(cmd, "tenant") && strcmp(cmd, "key") && strcmp(cmd, "profile") && strcmp(cmd, "base") &&
        strcmp(cmd, "arm") && strcmp(cmd, "workers") && strcmp(cmd, "queue"))
        return usage_error("unknown command %s", cmd);

    gn_err e = {0};
    gn_ctl *c = gn_ctl_connect(host, port, timeout_ms, &e);
    if (!c) {
        fprintf(stderr, "genarm-admin: error: %s\n", e.msg);
        return EXIT_CONN;
    }
    int rc;
    if (strcmp(cmd, "tenant") == 0) rc = cmd_tenant(c, sub_argc, sub);
    else if (strcmp(cmd, "key") == 0) rc = cmd_key(c, sub_argc, sub);
    else if (strcmp(cmd, "profile") == 0) rc = cmd_profile(c, sub_argc, sub);
    else if (strcmp(cmd, "base") == 0) rc = cmd_base(c, sub_argc, sub);
    else if (strcmp(cmd, "arm") == 0) rc = cmd_arm(c, sub_argc, sub);
    else if (strcmp(cmd, "workers") == 0) rc = sub_argc ? usage_error("workers takes no arguments%s", "") : cmd_workers(c);
    else rc = sub_argc ? usage_error("queue takes no arguments%s", "") : cmd_queue(c);
    gn_ctl_free(c);
    return rc;
}
