/* model_host.c — seq table + StepRequest execution (see model_host.h). */
#include "model_host.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"


typedef struct slot {
    uint64_t id;
    const gn_lora_adapter *ad; /* the adapter of its ARM (NULL: the model itself); slots are
                                  keyed by (id, ad): one coordinator sequence may use several
                                  adapters of one backbone */
    gn_seq *seq;
    int64_t last_used_ms;
    int used;
    int fresh; /* created by the step now running */
} slot;

struct gn_host {
    gn_model *m;
    gn_runner *r;
    gn_host_params p;
    int max_ctx, n_vocab, n_out, n_live;
    slot *slots;                      /* (max_seqs) linear table: max_seqs is hundreds at most */
    /* Per-step scratch, sized once at create (or grown for the output). */
    gn_step_item *items;              /* (max_req_seqs) */
    int *item_slot;                   /* (max_req_seqs) slot of each runner item */
    int *item_req;                    /* (max_req_seqs) request index of each runner item */
    Genarm__V1__SeqResult *res;       /* (max_req_seqs) */
    Genarm__V1__SeqResult **res_ptr;  /* (max_req_seqs) */
    gn_wire_seq_errors *errors;       /* (max_req_seqs) error replies */
    Genarm__V1__Tensor tensor;
    Genarm__V1__ModelRef model_ref;
    float *out;                       /* (out_cap) float32 log-probs from the runner */
    size_t out_cap;
    int out_pinned;                   /* out came from gn_backend_host_alloc (else gn_malloc) */
    uint8_t *bytes;                   /* (bytes_cap) packed tensor data */
    size_t bytes_cap;
};

gn_host_params gn_host_default_params(void) {
    gn_host_params p = {.max_seqs = 64, .max_req_seqs = 256, .idle_timeout_ms = 300000,
                        .runner = gn_runner_default_params()};
    return p;
}

gn_host *gn_host_create(gn_model *m, const gn_host_params *pin, gn_err *err) {
    gn_host_params p = pin ? *pin : gn_host_default_params();
    if (p.max_seqs < 1 || p.max_seqs > 65536) {
        gn_errf(err, GN_EINVAL, "host: max_seqs = %d (1 .. 65536)", p.max_seqs);
        return NULL;
    }
    p.runner.max_seqs = p.max_seqs;
    if (p.max_req_seqs < p.max_seqs) p.max_req_seqs = p.max_seqs;
    if (p.max_req_seqs > 65536) p.max_req_seqs = 65536;
    gn_host *h = gn_calloc(1, sizeof *h);
    if (!h) {
        gn_errf(err, GN_ENOMEM, "host: out of memory");
        return NULL;
    }
    h->m = m;
    h->p = p;
    const gn_model_config *c = gn_model_cfg(m);
    h->n_vocab = c->n_vocab;
    h->n_out = gn_model_n_out(m);
    /* Same default as the runner's (runner.h), so the per-sequence context
     * check here matches the one that would fail the whole batch there. */
    h->max_ctx = p.runner.max_ctx > 0 ? p.runner.max_ctx
                 : (c->max_pos > 0 && c->max_pos < 4096 ? c->max_pos : 4096);
    size_t n = (size_t)p.max_req_seqs; /* per-request scratch; the slot table holds max_seqs */
    h->slots = gn_calloc((size_t)p.max_seqs, sizeof *h->slots);
    h->items = gn_calloc(n, sizeof *h->items);
    h->item_slot = gn_calloc(n, sizeof *h->item_slot);
    h->item_req = gn_calloc(n, sizeof *h->item_req);
    h->res = gn_calloc(n, sizeof *h->res);
    h->res_ptr = gn_calloc(n, sizeof *h->res_ptr);
    h->errors = gn_wire_seq_errors_create(p.max_req_seqs);
    if (!h->slots || !h->items || !h->item_slot || !h->item_req || !h->res || !h->res_ptr ||
        !h->errors) {
        gn_errf(err, GN_ENOMEM, "host: out of memory");
        gn_host_free(h);
        return NULL;
    }
    if (!(h->r = gn_runner_create(m, &p.runner, err))) {
        gn_host_free(h);
        return NULL;
    }
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = "";
    h->model_ref = mr;
    return h;
}

/* The runner's output buffer: the backend's host memory (page-locked on a
 * GPU: the log-probs are downloaded into it every step) up to
 * GN_HOST_PINNED_MAX, plain memory beyond (an all-logits scoring request over
 * a long prompt must not pin gigabytes for the worker's lifetime). Its
 * contents need not survive growing. */
enum { GN_HOST_PINNED_MAX = 256 << 20 };

static void free_out(gn_host *h) {
    if (h->out_pinned) gn_backend_host_free(gn_model_backend(h->m), h->out);
    else gn_free(h->out);
    h->out = NULL;
    h->out_cap = 0;
}

static int grow_out(gn_host *h, size_t need) {
    if (need <= h->out_cap) return 0;
    int pinned = need <= GN_HOST_PINNED_MAX;
    float *nb = pinned ? gn_backend_host_alloc(gn_model_backend(h->m), need) : gn_malloc(need);
    if (!nb) return GN_ENOMEM;
    free_out(h);
    h->out = nb;
    h->out_cap = need;
    h->out_pinned = pinned;
    return 0;
}

void gn_host_free(gn_host *h) {
    if (!h)
        return;
    if (h->slots)
        for (int i = 0; i < h->p.max_seqs; i++)
            if (h->slots[i].used)
                gn_seq_free(h->slots[i].seq);
    gn_runner_free(h->r);
    gn_free(h->slots);
    gn_free(h->items);
    gn_free(h->item_slot);
    gn_free(h->item_req);
    gn_free(h->res);
    gn_free(h->res_ptr);
    gn_wire_seq_errors_free(h->errors);
    free_out(h);
    gn_free(h->bytes);
    gn_free(h);
}

static int find_slot(const gn_host *h, uint64_t id, const gn_lora_adapter *ad) {
    for (int i = 0; i < h->p.max_seqs; i++)
        if (h->slots[i].used && h->slots[i].id == id && h->slots[i].ad == ad)
            return i;
    return -1;
}

static void drop_slot(gn_host *h, int i) {
    gn_seq_free(h->slots[i].seq);
    memset(&h->slots[i], 0, sizeof h->slots[i]);
    h->n_live--;
}

int gn_host_step(gn_host *h, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err) {
    return gn_host_step_for(h, NULL, req, now_ms, resp, err);
}

int gn_host_step_for(gn_host *h, const gn_lora_adapter *ad, const gn_wire_step_req *req, int64_t now_ms,
                     gn_wire_step_resp *resp, gn_err *err) {
    gn_dtype dt;
    if (gn_wire_dtype_from_proto((int)req->dtype, &dt)) {
        gn_errf(err, GN_EINVAL, "dtype %d is not F32, F16 or BF16", (int)req->dtype);
        return GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE;
    }
    if (req->n_seqs > (size_t)h->p.max_req_seqs) {
        gn_errf(err, GN_ERANGE, "%zu sequences in one step, this worker takes %d", req->n_seqs,
                h->p.max_req_seqs);
        return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
    }
    gn_wire_seq_errors_attach(h->errors, resp);
    resp->n_results = 0;
    resp->results = h->res_ptr;
    resp->model = &h->model_ref;
    if (req->model) {
        h->model_ref.name = req->model->name ? req->model->name : "";
        h->model_ref.version = req->model->version;
    }

    /* 1. Validate each sequence, find or create its KV cache. */
    int n_items = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        const Genarm__V1__SeqStep *s = req->seqs[i];
        int bad = -1;
        for (size_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= h->n_vocab) {
                bad = (int)t;
                break;
            }
        if (bad >= 0) {
            gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE,
                      "token %d: id %d out of range [0, %d)", bad, s->tokens[bad], h->n_vocab);
            continue;
        }
        if (s->n_tokens == 0 || s->n_tokens > (size_t)h->max_ctx ||
            s->start_pos > (uint32_t)h->max_ctx - s->n_tokens) {
            gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_CONTEXT_OVERFLOW,
                      "%u tokens held + %zu new exceed the context limit %d", s->start_pos,
                      s->n_tokens, h->max_ctx);
            continue;
        }
        int k = find_slot(h, s->seq_id, ad);
        if (k < 0) {
            if (s->start_pos != 0) {
                gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
                          "sequence not held (released, expired or never started) but start_pos "
                          "is %u; resend from 0",
                          s->start_pos);
                continue;
            }
            for (k = 0; k < h->p.max_seqs && h->slots[k].used; k++) {
            }
            if (k == h->p.max_seqs) {
                gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
                          "all %d sequence slots are in use", h->p.max_seqs);
                continue;
            }
            gn_err e2 = {0};
            gn_seq *seq = gn_seq_create(h->r, &e2);
            if (!seq) {
                gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_CAPACITY, "%s", e2.msg);
                continue;
            }
            if (ad && gn_seq_set_adapter(seq, ad, &e2) != 0) {
                gn_seq_free(seq);
                gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, "%s", e2.msg);
                continue;
            }
            slot sl = {.id = s->seq_id, .ad = ad, .seq = seq, .last_used_ms = now_ms, .used = 1, .fresh = 1};
            h->slots[k] = sl;
            h->n_live++;
        } else {
            int len = gn_seq_len(h->slots[k].seq);
            if (s->start_pos > (uint32_t)len) {
                gn_wire_seq_errors_add(h->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_POS_MISMATCH,
                          "start_pos %u but the worker holds %d tokens", s->start_pos, len);
                continue;
            }
        }
        gn_step_item it = {h->slots[k].seq, s->tokens, (int)s->n_tokens, s->all_logits ? 1 : 0};
        h->items[n_items] = it;
        h->item_slot[n_items] = k;
        h->item_req[n_items] = (int)i;
        n_items++;
    }

    /* 2. Size the output once, run the forward pass. */
    int rows = n_items ? gn_runner_step_rows(h->items, n_items) : 0;
    size_t n_vals, n_bytes;
    int rc = 0;
    if (gn_size_mul((size_t)rows, (size_t)h->n_out, &n_vals) ||
        gn_wire_tensor_nbytes(dt, (uint64_t)rows, (uint64_t)h->n_out, &n_bytes)) {
        rc = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        gn_errf(err, GN_ERANGE, "step output of %d rows overflows", rows);
    } else if (grow_out(h, n_vals * sizeof(float) + 1) ||
               (!(dt == GN_F32 && GN_WIRE_HOST_LE) && gn_grow((void **)&h->bytes, &h->bytes_cap, n_bytes + 1))) {
        rc = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
        gn_errf(err, GN_ENOMEM, "step output of %d rows x %d: out of memory", rows, h->n_out);
    }
    if (!rc && n_items) {
        /* Rewinds happen only now that the step is known to be runnable. */
        for (int j = 0; j < n_items; j++) {
            const Genarm__V1__SeqStep *s = req->seqs[h->item_req[j]];
            if ((int)s->start_pos < gn_seq_len(h->items[j].seq))
                gn_seq_truncate(h->items[j].seq, (int)s->start_pos);
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int src = gn_runner_step(h->r, h->items, n_items, h->out, err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int64_t us = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        resp->compute_us = us > 0 ? (uint64_t)us : 0;
        if (src != 0)
            rc = strstr(err->msg, "KV cache exhausted") ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                                        : GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
    if (rc) {
        for (int j = 0; j < n_items; j++)
            if (h->slots[h->item_slot[j]].fresh)
                drop_slot(h, h->item_slot[j]);
        return rc;
    }

    /* 3. Pack (F32 on a little-endian host: the rows as they are), report, release. */
    const uint8_t *data = (const uint8_t *)h->out;
    if (!(dt == GN_F32 && GN_WIRE_HOST_LE)) {
        if (gn_wire_pack_f32(h->out, n_vals, dt, h->bytes, h->bytes_cap, err) != 0)
            return GENARM__V1__ERROR_CODE__ERROR_INTERNAL; /* cannot happen: sized above */
        data = h->bytes;
    }
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = gn_wire_dtype_to_proto(dt);
    t.rows = (uint64_t)rows;
    t.cols = (uint64_t)h->n_out;
    t.data.data = (uint8_t *)data;
    t.data.len = n_bytes;
    h->tensor = t;
    resp->logprobs = &h->tensor;
    uint64_t row = 0;
    for (int j = 0; j < n_items; j++) {
        int k = h->item_slot[j];
        const Genarm__V1__SeqStep *s = req->seqs[h->item_req[j]];
        Genarm__V1__SeqResult r = GENARM__V1__SEQ_RESULT__INIT;
        r.seq_id = s->seq_id;
        r.row_offset = row;
        r.n_rows = s->all_logits ? (uint32_t)s->n_tokens : 1;
        r.seq_len = (uint32_t)gn_seq_len(h->slots[k].seq);
        row += r.n_rows;
        h->res[j] = r;
        h->res_ptr[j] = &h->res[j];
        h->slots[k].fresh = 0;
        h->slots[k].last_used_ms = now_ms;
        if (s->release_after)
            drop_slot(h, k);
    }
    resp->n_results = (size_t)n_items;
    return 0;
}

int gn_host_release(gn_host *h, const uint64_t *ids, size_t n) {
    return gn_host_release_for(h, NULL, ids, n);
}

int gn_host_release_for(gn_host *h, const gn_lora_adapter *ad, const uint64_t *ids, size_t n) {
    int freed = 0;
    for (size_t i = 0; i < n; i++) {
        int k = find_slot(h, ids[i], ad);
        if (k >= 0) {
            drop_slot(h, k);
            freed++;
        }
    }
    return freed;
}

int gn_host_release_all_for(gn_host *h, const gn_lora_adapter *ad) {
    int freed = 0;
    for (int i = 0; i < h->p.max_seqs; i++)
        if (h->slots[i].used && h->slots[i].ad == ad) {
            drop_slot(h, i);
            freed++;
        }
    return freed;
}

int gn_host_sweep(gn_host *h, int64_t now_ms) {
    if (h->p.idle_timeout_ms <= 0)
        return 0;
    int freed = 0;
    for (int i = 0; i < h->p.max_seqs; i++)
        if (h->slots[i].used && now_ms - h->slots[i].last_used_ms > h->p.idle_timeout_ms) {
            drop_slot(h, i);
            freed++;
        }
    return freed;
}

int gn_host_n_seqs(const gn_host *h) { return h->n_live; }
int gn_host_max_seqs(const gn_host *h) { return h->p.max_seqs; }
int gn_host_max_req_seqs(const gn_host *h) { return h->p.max_req_seqs; }
int gn_host_n_out(const gn_host *h) { return h->n_out; }

int gn_host_seq_len(const gn_host *h, uint64_t seq_id) {
    return gn_host_seq_len_for(h, NULL, seq_id);
}

int gn_host_seq_len_for(const gn_host *h, const gn_lora_adapter *ad, uint64_t seq_id) {
    int k = find_slot(h, seq_id, ad);
    return k < 0 ? -1 : gn_seq_len(h->slots[k].seq);
}

int gn_host_n_seqs_for(const gn_host *h, const gn_lora_adapter *ad) {
    int n = 0;
    for (int i = 0; i < h->p.max_seqs; i++) n += h->slots[i].used && h->slots[i].ad == ad;
    return n;
}

void gn_host_kv_usage(const gn_host *h, int *used_blocks, int *total_blocks) {
    gn_runner_kv_usage(h->r, used_blocks, total_blocks);
}
