/* test_lora.c — PEFT adapter_config.json parsing and the merge arithmetic
 * W + scale · B·A on hand-checked matrices (model-level merging against an
 * independent computation is in test_model_load.c). */
#include <math.h>
#include <string.h>

#include "gn_half.h"
#include "gn_test.h"
#include "lora.h"

static int parse(const char *json, gn_lora_config *c, gn_err *e) {
    return gn_lora_config_parse(json, strlen(json), "adapter_config.json", c, e);
}

static void test_config(void) {
    gn_lora_config c;
    gn_err e = {0};
    /* The paper's ARM adapters: r 8, alpha 16 on q/k/v. */
    CHECK(parse("{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16,\"target_modules\":[\"q_proj\","
                "\"k_proj\",\"v_proj\"],\"fan_in_fan_out\":false,\"bias\":\"none\",\"use_rslora\":false,"
                "\"modules_to_save\":null,\"rank_pattern\":{},\"alpha_pattern\":{},\"use_dora\":false,"
                "\"lora_dropout\":0.05,\"task_type\":\"CAUSAL_LM\"}",
                &c, &e) == 0,
          "paper config: %s", e.msg);
    CHECK(c.r == 8 && c.alpha == 16.0f && c.scale == 2.0f && c.targets == (GN_LORA_Q | GN_LORA_K | GN_LORA_V),
          "paper config values");
    CHECK(parse("{\"r\":16,\"lora_alpha\":32,\"use_rslora\":true,\"target_modules\":\"all-linear\"}", &c, &e) == 0 &&
              fabsf(c.scale - 8.0f) < 1e-6f && c.targets == 0x7f,
          "rslora + all-linear: scale %g targets %x %s", c.scale, c.targets, e.msg);
    CHECK(parse("{\"r\":4,\"target_modules\":[\"self_attn.o_proj\",\"mlp.down_proj\"]}", &c, &e) == 0 &&
              c.alpha == 8.0f && c.scale == 2.0f && c.targets == (GN_LORA_O | GN_LORA_DOWN),
          "dotted targets, default alpha 8: %s", e.msg);
    static const struct {
        const char *json;
        int code;
        const char *needle;
    } bad[] = {
        {"{", GN_EFORMAT, "not valid JSON"},
        {"[]", GN_EFORMAT, "not a JSON object"},
        {"{\"target_modules\":[\"q_proj\"]}", GN_EFORMAT, "\"r\""},
        {"{\"r\":0,\"target_modules\":[\"q_proj\"]}", GN_EFORMAT, "\"r\""},
        {"{\"r\":8.5,\"target_modules\":[\"q_proj\"]}", GN_EFORMAT, "\"r\""},
        {"{\"r\":8}", GN_EFORMAT, "target_modules"},
        {"{\"r\":8,\"target_modules\":[]}", GN_EFORMAT, "target_modules"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\",\"lm_head\"]}", GN_EUNSUP, "lm_head"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\", 3]}", GN_EUNSUP, "target_modules"},
        {"{\"r\":8,\"target_modules\":\".*proj\"}", GN_EUNSUP, "regular expression"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"peft_type\":\"IA3\"}", GN_EUNSUP, "peft_type"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"fan_in_fan_out\":true}", GN_EUNSUP, "fan_in_fan_out"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"use_dora\":true}", GN_EUNSUP, "use_dora"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"bias\":\"all\"}", GN_EUNSUP, "bias"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_bias\":true}", GN_EUNSUP, "lora_bias"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"rank_pattern\":{\"q\":4}}", GN_EUNSUP, "rank_pattern"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"alpha_pattern\":{\"q\":4}}", GN_EUNSUP, "alpha_pattern"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"modules_to_save\":[\"lm_head\"]}", GN_EUNSUP,
         "modules_to_save"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_alpha\":\"16\"}", GN_EFORMAT, "lora_alpha"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"],\"use_rslora\":1}", GN_EFORMAT, "use_rslora"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].json, &c, &e);
        CHECK(rc == bad[i].code && strstr(e.msg, bad[i].needle) && strstr(e.msg, "adapter_config.json"),
              "bad %zu: rc %d msg %s", i, rc, e.msg);
    }
}

static void test_merge(void) {
    /* W (2x3), A (r=2 x 3), B (2 x r=2), scale 0.5:
     * B·A = [[1*1+2*0, 1*0+2*1, 1*2+2*1], [0*1+3*0, 0*0+3*1, 0*2+3*1]] = [[1,2,4],[0,3,3]] */
    float w[6] = {1, 2, 3, 4, 5, 6}, a[6] = {1, 0, 2, 0, 1, 1}, b[4] = {1, 2, 0, 3}, out[6];
    gn_tensor W = {w, GN_F32, 2, 3}, A = {a, GN_F32, 2, 3}, B = {b, GN_F32, 2, 2};
    gn_err e = {0};
    CHECK(gn_lora_merge(&W, &A, &B, 0.5f, out, "w", &e) == 0, "merge: %s", e.msg);
    const float want[6] = {1.5f, 3.0f, 5.0f, 4.0f, 6.5f, 7.5f};
    CHECK(!memcmp(out, want, sizeof want), "f32 merge: %g %g %g %g %g %g", out[0], out[1], out[2], out[3],
          out[4], out[5]);
    /* Mixed dtypes: BF16 weight, F16 A, F32 B; one rounding at the end. */
    uint16_t wb[6], ah[6], ob[6];
    for (int i = 0; i < 6; i++) {
        wb[i] = gn_f32_to_bf16(w[i]);
        ah[i] = gn_f32_to_f16(a[i]);
    }
    gn_tensor Wb = {wb, GN_BF16, 2, 3}, Ah = {ah, GN_F16, 2, 3};
    CHECK(gn_lora_merge(&Wb, &Ah, &B, 0.5f, ob, "w", &e) == 0, "mixed merge");
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= gn_bf16_to_f32(ob[i]) == want[i];
    CHECK(ok, "bf16 merge");
    /* 1 + 3/512 is not a bf16 value: the float32 sum is rounded once. */
    float a1[1] = {1.0f / 512}, b1[1] = {1.0f};
    uint16_t w1b[1] = {gn_f32_to_bf16(1.0f)}, o1[1];
    gn_tensor W1 = {w1b, GN_BF16, 1, 1}, A1 = {a1, GN_F32, 1, 1}, B1 = {b1, GN_F32, 1, 1};
    CHECK(gn_lora_merge(&W1, &A1, &B1, 3.0f, o1, "w", &e) == 0 &&
              gn_bf16_to_f32(o1[0]) == gn_bf16_to_f32(gn_f32_to_bf16(1.0f + 3.0f / 512)),
          "single rounding: %g", gn_bf16_to_f32(o1[0]));
    /* Shape mismatches. */
    gn_tensor Abad = {a, GN_F32, 2, 2};
    CHECK(gn_lora_merge(&W, &Abad, &B, 1, out, "model.layers.0.self_attn.q_proj.weight", &e) == GN_EMISMATCH &&
              strstr(e.msg, "q_proj") && strstr(e.msg, "lora_A"),
          "A shape: %s", e.msg);
    gn_tensor Bbad = {b, GN_F32, 1, 2};
    CHECK(gn_lora_merge(&W, &A, &Bbad, 1, out, "w", &e) == GN_EMISMATCH, "B rows");
    gn_tensor Bbad2 = {b, GN_F32, 2, 1};
    CHECK(gn_lora_merge(&W, &A, &Bbad2, 1, out, "w", &e) == GN_EMISMATCH, "B rank");
}

int main(void) {
    test_config();
    test_merge();
    GN_TEST_MAIN_END();
}
