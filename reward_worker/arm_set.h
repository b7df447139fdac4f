/* arm_set.h — the ARMs a reward_worker holds, one gn_host (model + KV caches)
 * per (name, version), and the HOT-SWAP rule:
 *
 *  - Each ARM name has at most one *current* version. A StepRequest for
 *    (name, 0) sends every sequence to the version that already holds it (its
 *    KV cache belongs to those weights: the version is pinned at the
 *    sequence's first step), and a sequence it has never seen to the current
 *    version. (name, v) with v > 0 addresses version v explicitly.
 *  - gn_arms_promote(name, k+1) makes k+1 current and marks k *draining*: k
 *    keeps serving the sequences it holds, refuses new ones, and is unloaded
 *    (model and KV pool freed) by the first collect after its last sequence
 *    ends (released, release_after, or idle-expired). Nothing is dropped and
 *    no sequence ever moves between versions.
 *  - A request whose sequences live on different versions is split per
 *    version and the replies merged back in request order (one tensor).
 *
 * Batching: gn_arms_step_batch takes every StepRequest that arrived together
 * (from several coordinators, for several ARMs), routes each sequence as
 * above, and runs ONE forward pass per host over everything routed to it:
 * a full-model version has its own host, adapter versions on one backbone
 * share the backbone's, so two adapters' sequences go into one pass (each
 * with its own adapter). Each request still gets its own response.
 *
 * LoRA ARMs: a version whose source names a PEFT adapter (lora_path) is
 * served on its backbone (path) WITHOUT merging: one backbone model and host
 * per path, shared by every adapter version on it (gn_lora_adapter, applied
 * per sequence by the runner), so ten adapters cost one backbone plus ten
 * small factor sets, and sequences of different adapters share batches. A
 * backbone is freed with its last adapter.
 *
 * Loads go through a resolver callback (the worker's Redis ARM registry)
 * when a step or a promote names an ARM version that is not held; every load
 * checks gn_tok_hash of the loaded tokenizer against the hash the registry
 * recorded and against the other versions held under the same name, and is
 * refused (GN_EMISMATCH) on a difference.
 *
 * Redis-free and socket-free, so it is testable in process. Thread-safety:
 * one thread at a time (the step server's). */
#ifndef GN_ARM_SET_H
#define GN_ARM_SET_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "gn_err.h"
#include "model_host.h"
#include "wire.h"

#define GN_ARM_NAME_MAX 65  /* 1..64 chars of [A-Za-z0-9._-] + NUL (control/README.md) */
#define GN_ARM_PATH_MAX 1024
#define GN_ARM_HASH_HEX 65

typedef struct gn_arms_params {
    gn_host_params host; /* per version: max_seqs (capacity), idle timeout, runner */
    int max_models;      /* (name, version) pairs held at once, default 16 */
    int max_req_seqs;    /* sequences in one StepRequest (the wire limit), default 256 */
    int max_batch_seqs;  /* sequences in one batch the scratch is sized for at create, default
                            256 (a bigger batch grows it) */
} gn_arms_params;

gn_arms_params gn_arms_default_params(void);

/* Where to load an ARM version from (filled by the resolver). */
typedef struct gn_arm_source {
    uint32_t version;                    /* the concrete version (>= 1) */
    char path[GN_ARM_PATH_MAX];          /* model directory (Hugging Face layout) */
    char lora_path[GN_ARM_PATH_MAX];     /* PEFT adapter directory, or "" */
    char tokenizer_hash[GN_ARM_HASH_HEX];/* expected gn_tok_hash, or "" = not checked */
    int is_current;                      /* the registry's current version */
} gn_arm_source;

/* Looks up name@version (version 0 = the current one) for loading. Returns 0
 * with *out filled, or a negative GN_E* code with err (GN_ENOTFOUND when the
 * registry does not know it). */
typedef int (*gn_arms_resolve_fn)(void *ud, const char *name, uint32_t version,
                                  gn_arm_source *out, gn_err *err);

typedef struct gn_arms gn_arms;

/* Creates an empty set loading onto be (borrowed; must outlive the set).
 * resolve may be NULL (no loads on demand). NULL and err on failure. */
gn_arms *gn_arms_create(gn_backend *be, const gn_arms_params *p, gn_arms_resolve_fn resolve,
                        void *resolve_ud, gn_err *err);

/* Frees every host and model (NULL is a no-op). */
void gn_arms_free(gn_arms *a);

/* Loads name@version from path, or (lora_path not NULL/"") the adapter in
 * lora_path on the backbone at path. want_hash (may be
 * NULL/"") is the tokenizer hash the registry recorded. make_current: make it
 * the current version (the old current starts draining); a name with no
 * current version gets this one as current anyway. Loading a version already
 * held is a no-op apart from make_current. Returns 0; GN_EINVAL (bad name,
 * version 0), GN_ERANGE (max_models held), GN_EMISMATCH (tokenizer hash), or
 * the model loader's error. */
int gn_arms_load(gn_arms *a, const char *name, uint32_t version, const char *path,
                 const char *lora_path, const char *want_hash, int make_current, gn_err *err);

/* Loads name@version (0 = current) through the resolver unless held, and
 * makes it current when the resolver says it is current (or make_current).
 * *version_out (may be NULL) receives the concrete version. A version whose
 * load failed (tokenizer mismatch, unreadable files) is refused with the same
 * error for the next 10 s without loading it again, so a client cannot make
 * the worker reload a broken model on every step. */
int gn_arms_ensure(gn_arms *a, const char *name, uint32_t version, int make_current,
                   uint32_t *version_out, gn_err *err);

/* Hot-swap: version (held) becomes current; the previous current starts
 * draining. GN_ENOTFOUND when not held. */
int gn_arms_promote(gn_arms *a, const char *name, uint32_t version, gn_err *err);

/* Marks name@version (0 = every version of name) for unloading: it takes no
 * new sequences and is freed once its last sequence ends (at once when it
 * holds none). Returns how many versions were marked; GN_ENOTFOUND when none
 * is held. */
int gn_arms_unload(gn_arms *a, const char *name, uint32_t version, gn_err *err);

/* Serves n >= 1 validated StepRequests (gn_wire_step_check passed) at now_ms
 * with one forward pass per host (see Batching above). resps[i] (initialised
 * by the caller) gets request i's results in request order, each
 * SeqResult.model_version naming the version that served it, its rows and
 * sparse candidates, its per-sequence errors (routing refusals, the host's,
 * and "ARM name@v: ..." for a version whose pass failed when the request was
 * split), compute_us and pass_seqs (summed over the passes that served it).
 * resp->model is the version that served the step (that of the first
 * sequence when several did). codes[i] = 0, or a genarm.v1.ErrorCode with
 * errs[i] for a whole-request failure: ERROR_UNKNOWN_MODEL for an ARM neither
 * held nor loadable (the reason, e.g. a tokenizer mismatch, in errs[i]),
 * ERROR_CAPACITY when max_models versions are held already, ERROR_TOO_LARGE
 * when the whole request's reply would exceed host.max_reply_bytes (checked
 * before any pass, even when its sequences live on several versions), the
 * host's code when the only version serving the request failed its pass. Memory the
 * responses point to belongs to the set (or its hosts) until the next
 * gn_arms_* call other than gn_arms_fetch. */
void gn_arms_step_batch(gn_arms *a, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                        int *codes, gn_err *errs, int64_t now_ms);

/* One request (gn_arms_step_batch with n = 1): returns 0 (per-sequence
 * failures in resp->errors) or the request's genarm.v1.ErrorCode with err. */
int gn_arms_step(gn_arms *a, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err);

/* Values of kept rows (sparse steps) for a RowFetch checked by
 * gn_wire_fetch_check, routed by (name, version) to that version's host and
 * adapter (gn_host_fetch); version 0: each sequence to the version holding
 * it. res as gn_host_fetch; its memory belongs to the set until the next
 * gn_arms_fetch. Returns 0 (per-sequence ERROR_ROW_GONE / TOKEN_RANGE in
 * res->errors) or a genarm.v1.ErrorCode with err (ERROR_UNKNOWN_MODEL: no
 * name, the version is not held, or for version 0 no version of the name is
 * held; ERROR_TOO_LARGE: more values than host.max_reply_bytes). */
int gn_arms_fetch(gn_arms *a, const Genarm__V1__RowFetch *req, Genarm__V1__RowFetchResult *res, gn_err *err);

/* The forward passes of the last batch: their count, and *pass_seqs (may be
 * NULL) pointed at the sequences of each (valid until the next batch). */
int gn_arms_last_passes(const gn_arms *a, const int **pass_seqs);

/* Forward passes and the sequences stepped over them since create, over
 * every host (also those unloaded since). */
void gn_arms_counters(const gn_arms *a, uint64_t *forward_passes, uint64_t *pass_seqs_total);

/* Frees sequences of name@version (version 0: of every version of name;
 * name NULL/"": of every ARM). Returns how many were held. */
int gn_arms_release(gn_arms *a, const char *name, uint32_t version, const uint64_t *ids, size_t n);

/* Idle sweep of every host, then unloads draining versions that hold no
 * sequence. Returns the number of sequences freed. */
int gn_arms_sweep(gn_arms *a, int64_t now_ms);

/* One held version, for heartbeats and the registry. */
typedef struct gn_arm_info {
    const char *name; /* valid until the next gn_arms_* call that unloads */
    uint32_t version;
    int n_seqs;
    int is_current;
    int draining;
} gn_arm_info;

/* Number of versions held; gn_arms_get fills *out for index i (0 ..
 * count-1, in slot order). */
int gn_arms_count(const gn_arms *a);
int gn_arms_get(const gn_arms *a, int i, gn_arm_info *out);

/* The current version of name, 0 when none. */
uint32_t gn_arms_current(const gn_arms *a, const char *name);

/* Sequences held over every version. */
int gn_arms_load_total(const gn_arms *a);

/* KV blocks in use / in all, over every host held (own and backbones). */
void gn_arms_kv_usage(const gn_arms *a, int *used_blocks, int *total_blocks);

/* Backbones held for LoRA-adapter ARMs (each loaded once, freed with its
 * last adapter). */
int gn_arms_backbones(const gn_arms *a);

/* Increases whenever the held set or a current/draining flag changes (so the
 * worker re-publishes its registry record). */
uint64_t gn_arms_generation(const gn_arms *a);

/* 1 when s is a valid ARM name (1..64 chars of [A-Za-z0-9._-]). Pure. */
int gn_arms_name_valid(const char *s);

#endif
