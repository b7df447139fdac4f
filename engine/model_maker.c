/* model_maker.c — tiny random Hugging Face model directories (see
 * model_maker.h). */
#include "model_maker.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_threadpool.h"
#include "safetensors.h"

typedef struct arch_info {
    const char *flag;        /* --arch value */
    const char *hf_name;     /* "architectures"[0] */
    const char *model_type;
    double rope_theta;
    double norm_eps;
    int max_pos;
    int tied;                /* default tie_word_embeddings */
} arch_info;

static const arch_info k_arch[] = {
    {"llama", "LlamaForCausalLM", "llama", 10000.0, 1e-5, 4096, 0},
    {"llama3", "LlamaForCausalLM", "llama", 500000.0, 1e-5, 131072, 0},
    {"mistral", "MistralForCausalLM", "mistral", 10000.0, 1e-5, 32768, 0},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", 1000000.0, 1e-6, 32768, 1},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", 1000000.0, 1e-6, 40960, 1},
};

gn_make_model_params gn_make_model_default_params(void) {
    gn_make_model_params p;
    memset(&p, 0, sizeof p);
    p.arch = "llama";
    p.dim = 64;
    p.n_layers = 2;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.ffn_dim = 128;
    p.sliding_window = -1;
    p.dtype = GN_BF16;
    p.seed = 1;
    p.tied = -1;
    p.shards = 1;
    p.init_std = 0.02f;
    p.tok_merges = 254;
    p.lora_rank = 8;
    p.lora_alpha = 16.0f;
    return p;
}

/* ---- deterministic random numbers --------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static double uniform01(uint64_t *s) { return (double)(splitmix64(s) >> 11) * 0x1.0p-53; }

static double normal(uint64_t *s) {
    double u1 = 1.0 - uniform01(s); /* (0, 1] */
    double u2 = uniform01(s);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Fills values [lo, hi) of a tensor: mean + std * N(0,1) in dtype dt, from
 * the tensor's stream seeded with s0. splitmix64 is a counter (the state
 * after k draws is s0 + k * gamma) and each value takes two draws, so any
 * range can be filled on its own: the bytes do not depend on how the tensor
 * is split between threads. */
static void fill_range(void *dst, gn_dtype dt, size_t lo, size_t hi, uint64_t s0, double mean, double std) {
    uint64_t s = s0 + 2u * (uint64_t)lo * 0x9e3779b97f4a7c15ull;
    for (size_t i = lo; i < hi; i++) {
        float v = (float)(mean + std * normal(&s));
        if (dt == GN_F32) ((float *)dst)[i] = v;
        else if (dt == GN_F16) ((uint16_t *)dst)[i] = gn_f32_to_f16(v);
        else ((uint16_t *)dst)[i] = gn_f32_to_bf16(v);
    }
}

typedef struct fill_job {
    void *dst;
    gn_dtype dt;
    size_t n;
    uint64_t s0;
    double mean, std;
} fill_job;

#define FILL_CHUNK ((size_t)1 << 20)

static void fill_task(void *ctx, int task, int thread) {
    (void)thread;
    const fill_job *f = ctx;
    size_t lo = (size_t)task * FILL_CHUNK, hi = lo + FILL_CHUNK < f->n ? lo + FILL_CHUNK : f->n;
    fill_range(f->dst, f->dt, lo, hi, f->s0, f->mean, f->std);
}

/* Fills n values mean + std * N(0,1) of tensor `name` in dtype dt (in
 * parallel on pool when there is one and the tensor is large). */
static void fill_tensor(gn_pool *pool, void *dst, gn_dtype dt, size_t n, const char *name, uint64_t seed,
                        double mean, double std) {
    fill_job f = {dst, dt, n, seed ^ fnv1a64(name), mean, std};
    size_t chunks = (n + FILL_CHUNK - 1) / FILL_CHUNK;
    if (pool && chunks > 1 && chunks < (size_t)1 << 30)
        gn_pool_run(pool, fill_task, &f, (int)chunks);
    else
        fill_range(dst, dt, 0, n, f.s0, mean, std);
}

/* ---- the tensor list ------------------------------------------------------ */

enum { K_MAT, K_NORM, K_BIAS };

typedef struct spec {
    char name[112];
    int n_dims;
    int64_t shape[2];
    int kind;
} spec;

static void add_spec(spec *s, int *n, int kind, int64_t rows, int64_t cols, int layer,
                     const char *leaf) {
    spec *t = &s[(*n)++];
    if (layer >= 0) snprintf(t->name, sizeof t->name, "model.layers.%d.%s", layer, leaf);
    else snprintf(t->name, sizeof t->name, "%s", leaf);
    t->kind = kind;
    if (rows < 0) {
        t->n_dims = 1;
        t->shape[0] = cols;
    } else {
        t->n_dims = 2;
        t->shape[0] = rows;
        t->shape[1] = cols;
    }
}

/* The tensors of the model in Hugging Face module order. *out is gn_malloc'd. */
static int model_specs(const gn_make_model_params *p, int arch, int n_vocab, int head_dim, int tied,
                       spec **out, int *n_out) {
    int per_layer = 9 + 3 + 2;
    spec *s = gn_calloc((size_t)(per_layer * p->n_layers + 3), sizeof *s);
    if (!s) return GN_ENOMEM;
    int n = 0;
    const int64_t D = p->dim, Q = (int64_t)p->n_heads * head_dim, KV = (int64_t)p->n_kv_heads * head_dim,
                  F = p->ffn_dim;
    const int q2 = !strcmp(k_arch[arch].flag, "qwen2"), q3 = !strcmp(k_arch[arch].flag, "qwen3");
    add_spec(s, &n, K_MAT, n_vocab, D, -1, "model.embed_tokens.weight");
    for (int l = 0; l < p->n_layers; l++) {
        add_spec(s, &n, K_MAT, Q, D, l, "self_attn.q_proj.weight");
        if (q2) add_spec(s, &n, K_BIAS, -1, Q, l, "self_attn.q_proj.bias");
        add_spec(s, &n, K_MAT, KV, D, l, "self_attn.k_proj.weight");
        if (q2) add_spec(s, &n, K_BIAS, -1, KV, l, "self_attn.k_proj.bias");
        add_spec(s, &n, K_MAT, KV, D, l, "self_attn.v_proj.weight");
        if (q2) add_spec(s, &n, K_BIAS, -1, KV, l, "self_attn.v_proj.bias");
        add_spec(s, &n, K_MAT, D, Q, l, "self_attn.o_proj.weight");
        if (q3) {
            add_spec(s, &n, K_NORM, -1, head_dim, l, "self_attn.q_norm.weight");
            add_spec(s, &n, K_NORM, -1, head_dim, l, "self_attn.k_norm.weight");
        }
        add_spec(s, &n, K_MAT, F, D, l, "mlp.gate_proj.weight");
        add_spec(s, &n, K_MAT, F, D, l, "mlp.up_proj.weight");
        add_spec(s, &n, K_MAT, D, F, l, "mlp.down_proj.weight");
        add_spec(s, &n, K_NORM, -1, D, l, "input_layernorm.weight");
        add_spec(s, &n, K_NORM, -1, D, l, "post_attention_layernorm.weight");
    }
    add_spec(s, &n, K_NORM, -1, D, -1, "model.norm.weight");
    if (!tied) add_spec(s, &n, K_MAT, n_vocab, D, -1, "lm_head.weight");
    *out = s;
    *n_out = n;
    return 0;
}

static size_t spec_numel(const spec *s) {
    size_t n = 1;
    for (int i = 0; i < s->n_dims; i++) n *= (size_t)s->shape[i];
    return n;
}

/* Generates and writes specs[lo, hi) into one safetensors file. */
static int write_specs(gn_pool *pool, const char *path, const spec *specs, int lo, int hi, gn_dtype dt,
                       uint64_t seed, double std, double head_std, gn_err *err) {
    int n = hi - lo, rc = 0;
    gn_st_write_tensor *w = gn_calloc((size_t)(n ? n : 1), sizeof *w);
    void **bufs = gn_calloc((size_t)(n ? n : 1), sizeof *bufs);
    if (!w || !bufs) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const spec *s = &specs[lo + i];
        size_t numel = spec_numel(s);
        bufs[i] = gn_malloc(numel * gn_dtype_size(dt));
        if (!bufs[i]) {
            rc = gn_errf(err, GN_ENOMEM, "out of memory for tensor %s", s->name);
            goto done;
        }
        double mean = s->kind == K_NORM ? 1.0 : 0.0;
        double sd = s->kind == K_NORM ? 0.1 : strcmp(s->name, "lm_head.weight") == 0 ? head_std : std;
        fill_tensor(pool, bufs[i], dt, numel, s->name, seed, mean, sd);
        w[i].name = s->name;
        w[i].dtype = dt;
        w[i].n_dims = s->n_dims;
        w[i].shape[0] = s->shape[0];
        w[i].shape[1] = s->shape[1];
        w[i].data = bufs[i];
    }
    static const char *const meta[] = {"format", "pt", NULL};
    rc = gn_st_write(path, w, n, meta, err);
done:
    for (int i = 0; bufs && i < n; i++) gn_free(bufs[i]);
    gn_free(bufs);
    gn_free(w);
    return rc;
}

/* The output head's standard deviation: its own when set, else the weights'. */
static double head_std(const gn_make_model_params *p) { return p->head_std > 0 ? p->head_std : p->init_std; }

static int write_weights(gn_pool *pool, const gn_make_model_params *p, const char *dir, const spec *specs, int n,
                         gn_err *err) {
    int rc = 0;
    if (p->shards <= 1) {
        char *path = gn_fs_join(dir, "model.safetensors");
        if (!path) return gn_errf(err, GN_ENOMEM, "out of memory");
        rc = write_specs(pool, path, specs, 0, n, p->dtype, p->seed, p->init_std, head_std(p), err);
        gn_free(path);
        return rc;
    }
    if (p->shards > n)
        return gn_errf(err, GN_EINVAL, "--shards %d: the model has only %d tensors", p->shards, n);
    const char **names = gn_calloc((size_t)n, sizeof *names);
    const char **files = gn_calloc((size_t)n, sizeof *files);
    char(*fnames)[64] = gn_calloc((size_t)p->shards, sizeof *fnames);
    uint64_t total = 0;
    if (!names || !files || !fnames) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    for (int k = 0; k < p->shards && !rc; k++) {
        /* Shard k holds tensors [k n / K, (k+1) n / K): never empty since K <= n. */
        int lo = (int)((int64_t)k * n / p->shards), hi = (int)((int64_t)(k + 1) * n / p->shards);
        snprintf(fnames[k], sizeof fnames[k], "model-%05d-of-%05d.safetensors", k + 1, p->shards);
        char *path = gn_fs_join(dir, fnames[k]);
        if (!path) {
            rc = gn_errf(err, GN_ENOMEM, "out of memory");
            break;
        }
        rc = write_specs(pool, path, specs, lo, hi, p->dtype, p->seed, p->init_std, head_std(p), err);
        gn_free(path);
        for (int i = lo; i < hi; i++) {
            names[i] = specs[i].name;
            files[i] = fnames[k];
            total += spec_numel(&specs[i]) * gn_dtype_size(p->dtype);
        }
    }
    if (!rc) rc = gn_st_write_index(dir, names, files, n, total, err);
done:
    gn_free(names);
    gn_free(files);
    gn_free(fnames);
    return rc;
}

/* ---- JSON files ------------------------------------------------------------ */

/* config files: indented, keys sorted, reals to 15 digits. */
static int dump_json(const char *dir, const char *name, json_t *j, gn_err *err) {
    return gn_fs_write_json(dir, name, j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15), err);
}

/* The double nearest to f's shortest decimal spelling (0.02f -> 0.02), so
 * config files read naturally. */
static double clean(float f) {
    char b[32];
    snprintf(b, sizeof b, "%.7g", (double)f);
    return strtod(b, NULL);
}

/* An integral value as a JSON integer (PEFT writes "lora_alpha": 16), else a real. */
static json_t *number(float f) {
    double d = clean(f);
    return d == floor(d) && fabs(d) < 1e15 ? json_integer((json_int_t)d) : json_real(d);
}

static json_t *id_or_null(int id) { return id >= 0 ? json_integer(id) : json_null(); }

static const char *torch_dtype(gn_dtype d) {
    return d == GN_F32 ? "float32" : d == GN_F16 ? "float16" : "bfloat16";
}

static json_t *build_config(const gn_make_model_params *p, int arch, int n_vocab, int head_dim,
                            int tied, int max_pos, int bos, int eos) {
    const arch_info *a = &k_arch[arch];
    json_t *c = json_pack("{s:[s], s:s, s:f, s:o, s:o, s:s, s:i, s:f, s:i, s:i, s:i, s:i, s:i,"
                          " s:i, s:f, s:f, s:b, s:s, s:s, s:b, s:i}",
                          "architectures", a->hf_name, "model_type", a->model_type,
                          "attention_dropout", 0.0, "bos_token_id", id_or_null(bos), "eos_token_id",
                          id_or_null(eos), "hidden_act", "silu", "hidden_size", p->dim,
                          "initializer_range", clean(p->init_std), "intermediate_size", p->ffn_dim,
                          "max_position_embeddings", max_pos, "num_attention_heads", p->n_heads,
                          "num_hidden_layers", p->n_layers, "num_key_value_heads", p->n_kv_heads,
                          "head_dim", head_dim, "rms_norm_eps", a->norm_eps, "rope_theta",
                          a->rope_theta, "tie_word_embeddings", tied, "torch_dtype",
                          torch_dtype(p->dtype), "transformers_version", "4.46.0", "use_cache", 1,
                          "vocab_size", n_vocab);
    if (!c) return NULL;
    int bad = 0;
    if (!strcmp(a->flag, "llama3")) {
        bad |= json_object_set_new(c, "rope_scaling",
                                   json_pack("{s:f, s:f, s:f, s:i, s:s}", "factor", 8.0,
                                             "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                             "original_max_position_embeddings", 8192, "rope_type",
                                             "llama3")) != 0;
    } else {
        bad |= json_object_set_new(c, "rope_scaling", json_null()) != 0;
    }
    if (!strcmp(a->model_type, "llama")) {
        bad |= json_object_set_new(c, "attention_bias", json_false()) != 0;
        bad |= json_object_set_new(c, "mlp_bias", json_false()) != 0;
        bad |= json_object_set_new(c, "pretraining_tp", json_integer(1)) != 0;
    }
    if (!strcmp(a->flag, "mistral")) {
        int sw = p->sliding_window < 0 ? 16 : p->sliding_window;
        bad |= json_object_set_new(c, "sliding_window", sw ? json_integer(sw) : json_null()) != 0;
    }
    if (!strcmp(a->flag, "qwen2") || !strcmp(a->flag, "qwen3")) {
        bad |= json_object_set_new(c, "use_sliding_window", json_false()) != 0;
        bad |= json_object_set_new(c, "sliding_window", json_null()) != 0;
        bad |= json_object_set_new(c, "max_window_layers", json_integer(p->n_layers)) != 0;
    }
    if (!strcmp(a->flag, "qwen3")) bad |= json_object_set_new(c, "attention_bias", json_false()) != 0;
    if (bad) {
        json_decref(c);
        return NULL;
    }
    return c;
}

/* ---- tokenizer --------------------------------------------------------------- */

/* Id of a special token given in tokenizer_config.json as a string or as
 * {"content": ...}; -1 when absent or unknown. */
static int special_id(const json_t *tok, const json_t *cfg, const char *key) {
    const json_t *v = json_object_get(cfg, key);
    const char *s = json_is_object(v) ? json_string_value(json_object_get(v, "content"))
                                      : json_string_value(v);
    if (!s) return -1;
    const json_t *added = json_object_get(tok, "added_tokens");
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i);
        const char *c = json_string_value(json_object_get(a, "content"));
        if (c && !strcmp(c, s)) return (int)json_integer_value(json_object_get(a, "id"));
    }
    const json_t *id = json_object_get(json_object_get(json_object_get(tok, "model"), "vocab"), s);
    return json_is_integer(id) ? (int)json_integer_value(id) : -1;
}

/* Copies tokenizer.json (+ tokenizer_config.json when present) from `from` (a
 * directory or a tokenizer.json path) into dir; reads size and BOS/EOS. */
static int copy_tokenizer(const char *from, const char *dir, int *n_vocab, int *bos, int *eos,
                          gn_err *err) {
    char *tok_path = NULL, *cfg_path = NULL, *dst = NULL, *tj = NULL, *cj = NULL;
    size_t tl = 0, cl = 0;
    json_t *tok = NULL, *cfg = NULL;
    int rc = 0;
    if (gn_fs_is_dir(from)) {
        tok_path = gn_fs_join(from, "tokenizer.json");
        cfg_path = gn_fs_join(from, "tokenizer_config.json");
    } else {
        tok_path = gn_strdup(from);
        const char *slash = strrchr(from, '/');
        char *base = slash ? gn_strndup(from, (size_t)(slash - from)) : gn_strdup(".");
        cfg_path = base ? gn_fs_join(base, "tokenizer_config.json") : NULL;
        gn_free(base);
    }
    if (!tok_path || !cfg_path) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = gn_fs_read_file(tok_path, (size_t)1 << 30, &tj, &tl, err)) != 0) goto done;
    json_error_t je;
    tok = json_loadb(tj, tl, 0, &je);
    if (!tok) {
        rc = gn_errf(err, GN_EFORMAT, "%s: not valid JSON (line %d): %s", tok_path, je.line, je.text);
        goto done;
    }
    rc = gn_fs_read_file(cfg_path, (size_t)64 << 20, &cj, &cl, err);
    if (rc == GN_ENOTFOUND) {
        gn_err_clear(err);
        rc = 0;
    } else if (rc) {
        goto done;
    } else if (!(cfg = json_loadb(cj, cl, JSON_DECODE_INT_AS_REAL, &je))) {
        /* (ints as reals: Llama-2's model_max_length is 1e30, beyond int64) */
        rc = gn_errf(err, GN_EFORMAT, "%s: not valid JSON (line %d): %s", cfg_path, je.line, je.text);
        goto done;
    }
    long max_id = -1;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(json_object_get(tok, "model"), "vocab"), k, v)
        if (json_is_integer(v) && json_integer_value(v) > max_id) max_id = (long)json_integer_value(v);
    json_t *added = json_object_get(tok, "added_tokens");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (json_is_integer(id) && json_integer_value(id) > max_id) max_id = (long)json_integer_value(id);
    }
    if (max_id < 0 || max_id >= (1 << 24)) {
        rc = gn_errf(err, GN_EFORMAT, "%s: no usable model.vocab", tok_path);
        goto done;
    }
    *n_vocab = (int)max_id + 1;
    *bos = cfg ? special_id(tok, cfg, "bos_token") : -1;
    *eos = cfg ? special_id(tok, cfg, "eos_token") : -1;
    if (!(dst = gn_fs_join(dir, "tokenizer.json"))) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = gn_fs_write_file(dst, tj, tl, err)) != 0) goto done;
    if (cfg) {
        gn_free(dst);
        if (!(dst = gn_fs_join(dir, "tokenizer_config.json"))) {
            rc = gn_errf(err, GN_ENOMEM, "out of memory");
            goto done;
        }
        rc = gn_fs_write_file(dst, cj, cl, err);
    }
done:
    json_decref(tok);
    json_decref(cfg);
    gn_free(tok_path);
    gn_free(cfg_path);
    gn_free(dst);
    gn_free(tj);
    gn_free(cj);
    return rc;
}

/* ---- LoRA adapter -------------------------------------------------------------- */

static int write_lora(const gn_make_model_params *p, const char *model_dir, int head_dim,
                      gn_err *err) {
    static const char *const mods[] = {"q_proj", "k_proj", "v_proj"};
    const int r = p->lora_rank;
    if (r < 1 || r > 1024) return gn_errf(err, GN_EINVAL, "--lora-rank %d out of range [1, 1024]", r);
    int rc = gn_fs_mkdirs(p->lora_out, err);
    if (rc) return rc;
    json_t *cfg = json_pack(
        "{s:{}, s:n, s:s, s:s, s:b, s:b, s:b, s:n, s:n, s:o, s:f, s:n, s:s, s:i, s:{}, s:n,"
        " s:[s,s,s], s:s, s:b, s:b}",
        "alpha_pattern", "auto_mapping", "base_model_name_or_path", model_dir, "bias", "none",
        "fan_in_fan_out", 0, "inference_mode", 1, "init_lora_weights", 1, "layers_pattern",
        "layers_to_transform", "lora_alpha", number(p->lora_alpha), "lora_dropout", 0.0,
        "modules_to_save", "peft_type", "LORA", "r", r, "rank_pattern", "revision",
        "target_modules", mods[0], mods[1], mods[2], "task_type", "CAUSAL_LM", "use_dora", 0,
        "use_rslora", 0);
    if ((rc = dump_json(p->lora_out, "adapter_config.json", cfg, err)) != 0) return rc;

    int n = p->n_layers * 3 * 2;
    gn_st_write_tensor *w = gn_calloc((size_t)n, sizeof *w);
    char(*names)[128] = gn_calloc((size_t)n, sizeof *names);
    void **bufs = gn_calloc((size_t)n, sizeof *bufs);
    char *path = gn_fs_join(p->lora_out, "adapter_model.safetensors");
    if (!w || !names || !bufs || !path) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto done;
    }
    for (int l = 0, i = 0; l < p->n_layers; l++)
        for (int m = 0; m < 3; m++)
            for (int ab = 0; ab < 2; ab++, i++) {
                int64_t out = (int64_t)(m == 0 ? p->n_heads : p->n_kv_heads) * head_dim;
                snprintf(names[i], sizeof names[i],
                         "base_model.model.model.layers.%d.self_attn.%s.lora_%c.weight", l, mods[m],
                         ab ? 'B' : 'A');
                w[i].name = names[i];
                w[i].dtype = p->dtype;
                w[i].n_dims = 2;
                w[i].shape[0] = ab ? out : r;
                w[i].shape[1] = ab ? r : p->dim;
                size_t numel = (size_t)w[i].shape[0] * (size_t)w[i].shape[1];
                if (!(bufs[i] = gn_malloc(numel * gn_dtype_size(p->dtype)))) {
                    rc = gn_errf(err, GN_ENOMEM, "out of memory");
                    goto done;
                }
                /* A: Kaiming-like scale; B: random (PEFT starts it at zero, which
                 * would make the adapter a no-op). */
                fill_tensor(NULL, bufs[i], p->dtype, numel, names[i], p->seed, 0.0,
                            ab ? 0.02 : 1.0 / sqrt((double)p->dim));
                w[i].data = bufs[i];
            }
    static const char *const meta[] = {"format", "pt", NULL};
    rc = gn_st_write(path, w, n, meta, err);
done:
    for (int i = 0; bufs && i < n; i++) gn_free(bufs[i]);
    gn_free(bufs);
    gn_free(names);
    gn_free(w);
    gn_free(path);
    return rc;
}

/* ---- entry point ------------------------------------------------------------------ */

int gn_make_model(const gn_make_model_params *p, const char *dir, gn_err *err) {
    int arch = -1;
    for (size_t i = 0; i < sizeof k_arch / sizeof k_arch[0]; i++)
        if (p->arch && !strcmp(p->arch, k_arch[i].flag)) arch = (int)i;
    if (arch < 0)
        return gn_errf(err, GN_EINVAL, "unknown arch '%s' (llama, llama3, mistral, qwen2, qwen3)",
                       p->arch ? p->arch : "(null)");
    if (p->dim < 1 || p->dim > 16384 || p->n_layers < 1 || p->n_layers > 256 || p->n_heads < 1 ||
        p->n_heads > 256 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads || p->ffn_dim < 1 ||
        p->ffn_dim > 65536 || p->head_dim < 0 || p->head_dim > 1024 || p->n_vocab < 0 ||
        p->n_vocab > (1 << 22) || p->shards < 1 || !(p->init_std >= 0) || !(p->head_std >= 0) || p->max_pos < 0)
        return gn_errf(err, GN_EINVAL,
                       "bad model shape: dim %d layers %d heads %d kv-heads %d (must divide heads) "
                       "head-dim %d ffn %d vocab %d shards %d",
                       p->dim, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, p->ffn_dim,
                       p->n_vocab, p->shards);
    if (p->dtype != GN_F32 && p->dtype != GN_F16 && p->dtype != GN_BF16)
        return gn_errf(err, GN_EINVAL, "bad dtype %d", (int)p->dtype);
    int head_dim = p->head_dim ? p->head_dim : p->dim / p->n_heads;
    if ((!p->head_dim && p->dim % p->n_heads) || head_dim % 2)
        return gn_errf(err, GN_EINVAL, "head dim %d must be even and dim %d a multiple of heads %d",
                       head_dim, p->dim, p->n_heads);
    int tied = p->tied < 0 ? k_arch[arch].tied : !!p->tied;
    int max_pos = p->max_pos ? p->max_pos : k_arch[arch].max_pos;

    int rc = gn_fs_mkdirs(dir, err);
    if (rc) return rc;
    int tok_vocab = 0, bos = -1, eos = -1;
    if (p->tokenizer_from)
        rc = copy_tokenizer(p->tokenizer_from, dir, &tok_vocab, &bos, &eos, err);
    else
        rc = gn_make_tokenizer(dir, p->tok_merges, max_pos, &tok_vocab, &bos, &eos, err);
    if (rc) return rc;
    int n_vocab = p->n_vocab ? p->n_vocab : tok_vocab;
    if (n_vocab < tok_vocab)
        return gn_errf(err, GN_EINVAL, "--vocab %d is smaller than the tokenizer's %d ids", n_vocab,
                       tok_vocab);

    json_t *cfg = build_config(p, arch, n_vocab, head_dim, tied, max_pos, bos, eos);
    if ((rc = dump_json(dir, "config.json", cfg, err)) != 0) return rc;
    json_t *gen = json_pack("{s:b, s:o, s:o, s:s}", "_from_model_config", 1, "bos_token_id",
                            id_or_null(bos), "eos_token_id",
                            eos >= 0 ? json_pack("[i]", eos) : json_null(), "transformers_version",
                            "4.46.0");
    if ((rc = dump_json(dir, "generation_config.json", gen, err)) != 0) return rc;

    spec *specs = NULL;
    int n_specs = 0;
    if (model_specs(p, arch, n_vocab, head_dim, tied, &specs, &n_specs) != 0)
        return gn_errf(err, GN_ENOMEM, "out of memory");
    /* Large models: every core draws weights (bytes unchanged, see fill_range). */
    gn_pool *pool = gn_pool_create(0);
    rc = write_weights(pool, p, dir, specs, n_specs, err);
    gn_pool_free(pool);
    gn_free(specs);
    if (rc) return rc;
    if (p->lora_out) rc = write_lora(p, dir, head_dim, err);
    return rc;
}
