/* model_host.c — seq table, batched StepRequest execution, kept rows and
 * fetch (see model_host.h). */
#include "model_host.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "row_select.h"


typedef struct slot {
    uint64_t id;
    const gn_lora_adapter *ad; /* the adapter of its ARM (NULL: the model itself); slots are
                                  keyed by (id, ad): one coordinator sequence may use several
                                  adapters of one backbone */
    gn_seq *seq;
    int64_t last_used_ms;
    int used;
    int fresh;      /* created by the batch now running */
    uint64_t mark;  /* the batch that steps it (== h->batch_gen while that batch runs) */
    float *row;     /* (n_out) the F32 row of its last sparse step once moved out of the pass
                       output (keep_rows), allocated on first use */
    int row_len;    /* the seq_len that row belongs to, -1 = none held */
    int row_in_out; /* 1: the row is still row row_idx of the pass output h->out */
    size_t row_idx;
} slot;

/* One validated sequence of the batch (a runner item). */
typedef struct item_info {
    int slot;
    int req;
    const Genarm__V1__SeqStep *s;
    size_t q;   /* its index in the request */
    int k;      /* candidates of a sparse row (min(top_k, n_out)), 0 = dense */
    size_t row; /* its first row in the runner output */
} item_info;

/* Where each request's part of the batch lives. */
typedef struct req_info {
    size_t seq_base;   /* its sequences' first entry in the per-sequence arrays */
    int item_begin, item_end;
    size_t row_base;   /* first runner row of its dense rows */
    int dense_rows;
    size_t byte_base;  /* its packed tensor bytes (non-F32 or big-endian hosts) */
    size_t cand_base;  /* its candidates in cand_ids / cand_vals */
    size_t n_cand;
    gn_dtype dt;
} req_info;

struct gn_host {
    gn_model *m;
    gn_runner *r;
    gn_host_params p;
    int max_ctx, n_vocab, n_out, n_live;
    slot *slots;            /* (max_seqs) linear table: max_seqs is hundreds at most */
    uint64_t batch_gen;
    uint64_t passes, pass_seqs;
    gn_row_selector *sel;   /* created on the first sparse step */
    /* Per-batch scratch: seq_cap sequences over req_cap requests, grown on demand. */
    size_t seq_cap, req_cap;
    gn_step_item *items;              /* (seq_cap) */
    item_info *info;                  /* (seq_cap) */
    item_info *vtmp;                  /* (seq_cap) validated, before dense-first ordering */
    int *seq_item;                    /* (seq_cap) item of each request sequence, -1 = refused */
    Genarm__V1__SeqResult *res;       /* (seq_cap) */
    Genarm__V1__SeqResult **res_ptr;  /* (seq_cap) */
    gn_wire_err_pool errs;                    /* (seq_cap) */
    req_info *ri;                     /* (req_cap) */
    Genarm__V1__Tensor *tensor;       /* (req_cap) */
    Genarm__V1__ModelRef *model_ref;  /* (req_cap) */
    float *out;                       /* (out_cap) float32 log-probs from the runner */
    size_t out_cap;
    int out_pinned;                   /* out came from gn_backend_host_alloc (else gn_malloc) */
    uint8_t *bytes;                   /* (bytes_cap) packed tensor data */
    size_t bytes_cap;
    int32_t *cand_ids;                /* candidates of every sparse row of the batch */
    float *cand_vals;
    size_t cand_cap;                  /* entries of each */
    /* Fetch scratch. */
    size_t f_cap;
    Genarm__V1__FetchResult *f_res;
    Genarm__V1__FetchResult **f_ptr;
    gn_wire_err_pool f_errs;
    float *f_vals;
    size_t f_vals_cap;                /* bytes */
};

#define GN_HOST_MAX_REPLY_BYTES ((size_t)1 << 30)

gn_host_params gn_host_default_params(void) {
    gn_host_params p = {.max_seqs = 64, .max_req_seqs = 256, .max_batch_seqs = 256,
                        .idle_timeout_ms = 300000, .max_reply_bytes = GN_HOST_MAX_REPLY_BYTES,
                        .runner = gn_runner_default_params()};
    return p;
}

/* ---- create / free ------------------------------------------------------------ */

static void free_batch_scratch(gn_host *h) {
    gn_free(h->items);
    gn_free(h->info);
    gn_free(h->vtmp);
    gn_free(h->seq_item);
    gn_free(h->res);
    gn_free(h->res_ptr);
    gn_wire_err_pool_free(&h->errs);
    gn_free(h->ri);
    gn_free(h->tensor);
    gn_free(h->model_ref);
    h->items = NULL;
    h->info = h->vtmp = NULL;
    h->seq_item = NULL;
    h->res = NULL;
    h->res_ptr = NULL;
    h->ri = NULL;
    h->tensor = NULL;
    h->model_ref = NULL;
    h->seq_cap = h->req_cap = 0;
}

/* Per-batch scratch for n_seqs sequences over n_reqs requests. Contents need
 * not survive (it is sized before a batch writes anything). */
static int reserve_batch(gn_host *h, size_t n_seqs, size_t n_reqs) {
    if (n_seqs < 1) n_seqs = 1;
    if (n_reqs < 1) n_reqs = 1;
    if (n_seqs > h->seq_cap) {
        gn_step_item *items = gn_calloc(n_seqs, sizeof *items);
        item_info *info = gn_calloc(n_seqs, sizeof *info), *vtmp = gn_calloc(n_seqs, sizeof *vtmp);
        int *seq_item = gn_calloc(n_seqs, sizeof *seq_item);
        Genarm__V1__SeqResult *res = gn_calloc(n_seqs, sizeof *res);
        Genarm__V1__SeqResult **res_ptr = gn_calloc(n_seqs, sizeof *res_ptr);
        if (!items || !info || !vtmp || !seq_item || !res || !res_ptr || gn_wire_err_pool_reserve(&h->errs, n_seqs)) {
            gn_free(items);
            gn_free(info);
            gn_free(vtmp);
            gn_free(seq_item);
            gn_free(res);
            gn_free(res_ptr);
            return GN_ENOMEM;
        }
        gn_free(h->items);
        gn_free(h->info);
        gn_free(h->vtmp);
        gn_free(h->seq_item);
        gn_free(h->res);
        gn_free(h->res_ptr);
        h->items = items;
        h->info = info;
        h->vtmp = vtmp;
        h->seq_item = seq_item;
        h->res = res;
        h->res_ptr = res_ptr;
        h->seq_cap = n_seqs;
    }
    if (n_reqs > h->req_cap) {
        req_info *ri = gn_calloc(n_reqs, sizeof *ri);
        Genarm__V1__Tensor *t = gn_calloc(n_reqs, sizeof *t);
        Genarm__V1__ModelRef *mr = gn_calloc(n_reqs, sizeof *mr);
        if (!ri || !t || !mr) {
            gn_free(ri);
            gn_free(t);
            gn_free(mr);
            return GN_ENOMEM;
        }
        gn_free(h->ri);
        gn_free(h->tensor);
        gn_free(h->model_ref);
        h->ri = ri;
        h->tensor = t;
        h->model_ref = mr;
        h->req_cap = n_reqs;
    }
    return 0;
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
    if (p.max_batch_seqs < p.max_req_seqs) p.max_batch_seqs = p.max_req_seqs;
    if (p.max_reply_bytes == 0) p.max_reply_bytes = GN_HOST_MAX_REPLY_BYTES;
    if (p.max_batch_seqs > 1 << 20) p.max_batch_seqs = 1 << 20;
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
    h->slots = gn_calloc((size_t)p.max_seqs, sizeof *h->slots);
    if (!h->slots || reserve_batch(h, (size_t)p.max_batch_seqs, (size_t)p.max_batch_seqs)) {
        gn_errf(err, GN_ENOMEM, "host: out of memory");
        gn_host_free(h);
        return NULL;
    }
    if (!(h->r = gn_runner_create(m, &p.runner, err))) {
        gn_host_free(h);
        return NULL;
    }
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

static void drop_slot(gn_host *h, int i) {
    gn_seq_free(h->slots[i].seq);
    gn_free(h->slots[i].row);
    memset(&h->slots[i], 0, sizeof h->slots[i]);
    h->n_live--;
}

/* The rows of sparse steps stay where the pass wrote them (h->out) until the
 * next pass is about to write there. Then the row of every sequence this
 * batch does not step is moved to its slot's own buffer (a sequence the
 * batch steps loses its old row anyway: ROW_GONE once it steps on). In a
 * steady decode loop every sequence steps every pass, so nothing is copied;
 * only stragglers between two steps pay a row copy. */
static void keep_rows(gn_host *h) {
    for (int i = 0; i < h->p.max_seqs; i++) {
        slot *sl = &h->slots[i];
        if (!sl->used || !sl->row_in_out) continue;
        sl->row_in_out = 0;
        if (sl->row_len < 0) continue;
        if (sl->mark == h->batch_gen) { /* stepped now */
            sl->row_len = -1;
            continue;
        }
        if (!sl->row && !(sl->row = gn_malloc((size_t)h->n_out * sizeof(float)))) {
            sl->row_len = -1; /* out of memory: a fetch gets ROW_GONE */
            continue;
        }
        memcpy(sl->row, h->out + sl->row_idx * (size_t)h->n_out, (size_t)h->n_out * sizeof(float));
    }
}

/* The kept row of slot sl (see keep_rows). */
static const float *kept_row(const gn_host *h, const slot *sl) {
    return sl->row_in_out ? h->out + sl->row_idx * (size_t)h->n_out : sl->row;
}

void gn_host_free(gn_host *h) {
    if (!h) return;
    if (h->slots)
        for (int i = 0; i < h->p.max_seqs; i++)
            if (h->slots[i].used) drop_slot(h, i);
    gn_runner_free(h->r);
    gn_free(h->slots);
    free_batch_scratch(h);
    free_out(h);
    gn_free(h->bytes);
    gn_free(h->cand_ids);
    gn_free(h->cand_vals);
    gn_row_selector_free(h->sel);
    gn_free(h->f_res);
    gn_free(h->f_ptr);
    gn_wire_err_pool_free(&h->f_errs);
    gn_free(h->f_vals);
    gn_free(h);
}

static int find_slot(const gn_host *h, uint64_t id, const gn_lora_adapter *ad) {
    for (int i = 0; i < h->p.max_seqs; i++)
        if (h->slots[i].used && h->slots[i].id == id && h->slots[i].ad == ad) return i;
    return -1;
}

/* ---- steps ------------------------------------------------------------------------ */

/* Checks sequence s of a request for adapter ad; finds or creates its slot.
 * Returns the slot, or -1 after adding the sequence's error to resp. */
static int admit(gn_host *h, const gn_lora_adapter *ad, const Genarm__V1__SeqStep *s, size_t ebase,
                 gn_wire_step_resp *resp, int64_t now_ms) {
    const int C_RANGE = GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE;
    for (size_t t = 0; t < s->n_tokens; t++)
        if (s->tokens[t] < 0 || s->tokens[t] >= h->n_vocab) {
            gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id, C_RANGE,
                     "token %zu: id %d out of range [0, %d)", t, s->tokens[t], h->n_vocab);
            return -1;
        }
    if (s->n_tokens == 0 || s->n_tokens > (size_t)h->max_ctx || s->start_pos > (uint32_t)h->max_ctx - s->n_tokens) {
        gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id,
                 GENARM__V1__ERROR_CODE__ERROR_CONTEXT_OVERFLOW,
                 "%u tokens held + %zu new exceed the context limit %d", s->start_pos, s->n_tokens, h->max_ctx);
        return -1;
    }
    int k = find_slot(h, s->seq_id, ad);
    if (k >= 0) {
        if (h->slots[k].mark == h->batch_gen) {
            gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id,
                     GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST,
                     "sequence already stepped by an earlier request of the same batch");
            return -1;
        }
        int len = gn_seq_len(h->slots[k].seq);
        if (s->start_pos > (uint32_t)len) {
            gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id,
                     GENARM__V1__ERROR_CODE__ERROR_POS_MISMATCH, "start_pos %u but the worker holds %d tokens",
                     s->start_pos, len);
            return -1;
        }
        h->slots[k].mark = h->batch_gen;
        return k;
    }
    if (s->start_pos != 0) {
        gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
                 "sequence not held (released, expired or never started) but start_pos is %u; resend from 0",
                 s->start_pos);
        return -1;
    }
    for (k = 0; k < h->p.max_seqs && h->slots[k].used; k++) {
    }
    if (k == h->p.max_seqs) {
        gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
                 "all %d sequence slots are in use", h->p.max_seqs);
        return -1;
    }
    gn_err e2 = {0};
    gn_seq *seq = gn_seq_create(h->r, &e2);
    if (!seq) {
        gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
                 "%s", e2.msg);
        return -1;
    }
    if (ad && gn_seq_set_adapter(seq, ad, &e2) != 0) {
        gn_seq_free(seq);
        gn_wire_err_pool_add(&h->errs, ebase, &resp->errors, &resp->n_errors, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_INTERNAL,
                 "%s", e2.msg);
        return -1;
    }
    slot sl = {.id = s->seq_id, .ad = ad, .seq = seq, .last_used_ms = now_ms, .used = 1, .fresh = 1,
               .mark = h->batch_gen, .row_len = -1};
    h->slots[k] = sl;
    h->n_live++;
    return k;
}

int gn_host_reply_check(const gn_host *h, const gn_wire_step_req *req, gn_err *err) {
    gn_dtype dt;
    if (gn_wire_dtype_from_proto((int)req->dtype, &dt)) dt = GN_F32; /* refused elsewhere */
    size_t dense_rows = 0, cands = 0, row_bytes, bytes;
    for (size_t q = 0; q < req->n_seqs; q++) {
        const Genarm__V1__SeqStep *s = req->seqs[q];
        if (s->all_logits) dense_rows += s->n_tokens; /* <= max_tokens summed (gn_wire_step_check) */
        else if (s->top_k > 0) cands += s->top_k < (uint32_t)h->n_out ? s->top_k : (size_t)h->n_out;
        else dense_rows++;
    }
    if (gn_wire_tensor_nbytes(dt, dense_rows, (uint64_t)h->n_out, &row_bytes) ||
        gn_size_add(row_bytes, 8 * cands, &bytes))
        bytes = SIZE_MAX;
    if (bytes <= h->p.max_reply_bytes) return 0;
    gn_errf(err, GN_ERANGE,
            "step reply of %zu bytes (%zu rows x %d columns of %s, %zu candidates) exceeds this worker's "
            "limit of %zu bytes (max_reply_bytes)",
            bytes, dense_rows, h->n_out, gn_dtype_name(dt), cands, h->p.max_reply_bytes);
    return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
}

void gn_host_step_batch(gn_host *h, const gn_lora_adapter *const *ads, const gn_wire_step_req *const *reqs,
                        int n, gn_wire_step_resp *const *resps, int *codes, gn_err *errs, int64_t now_ms) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += reqs[i]->n_seqs;
    if (reserve_batch(h, total, (size_t)n) != 0) {
        for (int i = 0; i < n; i++) {
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            gn_errf(&errs[i], GN_ENOMEM, "step scratch for %zu sequences: out of memory", total);
        }
        return;
    }
    h->batch_gen++;

    /* 1. Validate every sequence of every request, in order; runner items go
     *    request by request, the dense ones of a request before its sparse
     *    ones, so each request's dense rows are one contiguous slice. */
    int n_items = 0;
    size_t seq_base = 0;
    for (int i = 0; i < n; i++) {
        const gn_wire_step_req *req = reqs[i];
        gn_wire_step_resp *resp = resps[i];
        req_info *ri = &h->ri[i];
        memset(ri, 0, sizeof *ri);
        ri->seq_base = seq_base;
        ri->item_begin = ri->item_end = n_items;
        seq_base += req->n_seqs;
        codes[i] = 0;
        errs[i].code = 0;
        errs[i].msg[0] = 0;
        Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
        mr.name = req->model && req->model->name ? req->model->name : "";
        mr.version = req->model ? req->model->version : 0;
        h->model_ref[i] = mr;
        resp->model = &h->model_ref[i];
        resp->results = &h->res_ptr[ri->seq_base];
        resp->n_results = 0;
        resp->errors = &h->errs.p[ri->seq_base];
        resp->n_errors = 0;
        resp->logprobs = NULL;
        resp->cand_ids.data = resp->cand_values.data = NULL;
        resp->cand_ids.len = resp->cand_values.len = 0;
        resp->compute_us = 0;
        resp->pass_seqs = 0;
        if (gn_wire_dtype_from_proto((int)req->dtype, &ri->dt)) {
            gn_errf(&errs[i], GN_EINVAL, "dtype %d is not F32, F16 or BF16", (int)req->dtype);
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE;
            continue;
        }
        if (req->n_seqs > (size_t)h->p.max_req_seqs) {
            gn_errf(&errs[i], GN_ERANGE, "%zu sequences in one step, this worker takes %d", req->n_seqs,
                    h->p.max_req_seqs);
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
            continue;
        }
        if ((codes[i] = gn_host_reply_check(h, req, &errs[i])) != 0) continue; /* before any slot or pass */
        const gn_lora_adapter *ad = ads ? ads[i] : NULL;
        int nv = 0;
        for (size_t q = 0; q < req->n_seqs; q++) {
            const Genarm__V1__SeqStep *s = req->seqs[q];
            h->seq_item[ri->seq_base + q] = -1;
            int k = admit(h, ad, s, ri->seq_base, resp, now_ms);
            if (k < 0) continue;
            item_info v = {.slot = k, .req = i, .s = s, .q = q, .row = 0, .k = 0};
            if (s->top_k > 0 && !s->all_logits) /* (all_logits with top_k is refused by the wire check) */
                v.k = s->top_k < (uint32_t)h->n_out ? (int)s->top_k : h->n_out;
            h->vtmp[nv++] = v;
        }
        for (int pass = 0; pass < 2; pass++) /* dense first, then sparse */
            for (int v = 0; v < nv; v++) {
                if ((h->vtmp[v].k > 0) != pass) continue;
                const Genarm__V1__SeqStep *s = h->vtmp[v].s;
                h->info[n_items] = h->vtmp[v];
                h->seq_item[ri->seq_base + h->vtmp[v].q] = n_items;
                gn_step_item it = {h->slots[h->vtmp[v].slot].seq, s->tokens, (int)s->n_tokens,
                                   s->all_logits ? 1 : 0};
                h->items[n_items++] = it;
            }
        ri->item_end = n_items;
    }

    /* The previous pass's rows leave h->out before it is resized or written. */
    keep_rows(h);

    /* 2. Size the outputs: runner rows, packed tensor bytes, candidates. */
    size_t row = 0, bytes = 0, cands = 0;
    int oom = 0, too_large = 0;
    for (int i = 0; i < n; i++) {
        req_info *ri = &h->ri[i];
        if (codes[i]) continue;
        ri->row_base = row;
        ri->cand_base = cands;
        for (int t = ri->item_begin; t < ri->item_end; t++) {
            item_info *v = &h->info[t];
            v->row = row;
            int nr = h->items[t].all_logits ? h->items[t].n_tokens : 1;
            row += (size_t)nr;
            if (v->k > 0) cands += (size_t)v->k;
            else ri->dense_rows += nr;
        }
        ri->n_cand = cands - ri->cand_base;
        size_t nb;
        if (gn_wire_tensor_nbytes(ri->dt, (uint64_t)ri->dense_rows, (uint64_t)h->n_out, &nb)) {
            too_large = 1;
            break;
        }
        ri->byte_base = bytes;
        if (!(ri->dt == GN_F32 && GN_WIRE_HOST_LE)) bytes += nb;
    }
    size_t n_vals;
    if (too_large || gn_size_mul(row, (size_t)h->n_out, &n_vals) || n_vals > SIZE_MAX / sizeof(float) - 1)
        too_large = 1;
    else if (grow_out(h, n_vals * sizeof(float) + 1) || gn_grow((void **)&h->bytes, &h->bytes_cap, bytes + 1))
        oom = 1;
    if (!oom && !too_large && cands > h->cand_cap) {
        int32_t *ci = gn_malloc(cands * sizeof *ci);
        float *cv = gn_malloc(cands * sizeof *cv);
        if (!ci || !cv) {
            gn_free(ci);
            gn_free(cv);
            oom = 1;
        } else {
            gn_free(h->cand_ids);
            gn_free(h->cand_vals);
            h->cand_ids = ci;
            h->cand_vals = cv;
            h->cand_cap = cands;
        }
    }
    if (!oom && !too_large && cands && !h->sel) {
        gn_err e2 = {0};
        if (!(h->sel = gn_row_selector_create(h->n_out, &e2))) oom = 1;
    }

    /* 3. One forward pass over every item. The runner takes up to max_seqs
     *    sequences and chunks long prompts itself; the items here are distinct
     *    live slots, so they never exceed it. */
    int rc = 0;
    gn_err pe = {0};
    uint64_t us = 0;
    if (too_large) {
        rc = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        gn_errf(&pe, GN_ERANGE, "step output of %zu rows overflows", row);
    } else if (oom) {
        rc = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
        gn_errf(&pe, GN_ENOMEM, "step output of %zu rows x %d: out of memory", row, h->n_out);
    } else if (n_items) {
        /* Rewinds happen only now that the step is known to be runnable. */
        for (int t = 0; t < n_items; t++) {
            const Genarm__V1__SeqStep *s = h->info[t].s;
            if ((int)s->start_pos < gn_seq_len(h->items[t].seq)) gn_seq_truncate(h->items[t].seq, (int)s->start_pos);
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int src = gn_runner_step(h->r, h->items, n_items, h->out, &pe);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int64_t d = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        us = d > 0 ? (uint64_t)d : 0;
        if (src != 0)
            rc = strstr(pe.msg, "KV cache exhausted") ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                                      : GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
    if (rc) {
        for (int t = 0; t < n_items; t++)
            if (h->slots[h->info[t].slot].fresh) drop_slot(h, h->info[t].slot);
        for (int i = 0; i < n; i++)
            if (!codes[i] && (h->ri[i].item_end > h->ri[i].item_begin || too_large || oom)) {
                codes[i] = rc;
                errs[i] = pe;
            }
        return;
    }
    if (n_items) {
        h->passes++;
        h->pass_seqs += (uint64_t)n_items;
    }

    /* 4. Each request's response: dense rows (packed unless F32 on a
     *    little-endian host), sparse rows (selected from the row, which is
     *    kept for fetches), results in request order. */
    for (int i = 0; i < n; i++) {
        if (codes[i]) continue;
        const gn_wire_step_req *req = reqs[i];
        gn_wire_step_resp *resp = resps[i];
        req_info *ri = &h->ri[i];
        const float *src = h->out + ri->row_base * (size_t)h->n_out;
        size_t nv = (size_t)ri->dense_rows * (size_t)h->n_out, nb = 0;
        gn_wire_tensor_nbytes(ri->dt, (uint64_t)ri->dense_rows, (uint64_t)h->n_out, &nb); /* checked above */
        const uint8_t *data = (const uint8_t *)src;
        if (!(ri->dt == GN_F32 && GN_WIRE_HOST_LE)) {
            gn_wire_pack_f32(src, nv, ri->dt, h->bytes + ri->byte_base, nb, NULL); /* sized above */
            data = h->bytes + ri->byte_base;
        }
        Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
        t.dtype = gn_wire_dtype_to_proto(ri->dt);
        t.rows = (uint64_t)ri->dense_rows;
        t.cols = (uint64_t)h->n_out;
        t.data.data = nb ? (uint8_t *)data : NULL;
        t.data.len = nb;
        h->tensor[i] = t;
        resp->logprobs = &h->tensor[i];
        int has_items = ri->item_end > ri->item_begin;
        resp->compute_us = has_items ? us : 0;
        resp->pass_seqs = has_items ? (uint32_t)n_items : 0;
        size_t cand_off = 0;
        for (size_t q = 0; q < req->n_seqs; q++) {
            int x = h->seq_item[ri->seq_base + q];
            if (x < 0) continue;
            const item_info *v = &h->info[x];
            const Genarm__V1__SeqStep *s = v->s;
            slot *sl = &h->slots[v->slot];
            Genarm__V1__SeqResult r = GENARM__V1__SEQ_RESULT__INIT;
            r.seq_id = s->seq_id;
            r.seq_len = (uint32_t)gn_seq_len(sl->seq);
            sl->fresh = 0;
            sl->last_used_ms = now_ms;
            sl->row_len = -1; /* the row of its previous step is gone */
            sl->row_in_out = 0;
            if (v->k > 0) {
                const float *rowp = h->out + v->row * (size_t)h->n_out;
                gn_err se = {0};
                int32_t *ids = h->cand_ids + ri->cand_base + cand_off;
                float *vals = h->cand_vals + ri->cand_base + cand_off;
                gn_row_tail tail;
                int got = gn_row_select(h->sel, rowp, h->n_out, v->k, ids, vals, &tail, &se);
                if (got < 0) {
                    gn_wire_err_pool_add(&h->errs, ri->seq_base, &resp->errors, &resp->n_errors, s->seq_id,
                             GENARM__V1__ERROR_CODE__ERROR_INTERNAL, "sparse row: %s", se.msg);
                } else { /* the row stays in h->out for fetches (keep_rows) */
                    sl->row_len = (int)r.seq_len;
                    sl->row_in_out = 1;
                    sl->row_idx = v->row;
                    r.n_cand = (uint32_t)got;
                    r.cand_offset = cand_off;
                    r.cand_floor = tail.floor;
                    r.row_min = tail.row_min;
                    r.tail_lse = tail.tail_lse;
                    cand_off += (size_t)got;
                }
                if (sl->row_len < 0) goto next; /* not served: no result */
            } else {
                r.row_offset = (uint64_t)(v->row - ri->row_base);
                r.n_rows = s->all_logits ? (uint32_t)s->n_tokens : 1;
            }
            h->res[ri->seq_base + resp->n_results] = r;
            h->res_ptr[ri->seq_base + resp->n_results] = &h->res[ri->seq_base + resp->n_results];
            resp->n_results++;
        next:
            if (s->release_after) drop_slot(h, v->slot);
        }
        if (cand_off) {
            int32_t *ids = h->cand_ids + ri->cand_base;
            float *vals = h->cand_vals + ri->cand_base;
            gn_wire_le32_write(ids, cand_off, ids); /* in place: a no-op on little-endian hosts */
            gn_wire_le32_write(vals, cand_off, vals);
            resp->cand_ids.data = (uint8_t *)ids;
            resp->cand_ids.len = cand_off * 4;
            resp->cand_values.data = (uint8_t *)vals;
            resp->cand_values.len = cand_off * 4;
        }
    }
}

int gn_host_step(gn_host *h, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err) {
    return gn_host_step_for(h, NULL, req, now_ms, resp, err);
}

int gn_host_step_for(gn_host *h, const gn_lora_adapter *ad, const gn_wire_step_req *req, int64_t now_ms,
                     gn_wire_step_resp *resp, gn_err *err) {
    int code = 0;
    gn_err e = {0};
    gn_host_step_batch(h, &ad, &req, 1, &resp, &code, &e, now_ms);
    if (code && err) *err = e;
    return code;
}

/* ---- fetch ------------------------------------------------------------------------ */

int gn_host_fetch(gn_host *h, const gn_lora_adapter *ad, const Genarm__V1__RowFetch *req,
                  Genarm__V1__RowFetchResult *res, gn_err *err) {
    size_t ns = req->n_seqs ? req->n_seqs : 1, vals = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        size_t add = req->seqs[i]->full_row ? (size_t)h->n_out : req->seqs[i]->n_ids;
        if (gn_size_add(vals, add, &vals)) {
            gn_errf(err, GN_ERANGE, "row fetch: too many values");
            return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
        }
    }
    if (vals > h->p.max_reply_bytes / sizeof(float)) {
        gn_errf(err, GN_ERANGE,
                "row fetch reply of %zu values (%zu bytes) exceeds this worker's limit of %zu bytes "
                "(max_reply_bytes)",
                vals, vals > SIZE_MAX / sizeof(float) ? SIZE_MAX : vals * sizeof(float), h->p.max_reply_bytes);
        return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
    }
    if (ns > h->f_cap) {
        Genarm__V1__FetchResult *fr = gn_calloc(ns, sizeof *fr);
        Genarm__V1__FetchResult **fp = gn_calloc(ns, sizeof *fp);
        if (!fr || !fp || gn_wire_err_pool_reserve(&h->f_errs, ns)) {
            gn_free(fr);
            gn_free(fp);
            gn_errf(err, GN_ENOMEM, "row fetch: out of memory");
            return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
        }
        gn_free(h->f_res);
        gn_free(h->f_ptr);
        h->f_res = fr;
        h->f_ptr = fp;
        h->f_cap = ns;
    }
    if (vals > SIZE_MAX / sizeof(float) - 1 ||
        gn_grow((void **)&h->f_vals, &h->f_vals_cap, vals * sizeof(float) + 1)) {
        gn_errf(err, GN_ENOMEM, "row fetch of %zu values: out of memory", vals);
        return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
    res->results = h->f_ptr;
    res->n_results = 0;
    res->errors = h->f_errs.p;
    res->n_errors = 0;
    size_t off = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        const Genarm__V1__FetchSeq *fs = req->seqs[i];
        int k = find_slot(h, fs->seq_id, ad);
        if (k < 0 || h->slots[k].row_len < 0 || (uint32_t)h->slots[k].row_len != fs->seq_len) {
            gn_wire_err_pool_add(&h->f_errs, 0, &res->errors, &res->n_errors, fs->seq_id, GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
                     k < 0 ? "row at seq_len %u is gone: the sequence is not held (released or expired)"
                           : "row at seq_len %u is gone: the sequence stepped on (or its step was dense)",
                     fs->seq_len);
            continue;
        }
        const float *row = kept_row(h, &h->slots[k]);
        float *dst = h->f_vals + off;
        size_t cnt;
        if (fs->full_row) {
            cnt = (size_t)h->n_out;
            memcpy(dst, row, cnt * sizeof(float));
        } else {
            cnt = fs->n_ids;
            size_t bad = cnt;
            for (size_t j = 0; j < cnt && bad == cnt; j++)
                if (fs->ids[j] < 0 || fs->ids[j] >= h->n_out) bad = j;
            if (bad < cnt) {
                gn_wire_err_pool_add(&h->f_errs, 0, &res->errors, &res->n_errors, fs->seq_id,
                         GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE, "id %zu: %d out of the row's range [0, %d)", bad,
                         fs->ids[bad], h->n_out);
                continue;
            }
            for (size_t j = 0; j < cnt; j++) dst[j] = row[fs->ids[j]];
        }
        gn_wire_le32_write(dst, cnt, dst);
        Genarm__V1__FetchResult fr = GENARM__V1__FETCH_RESULT__INIT;
        fr.seq_id = fs->seq_id;
        fr.offset = off;
        fr.n = (uint32_t)cnt;
        h->f_res[res->n_results] = fr;
        h->f_ptr[res->n_results] = &h->f_res[res->n_results];
        res->n_results++;
        off += cnt;
    }
    res->values.data = off ? (uint8_t *)h->f_vals : NULL;
    res->values.len = off * sizeof(float);
    return 0;
}

/* ---- release, expiry, load ------------------------------------------------------- */

int gn_host_release(gn_host *h, const uint64_t *ids, size_t n) { return gn_host_release_for(h, NULL, ids, n); }

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
    if (h->p.idle_timeout_ms <= 0) return 0;
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
size_t gn_host_max_reply_bytes(const gn_host *h) { return h->p.max_reply_bytes; }
int gn_host_n_out(const gn_host *h) { return h->n_out; }

int gn_host_seq_len(const gn_host *h, uint64_t seq_id) { return gn_host_seq_len_for(h, NULL, seq_id); }

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

void gn_host_counters(const gn_host *h, uint64_t *forward_passes, uint64_t *pass_seqs_total) {
    if (forward_passes) *forward_passes = h->passes;
    if (pass_seqs_total) *pass_seqs_total = h->pass_seqs;
}
