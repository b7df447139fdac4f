/* promtool.h — runs `promtool check metrics` (Debian package prometheus) on
 * an exposition text, for the coordinator tests. */
#ifndef GN_TEST_PROMTOOL_H
#define GN_TEST_PROMTOOL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs promtool check metrics on text. -1 when promtool is missing, else the
 * number of problems other than "metric names should not contain ':'" (the
 * genarm: prefix follows vLLM's vllm: convention, which that lint flags). */
static inline int promtool_check(const char *text) {
    if (access("/usr/bin/promtool", X_OK) != 0) return -1;
    char path[] = "/tmp/gn_metrics_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
    FILE *f = ok ? popen(cmd, "r") : NULL;
    int problems = f ? 0 : 1;
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strstr(line, "metric names should not contain ':'")) {
            fprintf(stderr, "promtool: %s", line);
            problems++;
        }
    if (f) pclose(f);
    unlink(path);
    return problems;
}

#endif
