/* auth_redis.c — API keys and profiles from Redis (auth_redis.h). */
#include "auth_redis.h"

#include <pthread.h>

#include "control.h"
#include "gn_alloc.h"

struct gn_auth_redis {
    pthread_mutex_t mu;
    gn_ctl *c;
};

gn_auth_redis *gn_auth_redis_create(const char *host, int port, int timeout_ms, gn_err *err) {
    gn_auth_redis *a = gn_calloc(1, sizeof *a);
    if (!a) {
        gn_errf(err, GN_ENOMEM, "auth: out of memory");
        return NULL;
    }
    if (!(a->c = gn_ctl_connect(host, port, timeout_ms, err))) {
        gn_free(a);
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

static int lookup_key(void *impl, const char *raw_key, char tenant[GN_CTL_ID_MAX], gn_err *err) {
    gn_auth_redis *a = impl;
    pthread_mutex_lock(&a->mu);
    int rc = gn_ctl_key_lookup(a->c, raw_key, tenant, err);
    pthread_mutex_unlock(&a->mu);
    return rc;
}

static int get_profile(void *impl, const char *tenant, const char *name, gn_ctl_profile *out, gn_err *err) {
    gn_auth_redis *a = impl;
    pthread_mutex_lock(&a->mu);
    int rc = gn_ctl_profile_get(a->c, tenant, name, out, err);
    pthread_mutex_unlock(&a->mu);
    return rc;
}

gn_coord_auth gn_auth_redis_iface(gn_auth_redis *a) {
    gn_coord_auth x = {a, lookup_key, get_profile};
    return x;
}

void gn_auth_redis_free(gn_auth_redis *a) {
    if (!a) return;
    gn_ctl_free(a->c);
    pthread_mutex_destroy(&a->mu);
    gn_free(a);
}
