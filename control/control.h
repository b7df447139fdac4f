/* control.h — the Redis control plane: tenants, hashed API keys, preference
 * profiles, the ARM registry (versions, the "current" pointer, hot-swap
 * commands), the live worker registry and the shared request queue.
 *
 * The schema (every key, its type and who writes it) is in control/README.md.
 * All keys live under the "genarm:" prefix.
 *
 * Conventions
 *  - Every function returns 0 (or a documented non-negative count) on success
 *    and a negative GN_E* code on failure with the message in err (may be NULL).
 *    GN_ENOTFOUND: the tenant/key/profile/ARM/version/worker does not exist.
 *    GN_EINVAL: a bad argument (identifier syntax, profile rule, retiring the
 *    current version). GN_EFORMAT: Redis holds data (or answered with a shape)
 *    this library did not write: it is reported, never trusted. GN_EIO: the
 *    connection failed (after one reconnect attempt within the call).
 *    GN_EMISMATCH: an ARM whose tokenizer differs from the base's.
 *  - Identifiers (tenant ids, profile names, ARM names, versions, worker ids,
 *    consumer names) are 1..GN_CTL_ID_MAX-1 characters of [A-Za-z0-9._-].
 *  - A gn_ctl is one synchronous connection; it is NOT thread-safe: use one per
 *    thread. When a command finds the connection broken (EOF, reset, timeout)
 *    the library reconnects once and retries that command; if that fails too
 *    the call returns GN_EIO (and the next call tries again). A command that
 *    had reached Redis before the connection broke may therefore run twice:
 *    every multi-step write is one atomic Lua script, and all writes are
 *    idempotent except queue pushes (see gn_ctl_queue_push).
 *  - Every reply's type and shape is checked before use; a surprise is
 *    GN_EFORMAT naming the operation, never a crash.
 *  - Strings returned in fixed-size struct fields are NUL-terminated; anything
 *    returned through a pointer-to-pointer is gn_malloc'd, owned by the caller
 *    and released with the matching *_free function. */
#ifndef GN_CONTROL_H
#define GN_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"

#define GN_CTL_ID_MAX 65            /* identifiers: up to 64 chars + NUL */
#define GN_CTL_REF_MAX 130          /* "name@version" + NUL */
#define GN_CTL_PATH_MAX 1024        /* filesystem paths, endpoints */
#define GN_CTL_HASH_HEX 65          /* SHA-256 as lower-case hex + NUL */
#define GN_CTL_KEY_LEN 68           /* "gnk_" + 64 hex chars (32 random bytes) */
#define GN_CTL_KEY_ID_LEN 16        /* printable key id: first 16 hex of the hash */
#define GN_CTL_PROFILE_MAX_ARMS 16
#define GN_CTL_WORKER_MAX_ARMS 64
#define GN_CTL_STREAM_ID_MAX 48     /* "<ms>-<seq>" + NUL */
#define GN_CTL_HOST_MAX 256         /* a hostname + NUL */

typedef struct gn_ctl gn_ctl;

/* Connects to redis at host:port (TCP). timeout_ms bounds the connect and
 * every later command (> 0). NULL and err on failure. */
gn_ctl *gn_ctl_connect(const char *host, int port, int timeout_ms, gn_err *err);

/* Closes the connection; accepts NULL. */
void gn_ctl_free(gn_ctl *c);

/* PING; 0 when Redis answers PONG. */
int gn_ctl_ping(gn_ctl *c, gn_err *err);

/* 1 when s is a valid identifier (see above), else 0. Pure. */
int gn_ctl_id_valid(const char *s);

/* ---------------------------------------------------------------- tenants */

/* Creates tenant `id` with a display name (NULL: the id). GN_EINVAL when it
 * already exists. */
int gn_ctl_tenant_add(gn_ctl *c, const char *id, const char *display_name, gn_err *err);

/* Deletes the tenant, all its API keys and all its profiles, atomically. */
int gn_ctl_tenant_del(gn_ctl *c, const char *id, gn_err *err);

/* 1 when the tenant exists, 0 when not, negative on error. */
int gn_ctl_tenant_exists(gn_ctl *c, const char *id, gn_err *err);

/* Sorted list of tenant ids. *ids is an array of *n gn_malloc'd strings; free
 * with gn_ctl_strv_free(*ids, *n). */
int gn_ctl_tenant_list(gn_ctl *c, char ***ids, size_t *n, gn_err *err);

void gn_ctl_strv_free(char **v, size_t n);

/* ---------------------------------------------------------------- API keys */

/* Creates an API key for an existing tenant from 32 bytes of /dev/urandom.
 * The raw key (GN_CTL_KEY_LEN chars) is written to key_out ONCE; Redis only
 * ever stores its SHA-256. key_id_out (optional, GN_CTL_KEY_ID_LEN + 1 bytes)
 * receives the printable id used by list/revoke. */
int gn_ctl_key_create(gn_ctl *c, const char *tenant, char key_out[GN_CTL_KEY_LEN + 1],
                      char *key_id_out, gn_err *err);

/* Resolves a raw key (as sent in "Authorization: Bearer ...") to its tenant.
 * GN_ENOTFOUND for an unknown or revoked key. tenant_out: GN_CTL_ID_MAX bytes. */
int gn_ctl_key_lookup(gn_ctl *c, const char *raw_key, char tenant_out[GN_CTL_ID_MAX],
                      gn_err *err);

/* Revokes one of the tenant's keys, named either by the raw key or by its key
 * id (or any unique prefix of the hash of at least 8 hex chars). */
int gn_ctl_key_revoke(gn_ctl *c, const char *tenant, const char *key_or_id, gn_err *err);

/* The tenant's key ids (GN_CTL_KEY_ID_LEN chars each), sorted. Free with
 * gn_ctl_strv_free. */
int gn_ctl_key_list(gn_ctl *c, const char *tenant, char ***key_ids, size_t *n, gn_err *err);

/* SHA-256 of a raw key as lower-case hex (what Redis stores). Pure. */
void gn_ctl_key_hash(const char *raw_key, char out[GN_CTL_HASH_HEX]);

/* ---------------------------------------------------------------- profiles */

enum { /* gn_ctl_profile.has: which defaults the profile sets */
    GN_CTL_HAS_TEMPERATURE = 1u << 0,
    GN_CTL_HAS_TOP_P = 1u << 1,
    GN_CTL_HAS_TOP_K = 1u << 2,
    GN_CTL_HAS_MIN_P = 1u << 3,
    GN_CTL_HAS_MAX_TOKENS = 1u << 4,
};

typedef struct gn_ctl_profile_arm {
    char name[GN_CTL_ID_MAX]; /* a registered ARM; its current version is used */
    double weight;            /* finite; alpha_i = weight / beta */
} gn_ctl_profile_arm;

/* A preference profile. As JSON:
 * {"name":"helpful","arms":[{"name":"hh","weight":1.0}],"beta":1.0,
 *  "defaults":{"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"max_tokens":256}}
 * Every "defaults" member is optional (see `has`). */
typedef struct gn_ctl_profile {
    char name[GN_CTL_ID_MAX];
    int n_arms; /* 1..GN_CTL_PROFILE_MAX_ARMS */
    gn_ctl_profile_arm arms[GN_CTL_PROFILE_MAX_ARMS];
    double beta;        /* > 0, finite */
    unsigned has;       /* GN_CTL_HAS_* bits */
    double temperature; /* >= 0 (0 = greedy) */
    double top_p;       /* (0, 1] */
    int top_k;          /* >= 0 (0 = off) */
    double min_p;       /* [0, 1] */
    int max_tokens;     /* >= 1 */
} gn_ctl_profile;

/* Zeroes p (no arms, beta 1, no defaults). */
void gn_ctl_profile_init(gn_ctl_profile *p);

/* Checks the rules that need no Redis: valid name, 1..MAX arms with valid,
 * distinct names and finite weights, beta > 0 and finite, defaults in range.
 * GN_EINVAL with the offending field in the message. Pure. */
int gn_ctl_profile_validate(const gn_ctl_profile *p, gn_err *err);

/* Parses and validates profile JSON (len bytes, need not be NUL-terminated).
 * Unknown members are refused. GN_EFORMAT for JSON/shape errors, GN_EINVAL for
 * rule violations. Pure. */
int gn_ctl_profile_parse(const char *json, size_t len, gn_ctl_profile *out, gn_err *err);

/* Serialises p (validated first) to compact JSON; *json is gn_malloc'd. Pure. */
int gn_ctl_profile_to_json(const gn_ctl_profile *p, char **json, gn_err *err);

/* Stores (creates or replaces) a profile of an existing tenant. Besides
 * gn_ctl_profile_validate, every ARM must be registered with a current
 * version (GN_ENOTFOUND names the first one that is not). */
int gn_ctl_profile_set(gn_ctl *c, const char *tenant, const gn_ctl_profile *p, gn_err *err);

/* Reads the tenant's profile `name`. A tenant can only reach its own
 * profiles: another tenant's profile of the same name is GN_ENOTFOUND.
 * Stored data that does not parse or validate is GN_EFORMAT. */
int gn_ctl_profile_get(gn_ctl *c, const char *tenant, const char *name, gn_ctl_profile *out,
                       gn_err *err);

int gn_ctl_profile_del(gn_ctl *c, const char *tenant, const char *name, gn_err *err);

/* Sorted profile names of the tenant; free with gn_ctl_strv_free. */
int gn_ctl_profile_list(gn_ctl *c, const char *tenant, char ***names, size_t *n, gn_err *err);

/* ---------------------------------------------------------------- base model */

/* Records the base model's tokenizer hash (64 hex); ARM registration then
 * refuses any ARM with a different one (GN_EMISMATCH). Written by the base
 * worker at start or by `genarm-admin base set`. */
int gn_ctl_base_set(gn_ctl *c, const char *path, const char *tokenizer_hash, gn_err *err);

/* Reads it back; GN_ENOTFOUND when never set. Out buffers may be NULL. */
int gn_ctl_base_get(gn_ctl *c, char path[GN_CTL_PATH_MAX], char hash[GN_CTL_HASH_HEX], gn_err *err);

/* ---------------------------------------------------------------- ARM registry */

typedef struct gn_ctl_arm_version {
    char version[GN_CTL_ID_MAX];
    char path[GN_CTL_PATH_MAX];               /* model/adapter directory */
    char tokenizer_hash[GN_CTL_HASH_HEX];     /* gn_tok_hash of its tokenizer */
    int64_t created_ms;                       /* unix time in ms */
} gn_ctl_arm_version;

typedef struct gn_ctl_arm_info {
    char name[GN_CTL_ID_MAX];
    char current[GN_CTL_ID_MAX];  /* "" when no version is current */
    size_t n_versions;
    gn_ctl_arm_version *versions; /* oldest first */
} gn_ctl_arm_info;

/* Registers version `version` of ARM `name`. The first version of an ARM
 * becomes its current version; later ones wait for gn_ctl_arm_promote.
 * GN_EINVAL when that version exists already, or the hash is not 64 hex;
 * GN_EMISMATCH when a base tokenizer hash is recorded and differs. */
int gn_ctl_arm_register(gn_ctl *c, const char *name, const char *version, const char *path,
                        const char *tokenizer_hash, gn_err *err);

/* Hot-swap: makes `version` current and, in the same atomic step, appends a
 * swap command to the stream genarm:swaps and PUBLISHes it on the channel
 * genarm:swaps. previous_out (optional, GN_CTL_ID_MAX) gets the old current
 * version ("" if none). Promoting the current version again is a no-op that
 * publishes nothing. */
int gn_ctl_arm_promote(gn_ctl *c, const char *name, const char *version, char *previous_out,
                       gn_err *err);

/* Removes a version from the registry. GN_EINVAL when it is the current one
 * (promote another first); GN_ENOTFOUND when unknown. */
int gn_ctl_arm_retire(gn_ctl *c, const char *name, const char *version, gn_err *err);

/* The current version of ARM name into version (GN_CTL_ID_MAX bytes): one
 * read, without the version's record. GN_ENOTFOUND when the ARM is not
 * registered or has no current version. */
int gn_ctl_arm_current(gn_ctl *c, const char *name, char *version, gn_err *err);

/* One version; version NULL or "" means the current one. */
int gn_ctl_arm_get(gn_ctl *c, const char *name, const char *version, gn_ctl_arm_version *out,
                   gn_err *err);

/* Every ARM (sorted by name) with all its versions. Free with
 * gn_ctl_arm_list_free. */
int gn_ctl_arm_list(gn_ctl *c, gn_ctl_arm_info **arms, size_t *n, gn_err *err);
void gn_ctl_arm_list_free(gn_ctl_arm_info *arms, size_t n);

/* A swap command as read back from the stream genarm:swaps. */
typedef struct gn_ctl_swap {
    char id[GN_CTL_STREAM_ID_MAX];  /* stream entry id: pass as after_id next time */
    char arm[GN_CTL_ID_MAX];
    char version[GN_CTL_ID_MAX];
    char previous[GN_CTL_ID_MAX];   /* "" if none */
    int64_t ts_ms;
} gn_ctl_swap;

/* Reads the first swap command after stream id after_id ("0" = from the
 * start, "$" = only new ones; may point at out->id), waiting up to block_ms
 * (0 = do not wait).
 * Returns 1 with *out filled, 0 when none arrived, negative on error. */
int gn_ctl_swap_next(gn_ctl *c, const char *after_id, int block_ms, gn_ctl_swap *out,
                     gn_err *err);

/* A finished hot swap as the reward worker that did it reports it, on the
 * stream genarm:swap_reports (capped at about 10000 entries): coordinators
 * read it for the metric genarm:arm_swap_duration_seconds. */
typedef struct gn_ctl_swap_report {
    char id[GN_CTL_STREAM_ID_MAX]; /* stream entry id: pass as after_id next time */
    char worker[GN_CTL_ID_MAX];
    char arm[GN_CTL_ID_MAX];
    char version[GN_CTL_ID_MAX];
    int64_t swap_ms; /* the swap command seen .. the new version serving, on that worker */
} gn_ctl_swap_report;

int gn_ctl_swap_report_push(gn_ctl *c, const char *worker, const char *arm, const char *version, int64_t swap_ms,
                            gn_err *err);

/* The first report after stream id after_id (may point at out->id; "0" = from
 * the start). Does not wait. 1 with *out filled, 0 when none, negative on error. */
int gn_ctl_swap_report_next(gn_ctl *c, const char *after_id, gn_ctl_swap_report *out, gn_err *err);

/* ---------------------------------------------------------------- workers */

enum { GN_CTL_WORKER_BASE = 0, GN_CTL_WORKER_REWARD = 1 };

typedef struct gn_ctl_worker {
    char id[GN_CTL_ID_MAX];
    int kind;                                   /* GN_CTL_WORKER_* */
    char endpoint[GN_CTL_PATH_MAX];             /* ZeroMQ endpoint, e.g. tcp://127.0.0.1:5601 */
    int n_arms;
    char arms[GN_CTL_WORKER_MAX_ARMS][GN_CTL_REF_MAX]; /* "name@version" */
    int capacity;                               /* sequences it can hold */
    int load;                                   /* sequences it holds now */
    int64_t updated_ms;                         /* last heartbeat, unix ms (set by heartbeat) */
    char host[GN_CTL_HOST_MAX];                 /* the worker's hostname, "" = not given (records
                                                   written before the field existed read as "") */
    char ipc[GN_CTL_PATH_MAX];                  /* its ipc:// endpoint ("ipc:///run/x.sock"), "" = none:
                                                   a coordinator on the same host may connect to it
                                                   instead of endpoint */
} gn_ctl_worker;

/* Writes the worker's record and gives it a TTL of ttl_ms: a worker that
 * stops heartbeating disappears from the registry after ttl_ms. host may be
 * "" (no whitespace or control characters); ipc "" or an "ipc://" endpoint. */
int gn_ctl_worker_heartbeat(gn_ctl *c, const gn_ctl_worker *w, int ttl_ms, gn_err *err);

/* Removes a worker at once (graceful shutdown). */
int gn_ctl_worker_remove(gn_ctl *c, const char *id, gn_err *err);

/* Live workers (TTL not expired), sorted by id; expired ids are pruned from
 * the index. *out is gn_malloc'd (NULL when *n == 0); free with gn_free. A
 * record that this library did not write (missing field, non-numeric load,
 * unknown kind, malformed ARM list, wrong key type) fails the whole call with
 * GN_EFORMAT naming the worker. */
int gn_ctl_worker_list(gn_ctl *c, gn_ctl_worker **out, size_t *n, gn_err *err);

/* The live reward worker holding ARM name@version with the lowest
 * load/capacity; GN_ENOTFOUND when none holds it. */
int gn_ctl_worker_find_arm(gn_ctl *c, const char *arm, const char *version, gn_ctl_worker *out,
                           gn_err *err);

/* ---------------------------------------------------------------- request queue */

/* A message of the request stream (or of an ARM's waiting list). */
typedef struct gn_ctl_msg {
    char id[GN_CTL_STREAM_ID_MAX]; /* stream entry id ("" for waiting-list items) */
    char *payload;                 /* gn_malloc'd, NUL-terminated; len bytes before the NUL */
    size_t len;
    long deliveries;               /* times delivered (from XPENDING/XAUTOCLAIM; 1 on first read) */
} gn_ctl_msg;

void gn_ctl_msg_clear(gn_ctl_msg *m); /* frees payload; accepts NULL */

/* Creates the consumer group "coordinators" on the stream genarm:requests
 * (and the stream) if missing. Idempotent. */
int gn_ctl_queue_init(gn_ctl *c, gn_err *err);

/* Appends a request (opaque bytes, typically the JSON body plus routing
 * fields). id_out (optional, GN_CTL_STREAM_ID_MAX) gets the entry id. Not
 * idempotent: a retried push after a broken connection may enqueue twice. */
int gn_ctl_queue_push(gn_ctl *c, const void *payload, size_t len, char *id_out, gn_err *err);

/* Reads the next never-delivered request for `consumer` in the group,
 * waiting up to block_ms (0 = no wait). 1 with *out filled, 0 when none. The
 * message stays pending for this consumer until gn_ctl_queue_ack. */
int gn_ctl_queue_read(gn_ctl *c, const char *consumer, int block_ms, gn_ctl_msg *out,
                      gn_err *err);

/* Acknowledges (and deletes) a processed request. */
int gn_ctl_queue_ack(gn_ctl *c, const char *id, gn_err *err);

/* Takes over one request that has been pending (delivered, never acked) for
 * at least min_idle_ms — e.g. held by a coordinator that crashed. 1 with *out
 * filled, 0 when none is that old. */
int gn_ctl_queue_claim(gn_ctl *c, const char *consumer, long min_idle_ms, gn_ctl_msg *out,
                       gn_err *err);

/* 1 when entry `id` is still on the request stream (waiting, or taken and not
 * yet acknowledged), 0 when it is gone, negative on failure. */
int gn_ctl_queue_has(gn_ctl *c, const char *id, gn_err *err);

/* Queue depth: entries not yet delivered (*waiting, may be NULL) and
 * delivered but not acked (*pending, may be NULL). */
int gn_ctl_queue_depth(gn_ctl *c, long *waiting, long *pending, gn_err *err);

/* Parks a request for ARM name@version (no worker holds it yet) and
 * publishes {"cmd":"load","arm":..,"version":..} on channel genarm:load so a
 * reward worker can load it on demand. */
int gn_ctl_wait_push(gn_ctl *c, const char *arm, const char *version, const void *payload,
                     size_t len, gn_err *err);

/* Moves every request parked for name@version back onto the request stream
 * (atomically); called once a worker holds the ARM. Returns the number moved. */
long gn_ctl_wait_release(gn_ctl *c, const char *arm, const char *version, gn_err *err);

/* Takes one parked request back: removes the entry equal to payload from
 * name@version's waiting list (and the ARM from the waiting set when the list
 * is then empty); the other requests parked for it stay. Returns 1 when it
 * was there, 0 when not (already moved back by gn_ctl_wait_release). */
long gn_ctl_wait_cancel(gn_ctl *c, const char *arm, const char *version, const void *payload, size_t len,
                        gn_err *err);

/* Total requests waiting for an ARM (the metric genarm_requests_waiting_for_arm). */
long gn_ctl_wait_count(gn_ctl *c, gn_err *err);

/* The ARMs ("name@version", sorted) that have requests waiting: a reward
 * worker polls this (with its heartbeat) to load ARMs on demand even when it
 * missed the genarm:load message. Free with gn_ctl_strv_free. */
int gn_ctl_wait_arms(gn_ctl *c, char ***refs, size_t *n, gn_err *err);

/* ---------------------------------------------------------------- pub/sub */

#define GN_CTL_MAX_CHANNELS 8
#define GN_CTL_CHANNEL_MAX 64

/* Subscribes c to `channel` ("genarm:swaps": swap commands as JSON
 * {"cmd":"swap","arm","version","previous","id"}; "genarm:load": load
 * requests {"cmd":"load","arm","version"}). Call once per channel (at most
 * GN_CTL_MAX_CHANNELS). From then on c is a subscriber: only gn_ctl_sub_next
 * and gn_ctl_free may be used on it (other calls fail with GN_EINVAL). */
int gn_ctl_subscribe(gn_ctl *c, const char *channel, gn_err *err);

/* Waits up to timeout_ms (>= 0) for the next message on the subscribed
 * channels. Returns 1 with channel_out filled and *payload (gn_malloc'd,
 * NUL-terminated, *len bytes), 0 on timeout, negative on error. A broken
 * connection is reopened and resubscribed once per call; messages published
 * while it was down are lost (the stream genarm:swaps keeps the swaps: read
 * it with gn_ctl_swap_next to catch up). */
int gn_ctl_sub_next(gn_ctl *c, int timeout_ms, char channel_out[GN_CTL_CHANNEL_MAX], char **payload,
                    size_t *len, gn_err *err);

#endif
