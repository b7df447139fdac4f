/* test_admin_cli.c — genarm-admin against a real redis-server: every
 * command, its output, its exit status and its error messages.
 * argv[1]: the genarm-admin binary; argv[2]: a directory with tokenizer.json. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "redis_harness.h"
#include "tokenizer.h"

static const char *g_bin;
static char g_redis[64];
static char g_out[16384], g_errout[16384];

/* Runs genarm-admin --redis 127.0.0.1:PORT args...; returns its exit status
 * (or -1), with stdout in g_out and stderr in g_errout. */
static int admin(const char *a0, ...) {
    const char *argv[40] = {g_bin, "--redis", g_redis};
    int argc = 3;
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a && argc < 38; a = va_arg(ap, const char *)) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    int po[2], pe[2];
    if (pipe(po) || pipe(pe)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        execv(g_bin, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t n = 0;
    ssize_t k;
    while (n + 1 < sizeof g_out && (k = read(po[0], g_out + n, sizeof g_out - 1 - n)) > 0) n += (size_t)k;
    g_out[n] = 0;
    n = 0;
    while (n + 1 < sizeof g_errout && (k = read(pe[0], g_errout + n, sizeof g_errout - 1 - n)) > 0) n += (size_t)k;
    g_errout[n] = 0;
    close(po[0]);
    close(pe[0]);
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_admin_cli GENARM_ADMIN TOKENIZER_DIR\n");
        return 1;
    }
    g_bin = argv[1];
    const char *tokdir = argv[2];
    int port = gn_redis_start();
    snprintf(g_redis, sizeof g_redis, "127.0.0.1:%d", port);
    gn_err e = {0};
    gn_ctl *c = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    if (!c) return 1;

    CHECK(admin("--help", NULL) == 0 && strstr(g_out, "usage:"), "--help");
    CHECK(admin("frobnicate", NULL) == 2 && strstr(g_errout, "unknown command"), "unknown command: %s", g_errout);
    CHECK(admin("tenant", NULL) == 2, "tenant without a verb");

    /* tenants */
    CHECK(admin("tenant", "add", "acme", "--name", "Acme Corp", NULL) == 0 && strstr(g_out, "acme"), "tenant add: %s", g_errout);
    CHECK(admin("tenant", "add", "beta", NULL) == 0, "tenant add beta");
    CHECK(admin("tenant", "add", "acme", NULL) == 1 && strstr(g_errout, "already exists"), "duplicate: %s", g_errout);
    CHECK(admin("tenant", "add", "bad:id", NULL) == 1 && strstr(g_errout, "identifier"), "bad id: %s", g_errout);
    CHECK(admin("tenant", "list", NULL) == 0 && strcmp(g_out, "acme\nbeta\n") == 0, "tenant list: [%s]", g_out);

    /* keys: printed once on stdout, works for lookup, stored hashed */
    CHECK(admin("key", "create", "acme", NULL) == 0, "key create: %s", g_errout);
    char key[128] = "";
    sscanf(g_out, "%127s", key);
    CHECK(strlen(key) == GN_CTL_KEY_LEN && strstr(g_errout, "only this once"), "one key printed: [%s]", g_out);
    char t[GN_CTL_ID_MAX];
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == 0 && strcmp(t, "acme") == 0, "CLI key resolves to acme: %s", e.msg);
    CHECK(admin("key", "create", "nobody", NULL) == 3 && strstr(g_errout, "does not exist"), "key for unknown tenant: %s", g_errout);
    CHECK(admin("key", "list", "acme", NULL) == 0 && strlen(g_out) == GN_CTL_KEY_ID_LEN + 1, "key list: [%s]", g_out);
    char kid[32] = "";
    sscanf(g_out, "%31s", kid);
    char hash[GN_CTL_HASH_HEX];
    gn_ctl_key_hash(key, hash);
    CHECK(strncmp(hash, kid, GN_CTL_KEY_ID_LEN) == 0, "key id is the hash prefix");
    CHECK(admin("key", "revoke", "acme", kid, NULL) == 0, "revoke: %s", g_errout);
    CHECK(gn_ctl_key_lookup(c, key, t, &e) == GN_ENOTFOUND, "revoked");
    CHECK(admin("key", "revoke", "acme", kid, NULL) == 3, "revoke twice: not found");

    /* base + ARMs: tokenizer hash computed from DIR/tokenizer.json */
    gn_tokenizer *tok = gn_tok_load(tokdir, &e);
    CHECK(tok != NULL, "load fixture tokenizer: %s", e.msg);
    char th[GN_CTL_HASH_HEX] = "";
    if (tok) snprintf(th, sizeof th, "%s", gn_tok_hash(tok));
    gn_tok_free(tok);
    CHECK(admin("base", "set", "--path", tokdir, NULL) == 0 && strstr(g_out, th), "base set: %s", g_errout);
    CHECK(admin("arm", "register", "hh", "--version", "1", "--path", tokdir, NULL) == 0 && strstr(g_out, th) &&
          strstr(g_out, "current"), "arm register with computed hash: %s %s", g_out, g_errout);
    gn_ctl_arm_version v;
    CHECK(gn_ctl_arm_get(c, "hh", "1", &v, &e) == 0 && strcmp(v.tokenizer_hash, th) == 0, "stored hash = gn_tok_hash");
    CHECK(admin("arm", "register", "hh", "--version", "2", "--path", "/models/hh-2", "--tokenizer-hash", th, NULL) == 0 &&
          strstr(g_out, "promote it"), "register v2 with an explicit hash: %s", g_errout);
    CHECK(admin("arm", "register", "hh", "--version", "3", "--path", "/models/hh-3", "--tokenizer-hash",
                "abababababababababababababababababababababababababababababababab", NULL) == 1 &&
          strstr(g_errout, "base model tokenizer"), "mismatched tokenizer refused: %s", g_errout);
    CHECK(admin("arm", "register", "hh", "--version", "4", "--path", "/nonexistent-dir", NULL) == 1 &&
          strstr(g_errout, "tokenizer hash"), "missing tokenizer.json: %s", g_errout);
    CHECK(admin("arm", "register", "hh", "--path", tokdir, NULL) == 2, "missing --version is a usage error");
    CHECK(admin("arm", "register", "hh", "--version", "5", "--path", tokdir, "--bogus", "x", NULL) == 2 &&
          strstr(g_errout, "--bogus"), "unknown option: %s", g_errout);

    /* profiles */
    CHECK(admin("profile", "set", "acme", "helpful", "--arm", "hh:1.5", "--beta", "0.5", "--temperature", "0.7",
                "--top-p", "0.9", "--top-k", "40", "--min-p", "0.05", "--max-tokens", "64", NULL) == 0,
          "profile set: %s", g_errout);
    gn_ctl_profile p;
    CHECK(gn_ctl_profile_get(c, "acme", "helpful", &p, &e) == 0 && p.n_arms == 1 && p.arms[0].weight == 1.5 &&
          p.beta == 0.5 && p.top_k == 40 && p.max_tokens == 64 && p.temperature == 0.7, "stored profile: %s", e.msg);
    CHECK(admin("profile", "get", "acme", "helpful", NULL) == 0 && strstr(g_out, "\"name\":\"helpful\"") &&
          strstr(g_out, "\"beta\":0.5") && strstr(g_out, "\"top_k\":40"), "profile get JSON: %s", g_out);
    CHECK(admin("profile", "get", "beta", "helpful", NULL) == 3, "another tenant cannot read it");
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh:1", "--beta", "0", NULL) == 1 && strstr(g_errout, "beta"),
          "beta 0: %s", g_errout);
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh:1", "--beta", "-1", NULL) == 1, "beta < 0");
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh:inf", "--beta", "1", NULL) == 1 && strstr(g_errout, "finite"),
          "inf weight: %s", g_errout);
    CHECK(admin("profile", "set", "acme", "x", "--arm", "ghost:1", "--beta", "1", NULL) == 3 && strstr(g_errout, "ghost"),
          "unregistered ARM: %s", g_errout);
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh", "--beta", "1", NULL) == 2, "--arm without weight");
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh:1", NULL) == 2 && strstr(g_errout, "--beta"), "missing beta");
    CHECK(admin("profile", "set", "acme", "x", "--arm", "hh:1", "--beta", "1", "--top-p", "1.5", NULL) == 1 &&
          strstr(g_errout, "top_p"), "top_p > 1: %s", g_errout);
    CHECK(admin("profile", "list", "acme", NULL) == 0 && strcmp(g_out, "helpful\n") == 0, "profile list: [%s]", g_out);

    /* promote / retire */
    CHECK(admin("arm", "retire", "hh", "1", NULL) == 1 && strstr(g_errout, "current version"), "retire current: %s", g_errout);
    CHECK(admin("arm", "promote", "hh", "2", NULL) == 0 && strstr(g_out, "was 1") && strstr(g_out, "swap"), "promote: %s", g_out);
    gn_ctl_swap s;
    CHECK(gn_ctl_swap_next(c, "0", 0, &s, &e) == 1 && strcmp(s.version, "2") == 0 && strcmp(s.previous, "1") == 0,
          "swap command in the stream");
    CHECK(admin("arm", "promote", "hh", "9", NULL) == 3, "promote unknown version");
    CHECK(admin("arm", "retire", "hh", "1", NULL) == 0, "retire old: %s", g_errout);
    CHECK(admin("arm", "list", NULL) == 0 && strstr(g_out, "hh") && strstr(g_out, "/models/hh-2") && !strstr(g_out, tokdir),
          "arm list: %s", g_out);

    /* workers and queue */
    gn_ctl_worker w;
    memset(&w, 0, sizeof w);
    snprintf(w.id, sizeof w.id, "rw-0");
    w.kind = GN_CTL_WORKER_REWARD;
    snprintf(w.endpoint, sizeof w.endpoint, "tcp://127.0.0.1:5601");
    w.n_arms = 1;
    snprintf(w.arms[0], sizeof w.arms[0], "hh@2");
    w.capacity = 8;
    w.load = 3;
    snprintf(w.host, sizeof w.host, "node-a");
    snprintf(w.ipc, sizeof w.ipc, "ipc:///tmp/rw-0.sock");
    CHECK(gn_ctl_worker_heartbeat(c, &w, 10000, &e) == 0, "heartbeat");
    CHECK(admin("workers", NULL) == 0 && strstr(g_out, "rw-0") && strstr(g_out, "hh@2") && strstr(g_out, "3/8") &&
              strstr(g_out, "node-a") && strstr(g_out, "ipc:///tmp/rw-0.sock"),
          "workers: %s", g_out);
    CHECK(gn_ctl_queue_init(c, &e) == 0 && gn_ctl_queue_push(c, "r", 1, NULL, &e) == 0 &&
          gn_ctl_wait_push(c, "hh", "3", "w", 1, &e) == 0, "queue setup");
    CHECK(admin("queue", NULL) == 0 && strstr(g_out, "queued 1") && strstr(g_out, "waiting_for_arm 1"), "queue: %s", g_out);

    CHECK(admin("tenant", "del", "acme", NULL) == 0, "tenant del");
    CHECK(admin("tenant", "del", "acme", NULL) == 3, "tenant del twice");
    CHECK(admin("tenant", "list", NULL) == 0 && strcmp(g_out, "beta\n") == 0, "list after del");

    /* unreachable redis: exit 4 with a clear message */
    gn_ctl_free(c);
    gn_redis_stop();
    CHECK(admin("tenant", "list", NULL) == 4 && strstr(g_errout, "connect"), "redis down: %s", g_errout);
    CHECK(admin("--redis", "nonsense", "tenant", "list", NULL) == 2, "bad --redis"); /* overrides the first */
    GN_TEST_MAIN_END();
}
