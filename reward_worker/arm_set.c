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

#define ERR_MSG_MAX 240
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
    Genarm__V1__ModelRef ref;
} arm_entry;

struct gn_arms {
    gn_backend *be;
    gn_arms_params p;
    gn_arms_resolve_fn resolve;
    void *resolve_ud;
    arm_entry *e;    /* (max_models) */
    backbone *bb;    /* (max_models) */
    int n_used;
    uint64_t gen;
    /* Per-step scratch for split requests, sized max_req_seqs. */
    int *seq_entry;                 /* entry index of each request sequence, -1 = own error */
    int *group_of_entry;            /* (max_models) group index, -1 = none */
    int *group_entry;               /* (max_models) entry of each group */
    Genarm__V1__SeqStep **sub;      /* (max_req_seqs) sub-request sequence pointers */
    size_t *gcount;                 /* (max_models) each group's results (in res from gcursor) */
    int *gcode;                     /* (max_models) each group's whole-step code */
    char (*gmsg)[ERR_MSG_MAX];      /* (max_models) and message */
    int *gcursor;                   /* (max_models) first result of each group in res */
    Genarm__V1__SeqResult *res;     /* (max_req_seqs) merged reply */
    Genarm__V1__SeqResult **res_ptr;
    gn_wire_seq_errors *errors;     /* (max_req_seqs) merged error replies */
    Genarm__V1__Tensor tensor;
    uint8_t *bytes;     /* the merged rows, in request order */
    size_t bytes_cap;
    uint8_t *stage;     /* each group's rows as they come (group order) */
    size_t stage_cap;
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
    gn_arms_params p = {.host = gn_host_default_params(), .max_models = 16, .max_req_seqs = 256};
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
    size_t nm = (size_t)p.max_models, ns = (size_t)p.max_req_seqs;
    a->e = gn_calloc(nm, sizeof *a->e);
    a->bb = gn_calloc(nm, sizeof *a->bb);
    a->seq_entry = gn_calloc(ns, sizeof *a->seq_entry);
    a->group_of_entry = gn_calloc(nm, sizeof *a->group_of_entry);
    a->group_entry = gn_calloc(nm, sizeof *a->group_entry);
    a->sub = gn_calloc(ns, sizeof *a->sub);
    a->gcount = gn_calloc(nm, sizeof *a->gcount);
    a->gcode = gn_calloc(nm, sizeof *a->gcode);
    a->gmsg = gn_calloc(nm, sizeof *a->gmsg);
    a->gcursor = gn_calloc(nm, sizeof *a->gcursor);
    a->res = gn_calloc(ns, sizeof *a->res);
    a->res_ptr = gn_calloc(ns, sizeof *a->res_ptr);
    a->errors = gn_wire_seq_errors_create((int)ns);
    if (!a->e || !a->bb || !a->seq_entry || !a->group_of_entry || !a->group_entry || !a->sub || !a->gcount ||
        !a->gcode || !a->gmsg || !a->gcursor || !a->res || !a->res_ptr ||
        !a->errors) {
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
    gn_free(a->seq_entry);
    gn_free(a->group_of_entry);
    gn_free(a->group_entry);
    gn_free(a->sub);
    gn_free(a->gcount);
    gn_free(a->gcode);
    gn_free(a->gmsg);
    gn_free(a->gcursor);
    gn_free(a->res);
    gn_free(a->res_ptr);
    gn_wire_seq_errors_free(a->errors);
    gn_free(a->bytes);
    gn_free(a->stage);
    gn_free(a);
}

static int find(const gn_arms *a, const char *name, uint32_t version) {
    for (int i = 0; i < a->p.max_models; i++)
        if (a->e[i].used && a->e[i].version == version && !strcmp(a->e[i].name, name))
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
        if (e->used && e->draining && gn_host_n_seqs_for(e->h, e->ad) == 0) {
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

/* The entry that serves sequence s of a request for (name, version), or -1
 * with an error added to resp. cur is the current entry (-1 if none). */
static int route(gn_arms *a, const char *name, int explicit_k, int cur, const Genarm__V1__SeqStep *s,
                 gn_wire_step_resp *resp) {
    if (explicit_k >= 0) {
        arm_entry *e = &a->e[explicit_k];
        if (e->draining && gn_host_seq_len_for(e->h, e->ad, s->seq_id) < 0) {
            gn_wire_seq_errors_add(a->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
                      "ARM %s@%u is draining (superseded or unloaded) and takes no new "
                      "sequences; start it on version 0 (current)",
                      name, e->version);
            return -1;
        }
        return explicit_k;
    }
    for (int i = 0; i < a->p.max_models; i++) /* pinned: the version that holds it */
        if (a->e[i].used && !strcmp(a->e[i].name, name) && gn_host_seq_len_for(a->e[i].h, a->e[i].ad, s->seq_id) >= 0)
            return i;
    if (cur < 0) {
        gn_wire_seq_errors_add(a->errors, resp, s->seq_id, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
                  "ARM %s has no current version on this worker", name);
        return -1;
    }
    return cur;
}

int gn_arms_step(gn_arms *a, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err) {
    collect(a);
    const char *name = req->model && req->model->name ? req->model->name : "";
    uint32_t version = req->model ? req->model->version : 0;
    if (!name[0]) {
        gn_errf(err, GN_EINVAL, "a reward worker serves ARMs: StepRequest.model.name is required");
        return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    }
    if (req->n_seqs > (size_t)a->p.max_req_seqs) {
        gn_errf(err, GN_ERANGE, "%zu sequences in one step, this worker takes %d", req->n_seqs,
                a->p.max_req_seqs);
        return GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE;
    }
    int explicit_k = -1, cur = -1;
    if (version) {
        if ((explicit_k = find(a, name, version)) < 0) {
            gn_err e2 = {0};
            if (gn_arms_ensure(a, name, version, 0, NULL, &e2) != 0 ||
                (explicit_k = find(a, name, version)) < 0) {
                gn_errf(err, e2.code ? e2.code : GN_ENOTFOUND, "%s",
                        e2.msg[0] ? e2.msg : "ARM not held");
                return e2.code == GN_ERANGE ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                            : GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
            }
        }
    } else {
        cur = find_current(a, name);
        int need_current = 0;
        if (cur < 0) /* load on demand only when some sequence is new here */
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
            for (int j = 0; j < a->p.max_models; j++)
                held |= a->e[j].used && !strcmp(a->e[j].name, name);
            if (gn_arms_ensure(a, name, 0, 0, NULL, &e2) == 0)
                cur = find_current(a, name);
            if (cur < 0 && !held) {
                gn_errf(err, e2.code ? e2.code : GN_ENOTFOUND, "%s",
                        e2.msg[0] ? e2.msg : "ARM not held");
                return e2.code == GN_ERANGE ? GENARM__V1__ERROR_CODE__ERROR_CAPACITY
                                            : GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
            }
            if (cur < 0)
                gn_wire_log("warn", COMP, "event=arm_load_failed arm=%s msg=\"%s\"", name, e2.msg);
        }
    }

    /* Route every sequence; group by version. */
    gn_wire_seq_errors_attach(a->errors, resp);
    resp->n_results = 0;
    resp->results = a->res_ptr;
    int n_groups = 0;
    for (int i = 0; i < a->p.max_models; i++) a->group_of_entry[i] = -1;
    for (size_t i = 0; i < req->n_seqs; i++) {
        int k = route(a, name, explicit_k, cur, req->seqs[i], resp);
        a->seq_entry[i] = k;
        if (k >= 0 && a->group_of_entry[k] < 0) {
            a->group_of_entry[k] = n_groups;
            a->group_entry[n_groups++] = k;
        }
    }
    if (n_groups == 1 && resp->n_errors == 0) { /* the common case: straight through */
        arm_entry *e = &a->e[a->group_entry[0]];
        int code = gn_host_step_for(e->h, e->ad, req, now_ms, resp, err);
        resp->model = &e->ref;
        for (size_t i = 0; code == 0 && i < resp->n_results; i++)
            resp->results[i]->model_version = e->version; /* the host's own array */
        return code;
    }

    /* Split: one sub-request per version. Versions may share a host (LoRA
     * adapters on one backbone), and a host's reply lives only until its next
     * step, so each group's rows, results and errors are copied out before
     * the next group runs; results are then listed in request order. */
    gn_dtype dt;
    if (gn_wire_dtype_from_proto((int)req->dtype, &dt)) {
        gn_errf(err, GN_EINVAL, "dtype %d is not F32, F16 or BF16", (int)req->dtype);
        return GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE;
    }
    uint64_t row = 0, cols = 0;
    size_t row_bytes = 0, n_copied = 0;
    uint64_t compute_us = 0;
    for (int g = 0; g < n_groups; g++) {
        arm_entry *e = &a->e[a->group_entry[g]];
        size_t n = 0;
        for (size_t i = 0; i < req->n_seqs; i++)
            if (a->seq_entry[i] == a->group_entry[g])
                a->sub[n++] = req->seqs[i];
        gn_wire_step_req sr = *req;
        sr.model = &e->ref;
        sr.seqs = a->sub;
        sr.n_seqs = n;
        gn_wire_step_resp gr = GENARM__V1__STEP_RESPONSE__INIT;
        gn_err e2 = {0};
        a->gcode[g] = gn_host_step_for(e->h, e->ad, &sr, now_ms, &gr, &e2);
        snprintf(a->gmsg[g], ERR_MSG_MAX, "%.200s", e2.msg);
        a->gcursor[g] = (int)n_copied; /* its results start here in a->res */
        a->gcount[g] = 0;
        compute_us += gr.compute_us;
        if (a->gcode[g])
            continue;
        const Genarm__V1__Tensor *t = gr.logprobs;
        if (t && t->rows) {
            if (cols && t->cols != cols) {
                gn_errf(err, GN_EMISMATCH, "ARM %s: versions disagree on the vocabulary size", name);
                return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            }
            cols = t->cols;
            size_t have;
            if (gn_wire_tensor_nbytes(dt, 1, cols, &row_bytes) ||
                gn_wire_tensor_nbytes(dt, row + t->rows, cols, &have) ||
                gn_grow((void **)&a->stage, &a->stage_cap, have + 1)) {
                gn_errf(err, GN_ENOMEM, "merged step output of %llu rows: out of memory",
                        (unsigned long long)(row + t->rows));
                return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            }
            memcpy(a->stage + row * row_bytes, t->data.data, (size_t)t->rows * row_bytes);
        }
        for (size_t j = 0; j < gr.n_results; j++) {
            Genarm__V1__SeqResult r = *gr.results[j];
            r.row_offset += row;
            r.model_version = e->version;
            a->res[n_copied++] = r;
        }
        a->gcount[g] = gr.n_results;
        for (size_t j = 0; j < gr.n_errors; j++) /* the host refused these sequences */
            gn_wire_seq_errors_add(a->errors, resp, gr.errors[j]->seq_id, gr.errors[j]->code, "ARM %s@%u: %s",
                                   name, e->version, gr.errors[j]->message);
        row += t ? t->rows : 0;
    }
    size_t nbytes = (size_t)row * row_bytes;
    if (gn_grow((void **)&a->bytes, &a->bytes_cap, nbytes + 1)) {
        gn_errf(err, GN_ENOMEM, "merged step output of %llu rows: out of memory", (unsigned long long)row);
        return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
    size_t n_res = 0;
    uint64_t out_row = 0;
    int first_g = -1;
    for (size_t i = 0; i < req->n_seqs; i++) { /* request order, rows too */
        int k = a->seq_entry[i];
        if (k < 0)
            continue;
        int g = a->group_of_entry[k];
        uint64_t sid = req->seqs[i]->seq_id;
        if (a->gcode[g]) {
            gn_wire_seq_errors_add(a->errors, resp, sid, a->gcode[g], "ARM %s@%u: %s", name, a->e[k].version,
                                   a->gmsg[g]);
            continue;
        }
        for (size_t j = (size_t)a->gcursor[g]; j < (size_t)a->gcursor[g] + a->gcount[g]; j++)
            if (a->res[j].seq_id == sid) {
                Genarm__V1__SeqResult *r = &a->res[j];
                if (r->n_rows)
                    memcpy(a->bytes + out_row * row_bytes, a->stage + r->row_offset * row_bytes,
                           (size_t)r->n_rows * row_bytes);
                r->row_offset = out_row;
                out_row += r->n_rows;
                a->res_ptr[n_res++] = r;
                if (first_g < 0)
                    first_g = g;
                break;
            }
    }
    resp->n_results = n_res;
    resp->results = a->res_ptr;
    resp->compute_us = compute_us; /* the groups ran one after another */
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = gn_wire_dtype_to_proto(dt);
    t.rows = row;
    t.cols = cols;
    t.data.data = a->bytes;
    t.data.len = nbytes;
    a->tensor = t;
    resp->logprobs = &a->tensor;
    int k0 = first_g >= 0 ? a->group_entry[first_g]
             : (n_groups ? a->group_entry[0] : (explicit_k >= 0 ? explicit_k : cur));
    if (k0 >= 0)
        resp->model = &a->e[k0].ref;
    else
        resp->model = req->model;
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
