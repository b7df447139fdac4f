/* arm_pin.h — ARM pinning and parking: which version of an ARM a job uses
 * and which reward worker holds it, without a Redis round trip on the
 * scheduler's path.
 *
 * A control thread with its own Redis connection keeps a SNAPSHOT of the live
 * worker registry (which worker holds which name@version, its load, its
 * endpoints) and of the registry's current version of every ARM the
 * scheduler has asked about. It refreshes every refresh_ms, and at once when
 * asked. The scheduler only reads the snapshot (a mutex and a copy), so a
 * job waiting for its ARM costs the running sequences nothing.
 *
 * Also on the control thread, because each is Redis I/O:
 *  - parking: a job whose ARM no live worker holds is put on the ARM's
 *    waiting list (a reward worker then loads it); taking the token back when
 *    the job gives up;
 *  - the reward workers' swap reports (arm_swap_duration_seconds);
 *  - without request sharing, acknowledging the parked requests a worker
 *    moves back onto the request stream (they are only tokens here: the job
 *    waits in this process and is admitted from the snapshot).
 *
 * Thread-safety: every function may be called from any thread. */
#ifndef GN_ARM_PIN_H
#define GN_ARM_PIN_H

#include <stddef.h>
#include <stdint.h>

#include "control.h"
#include "gn_err.h"
#include "metrics.h"

typedef struct gn_arm_pin_params {
    const char *redis_host; /* required */
    int redis_port;
    int redis_timeout_ms;   /* default 2000 */
    const char *coordinator_id;
    int refresh_ms;         /* snapshot period, default 100 */
    double forget_s;        /* an ARM name no job asked about for this long is no longer
                               followed, default 60 */
    int ack_parked;         /* 1: acknowledge parked requests coming back on the stream */
    const char *local_host; /* this host's name: its workers are reached over their ipc://
                               endpoint when they offer one; NULL = always TCP */
    gn_coord_metrics *metrics; /* optional (borrowed): arm_swap_duration_seconds */
} gn_arm_pin_params;

gn_arm_pin_params gn_arm_pin_default_params(void);

typedef struct gn_arm_pin gn_arm_pin;

/* Connects to Redis and starts the control thread. NULL with err. */
gn_arm_pin *gn_arm_pin_create(const gn_arm_pin_params *p, gn_err *err);
void gn_arm_pin_free(gn_arm_pin *a); /* stops the thread; NULL is a no-op */

#define GN_ARM_PIN_MAX_CANDIDATES 8

/* Endpoints of live reward workers holding name@version in the snapshot,
 * least loaded first (ipc:// for a worker on this host that offers it):
 * returns how many hold it (0: none) and writes the first min(that, max)
 * of them (max <= GN_ARM_PIN_MAX_CANDIDATES). *taken_at (may be NULL) receives when
 * the snapshot was taken (gn_mono_s seconds, gn_time.h; 0: none yet, nothing known). */
int gn_arm_pin_find(gn_arm_pin *a, const char *name, const char *version,
                    char endpoints[][GN_CTL_PATH_MAX], int max, double *taken_at);

/* The registry's current version of ARM name in the snapshot into version
 * (GN_CTL_ID_MAX bytes): 1, or 0 when not known yet (the name is then added
 * to those the next refresh reads). *taken_at as above. A name no one asks
 * about for forget_s is no longer followed. */
int gn_arm_pin_current(gn_arm_pin *a, const char *name, char *version, double *taken_at);

/* Parks job_id's request on name@version's waiting list, so that a reward
 * worker loads the ARM / takes that request (and only it) back. Done by the
 * control thread, which retries a Redis failure at each refresh until the
 * list agrees. park: 0, or GN_ERANGE when too many requests are parked at
 * once (the caller tries again later). Parking twice is parking once;
 * unparking what is not parked is a no-op. */
int gn_arm_pin_park(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id);
void gn_arm_pin_unpark(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id);

/* Asks for a refresh as soon as possible. */
void gn_arm_pin_kick(gn_arm_pin *a);

#endif
