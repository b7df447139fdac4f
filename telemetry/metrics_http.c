/* metrics_http.c — GET /metrics and GET /health over libmicrohttpd (see
 * metrics_http.h). */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"

struct gn_metrics_http {
    gn_metrics *m;
    struct MHD_Daemon *d;
    int port;
    char address[64];
};

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type, void *body, size_t len,
                               enum MHD_ResponseMemoryMode mode) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state) {
    (void)version;
    (void)upload;
    gn_metrics_http *s = cls;
    if (!*state) { /* first call for this request: headers only */
        static int marker;
        *state = &marker;
        return MHD_YES;
    }
    *upload_size = 0; /* a body (there should be none) is ignored */
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        static const char msg[] = "method not allowed\n";
        return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, (void *)msg, sizeof msg - 1, MHD_RESPMEM_PERSISTENT);
    }
    if (!strcmp(url, "/health")) {
        static const char ok[] = "ok\n";
        return respond(c, MHD_HTTP_OK, text, (void *)ok, sizeof ok - 1, MHD_RESPMEM_PERSISTENT);
    }
    if (!strcmp(url, "/metrics")) {
        char *out = NULL;
        size_t len = 0;
        gn_err e = {0};
        if (gn_metrics_render(s->m, &out, &len, &e) != 0) {
            static const char fail[] = "metrics unavailable\n";
            return respond(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text, (void *)fail, sizeof fail - 1,
                           MHD_RESPMEM_PERSISTENT);
        }
        /* MHD copies (the text is gn_malloc'd, MHD frees with free()). */
        enum MHD_Result r = respond(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", out, len,
                                    MHD_RESPMEM_MUST_COPY);
        gn_free(out);
        return r;
    }
    static const char nf[] = "not found\n";
    return respond(c, MHD_HTTP_NOT_FOUND, text, (void *)nf, sizeof nf - 1, MHD_RESPMEM_PERSISTENT);
}

gn_metrics_http *gn_metrics_http_start(gn_metrics *m, const char *listen, gn_err *err) {
    char host[64] = "127.0.0.1";
    long port = 0;
    if (listen && listen[0]) {
        const char *colon = strrchr(listen, ':');
        char *end = NULL;
        if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host ||
            (port = strtol(colon + 1, &end, 10), !colon[1] || *end || port < 0 || port > 65535)) {
            gn_errf(err, GN_EINVAL, "metrics listen address \"%s\": expected HOST:PORT", listen);
            return NULL;
        }
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = 0;
        if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        gn_errf(err, GN_EINVAL, "metrics listen address \"%s\": not an IPv4 address", host);
        return NULL;
    }
    gn_metrics_http *s = gn_calloc(1, sizeof *s);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "metrics server: out of memory");
        return NULL;
    }
    s->m = m;
    s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG, (uint16_t)port,
                            NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!s->d) {
        gn_errf(err, GN_EIO, "metrics server: cannot listen on %s:%ld", host, port);
        gn_free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (int)port;
    snprintf(s->address, sizeof s->address, "%s:%d", host, s->port);
    return s;
}

int gn_metrics_http_port(const gn_metrics_http *s) { return s->port; }

const char *gn_metrics_http_address(const gn_metrics_http *s) { return s->address; }

void gn_metrics_http_stop(gn_metrics_http *s) {
    if (!s) return;
    if (s->d) MHD_stop_daemon(s->d);
    gn_free(s);
}
