/* test_arm_pin.c — the coordinator's ARM placement snapshot over a private
 * redis-server (coordinator/arm_pin.h): the least loaded holder first, the
 * ipc:// endpoint of a worker on this host, the registry's current version
 * after a promotion, a worker that leaves, parking and taking back (each job
 * its own request; a refused park retried), and no
 * Redis on the caller's side (the snapshot is read while Redis is stopped). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "arm_pin.h"
#include "control/redis_harness.h"
#include "gn_test.h"

#define HASH "0000000000000000000000000000000000000000000000000000000000000000"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static gn_ctl_worker worker(const char *id, const char *ep, const char *host, const char *ipc, int load,
                            const char *arm1, const char *arm2) {
    gn_ctl_worker w;
    memset(&w, 0, sizeof w);
    snprintf(w.id, sizeof w.id, "%s", id);
    w.kind = GN_CTL_WORKER_REWARD;
    snprintf(w.endpoint, sizeof w.endpoint, "%s", ep);
    snprintf(w.host, sizeof w.host, "%s", host);
    snprintf(w.ipc, sizeof w.ipc, "%s", ipc);
    w.capacity = 10;
    w.load = load;
    snprintf(w.arms[w.n_arms++], GN_CTL_REF_MAX, "%s", arm1);
    if (arm2) snprintf(w.arms[w.n_arms++], GN_CTL_REF_MAX, "%s", arm2);
    return w;
}

/* Scripts run by the Redis server so far (INFO commandstats: eval + evalsha). */
static long eval_calls(redisContext *raw) {
    redisReply *r = redisCommand(raw, "INFO commandstats");
    long n = 0;
    for (const char *p = r && r->type == REDIS_REPLY_STRING ? r->str : "";
         (p = strstr(p, "cmdstat_eval")) != NULL; p++) {
        const char *c = strstr(p, "calls=");
        if (c) n += atol(c + 6);
    }
    freeReplyObject(r);
    return n;
}

/* Waits (at most 3 s) for a snapshot taken after t. */
static int fresh(gn_arm_pin *a, double t) {
    for (int i = 0; i < 300; i++) {
        char eps[GN_ARM_PIN_MAX_CANDIDATES][GN_CTL_PATH_MAX];
        double taken = 0;
        gn_arm_pin_find(a, "x", "1", eps, 1, &taken);
        if (taken > t) return 1;
        gn_arm_pin_kick(a);
        usleep(10000);
    }
    return 0;
}

int main(void) {
    int port = gn_redis_start();
    gn_err e = {0};
    gn_ctl *c = gn_ctl_connect("127.0.0.1", port, 2000, &e);
    CHECK(c != NULL, "connect: %s", e.msg);
    if (!c) GN_TEST_MAIN_END();
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    CHECK(gn_ctl_arm_register(c, "helpful", "1", "/m/h1", HASH, &e) == 0, "register: %s", e.msg);
    CHECK(gn_ctl_arm_register(c, "helpful", "2", "/m/h2", HASH, &e) == 0, "register v2: %s", e.msg);
    /* three holders of helpful@1: loads 7, 2 and 5 of 10; the one at load 5 is on this host */
    gn_ctl_worker w1 = worker("w1", "tcp://10.0.0.1:1", "elsewhere", "", 7, "helpful@1", NULL);
    gn_ctl_worker w2 = worker("w2", "tcp://10.0.0.2:1", "elsewhere", "ipc:///tmp/w2.sock", 2, "helpful@1", "safe@3");
    gn_ctl_worker w3 = worker("w3", "tcp://10.0.0.3:1", host, "ipc:///tmp/w3.sock", 5, "helpful@1", NULL);
    CHECK(gn_ctl_worker_heartbeat(c, &w1, 60000, &e) == 0 && gn_ctl_worker_heartbeat(c, &w2, 60000, &e) == 0 &&
              gn_ctl_worker_heartbeat(c, &w3, 60000, &e) == 0,
          "heartbeats: %s", e.msg);

    gn_arm_pin_params p = gn_arm_pin_default_params();
    p.redis_host = "127.0.0.1";
    p.redis_port = port;
    p.coordinator_id = "test-coord";
    p.local_host = host;
    p.refresh_ms = 20;
    p.forget_s = 0.5;
    double t0 = now_s();
    gn_arm_pin *a = gn_arm_pin_create(&p, &e);
    CHECK(a != NULL, "create: %s", e.msg);
    if (!a) GN_TEST_MAIN_END();
    CHECK(fresh(a, t0), "a snapshot comes");

    char eps[GN_ARM_PIN_MAX_CANDIDATES][GN_CTL_PATH_MAX];
    double taken = 0;
    int n = gn_arm_pin_find(a, "helpful", "1", eps, GN_ARM_PIN_MAX_CANDIDATES, &taken);
    CHECK(n == 3 && !strcmp(eps[0], "tcp://10.0.0.2:1") && !strcmp(eps[1], "ipc:///tmp/w3.sock") &&
              !strcmp(eps[2], "tcp://10.0.0.1:1"),
          "least loaded first, this host's worker over ipc: %d [%s, %s, %s]", n, n > 0 ? eps[0] : "",
          n > 1 ? eps[1] : "", n > 2 ? eps[2] : "");
    CHECK(gn_arm_pin_find(a, "helpful", "1", eps, 1, NULL) == 3 && !strcmp(eps[0], "tcp://10.0.0.2:1"),
          "max 1 still counts all holders");
    CHECK(gn_arm_pin_find(a, "safe", "3", eps, 4, NULL) == 1, "a second ARM of w2");
    CHECK(gn_arm_pin_find(a, "helpful", "2", eps, 4, NULL) == 0, "no holder of helpful@2");

    /* current versions: unknown until asked, then read by the next refresh */
    char ver[GN_CTL_ID_MAX];
    CHECK(gn_arm_pin_current(a, "helpful", ver, NULL) == 0 && ver[0] == 0, "not followed yet");
    double t1 = now_s();
    CHECK(fresh(a, t1) && gn_arm_pin_current(a, "helpful", ver, NULL) == 1 && !strcmp(ver, "1"),
          "followed: current 1 (%s)", ver);
    CHECK(gn_ctl_arm_promote(c, "helpful", "2", NULL, &e) == 0, "promote: %s", e.msg);
    double t2 = now_s();
    CHECK(fresh(a, t2) && gn_arm_pin_current(a, "helpful", ver, &taken) == 1 && !strcmp(ver, "2") && taken > t2,
          "after the promotion: current 2 (%s)", ver);

    /* a worker that leaves the registry leaves the snapshot */
    CHECK(gn_ctl_worker_remove(c, "w2", &e) == 0, "remove: %s", e.msg);
    double t3 = now_s();
    CHECK(fresh(a, t3) && gn_arm_pin_find(a, "helpful", "1", eps, 4, NULL) == 2 &&
              !strcmp(eps[0], "ipc:///tmp/w3.sock"),
          "w2 gone: %s", eps[0]);

    /* parking and taking back: done by the control thread; a job takes back
     * only its own request, the other jobs waiting for the version stay */
    CHECK(gn_arm_pin_park(a, "helpful", "2", 42) == 0 && gn_arm_pin_park(a, "helpful", "2", 43) == 0 &&
              gn_arm_pin_park(a, "helpful", "2", 42) == 0,
          "park (twice for job 42: once)");
    long waiting = 0;
    for (int i = 0; i < 200 && (waiting = gn_ctl_wait_count(c, &e)) != 2; i++) usleep(10000);
    CHECK(waiting == 2, "parked: %ld waiting (want 2)", waiting);
    gn_arm_pin_unpark(a, "helpful", "2", 42);
    for (int i = 0; i < 200 && (waiting = gn_ctl_wait_count(c, &e)) != 1; i++) usleep(10000);
    usleep(100000); /* a wrong take-back would have emptied the list by now */
    waiting = gn_ctl_wait_count(c, &e);
    char **refs = NULL;
    size_t nref = 0;
    CHECK(waiting == 1 && gn_ctl_wait_arms(c, &refs, &nref, &e) == 0 && nref == 1 && !strcmp(refs[0], "helpful@2"),
          "job 42 took its request back, job 43's is still parked: %ld waiting", waiting);
    gn_ctl_strv_free(refs, nref);
    gn_arm_pin_unpark(a, "helpful", "2", 43);
    gn_arm_pin_unpark(a, "helpful", "2", 44); /* never parked: nothing happens */
    for (int i = 0; i < 200 && (waiting = gn_ctl_wait_count(c, &e)) != 0; i++) usleep(10000);
    CHECK(waiting == 0 && gn_ctl_wait_arms(c, &refs, &nref, &e) == 0 && nref == 0,
          "taken back: %ld waiting, %zu ARMs waited for", waiting, nref);
    gn_ctl_strv_free(refs, nref);

    /* a park Redis refuses (the waiting list's key holds a string) is retried
     * until it lands, without the scheduler asking again */
    redisContext *raw = gn_redis_raw();
    freeReplyObject(redisCommand(raw, "SET genarm:waiting:helpful@9 blocked"));
    long evals0 = eval_calls(raw);
    CHECK(gn_arm_pin_park(a, "helpful", "9", 50) == 0, "park on a broken list is accepted");
    usleep(150000);
    long evals = eval_calls(raw) - evals0; /* one try per refresh (20 ms), not a spin */
    CHECK(evals >= 1 && evals < 40, "the refused park is retried at each refresh: %ld tries in 150 ms", evals);
    redisReply *r = redisCommand(raw, "TYPE genarm:waiting:helpful@9");
    CHECK(r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "string"), "the push failed meanwhile");
    freeReplyObject(r);
    freeReplyObject(redisCommand(raw, "DEL genarm:waiting:helpful@9"));
    long len = 0;
    for (int i = 0; i < 300 && len != 1; i++) {
        usleep(10000);
        r = redisCommand(raw, "LLEN genarm:waiting:helpful@9");
        len = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
        freeReplyObject(r);
    }
    CHECK(len == 1, "the park was retried once Redis accepts it: %ld on the list", len);
    gn_arm_pin_unpark(a, "helpful", "9", 50);
    for (int i = 0; i < 200 && (waiting = gn_ctl_wait_count(c, &e)) != 0; i++) usleep(10000);
    CHECK(waiting == 0, "and taken back: %ld", waiting);
    redisFree(raw);

    /* names no job asks about any more are no longer followed: 300 names
     * (more than the snapshot follows at once) come and go, and a name asked
     * about afterwards is still followed */
    for (int i = 0; i < 300; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "gone%d", i);
        gn_arm_pin_current(a, nm, ver, NULL);
    }
    usleep((useconds_t)(p.forget_s * 1e6) + 100000);
    double t5 = now_s();
    CHECK(fresh(a, t5) && fresh(a, now_s()), "snapshots after the names were forgotten");
    CHECK(gn_ctl_arm_register(c, "latecomer", "4", "/m/l4", HASH, &e) == 0, "register latecomer: %s", e.msg);
    gn_arm_pin_current(a, "latecomer", ver, NULL);
    double t6 = now_s();
    CHECK(fresh(a, t6) && gn_arm_pin_current(a, "latecomer", ver, NULL) == 1 && !strcmp(ver, "4"),
          "a name asked about after 300 others is followed: current '%s'", ver);
    gn_arm_pin_current(a, "helpful", ver, NULL); /* followed again for the check below */
    CHECK(fresh(a, now_s()) && gn_arm_pin_current(a, "helpful", ver, NULL) == 1, "helpful followed again");

    /* the caller never waits for Redis: with Redis gone the snapshot still answers at once */
    gn_redis_stop();
    double t4 = now_s();
    n = gn_arm_pin_find(a, "helpful", "1", eps, 4, NULL);
    int cur = gn_arm_pin_current(a, "helpful", ver, NULL);
    double dt = now_s() - t4;
    CHECK(n == 2 && cur == 1 && dt < 0.05, "Redis down: the last snapshot answers in %.3f s", dt);
    gn_arm_pin_free(a);
    gn_ctl_free(c);
    GN_TEST_MAIN_END();
}
