/* test_half.c — fp16 / bf16 conversions against exhaustive round trips and
 * IEEE round-to-nearest-even, checked with wider arithmetic. */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "gn_half.h"
#include "gn_test.h"

/* Nearest fp16 by brute force over all finite halves (ties to even). */
static uint16_t nearest_f16(float f) {
    uint16_t best = 0;
    double bd = INFINITY;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue; /* inf / NaN */
        double d = fabs((double)gn_f16_to_f32((uint16_t)h) - (double)f);
        if (d < bd || (d == bd && !(h & 1) && (best & 1)) || (d == bd && signbit(f) && (h & 0x8000) && !(best & 0x8000))) {
            bd = d;
            best = (uint16_t)h;
        }
    }
    return best;
}

int main(void) {
    /* Every half and every bfloat16 survives the round trip through float. */
    int bad16 = 0, badbf = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = gn_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            bad16 += !isnan(f);
        } else {
            bad16 += gn_f32_to_f16(f) != h;
        }
        float g = gn_bf16_to_f32((uint16_t)h);
        if (isnan(g)) badbf += !isnan(gn_bf16_to_f32(gn_f32_to_bf16(g)));
        else badbf += gn_f32_to_bf16(g) != h;
    }
    CHECK(bad16 == 0, "%d fp16 values do not round-trip", bad16);
    CHECK(badbf == 0, "%d bf16 values do not round-trip", badbf);

    /* Rounding of values between representable halves, incl. ties and subnormals. */
    const float probes[] = {1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65504.0f, 65519.0f, 65520.0f,
                            5.96e-8f, 2.98e-8f, 2.99e-8f, 6.1e-5f, -3.14159f, 0.1f, -0.0f, 1e-3f};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        float f = probes[i];
        uint16_t got = gn_f32_to_f16(f);
        if (fabsf(f) >= 65520.0f) {
            CHECK((got & 0x7fff) == 0x7c00, "%g must overflow to inf (got %04x)", f, got);
            continue;
        }
        uint16_t want = nearest_f16(f);
        CHECK(got == want, "f16(%g) = %04x, nearest is %04x", f, got, want);
    }
    /* bf16: ties to even on the dropped 16 bits. */
    CHECK(gn_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80, "bf16 tie rounds to even (down)");
    CHECK(gn_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82, "bf16 tie rounds to even (up)");
    CHECK(isnan(gn_bf16_to_f32(gn_f32_to_bf16(NAN))), "bf16 keeps NaN");
    GN_TEST_MAIN_END();
}
