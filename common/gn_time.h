/* gn_time.h — the monotonic clock in seconds, one definition for every
 * module that measures intervals or deadlines (and compares them with each
 * other: a snapshot's time from one module against a job's from another). */
#ifndef GN_TIME_H
#define GN_TIME_H

#include <time.h>

static inline double gn_mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
