/* test_hf_config.c — config.json parsing: real configs of each supported
 * family, transformers' defaults, rope_scaling, eos lists with
 * generation_config.json, and errors that name the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "hf_config.h"

static int parse(const char *cfg, const char *gen, gn_model_config *c, gn_err *e) {
    return gn_hf_config_parse(cfg, strlen(cfg), gen, gen ? strlen(gen) : 0, "config.json", c, e);
}

/* Real configs, as published on the Hugging Face hub. */
static const char k_llama2[] =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"bos_token_id\":1,\"eos_token_id\":2,"
    "\"hidden_act\":\"silu\",\"hidden_size\":4096,\"initializer_range\":0.02,"
    "\"intermediate_size\":11008,\"max_position_embeddings\":4096,\"model_type\":\"llama\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":32,"
    "\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,\"rope_scaling\":null,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"float16\",\"transformers_version\":\"4.31.0.dev0\",\"use_cache\":true,"
    "\"vocab_size\":32000}";
static const char k_llama31[] =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009],\"hidden_act\":\"silu\","
    "\"hidden_size\":4096,\"initializer_range\":0.02,\"intermediate_size\":14336,"
    "\"max_position_embeddings\":131072,\"mlp_bias\":false,\"model_type\":\"llama\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,\"rope_scaling\":{\"factor\":8.0,"
    "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
    "\"rope_type\":\"llama3\"},\"rope_theta\":500000.0,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.42.3\",\"use_cache\":true,"
    "\"vocab_size\":128256}";
static const char k_mistral[] =
    "{\"architectures\":[\"MistralForCausalLM\"],\"bos_token_id\":1,\"eos_token_id\":2,"
    "\"hidden_act\":\"silu\",\"hidden_size\":4096,\"initializer_range\":0.02,"
    "\"intermediate_size\":14336,\"max_position_embeddings\":32768,\"model_type\":\"mistral\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,\"sliding_window\":4096,"
    "\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.34.0\","
    "\"use_cache\":true,\"vocab_size\":32000}";
static const char k_qwen25[] =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":151643,"
    "\"eos_token_id\":151645,\"hidden_act\":\"silu\",\"hidden_size\":896,\"initializer_range\":0.02,"
    "\"intermediate_size\":4864,\"max_position_embeddings\":32768,\"max_window_layers\":21,"
    "\"model_type\":\"qwen2\",\"num_attention_heads\":14,\"num_hidden_layers\":24,"
    "\"num_key_value_heads\":2,\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,"
    "\"sliding_window\":32768,\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.43.1\",\"use_cache\":true,\"use_sliding_window\":false,"
    "\"vocab_size\":151936}";
static const char k_qwen25_gen[] =
    "{\"bos_token_id\":151643,\"pad_token_id\":151643,\"do_sample\":true,"
    "\"eos_token_id\":[151645,151643],\"repetition_penalty\":1.1,\"temperature\":0.7,"
    "\"top_p\":0.8,\"top_k\":20,\"transformers_version\":\"4.37.0\"}";
static const char k_qwen3[] =
    "{\"architectures\":[\"Qwen3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"bos_token_id\":151643,\"eos_token_id\":151645,\"head_dim\":128,\"hidden_act\":\"silu\","
    "\"hidden_size\":1024,\"initializer_range\":0.02,\"intermediate_size\":3072,"
    "\"max_position_embeddings\":40960,\"max_window_layers\":28,\"model_type\":\"qwen3\","
    "\"num_attention_heads\":16,\"num_hidden_layers\":28,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-06,\"rope_scaling\":null,\"rope_theta\":1000000,\"sliding_window\":null,"
    "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.51.0\","
    "\"use_cache\":true,\"use_sliding_window\":false,\"vocab_size\":151936}";

static void test_real(void) {
    gn_model_config c;
    gn_err e = {0};
    CHECK(parse(k_llama2, NULL, &c, &e) == 0, "llama2: %s", e.msg);
    CHECK(c.arch == GN_ARCH_LLAMA && !strcmp(c.arch_name, "LlamaForCausalLM"), "llama2 arch");
    CHECK(c.n_vocab == 32000 && c.dim == 4096 && c.n_layers == 32 && c.n_heads == 32 &&
              c.n_kv_heads == 32 && c.head_dim == 128 && c.ffn_dim == 11008 && c.max_pos == 4096,
          "llama2 dims");
    CHECK(c.norm_eps == 1e-5f && c.rope_theta == 10000.0f && c.rope_scaling == GN_ROPE_NONE &&
              c.tie_embeddings == 0 && c.attn_bias == 0 && c.qk_norm == 0 && c.sliding_window == 0,
          "llama2 misc");
    CHECK(c.dtype == GN_F16 && c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2,
          "llama2 tokens");

    CHECK(parse(k_llama31, NULL, &c, &e) == 0, "llama3.1: %s", e.msg);
    CHECK(c.n_kv_heads == 8 && c.head_dim == 128 && c.rope_theta == 500000.0f &&
              c.rope_scaling == GN_ROPE_LLAMA3 && c.rope_factor == 8.0f &&
              c.rope_low_freq_factor == 1.0f && c.rope_high_freq_factor == 4.0f &&
              c.rope_orig_max_pos == 8192 && c.max_pos == 131072 && c.dtype == GN_BF16,
          "llama3.1 rope");
    CHECK(c.bos_token_id == 128000 && c.n_eos == 3 && c.eos_token_ids[2] == 128009, "llama3.1 eos");

    CHECK(parse(k_mistral, NULL, &c, &e) == 0, "mistral: %s", e.msg);
    CHECK(c.arch == GN_ARCH_MISTRAL && c.sliding_window == 4096 && c.n_kv_heads == 8, "mistral");

    CHECK(parse(k_qwen25, k_qwen25_gen, &c, &e) == 0, "qwen2.5: %s", e.msg);
    CHECK(c.arch == GN_ARCH_QWEN2 && c.attn_bias == 1 && c.qk_norm == 0 && c.tie_embeddings == 1 &&
              c.sliding_window == 0 && c.head_dim == 64 && c.n_kv_heads == 2 && c.norm_eps == 1e-6f,
          "qwen2.5");
    CHECK(c.n_eos == 2 && c.eos_token_ids[0] == 151645 && c.eos_token_ids[1] == 151643 &&
              c.bos_token_id == 151643,
          "qwen2.5 eos union: n %d", c.n_eos);

    CHECK(parse(k_qwen3, NULL, &c, &e) == 0, "qwen3: %s", e.msg);
    CHECK(c.arch == GN_ARCH_QWEN3 && c.qk_norm == 1 && c.attn_bias == 0 && c.head_dim == 128 &&
              c.dim == 1024 && c.n_heads == 16 && c.max_pos == 40960 && c.rope_theta == 1e6f,
          "qwen3 (head_dim * heads != hidden)");
}

static const char k_min_fmt[] =
    "{\"architectures\":[\"%s\"],\"vocab_size\":100,\"hidden_size\":64,"
    "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4%s}";

static int parse_min(const char *arch, const char *extra, const char *gen, gn_model_config *c,
                     gn_err *e) {
    char buf[2048];
    snprintf(buf, sizeof buf, k_min_fmt, arch, extra);
    return parse(buf, gen, c, e);
}

static void test_defaults(void) {
    gn_model_config c;
    gn_err e = {0};
    CHECK(parse_min("LlamaForCausalLM", "", NULL, &c, &e) == 0, "llama min: %s", e.msg);
    CHECK(c.n_kv_heads == 4 && c.head_dim == 16 && c.rope_theta == 10000.0f && c.norm_eps == 1e-6f &&
              c.tie_embeddings == 0 && c.max_pos == 2048 && c.bos_token_id == 1 && c.n_eos == 1 &&
              c.eos_token_ids[0] == 2 && c.dtype == GN_F32,
          "llama defaults");
    CHECK(parse_min("MistralForCausalLM", "", NULL, &c, &e) == 0 && c.sliding_window == 4096 &&
              c.max_pos == 131072,
          "mistral default window %d", c.sliding_window);
    CHECK(parse_min("MistralForCausalLM", ",\"sliding_window\":null", NULL, &c, &e) == 0 &&
              c.sliding_window == 0,
          "mistral null window");
    CHECK(parse_min("MistralForCausalLM", ",\"sliding_window\":16", NULL, &c, &e) == 0 &&
              c.sliding_window == 16,
          "mistral window 16");
    CHECK(parse_min("Qwen2ForCausalLM", "", NULL, &c, &e) == 0 && c.attn_bias && c.bos_token_id == -1 &&
              c.n_eos == 0 && c.max_pos == 32768,
          "qwen2 defaults");
    CHECK(parse_min("Qwen3ForCausalLM", "", NULL, &c, &e) == 0 && c.head_dim == 128 && c.qk_norm,
          "qwen3 default head_dim 128 (transformers Qwen3Config)");
    CHECK(parse_min("Qwen3ForCausalLM", ",\"head_dim\":32", NULL, &c, &e) == 0 && c.head_dim == 32,
          "qwen3 head_dim");
    CHECK(parse_min("LlamaForCausalLM", ",\"num_key_value_heads\":null,\"bos_token_id\":null", NULL, &c,
                    &e) == 0 &&
              c.n_kv_heads == 4 && c.bos_token_id == -1,
          "nulls");
    CHECK(parse_min("LlamaForCausalLM", ",\"hidden_size\":64.0", NULL, &c, &e) != 0 ||
              c.dim == 64,
          "integral real");
    CHECK(parse_min("Qwen2ForCausalLM", ",\"use_sliding_window\":true,\"max_window_layers\":2", NULL,
                    &c, &e) == 0 &&
              c.sliding_window == 0,
          "qwen2 window on no layer: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", ",\"torch_dtype\":\"bfloat16\"", NULL, &c, &e) == 0 &&
              c.dtype == GN_BF16,
          "torch_dtype");
    CHECK(parse_min("LlamaForCausalLM", ",\"dtype\":\"float16\"", NULL, &c, &e) == 0 && c.dtype == GN_F16,
          "dtype (transformers 5)");
}

static void test_rope(void) {
    gn_model_config c;
    gn_err e = {0};
    CHECK(parse_min("LlamaForCausalLM", ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}", NULL,
                    &c, &e) == 0 &&
              c.rope_scaling == GN_ROPE_LINEAR && c.rope_factor == 2.0f,
          "linear via type: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", ",\"rope_scaling\":{\"rope_type\":\"default\"}", NULL, &c, &e) ==
                  0 &&
              c.rope_scaling == GN_ROPE_NONE,
          "default");
    CHECK(parse_min("LlamaForCausalLM",
                    ",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,"
                    "\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                    "\"original_max_position_embeddings\":8192}",
                    NULL, &c, &e) == 0 &&
              c.rope_scaling == GN_ROPE_LLAMA3 && c.rope_theta == 500000.0f && c.rope_factor == 32.0f,
          "rope_parameters: %s", e.msg);
    static const struct {
        const char *extra;
        int code;
        const char *needle;
    } bad[] = {
        {",\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2.0}", GN_EUNSUP, "dynamic"},
        {",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}", GN_EUNSUP, "yarn"},
        {",\"rope_scaling\":{\"factor\":4.0}", GN_EFORMAT, "rope_scaling.rope_type"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\"}", GN_EFORMAT, "rope_scaling.factor"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":-1}", GN_ERANGE, "rope_scaling.factor"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
         "\"high_freq_factor\":4.0}",
         GN_EFORMAT, "rope_scaling.original_max_position_embeddings"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":4.0,"
         "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}",
         GN_ERANGE, "high_freq_factor"},
        {",\"rope_scaling\":\"llama3\"", GN_EFORMAT, "rope_scaling"},
        {",\"rope_theta\":-5", GN_ERANGE, "rope_theta"},
        {",\"rope_theta\":\"big\"", GN_EFORMAT, "rope_theta"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse_min("LlamaForCausalLM", bad[i].extra, NULL, &c, &e);
        CHECK(rc == bad[i].code && strstr(e.msg, bad[i].needle) && strstr(e.msg, "config.json"),
              "rope bad %zu: rc %d msg %s", i, rc, e.msg);
    }
}

static void test_eos(void) {
    gn_model_config c;
    gn_err e = {0};
    CHECK(parse_min("LlamaForCausalLM", ",\"eos_token_id\":[5,6,5]", "{\"eos_token_id\":7}", &c, &e) == 0 &&
              c.n_eos == 3 && c.eos_token_ids[0] == 5 && c.eos_token_ids[1] == 6 &&
              c.eos_token_ids[2] == 7,
          "eos list + generation_config: n %d %s", c.n_eos, e.msg);
    CHECK(parse_min("LlamaForCausalLM", ",\"eos_token_id\":null", "{\"eos_token_id\":[9,9]}", &c, &e) == 0 &&
              c.n_eos == 1 && c.eos_token_ids[0] == 9,
          "null eos + gen");
    CHECK(parse_min("LlamaForCausalLM", "", "{\"bos_token_id\":3}", &c, &e) == 0 && c.bos_token_id == 3,
          "gen bos wins");
    CHECK(parse_min("LlamaForCausalLM", ",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]", NULL, &c, &e) ==
                  GN_ERANGE &&
              strstr(e.msg, "eos_token_id"),
          "too many eos: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", ",\"eos_token_id\":100", NULL, &c, &e) == GN_ERANGE &&
              strstr(e.msg, "eos_token_id"),
          "eos out of vocab: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", ",\"eos_token_id\":\"2\"", NULL, &c, &e) == GN_ERANGE,
          "eos string");
    CHECK(parse_min("LlamaForCausalLM", ",\"bos_token_id\":-1", NULL, &c, &e) == GN_ERANGE &&
              strstr(e.msg, "bos_token_id"),
          "bos negative: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", "", "{\"eos_token_id\":[1000]}", &c, &e) == GN_ERANGE &&
              strstr(e.msg, "generation_config.json"),
          "gen eos out of range: %s", e.msg);
    CHECK(parse_min("LlamaForCausalLM", "", "[1]", &c, &e) == GN_EFORMAT &&
              strstr(e.msg, "generation_config.json"),
          "gen not object");
    CHECK(parse_min("LlamaForCausalLM", "", "{", &c, &e) == GN_EFORMAT &&
              strstr(e.msg, "generation_config.json"),
          "gen not JSON");
}

static void test_errors(void) {
    gn_model_config c;
    gn_err e = {0};
    static const struct {
        const char *json;
        int code;
        const char *needle;
    } bad[] = {
        {"{", GN_EFORMAT, "not valid JSON"},
        {"[]", GN_EFORMAT, "not a JSON object"},
        {"{}", GN_EFORMAT, "architectures"},
        {"{\"architectures\":\"LlamaForCausalLM\"}", GN_EFORMAT, "architectures"},
        {"{\"architectures\":[\"GPT2LMHeadModel\"]}", GN_EUNSUP, "GPT2LMHeadModel"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4}",
         GN_EFORMAT, "\"vocab_size\""},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"intermediate_size\":128,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4}",
         GN_EFORMAT, "\"hidden_size\" is missing"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4}",
         GN_EFORMAT, "intermediate_size"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
         "\"intermediate_size\":128,\"num_attention_heads\":4}",
         GN_EFORMAT, "num_hidden_layers"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
         "\"intermediate_size\":128,\"num_hidden_layers\":2}",
         GN_EFORMAT, "num_attention_heads"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].json, NULL, &c, &e);
        CHECK(rc == bad[i].code && strstr(e.msg, bad[i].needle), "bad %zu: rc %d msg %s", i, rc, e.msg);
    }
    static const struct {
        const char *extra;
        int code;
        const char *needle;
    } bad2[] = {
        {",\"num_key_value_heads\":3", GN_ERANGE, "num_key_value_heads"},
        {",\"num_key_value_heads\":8", GN_ERANGE, "num_key_value_heads"},
        {",\"num_key_value_heads\":0", GN_ERANGE, "num_key_value_heads"},
        {",\"num_attention_heads\":5", GN_ERANGE, "hidden_size"},
        {",\"head_dim\":15", GN_ERANGE, "head_dim"},
        {",\"head_dim\":2048", GN_ERANGE, "head_dim"},
        {",\"vocab_size\":0", GN_ERANGE, "vocab_size"},
        {",\"vocab_size\":-3", GN_ERANGE, "vocab_size"},
        {",\"vocab_size\":\"100\"", GN_EFORMAT, "vocab_size"},
        {",\"vocab_size\":100.5", GN_EFORMAT, "vocab_size"},
        {",\"hidden_size\":99999999999", GN_ERANGE, "hidden_size"},
        {",\"num_hidden_layers\":0", GN_ERANGE, "num_hidden_layers"},
        {",\"rms_norm_eps\":0", GN_ERANGE, "rms_norm_eps"},
        {",\"rms_norm_eps\":\"1e-5\"", GN_EFORMAT, "rms_norm_eps"},
        {",\"max_position_embeddings\":0", GN_ERANGE, "max_position_embeddings"},
        {",\"tie_word_embeddings\":1", GN_EFORMAT, "tie_word_embeddings"},
        {",\"hidden_act\":\"gelu\"", GN_EUNSUP, "hidden_act"},
        {",\"attention_bias\":true", GN_EUNSUP, "attention_bias"},
        {",\"mlp_bias\":true", GN_EUNSUP, "mlp_bias"},
    };
    for (size_t i = 0; i < sizeof bad2 / sizeof bad2[0]; i++) {
        int rc = parse_min("LlamaForCausalLM", bad2[i].extra, NULL, &c, &e);
        CHECK(rc == bad2[i].code && strstr(e.msg, bad2[i].needle) && strstr(e.msg, "config.json"),
              "bad2 %zu (%s): rc %d msg %s", i, bad2[i].extra, rc, e.msg);
    }
    CHECK(parse_min("Qwen2ForCausalLM", ",\"use_sliding_window\":true,\"max_window_layers\":1", NULL, &c,
                    &e) == GN_EUNSUP &&
              strstr(e.msg, "use_sliding_window"),
          "qwen2 sliding window: %s", e.msg);
    CHECK(parse_min("Qwen3ForCausalLM", ",\"attention_bias\":true", NULL, &c, &e) == GN_EUNSUP,
          "qwen3 attention_bias");
    CHECK(parse_min("MistralForCausalLM", ",\"sliding_window\":-2", NULL, &c, &e) == GN_ERANGE &&
              strstr(e.msg, "sliding_window"),
          "mistral negative window");
    /* A failed parse leaves *out zeroed, not half-filled. */
    c.dim = 77;
    CHECK(parse_min("LlamaForCausalLM", ",\"head_dim\":15", NULL, &c, &e) != 0 && c.dim == 0, "out cleared");
}

static void test_load(void) {
    char dir[] = "/tmp/gn_test_cfg_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    gn_err e = {0};
    gn_model_config c;
    CHECK(gn_hf_config_load(dir, &c, &e) == GN_ENOTFOUND && strstr(e.msg, "config.json"),
          "no config.json: %s", e.msg);
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK(gn_fs_write_file(p, k_qwen25, strlen(k_qwen25), &e) == 0, "write config");
    CHECK(gn_hf_config_load(dir, &c, &e) == 0 && c.n_eos == 1, "load without generation_config: %s", e.msg);
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    CHECK(gn_fs_write_file(p, k_qwen25_gen, strlen(k_qwen25_gen), &e) == 0, "write gen");
    CHECK(gn_hf_config_load(dir, &c, &e) == 0 && c.n_eos == 2, "load with generation_config: %s", e.msg);
    int points = 0;
    for (long n = 0; n < 100; n++) {
        gn_alloc_fail_after(n);
        int rc = gn_hf_config_load(dir, &c, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0) break;
        points++;
        CHECK(rc == GN_ENOMEM, "alloc failure %ld: rc %d", n, rc);
    }
    CHECK(points >= 2, "load alloc points %d", points);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

int main(void) {
    test_real();
    test_defaults();
    test_rope();
    test_eos();
    test_errors();
    test_load();
    GN_TEST_MAIN_END();
}
