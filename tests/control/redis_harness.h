/* redis_harness.h — starts a private redis-server for a test on a random free
 * loopback port and kills it at exit (also when the test crashes: the child
 * gets PR_SET_PDEATHSIG). Tests skip (exit 77) when /usr/bin/redis-server is
 * missing. Only ever binds and connects to 127.0.0.1. */
#ifndef GN_REDIS_HARNESS_H
#define GN_REDIS_HARNESS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define GN_REDIS_BIN "/usr/bin/redis-server"

static pid_t gn_redis_pid = -1;
static int gn_redis_port = 0;
static char gn_redis_dir[64];

static void gn_redis_stop(void) {
    if (gn_redis_pid > 0) {
        kill(gn_redis_pid, SIGKILL);
        waitpid(gn_redis_pid, NULL, 0);
        gn_redis_pid = -1;
    }
    if (gn_redis_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", gn_redis_dir);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", gn_redis_dir);
        gn_redis_dir[0] = 0;
    }
}

static void gn_redis_on_signal(int sig) {
    if (gn_redis_pid > 0) kill(gn_redis_pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int gn_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int gn_redis_ping(int port) {
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = 0;
    if (c && !c->err) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r) freeReplyObject(r);
    }
    if (c) redisFree(c);
    return ok;
}

/* Starts redis-server; returns its port. Skips the test when the binary is
 * missing; exits 1 when it cannot start. */
static int gn_redis_start(void) {
    if (access(GN_REDIS_BIN, X_OK) != 0) {
        printf("skipped: %s is missing\n", GN_REDIS_BIN);
        exit(77);
    }
    snprintf(gn_redis_dir, sizeof gn_redis_dir, "/tmp/gn_redis_XXXXXX");
    if (!mkdtemp(gn_redis_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(gn_redis_stop);
    signal(SIGSEGV, gn_redis_on_signal);
    signal(SIGABRT, gn_redis_on_signal);
    signal(SIGINT, gn_redis_on_signal);
    signal(SIGTERM, gn_redis_on_signal);
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = gn_free_port();
        if (port <= 0) continue;
        char ports[16];
        snprintf(ports, sizeof ports, "%d", port);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(1);
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (!freopen("/dev/null", "w", stdout)) _exit(126);
            execl(GN_REDIS_BIN, GN_REDIS_BIN, "--port", ports, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", gn_redis_dir, "--protected-mode", "yes",
                  (char *)NULL);
            _exit(127);
        }
        gn_redis_pid = pid;
        for (int i = 0; i < 100; i++) { /* up to ~5 s */
            if (gn_redis_ping(port)) {
                gn_redis_port = port;
                return port;
            }
            if (waitpid(pid, NULL, WNOHANG) == pid) { /* died: port taken? */
                gn_redis_pid = -1;
                break;
            }
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (gn_redis_pid > 0) {
            kill(gn_redis_pid, SIGKILL);
            waitpid(gn_redis_pid, NULL, 0);
            gn_redis_pid = -1;
        }
    }
    fprintf(stderr, "could not start redis-server\n");
    exit(1);
}

/* A raw hiredis connection to the test server (for planting data). */
static inline redisContext *gn_redis_raw(void) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", gn_redis_port, tv);
    if (!c || c->err) {
        fprintf(stderr, "raw connect failed\n");
        exit(1);
    }
    return c;
}

static inline void gn_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#endif
