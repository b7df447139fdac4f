/* backend.c — the backend factory: a device name to a backend object. */
#include "backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "gn_alloc.h"
#ifdef GN_HAVE_CUDA
#include "backend_cuda.h"
#endif

gn_backend_params gn_backend_default_params(void) {
    gn_backend_params p;
    memset(&p, 0, sizeof p);
    p.n_threads = 0;
    return p;
}

gn_backend *gn_backend_create(const char *device, const gn_backend_params *p, gn_err *err) {
    gn_backend_params def = gn_backend_default_params();
    if (!p) p = &def;
    if (!device || !*device) device = "cpu";
    if (!strcmp(device, "cpu")) return gn_backend_cpu_create(0, p->n_threads, err);
    if (!strcmp(device, "cpu-ref")) return gn_backend_cpu_create(1, 1, err);
    if (!strncmp(device, "cuda", 4) && (device[4] == '\0' || device[4] == ':')) {
        long dev = 0;
        if (device[4] == ':') {
            char *end;
            errno = 0;
            dev = strtol(device + 5, &end, 10);
            if (errno || end == device + 5 || *end || dev < 0 || dev > 1024) {
                gn_errf(err, GN_EINVAL, "device '%s': expected cuda or cuda:N with N a device number",
                        device);
                return NULL;
            }
        }
#ifdef GN_HAVE_CUDA
        return gn_backend_cuda_create((int)dev, err);
#else
        gn_errf(err, GN_EUNSUP, "device '%s': this build was built without CUDA (use cpu)", device);
        return NULL;
#endif
    }
    gn_errf(err, GN_EINVAL, "unknown device '%s' (expected cpu, cpu-ref, cuda or cuda:N)", device);
    return NULL;
}

void gn_backend_free(gn_backend *be) {
    if (be) be->ops->destroy(be);
}

void *gn_backend_host_alloc(gn_backend *be, size_t nbytes) {
    return be->ops->host_alloc ? be->ops->host_alloc(be, nbytes) : gn_malloc(nbytes ? nbytes : 1);
}

void gn_backend_host_free(gn_backend *be, void *p) {
    if (!p) return;
    if (be->ops->host_free) be->ops->host_free(be, p);
    else gn_free(p);
}
