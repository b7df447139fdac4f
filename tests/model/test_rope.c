/* test_rope.c — gn_rope_inv_freq against PyTorch running transformers' own
 * rope code (fixture made by gen_rope_fixture.py): default, linear and
 * Llama-3 scaling, including the medium-frequency smoothing band. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gn_test.h"
#include "model_config.h"
#include "rope_fixture.h"

int main(void) {
    for (size_t c = 0; c < sizeof k_rope_cases / sizeof k_rope_cases[0]; c++) {
        const rope_case *rc = &k_rope_cases[c];
        gn_model_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.head_dim = rc->head_dim;
        cfg.rope_theta = rc->theta;
        cfg.rope_scaling = (gn_rope_scaling)rc->scaling;
        cfg.rope_factor = rc->factor;
        cfg.rope_low_freq_factor = rc->low;
        cfg.rope_high_freq_factor = rc->high;
        cfg.rope_orig_max_pos = rc->orig_max_pos;
        float got[512];
        gn_rope_inv_freq(&cfg, got);
        int half = rc->head_dim / 2, worst_i = 0, n_exact = 0;
        double worst = 0;
        for (int i = 0; i < half; i++) {
            double ulp = ldexp(1.0, ilogb(rc->want[i]) - 23);
            double u = fabs((double)got[i] - (double)rc->want[i]) / ulp;
            n_exact += got[i] == rc->want[i];
            if (u > worst) {
                worst = u;
                worst_i = i;
            }
        }
        /* pow() may differ from torch's powf by an ulp; the scaling steps
         * follow its float32 arithmetic. */
        CHECK(worst <= 2.0, "%s: worst %.1f ulp at [%d]: got %a want %a", rc->name, worst, worst_i,
              got[worst_i], rc->want[worst_i]);
        printf("%-18s %3d/%3d bit-exact, worst %.1f ulp\n", rc->name, n_exact, half, worst);
    }
    /* The three Llama-3 bands are all present in the tiny case. */
    int scaled = 0, smooth = 0, kept = 0;
    gn_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = 16;
    cfg.rope_theta = 500000.0f;
    float base[8], l3[8];
    gn_rope_inv_freq(&cfg, base);
    cfg.rope_scaling = GN_ROPE_LLAMA3;
    cfg.rope_factor = 8;
    cfg.rope_low_freq_factor = 1;
    cfg.rope_high_freq_factor = 4;
    cfg.rope_orig_max_pos = 8192;
    gn_rope_inv_freq(&cfg, l3);
    for (int i = 0; i < 8; i++) {
        if (l3[i] == base[i]) kept++;
        else if (l3[i] == base[i] / 8) scaled++;
        else smooth++;
    }
    CHECK(kept >= 1 && scaled >= 1 && smooth >= 1, "bands: kept %d scaled %d smoothed %d", kept, scaled, smooth);
    GN_TEST_MAIN_END();
}
