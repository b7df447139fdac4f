/* worker_proc.h — starting a worker program as a child process in the
 * integration tests: it dies with the test, logs to a file, and reports the
 * endpoint it bound through a ready file. */
#ifndef GN_WORKER_PROC_H
#define GN_WORKER_PROC_H

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Forks and execs bin with argv (NULL-terminated, argv[0] included), stderr
 * to `log`; the child gets SIGKILL when the test process dies. Returns the
 * pid, or -1 when fork failed. */
static inline pid_t gn_t_spawn(const char *bin, const char *const *argv, const char *log) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the test died before prctl took effect */
        _exit(127);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
    execv(bin, (char *const *)argv);
    _exit(127);
}

/* Waits up to 30 s for child pid to write a line to `ready` and copies it
 * (without the newline) to endpoint. Returns 0; -2 when the child exited
 * first (it is reaped, and its log is printed under `what`); -1 on timeout
 * (the child keeps running: the caller still owns it). */
static inline int gn_t_wait_ready(pid_t pid, const char *ready, const char *log, const char *what,
                                  char *endpoint, size_t cap) {
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(ready, "r");
        if (f) {
            int ok = fgets(endpoint, (int)cap, f) != NULL;
            fclose(f);
            endpoint[strcspn(endpoint, "\n")] = 0;
            if (ok && endpoint[0]) return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "%s exited early (status %d); log %s:\n", what, st, log);
            char cmd[700];
            snprintf(cmd, sizeof cmd, "cat '%s' >&2", log);
            if (system(cmd)) {
            }
            return -2;
        }
        usleep(50000);
    }
    return -1;
}

/* Sends sig to pid and waits up to timeout_ms for it to exit. Returns its
 * exit status (128 + signal when a signal ended it), or -1 when it had to be
 * killed (SIGKILL) after the timeout. Either way the child is reaped. */
static inline int gn_t_stop(pid_t pid, int sig, int timeout_ms) {
    kill(pid, sig);
    for (int i = 0; i < timeout_ms / 10; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* The test's scratch directory at exit: when `dump`, the last `lines` lines
 * of every worker log in it go to stderr (they explain most failures); then
 * the directory is removed. */
static inline void gn_t_finish_dir(const char *dir, int dump, int lines) {
    char cmd[700];
    if (dump) {
        snprintf(cmd, sizeof cmd, "for f in '%s'/*.log; do echo \"== $f\"; tail -n %d \"$f\"; done >&2", dir,
                 lines);
        if (system(cmd)) {
        }
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* on_fatal runs (and should kill the children) on SIGSEGV, SIGABRT, SIGTERM
 * and SIGINT; SIGPIPE is ignored (a dead worker's socket). */
static inline void gn_t_catch_fatal(void (*on_fatal)(int)) {
    signal(SIGSEGV, on_fatal);
    signal(SIGABRT, on_fatal);
    signal(SIGTERM, on_fatal);
    signal(SIGINT, on_fatal);
    signal(SIGPIPE, SIG_IGN);
}

#endif
