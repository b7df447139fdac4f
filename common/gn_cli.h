/* gn_cli.h — command-line value parsing shared by the programs (not used by
 * the libraries: it prints to stderr). */
#ifndef GN_CLI_H
#define GN_CLI_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* Parses v, the value of option `flag`, as a base-10 integer in [lo, hi].
 * Returns 0 and writes *out, or prints "<prog>: <flag> <v>: expected an
 * integer in [lo, hi]" to stderr and returns -1. */
static inline int gn_cli_long(const char *prog, const char *flag, const char *v, long lo, long hi,
                              long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "%s: %s %s: expected an integer in [%ld, %ld]\n", prog, flag, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* The same for an int. */
static inline int gn_cli_int(const char *prog, const char *flag, const char *v, int lo, int hi,
                             int *out) {
    long x;
    if (gn_cli_long(prog, flag, v, lo, hi, &x)) return -1;
    *out = (int)x;
    return 0;
}

#endif
