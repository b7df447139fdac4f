/* rope.c — RoPE inverse frequencies, with the scalings of Hugging Face
 * transformers (modeling_rope_utils.py): "default", "linear"
 * (_compute_linear_scaling_rope_parameters) and "llama3"
 * (_compute_llama3_parameters). The scaling follows PyTorch's float32
 * evaluation of that code operation by operation and is bit-exact given the
 * same base frequencies; the base frequencies use a correctly rounded pow,
 * which may differ from PyTorch's vectorised pow by an ulp
 * (tests/model/test_rope.c checks both against a PyTorch fixture). */
#include <math.h>

#include "model_config.h"

/* The float32 steps must round one by one, as PyTorch's do: no fused
 * multiply-add contraction (GCC contracts across statements by default). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

void gn_rope_inv_freq(const gn_model_config *cfg, float *inv_freq) {
    const int d = cfg->head_dim, half = d / 2;
    for (int i = 0; i < half; i++) {
        /* inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim) */
        float expo = (float)(2 * i) / (float)d;
        float p = (float)pow((double)cfg->rope_theta, (double)expo);
        inv_freq[i] = 1.0f / p;
    }
    if (cfg->rope_scaling == GN_ROPE_LINEAR) {
        for (int i = 0; i < half; i++) inv_freq[i] /= cfg->rope_factor;
    } else if (cfg->rope_scaling == GN_ROPE_LLAMA3) {
        const float factor = cfg->rope_factor;
        const float low = cfg->rope_low_freq_factor, high = cfg->rope_high_freq_factor;
        const double old_ctx = (double)cfg->rope_orig_max_pos;
        const double low_freq_wavelen = old_ctx / low;   /* Python floats */
        const double high_freq_wavelen = old_ctx / high;
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            /* PyTorch evaluates `scalar / tensor` as reciprocal(tensor) * scalar,
             * with the Python scalar cast to float32. */
            float wavelen = (1.0f / f) * (float)(2.0 * M_PI);
            /* inv_freq_llama = where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq) */
            float llama = (double)wavelen > low_freq_wavelen ? f / factor : f;
            /* smooth = (old_ctx / wavelen - low) / (high - low) */
            float smooth = ((1.0f / wavelen) * (float)old_ctx - low) / (float)(high - low);
            float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
            int is_medium = !((double)wavelen < high_freq_wavelen) && !((double)wavelen > low_freq_wavelen);
            inv_freq[i] = is_medium ? smoothed : llama;
        }
    }
}
