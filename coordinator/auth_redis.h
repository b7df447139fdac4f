/* auth_redis.h — gn_coord_auth over the Redis control plane: bearer keys
 * resolve with gn_ctl_key_lookup (Redis stores only their SHA-256), profiles
 * with gn_ctl_profile_get (a tenant reaches only its own).
 *
 * One gn_ctl connection guarded by a mutex (a gn_ctl is not thread-safe);
 * lookups are one round trip each, which is small beside a generation.
 * Thread-safety: the gn_coord_auth callbacks may be called from any thread. */
#ifndef GN_AUTH_REDIS_H
#define GN_AUTH_REDIS_H

#include "coord_backend.h"
#include "gn_err.h"

typedef struct gn_auth_redis gn_auth_redis;

/* Connects to redis at host:port; timeout_ms bounds every command. NULL with
 * err on failure. */
gn_auth_redis *gn_auth_redis_create(const char *host, int port, int timeout_ms, gn_err *err);

/* The interface (borrowing a, which must outlive its use). */
gn_coord_auth gn_auth_redis_iface(gn_auth_redis *a);

void gn_auth_redis_free(gn_auth_redis *a); /* NULL is a no-op */

#endif
