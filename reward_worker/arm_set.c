/* arm_set.c — held ARM versions, routing with version pinning, hot swap and
 * drain (see arm_set.h). */
#include "arm_set.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "gn_alloc.h"
#include "lora.h"
#include "model.h"
#include "step_server.h" /* gn_wire_now_ms */
#include "tokenizer.h"

#define COMP "reward_worker"

/* A backbone shared by the LoRA-adapter ARMs loaded on it: one model, one
 * host (KV pool, sequence table keyed by (seq_id, adapter)). */
typedef struct backbone {
    int used;
    char path[GN_ARM_PATH_MAX];
    gn_model *m;
    gn_host *h;
    int refs; /* entries using it */
} backbone;

typedef struct arm_entry {
    int used;
    char name[GN_ARM_NAME_MAX];
    uint32_t version;
    char tok_hash[GN_ARM_HASH_HEX];
    gn_model *m;         /* its own model, NULL for an adapter on a backbone */
    gn_host *h;          /* its own host, or the backbone's */
    int bb;              /* backbone index, -1 = own model */
    gn_lora_adapter *ad; /* the adapter (NULL for a full model): its sequences in h */
    int n_out;
    int is_current;
    int draining; /* superseded or unloaded: no new sequences, freed when empty */
    int batch_ref; /* a sequence of the batch now being routed goes to it: not collected */
    Genarm__V1__ModelRef ref;
} arm_entry;

/* One request of a batch. */
typedef struct req_state {
    size_t seq_base;       /* its sequences' first entry in the per-sequence arrays */
    int sub_begin, sub_end;/* its sub-requests */
    int explicit_k, cur;   /* resolution of (name, version) */
    int merge;             /* assembled from several sub-requests (or with routing errors) */
    gn_dtype dt;
    size_t byte_off, cand_off; /* a merged request's slices of bytes / cand */
    size_t cand_total;         /* and its candidates */
    uint64_t cols;             /* a merged request's row width */
} req_state;

struct gn_arms {
    gn_backend *be;
    gn_arms_params p;
    gn_arms_resolve_fn resolve;
    void *resolve_ud;
    arm_entry *e;    /* (max_models) */
    backbone *bb;    /* (max_models) */
    int n_used;
    uint64_t gen;
    /* Per-batch scratch for seq_cap sequences (over as many requests and
     * sub-requests), sized at create for max_batch_seqs, grown on demand. */
    size_t seq_cap;
    req_state *rq;                  /* (seq_cap) per request */
    int *seq_entry;                 /* (seq_cap) entry of each request sequence, -1 = refused */
    Genarm__V1__SeqStep **sub_seqs; /* (seq_cap) sub-request sequences, contiguous per sub-request */
    gn_wire_step_req *sub;          /* (seq_cap) one sub-request per (request, entry) */
    int *sub_entry, *sub_req, *sub_pos; /* (seq_cap) its entry, request, and place in host order */
    size_t *sub_cur;                /* (seq_cap) results of a sub-request taken so far (merging) */
    gn_wire_step_resp *sub_resp;    /* (seq_cap) in host order */
    const gn_wire_step_req **h_req; /* (seq_cap) host-order arguments of gn_host_step_batch */
    gn_wire_step_resp **h_resp;
    const gn_lora_adapter **h_ad;
    int *h_code;
    gn_err *h_err;
    Genarm__V1__SeqResult *res;     /* (seq_cap) merged replies' results */
    Genarm__V1__SeqResult **res_ptr;
    gn_wire_err_pool errs;                  /* (seq_cap) per-sequence errors of every request */
    Genarm__V1__Tensor *tensor;     /* (seq_cap) merged replies' tensors */
    uint8_t *bytes;                 /* merged rows, each merged request's slice */
    size_t bytes_cap;
    uint8_t *cand;                  /* merged candidates: ids then values of each merged request */
    size_t cand_cap;
    gn_host **pass_host;            /* (2 * max_models) hosts that ran a pass in the last batch */
    int *pass_seqs;                 /* (2 * max_models) and their sequences */
    int n_passes;
    uint64_t passes, passes_seqs;
    /* Fetch (version 0: one host call per sequence, merged here). */
    size_t f_cap;
    Genarm__V1__FetchResult *f_res;
    Genarm__V1__FetchResult **f_ptr;
    gn_wire_err_pool f_errs;
    uint8_t *f_vals;
    size_t f_vals_cap;
    /* Versions whose load on demand failed (tokenizer mismatch, broken files):
     * refused from memory for REFUSE_MS instead of reloading on every step. */
    struct {
        char name[GN_ARM_NAME_MAX];
        uint32_t version;
        int code;
        int64_t until_ms;
        char msg[GN_ERR_MSG_MAX];
    } refused[8];
};

#define REFUSE_MS 10000

gn_arms_params gn_arms_default_params(void) {
    gn_arms_params p = {.host = gn_host_default_params(), .max_models = 16, .max_req_seqs = 256,
                        .max_batch_seqs = 256};
    return p;
}

int gn_arms_name_valid(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n >= GN_ARM_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- scratch ------------------------------------------------------------------ */


static void free_batch(gn_arms *a) {
    gn_free(a->rq);
    gn_free(a->seq_entry);
    gn_free(a->sub_seqs);
    gn_free(a->sub);
    gn_free(a->sub_entry);
    gn_free(a->sub_req);
    gn_free(a->sub_pos);
    gn_free(a->sub_cur);
    gn_free(a->sub_resp);
    gn_free(a->h_req);
    gn_free(a->h_resp);
    gn_free(a->h_ad);
    gn_free(a->h_code);
    gn_free(a->h_err);
    gn_free(a->res);
    gn_free(a->res_ptr);
    gn_wire_err_pool_free(&a->errs);
    gn_free(a->tensor);
    a->rq = NULL;
    a->seq_entry = a->sub_entry = a->sub_req = a->sub_pos = a->h_code = NULL;
    a->sub_seqs = NULL;
    a->sub_cur = NULL;
    a->sub = NULL;
    a->sub_resp = NULL;
    a->h_req = NULL;
    a->h_resp = NULL;
    a->h_ad = NULL;
    a->h_err = NULL;
    a->res = NULL;
    a->res_ptr = NULL;
    a->tensor = NULL;
    a->seq_cap = 0;
}

/* Per-batch scratch for n sequences (and as many requests and sub-requests);
 * contents need not survive. */
static int reserve_batch(gn_arms *a, size_t n) {
    if (n <= a->seq_cap) return 0;
    free_batch(a);
    a->rq = gn_calloc(n, sizeof *a->rq);
    a->seq_entry = gn_calloc(n, sizeof *a->seq_entry);
    a->sub_seqs = gn_calloc(n, sizeof *a->sub_seqs);
    a->sub = gn_calloc(n, sizeof *a->sub);
    a->sub_entry = gn_calloc(n, sizeof *a->sub_entry);
    a->sub_req = gn_calloc(n, sizeof *a->sub_req);
    a->sub_pos = gn_calloc(n, sizeof *a->sub_pos);
    a->sub_cur = gn_calloc(n, sizeof *a->sub_cur);
    a->sub_resp = gn_calloc(n, sizeof *a->sub_resp);
    a->h_req = gn_calloc(n, sizeof *a->h_req);
    a->h_resp = gn_calloc(n, sizeof *a->h_resp);
    a->h_ad = gn_calloc(n, sizeof *a->h_ad);
    a->h_code = gn_calloc(n, sizeof *a->h_code);
    a->h_err = gn_calloc(n, sizeof *a->h_err);
    a->res = gn_calloc(n, sizeof *a->res);
    a->res_ptr = gn_calloc(n, sizeof *a->res_ptr);
    a->tensor = gn_calloc(n, sizeof *a->tensor);
    if (!a->rq || !a->seq_entry || !a->sub_seqs || !a->sub || !a->sub_entry || !a->sub_req || !a->sub_pos || !a->sub_cur ||
        !a->sub_resp || !a->h_req || !a->h_resp || !a->h_ad || !a->h_code || !a->h_err || !a->res ||
        !a->res_ptr || !a->tensor || gn_wire_err_pool_reserve(&a->errs, n)) {
        free_batch(a);
        return GN_ENOMEM;
    }
    a->seq_cap = n;
    return 0;
}

gn_arms *gn_arms_create(gn_backend *be, const gn_arms_params *pin, gn_arms_resolve_fn resolve,
                        void *resolve_ud, gn_err *err) {
    gn_arms_params p = pin ? *pin : gn_arms_default_params();
    if (p.max_models < 1 || p.max_models > 1024 || p.max_req_seqs < 1 || p.max_req_seqs > 65536) {
        gn_errf(err, GN_EINVAL, "arm set: max_models %d / max_req_seqs %d out of range",
                p.max_models, p.max_req_seqs);
        return NULL;
    }
    gn_arms *a = gn_calloc(1, sizeof *a);
    if (!a) {
        gn_errf(err, GN_ENOMEM, "arm set: out of memory");
        return NULL;
    }
    a->be = be;
    a->p = p;
    a->resolve = resolve;
    a->resolve_ud = resolve_ud;
    size_t nm = (size_t)p.max_models;
    a->e = gn_calloc(nm, sizeof *a->e);
    a->bb = gn_calloc(nm, sizeof *a->bb);
    a->pass_host = gn_calloc(2 * nm, sizeof *a->pass_host);
    a->pass_seqs = gn_calloc(2 * nm, sizeof *a->pass_seqs);
    size_t ns = (size_t)(p.max_batch_seqs > p.max_req_seqs ? p.max_batch_seqs : p.max_req_seqs);
    if (!a->e || !a->bb || !a->pass_host || !a->pass_seqs || reserve_batch(a, ns)) {
        gn_errf(err, GN_ENOMEM, "arm set: out of memory");
        gn_arms_free(a);
        return NULL;
    }
    return a;
}

static void backbone_unref(gn_arms *a, int i) {
    backbone *b = &a->bb[i];
    if (--b->refs > 0) return;
    gn_wire_log("info", COMP, "event=backbone_unloaded path=%s", b->path);
    gn_host_free(b->h);
    gn_model_free(b->m);
    memset(b, 0, sizeof *b);
}

static void entry_free(gn_arms *a, arm_entry *e) {
    if (e->bb >= 0) {
        gn_host_release_all_for(e->h, e->ad); /* none are left when drained; on gn_arms_free there may be */
        gn_lora_adapter_free(e->ad);
        backbone_unref(a, e->bb);
    } else {
        gn_host_free(e->h);
        gn_model_free(e->m);
    }
    memset(e, 0, sizeof *e);
    a->n_used--;
    a->gen++;
}

void gn_arms_free(gn_arms *a) {
    if (!a)
        return;
    if (a->e)
        for (int i = 0; i < a->p.max_models; i++)
            if (a->e[i].used)
                entry_free(a, &a->e[i]);
    gn_free(a->e);
    gn_free(a->bb);
    free_batch(a);
    gn_free(a->pass_host);
    gn_free(a->pass_seqs);
    gn_free(a->bytes);
    gn_free(a->cand);
    gn_free(a->f_res);
    gn_free(a->f_ptr);
    gn_wire_err_pool_free(&a->f_errs);
    gn_free(a->f_vals);
    gn_free(a);
}

static int find(const gn_arms *a, const char *name, uint32_t version) {
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used && a->e[i].version == version && !strcmp(a->e[i].name, name))
            return i;
    return -1;
}

/* Any held version of name (they share the row width: gn_arms_load refuses
 * one whose n_out differs), or -1. */
static int find_any(const gn_arms *a, const char *name) {
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used && !strcmp(a->e[i].name, name))
            return i;
    return -1;
}

static int find_current(const gn_arms *a, const char *name) {
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used && a->e[i].is_current && !strcmp(a->e[i].name, name))
            return i;
    return -1;
}

uint32_t gn_arms_current(const gn_arms *a, const char *name) {
    int k = find_current(a, name);
    return k < 0 ? 0 : a->e[k].version;
}

/* Unloads draining versions that hold no sequence. Called only at the start
 * of calls, never while a reply still points into a host. */
static void collect(gn_arms *a) {
    for (int i = 0; i < a->p.max_models; i++) {
        arm_entry *e = &a->e[i];
        if (e->used && e->draining && !e->batch_ref && gn_host_n_seqs_for(e->h, e->ad) == 0) {
            gn_wire_log("info", COMP, "event=arm_unloaded arm=%s@%u reason=drained", e->name,
                        e->version);
            entry_free(a, e);
        }
    }
}

static void make_current(gn_arms *a, int k) {
    arm_entry *e = &a->e[k];
    for (int i = 0; i < a->p.max_models; i++) {
        arm_entry *o = &a->e[i];
        if (i != k && o->used && o->is_current && !strcmp(o->name, e->name)) {
            o->is_current = 0;
            o->draining = 1;
            gn_wire_log("info", COMP, "event=arm_swap arm=%s from=%u to=%u draining_seqs=%d",
                        e->name, o->version, e->version, gn_host_n_seqs_for(o->h, o->ad));
        }
    }
    if (!e->is_current || e->draining)
        a->gen++;
    e->is_current = 1;
    e->draining = 0;
}

/* The backbone at path, loaded (refs 0) when not held yet. Its index, or
 * negative with err. */
static int backbone_get(gn_arms *a, const char *path, gn_err *err) {
    int free_i = -1;
    for (int i = 0; i < a->p.max_models; i++) {
        if (a->bb[i].used && !strcmp(a->bb[i].path, path)) return i;
        if (!a->bb[i].used && free_i < 0) free_i = i;
    }
    if (free_i < 0) return gn_errf(err, GN_ERANGE, "already holding %d backbones", a->p.max_models);
    if (strlen(path) >= GN_ARM_PATH_MAX) return gn_errf(err, GN_ERANGE, "path too long");
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    gn_model *m = gn_model_load(path, a->be, &mp, err);
    if (!m) return err && err->code ? err->code : GN_EIO;
    gn_host_params hp = a->p.host;
    gn_host *h = gn_host_create(m, &hp, err);
    if (!h) {
        gn_model_free(m);
        return err && err->code ? err->code : GN_ENOMEM;
    }
    backbone *b = &a->bb[free_i];
    b->used = 1;
    snprintf(b->path, sizeof b->path, "%s", path);
    b->m = m;
    b->h = h;
    b->refs = 0;
    gn_wire_log("info", COMP, "event=backbone_loaded path=%s", path);
    return free_i;
}

int gn_arms_load(gn_arms *a, const char *name, uint32_t version, const char *path,
                 const char *lora_path, const char *want_hash, int mk_current, gn_err *err) {
    collect(a);
    if (!gn_arms_name_valid(name))
        return gn_errf(err, GN_EINVAL, "ARM name \"%s\": 1..64 characters of [A-Za-z0-9._-]",
                       name ? name : "");
    if (version == 0)
        return gn_errf(err, GN_EINVAL, "ARM %s: version 0 cannot be loaded (versions start at 1)",
                       name);
    int k = find(a, name, version);
    if (k >= 0) {
        if (mk_current || find_current(a, name) < 0)
            make_current(a, k);
        return 0;
    }
    if (!path || !path[0])
        return gn_errf(err, GN_EINVAL, "ARM %s@%u: no model path", name, version);
    int slot = -1;
    for (int i = 0; i < a->p.max_models && slot < 0; i++)
        if (!a->e[i].used)
            slot = i;
    if (slot < 0)
        return gn_errf(err, GN_ERANGE, "ARM %s@%u: already holding %d ARM versions", name, version,
                       a->p.max_models);
    int64_t t0 = gn_wire_now_ms();
    int lora = lora_path && lora_path[0];
    gn_model *m = NULL;      /* the model whose tokenizer and rows the ARM has */
    gn_model *own = NULL;    /* a full model of its own */
    int bbi = -1;
    gn_lora_adapter *ad = NULL;
    if (lora) {
        if ((bbi = backbone_get(a, path, err)) < 0)
            return gn_err_prefix(err, "ARM %s@%u: backbone: ", name, version);
        m = a->bb[bbi].m;
        if (!(ad = gn_lora_adapter_load(m, lora_path, err))) {
            if (a->bb[bbi].refs == 0) { /* loaded for it alone */
                a->bb[bbi].refs = 1;
                backbone_unref(a, bbi);
            }
            return gn_err_prefix(err, "ARM %s@%u: adapter %s: ", name, version, lora_path);
        }
        a->bb[bbi].refs++;
    } else {
        gn_model_params mp = gn_model_default_params();
        mp.load_tokenizer = 1;
        if (!(m = own = gn_model_load(path, a->be, &mp, err)))
            return gn_err_prefix(err, "ARM %s@%u: ", name, version);
    }
    const struct gn_tokenizer *tok = gn_model_tokenizer(m);
    const char *hash = tok ? gn_tok_hash(tok) : NULL;
    int rc = 0;
    if (!hash) {
        rc = gn_errf(err, GN_EMISMATCH, "ARM %s@%u: %s has no tokenizer, its vocabulary cannot be "
                     "checked: refused", name, version, path);
    } else if (want_hash && want_hash[0] && strcmp(hash, want_hash) != 0) {
        rc = gn_errf(err, GN_EMISMATCH,
                     "ARM %s@%u: tokenizer mismatch: %s/tokenizer.json hashes to %.16s..., the ARM "
                     "registry recorded %.16s...: refused",
                     name, version, path, hash, want_hash);
    } else {
        for (int i = 0; i < a->p.max_models; i++)
            if (a->e[i].used && !strcmp(a->e[i].name, name) &&
                (strcmp(a->e[i].tok_hash, hash) || a->e[i].n_out != gn_model_n_out(m))) {
                rc = gn_errf(err, GN_EMISMATCH,
                             "ARM %s@%u: tokenizer mismatch with the held version %u (%.16s... vs "
                             "%.16s...): refused",
                             name, version, a->e[i].version, hash, a->e[i].tok_hash);
                break;
            }
    }
    gn_host *h = lora ? a->bb[bbi].h : NULL;
    if (!rc && !lora) {
        gn_host_params hp = a->p.host;
        if (!(h = gn_host_create(m, &hp, err)))
            rc = gn_err_prefix(err, "ARM %s@%u: ", name, version);
    }
    if (rc) {
        if (lora) {
            gn_lora_adapter_free(ad);
            backbone_unref(a, bbi);
        }
        gn_model_free(own);
        return rc;
    }
    arm_entry *e = &a->e[slot];
    memset(e, 0, sizeof *e);
    e->used = 1;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->version = version;
    snprintf(e->tok_hash, sizeof e->tok_hash, "%s", hash);
    e->m = own;
    e->h = h;
    e->bb = bbi;
    e->ad = ad;
    e->n_out = gn_model_n_out(m);
    Genarm__V1__ModelRef ref = GENARM__V1__MODEL_REF__INIT;
    e->ref = ref;
    e->ref.name = e->name;
    e->ref.version = version;
    a->n_used++;
    a->gen++;
    if (lora)
        gn_wire_log("info", COMP, "event=arm_loaded arm=%s@%u adapter=%s backbone=%s adapter_bytes=%zu "
                    "n_out=%d load_ms=%lld", name, version, lora_path, path, gn_lora_adapter_bytes(ad), e->n_out,
                    (long long)(gn_wire_now_ms() - t0));
    else
        gn_wire_log("info", COMP, "event=arm_loaded arm=%s@%u path=%s n_out=%d load_ms=%lld", name,
                    version, path, e->n_out, (long long)(gn_wire_now_ms() - t0));
    if (mk_current || find_current(a, name) < 0)
        make_current(a, slot);
    return 0;
}

int gn_arms_ensure(gn_arms *a, const char *name, uint32_t version, int mk_current,
                   uint32_t *version_out, gn_err *err) {
    if (!gn_arms_name_valid(name))
        return gn_errf(err, GN_EINVAL, "ARM name \"%s\": 1..64 characters of [A-Za-z0-9._-]",
                       name ? name : "");
    int k = version ? find(a, name, version) : find_current(a, name);
    if (k >= 0) { /* held (a draining version promoted again becomes current) */
        if (mk_current)
            make_current(a, k);
        if (version_out)
            *version_out = a->e[k].version;
        return 0;
    }
    if (!a->resolve)
        return gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not held and this worker has no registry",
                       name, version);
    gn_arm_source src;
    memset(&src, 0, sizeof src);
    int rc = a->resolve(a->resolve_ud, name, version, &src, err);
    if (rc)
        return rc;
    if (version && src.version != version)
        return gn_errf(err, GN_EFORMAT, "ARM %s: registry answered version %u for %u", name,
                       src.version, version);
    int64_t now = gn_wire_now_ms();
    const size_t n_ref = sizeof a->refused / sizeof a->refused[0];
    for (size_t i = 0; i < n_ref; i++)
        if (a->refused[i].until_ms > now && a->refused[i].version == src.version &&
            !strcmp(a->refused[i].name, name))
            return gn_errf(err, a->refused[i].code, "%s", a->refused[i].msg);
    rc = gn_arms_load(a, name, src.version, src.path, src.lora_path, src.tokenizer_hash,
                      mk_current || src.is_current, err);
    if (rc == GN_EMISMATCH || rc == GN_EFORMAT || rc == GN_EIO || rc == GN_EUNSUP) {
        size_t o = 0; /* remember it in the oldest slot */
        for (size_t i = 1; i < n_ref; i++)
            if (a->refused[i].until_ms < a->refused[o].until_ms)
                o = i;
        snprintf(a->refused[o].name, sizeof a->refused[o].name, "%s", name);
        a->refused[o].version = src.version;
        a->refused[o].code = rc;
        a->refused[o].until_ms = now + REFUSE_MS;
        snprintf(a->refused[o].msg, sizeof a->refused[o].msg, "%s", err ? err->msg : "load failed");
    }
    if (rc == 0 && version_out)
        *version_out = src.version;
    return rc;
}

int gn_arms_promote(gn_arms *a, const char *name, uint32_t version, gn_err *err) {
    collect(a);
    int k = find(a, name ? name : "", version);
    if (k < 0)
        return gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not held", name ? name : "", version);
    make_current(a, k);
    return 0;
}

int gn_arms_unload(gn_arms *a, const char *name, uint32_t version, gn_err *err) {
    collect(a);
    int n = 0;
    for (int i = 0; i < a->p.max_models; i++) {
        arm_entry *e = &a->e[i];
        if (e->used && !strcmp(e->name, name ? name : "") && (version == 0 || e->version == version)) {
            if (!e->draining || e->is_current)
                a->gen++;
            e->draining = 1;
            e->is_current = 0;
            n++;
        }
    }
    if (!n)
        return version ? gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not held", name ? name : "", version)
                       : gn_errf(err, GN_ENOTFOUND, "ARM %s is not held", name ? name : "");
    collect(a);
    return n;
}

/* ---- steps -------------------------------------------------------------------- */

/* The entry that serves sequence s of request r, or -1 with an error added
 * to resp. */
static int route(gn_arms *a, const char *name, const req_state *r, const Genarm__V1__SeqStep *s,
                 gn_wire_step_resp *resp) {
    if (r->explicit_k >= 0) {
        arm_entry *e = &a->e[r->explicit_k];
        if (e->draining && gn_host_seq_len_for(e->h, e->ad, s->seq_id) < 0) {
            gn_wire_err_pool_add(&a->errs, r->seq_base, &resp->errors, &resp->n_errors, s->seq_id,
                     GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
                     "ARM %s@%u is draining (superseded or unloaded) and takes no new "
                     "sequences; start it on version 0 (current)",
                     name, e->version);
            return -1;
        }
        return r->explicit_k;
    }
    for (int i = 0; i < a->p.max_models; i++) /* pinned: the version that holds it */
        if (a->e[i].used && !strcmp(a->e[i].name, name) && gn_host_seq_len_for(a->e[i].h, a->e[i].ad, s->seq_id) >= 0)
            return i;
    if (r->cur < 0) {
        gn_wire_err_pool_add(&a->errs, r->seq_base, &resp->errors, &resp->n_errors, s->seq_id,
                 GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL, "ARM %s has no current version on this worker", name);
        return -1;
    }
    return r->cur;
}

/* Resolves a request's (name, version) to r->explicit_k or r->cur, loading
 * on demand. Returns 0, or the genarm.v1.ErrorCode of a whole-request
 * failure with err. */
static int resolve_req(gn_arms *a, const gn_wire_step_req *req, const char *name, uint32_t version, req_state *r,
                       gn_err *err) {
    r->explicit_k = r->cur = -1;
    if (version) {
        if ((r->explicit_k = find(a, name, version)) < 0) {
            gn_err e2 = {0};
            if (gn_arms_ensure(a, name, version, 0, NULL, &e2) != 0 || (r->explicit_k = find(a, name, version)) < 0) {
                gn_errf(err, e2.code ? e2.code : GN_ENOTFOUND, "%s", e2.msg[0] ? e2.msg : "ARM not held");
                return e2.code == GN_ERANGE ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                            : GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
            }
        }
        return 0;
    }
    r->cur = find_current(a, name);
    int need_current = 0;
    if (r->cur < 0) /* load on demand only when some sequence is new here */
        for (size_t i = 0; i < req->n_seqs && !need_current; i++) {
            need_current = 1;
            for (int j = 0; j < a->p.max_models; j++)
                if (a->e[j].used && !strcmp(a->e[j].name, name) &&
                    gn_host_seq_len_for(a->e[j].h, a->e[j].ad, req->seqs[i]->seq_id) >= 0)
                    need_current = 0;
        }
    if (need_current) {
        gn_err e2 = {0};
        int held = 0;
        for (int j = 0; j < a->p.max_models; j++) held |= a->e[j].used && !strcmp(a->e[j].name, name);
        if (gn_arms_ensure(a, name, 0, 0, NULL, &e2) == 0) r->cur = find_current(a, name);
        if (r->cur < 0 && !held) {
            gn_errf(err, e2.code ? e2.code : GN_ENOTFOUND, "%s", e2.msg[0] ? e2.msg : "ARM not held");
            return e2.code == GN_ERANGE ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                        : GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
        }
        if (r->cur < 0) gn_wire_log("warn", COMP, "event=arm_load_failed arm=%s msg=\"%s\"", name, e2.msg);
    }
    return 0;
}

/* The sub-request of request r for entry k, or -1. */
static int sub_of(const gn_arms *a, const req_state *r, int k) {
    for (int j = r->sub_begin; j < r->sub_end; j++)
        if (a->sub_entry[j] == k) return j;
    return -1;
}

/* 1 when host position p is the first of request r's sub-requests served by
 * its host (so a pass is counted once per request). */
static int first_on_host(const gn_arms *a, const req_state *r, int j) {
    const gn_host *h = a->e[a->sub_entry[j]].h;
    for (int x = r->sub_begin; x < j; x++)
        if (a->e[a->sub_entry[x]].h == h && a->h_code[a->sub_pos[x]] == 0) return 0;
    return 1;
}

/* Assembles request i's response from several sub-responses (or one with
 * routing errors beside it): results, rows and candidates in request order. */
static void merge_request(gn_arms *a, const gn_wire_step_req *req, const char *name, req_state *r,
                          gn_wire_step_resp *resp, uint64_t cols) {
    size_t row_bytes = 0, n_cand = 0;
    gn_wire_tensor_nbytes(r->dt, 1, cols, &row_bytes); /* checked when sizing */
    for (int j = r->sub_begin; j < r->sub_end; j++) { /* the hosts' own per-sequence refusals */
        a->sub_cur[j] = 0;
        int p = a->sub_pos[j];
        const arm_entry *e = &a->e[a->sub_entry[j]];
        if (a->h_code[p]) continue;
        for (size_t x = 0; x < a->h_resp[p]->n_errors; x++)
            gn_wire_err_pool_add(&a->errs, r->seq_base, &resp->errors, &resp->n_errors, a->h_resp[p]->errors[x]->seq_id,
                     a->h_resp[p]->errors[x]->code, "ARM %s@%u: %s", name, e->version,
                     a->h_resp[p]->errors[x]->message);
    }
    uint64_t out_row = 0;
    size_t n_res = 0;
    int first_k = -1;
    for (size_t q = 0; q < req->n_seqs; q++) {
        int k = a->seq_entry[r->seq_base + q];
        if (k < 0) continue;
        int j = sub_of(a, r, k), p = a->sub_pos[j];
        const gn_wire_step_resp *hr = a->h_resp[p];
        uint64_t sid = req->seqs[q]->seq_id;
        if (a->h_code[p]) {
            gn_wire_err_pool_add(&a->errs, r->seq_base, &resp->errors, &resp->n_errors, sid, a->h_code[p], "ARM %s@%u: %s", name,
                     a->e[k].version, a->h_err[p].msg);
            continue;
        }
        if (a->sub_cur[j] >= hr->n_results || hr->results[a->sub_cur[j]]->seq_id != sid) continue; /* refused */
        Genarm__V1__SeqResult rr = *hr->results[a->sub_cur[j]++]; /* model_version set after the passes */
        if (rr.n_cand) { /* ids block of cand_total entries, then the values block */
            memcpy(a->cand + r->cand_off + 4 * n_cand, hr->cand_ids.data + 4 * (size_t)rr.cand_offset,
                   4 * (size_t)rr.n_cand);
            memcpy(a->cand + r->cand_off + 4 * (r->cand_total + n_cand),
                   hr->cand_values.data + 4 * (size_t)rr.cand_offset, 4 * (size_t)rr.n_cand);
            rr.cand_offset = n_cand;
            n_cand += rr.n_cand;
        } else if (rr.n_rows) {
            memcpy(a->bytes + r->byte_off + out_row * row_bytes, hr->logprobs->data.data + rr.row_offset * row_bytes,
                   (size_t)rr.n_rows * row_bytes);
            rr.row_offset = out_row;
            out_row += rr.n_rows;
        }
        a->res[r->seq_base + n_res] = rr;
        a->res_ptr[r->seq_base + n_res] = &a->res[r->seq_base + n_res];
        n_res++;
        if (first_k < 0) first_k = k;
    }
    resp->results = &a->res_ptr[r->seq_base];
    resp->n_results = n_res;
    if (n_cand) {
        resp->cand_ids.data = a->cand + r->cand_off;
        resp->cand_ids.len = 4 * n_cand;
        resp->cand_values.data = a->cand + r->cand_off + 4 * r->cand_total;
        resp->cand_values.len = 4 * n_cand;
    } else {
        resp->cand_ids.data = resp->cand_values.data = NULL;
        resp->cand_ids.len = resp->cand_values.len = 0;
    }
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = gn_wire_dtype_to_proto(r->dt);
    t.rows = out_row;
    t.cols = cols;
    t.data.data = out_row ? a->bytes + r->byte_off : NULL;
    t.data.len = (size_t)out_row * row_bytes;
    a->tensor[r - a->rq] = t;
    resp->logprobs = &a->tensor[r - a->rq];
    resp->compute_us = 0; /* the passes that served it ran one after another */
    resp->pass_seqs = 0;
    for (int j = r->sub_begin; j < r->sub_end; j++)
        if (!a->h_code[a->sub_pos[j]] && a->h_resp[a->sub_pos[j]]->pass_seqs && first_on_host(a, r, j)) {
            resp->compute_us += a->h_resp[a->sub_pos[j]]->compute_us;
            resp->pass_seqs += a->h_resp[a->sub_pos[j]]->pass_seqs;
        }
    int k0 = first_k >= 0 ? first_k
             : (r->sub_end > r->sub_begin ? a->sub_entry[r->sub_begin] : (r->explicit_k >= 0 ? r->explicit_k : r->cur));
    resp->model = k0 >= 0 ? &a->e[k0].ref : req->model;
}
void gn_arms_step_batch(gn_arms *a, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                        int *codes, gn_err *errs, int64_t now_ms) {
    collect(a);
    a->n_passes = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += reqs[i]->n_seqs;
    if (reserve_batch(a, total > (size_t)n ? total : (size_t)n)) {
        for (int i = 0; i < n; i++) {
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            gn_errf(&errs[i], GN_ENOMEM, "step scratch for %zu sequences: out of memory", total);
        }
        return;
    }

    /* 1. Resolve each request, route each sequence, and make one sub-request
     *    per (request, entry): its sequences in request order. */
    int n_sub = 0;
    size_t seq_base = 0, sub_seq = 0;
    for (int i = 0; i < n; i++) {
        const gn_wire_step_req *req = reqs[i];
        gn_wire_step_resp *resp = resps[i];
        req_state *r = &a->rq[i];
        memset(r, 0, sizeof *r);
        r->seq_base = seq_base;
        r->sub_begin = r->sub_end = n_sub;
        r->explicit_k = r->cur = -1;
        seq_base += req->n_seqs;
        codes[i] = 0;
        errs[i].code = 0;
        errs[i].msg[0] = 0;
        resp->results = &a->res_ptr[r->seq_base];
        resp->n_results = 0;
        resp->errors = &a->errs.p[r->seq_base];
        resp->n_errors = 0;
        resp->model = req->model;
        for (size_t q = 0; q < req->n_seqs; q++) a->seq_entry[r->seq_base + q] = -1;
        const char *name = req->model && req->model->name ? req->model->name : "";
        uint32_t version = req->model ? req->model->version : 0;
        if (!name[0]) {
            gn_errf(&errs[i], GN_EINVAL, "a reward worker serves ARMs: StepRequest.model.name is required");
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
            continue;
        }
        if (req->n_seqs > (size_t)a->p.max_req_seqs) {
            gn_errf(&errs[i], GN_ERANGE, "%zu sequences in one step, this worker takes %d", req->n_seqs,
                    a->p.max_req_seqs);
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
            continue;
        }
        if (gn_wire_dtype_from_proto((int)req->dtype, &r->dt)) {
            gn_errf(&errs[i], GN_EINVAL, "dtype %d is not F32, F16 or BF16", (int)req->dtype);
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE;
            continue;
        }
        if ((codes[i] = resolve_req(a, req, name, version, r, &errs[i])) != 0) continue;
        /* The reply bound over the whole request (its parts may go to several
         * versions, each host bounding only its own part). */
        int any = find_any(a, name);
        if (any >= 0 && (codes[i] = gn_host_reply_check(a->e[any].h, req, &errs[i])) != 0) continue;
        for (size_t q = 0; q < req->n_seqs; q++) {
            int k = route(a, name, r, req->seqs[q], resp);
            a->seq_entry[r->seq_base + q] = k;
            if (k < 0 || sub_of(a, r, k) >= 0) continue;
            a->e[k].batch_ref = 1; /* a load for a later request must not collect it */
            int j = n_sub++;
            a->sub_entry[j] = k;
            a->sub_req[j] = i;
            a->sub_pos[j] = -1;
            r->sub_end = n_sub;
        }
        for (int j = r->sub_begin; j < r->sub_end; j++) {
            gn_wire_step_req sr = *req;
            sr.model = &a->e[a->sub_entry[j]].ref;
            sr.seqs = &a->sub_seqs[sub_seq];
            sr.n_seqs = 0;
            for (size_t q = 0; q < req->n_seqs; q++)
                if (a->seq_entry[r->seq_base + q] == a->sub_entry[j]) a->sub_seqs[sub_seq + sr.n_seqs++] = req->seqs[q];
            sub_seq += sr.n_seqs;
            a->sub[j] = sr;
        }
        r->merge = r->sub_end - r->sub_begin != 1 || resp->n_errors > 0;
    }

    /* 2. One forward pass per host: the sub-requests of a host (full-model
     *    versions have their own; adapter versions share their backbone's)
     *    go to it together, each with its adapter. */
    int pos = 0;
    for (int j = 0; j < n_sub; j++) {
        if (a->sub_pos[j] >= 0) continue;
        gn_host *h = a->e[a->sub_entry[j]].h;
        int p0 = pos;
        for (int x = j; x < n_sub; x++) {
            if (a->sub_pos[x] >= 0 || a->e[a->sub_entry[x]].h != h) continue;
            a->sub_pos[x] = pos;
            a->h_req[pos] = &a->sub[x];
            a->h_ad[pos] = a->e[a->sub_entry[x]].ad;
            gn_wire_step_resp r0 = GENARM__V1__STEP_RESPONSE__INIT;
            a->sub_resp[pos] = r0;
            a->h_resp[pos] = &a->sub_resp[pos];
            pos++;
        }
        uint64_t p_before, s_before, p_after, s_after;
        gn_host_counters(h, &p_before, &s_before);
        gn_host_step_batch(h, &a->h_ad[p0], &a->h_req[p0], pos - p0, &a->h_resp[p0], &a->h_code[p0], &a->h_err[p0],
                           now_ms);
        gn_host_counters(h, &p_after, &s_after);
        if (p_after > p_before && a->n_passes < 2 * a->p.max_models) {
            a->pass_host[a->n_passes] = h;
            a->pass_seqs[a->n_passes++] = (int)(s_after - s_before);
            a->passes += p_after - p_before;
            a->passes_seqs += s_after - s_before;
        }
    }
    for (int j = 0; j < n_sub; j++) {
        const arm_entry *e = &a->e[a->sub_entry[j]];
        gn_wire_step_resp *hr = a->h_resp[a->sub_pos[j]];
        a->e[a->sub_entry[j]].batch_ref = 0;
        if (a->h_code[a->sub_pos[j]]) continue;
        hr->model = (Genarm__V1__ModelRef *)&e->ref;
        for (size_t x = 0; x < hr->n_results; x++) hr->results[x]->model_version = e->version; /* the host's array */
    }

    /* 3. Each request's response: a single sub-request's as it is; several
     *    merged into this set's scratch (sized first, then filled). */
    size_t bytes = 0, cands = 0;
    for (int i = 0; i < n; i++) {
        req_state *r = &a->rq[i];
        if (codes[i] || !r->merge) continue;
        uint64_t rows = 0, cols = 0;
        size_t nc = 0;
        for (int j = r->sub_begin; j < r->sub_end; j++) {
            int p = a->sub_pos[j];
            if (a->h_code[p]) continue;
            const gn_wire_step_resp *hr = a->h_resp[p];
            if (hr->logprobs && hr->logprobs->cols) { /* one width: gn_arms_load refuses a version
                                                          whose n_out differs from those held */
                cols = hr->logprobs->cols;
                rows += hr->logprobs->rows;
            }
            for (size_t x = 0; x < hr->n_results; x++) nc += hr->results[x]->n_cand;
        }
        size_t nb;
        if (gn_wire_tensor_nbytes(r->dt, rows, cols, &nb)) {
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
            gn_errf(&errs[i], GN_ERANGE, "merged step output of %llu rows overflows", (unsigned long long)rows);
            continue;
        }
        r->byte_off = bytes;
        r->cand_off = cands;
        r->cand_total = nc;
        bytes += nb;
        cands += 8 * nc;
        r->cols = cols;
    }
    int oom = gn_grow((void **)&a->bytes, &a->bytes_cap, bytes + 1) || gn_grow((void **)&a->cand, &a->cand_cap, cands + 1);
    for (int i = 0; i < n; i++) {
        req_state *r = &a->rq[i];
        if (codes[i]) continue;
        if (!r->merge) { /* straight through: the host's response */
            int p = a->sub_pos[r->sub_begin];
            if (a->h_code[p]) {
                codes[i] = a->h_code[p];
                errs[i] = a->h_err[p];
            } else {
                *resps[i] = *a->h_resp[p];
            }
            continue;
        }
        if (oom) {
            codes[i] = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            gn_errf(&errs[i], GN_ENOMEM, "merged step output: out of memory");
            continue;
        }
        merge_request(a, reqs[i], reqs[i]->model->name, r, resps[i], r->cols);
    }
}

int gn_arms_step(gn_arms *a, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err) {
    int code = 0;
    gn_err e = {0};
    gn_arms_step_batch(a, &req, 1, &resp, &code, &e, now_ms);
    if (code && err) *err = e;
    return code;
}

int gn_arms_last_passes(const gn_arms *a, const int **pass_seqs) {
    if (pass_seqs) *pass_seqs = a->pass_seqs;
    return a->n_passes;
}

void gn_arms_counters(const gn_arms *a, uint64_t *forward_passes, uint64_t *pass_seqs_total) {
    if (forward_passes) *forward_passes = a->passes;
    if (pass_seqs_total) *pass_seqs_total = a->passes_seqs;
}

/* ---- fetch ---------------------------------------------------------------------- */

int gn_arms_fetch(gn_arms *a, const Genarm__V1__RowFetch *req, Genarm__V1__RowFetchResult *res, gn_err *err) {
    const char *name = req->model && req->model->name ? req->model->name : "";
    uint32_t version = req->model ? req->model->version : 0;
    if (!name[0]) {
        gn_errf(err, GN_EINVAL, "a reward worker serves ARMs: RowFetch.model.name is required");
        return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    }
    if (version) { /* the version that served the steps: straight to its host */
        int k = find(a, name, version);
        if (k < 0) {
            gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not held", name, version);
            return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
        }
        return gn_host_fetch(a->e[k].h, a->e[k].ad, req, res, err);
    }
    /* Version 0: each sequence from the version that holds it, one host call
     * each, the values gathered here. Every version held under one name has
     * the same row width. */
    int any = find_any(a, name);
    if (any < 0) {
        gn_errf(err, GN_ENOTFOUND, "ARM %s is not held", name);
        return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    }
    size_t ns = req->n_seqs ? req->n_seqs : 1, vals = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        size_t add = req->seqs[i]->full_row ? (size_t)a->e[any].n_out : req->seqs[i]->n_ids;
        if (gn_size_add(vals, add, &vals)) vals = SIZE_MAX;
    }
    size_t limit = gn_host_max_reply_bytes(a->e[any].h);
    if (vals > limit / 4) {
        gn_errf(err, GN_ERANGE,
                "row fetch reply of %zu values (%zu bytes) exceeds this worker's limit of %zu bytes "
                "(max_reply_bytes)", vals, vals > SIZE_MAX / 4 ? SIZE_MAX : 4 * vals, limit);
        return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
    }
    if (ns > a->f_cap) {
        Genarm__V1__FetchResult *fr = gn_calloc(ns, sizeof *fr);
        Genarm__V1__FetchResult **fp = gn_calloc(ns, sizeof *fp);
        if (!fr || !fp || gn_wire_err_pool_reserve(&a->f_errs, ns)) {
            gn_free(fr);
            gn_free(fp);
            gn_errf(err, GN_ENOMEM, "row fetch: out of memory");
            return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
        }
        gn_free(a->f_res);
        gn_free(a->f_ptr);
        a->f_res = fr;
        a->f_ptr = fp;
        a->f_cap = ns;
    }
    if (vals > SIZE_MAX / 4 - 1 || gn_grow((void **)&a->f_vals, &a->f_vals_cap, 4 * vals + 1)) {
        gn_errf(err, GN_ENOMEM, "row fetch of %zu values: out of memory", vals);
        return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
    res->results = a->f_ptr;
    res->n_results = 0;
    res->errors = a->f_errs.p;
    res->n_errors = 0;
    size_t off = 0;
    for (size_t i = 0; i < req->n_seqs; i++) {
        Genarm__V1__FetchSeq *fs = req->seqs[i];
        int k = -1;
        for (int x = 0; x < a->p.max_models && k < 0; x++)
            if (a->e[x].used && !strcmp(a->e[x].name, name) && gn_host_seq_len_for(a->e[x].h, a->e[x].ad, fs->seq_id) >= 0)
                k = x;
        if (k < 0) {
            gn_wire_err_pool_add(&a->f_errs, 0, &res->errors, &res->n_errors, fs->seq_id, GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
                     "ARM %s: no version holds the sequence (released or expired)", name);
            continue;
        }
        Genarm__V1__RowFetch one = *req;
        one.seqs = &fs;
        one.n_seqs = 1;
        Genarm__V1__RowFetchResult hr = GENARM__V1__ROW_FETCH_RESULT__INIT;
        gn_err e2 = {0};
        int code = gn_host_fetch(a->e[k].h, a->e[k].ad, &one, &hr, &e2);
        if (code || hr.n_errors) {
            gn_wire_err_pool_add(&a->f_errs, 0, &res->errors, &res->n_errors, fs->seq_id,
                     code ? code : (int)hr.errors[0]->code, "ARM %s@%u: %s", name, a->e[k].version,
                     code ? e2.msg : hr.errors[0]->message);
            continue;
        }
        size_t cnt = hr.results[0]->n;
        if (cnt > vals - off) { /* sized above: should not happen, but never a silent drop */
            gn_wire_err_pool_add(&a->f_errs, 0, &res->errors, &res->n_errors, fs->seq_id,
                     GENARM__V1__ERROR_CODE__ERROR_INTERNAL, "ARM %s@%u: %zu values do not fit the %zu sized",
                     name, a->e[k].version, cnt, vals - off);
            continue;
        }
        memcpy(a->f_vals + 4 * off, hr.values.data, 4 * cnt);
        Genarm__V1__FetchResult fr = *hr.results[0];
        fr.offset = off;
        a->f_res[res->n_results] = fr;
        a->f_ptr[res->n_results] = &a->f_res[res->n_results];
        res->n_results++;
        off += cnt;
    }
    res->values.data = off ? a->f_vals : NULL;
    res->values.len = 4 * off;
    return 0;
}

int gn_arms_release(gn_arms *a, const char *name, uint32_t version, const uint64_t *ids, size_t n) {
    int freed = 0;
    for (int i = 0; i < a->p.max_models; i++) {
        arm_entry *e = &a->e[i];
        if (e->used && (!name || !name[0] || !strcmp(e->name, name)) &&
            (version == 0 || e->version == version))
            freed += gn_host_release_for(e->h, e->ad, ids, n);
    }
    collect(a);
    return freed;
}

int gn_arms_sweep(gn_arms *a, int64_t now_ms) {
    int freed = 0;
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used)
            freed += gn_host_sweep(a->e[i].h, now_ms);
    collect(a);
    return freed;
}

int gn_arms_count(const gn_arms *a) { return a->n_used; }

int gn_arms_get(const gn_arms *a, int idx, gn_arm_info *out) {
    int n = 0;
    for (int i = 0; i < a->p.max_models; i++) {
        const arm_entry *e = &a->e[i];
        if (!e->used)
            continue;
        if (n++ == idx) {
            out->name = e->name;
            out->version = e->version;
            out->n_seqs = gn_host_n_seqs_for(e->h, e->ad);
            out->is_current = e->is_current;
            out->draining = e->draining;
            return 0;
        }
    }
    return GN_ENOTFOUND;
}

int gn_arms_load_total(const gn_arms *a) {
    int n = 0;
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used)
            n += gn_host_n_seqs_for(a->e[i].h, a->e[i].ad);
    return n;
}

uint64_t gn_arms_generation(const gn_arms *a) { return a->gen; }

int gn_arms_backbones(const gn_arms *a) {
    int n = 0;
    for (int i = 0; i < a->p.max_models; i++) n += a->bb[i].used;
    return n;
}

void gn_arms_kv_usage(const gn_arms *a, int *used_blocks, int *total_blocks) {
    int used = 0, total = 0, u, t;
    for (int i = 0; i < a->p.max_models; i++) {
        if (a->e[i].used && a->e[i].bb < 0) { /* a full model's own host */
            gn_host_kv_usage(a->e[i].h, &u, &t);
            used += u;
            total += t;
        }
        if (a->bb[i].used) { /* a backbone's host, shared by its adapters */
            gn_host_kv_usage(a->bb[i].h, &u, &t);
            used += u;
            total += t;
        }
    }
    *used_blocks = used;
    *total_blocks = total;
}
