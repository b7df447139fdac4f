/* train_loss.c — the training objectives on the per-position log-probs of
 * gn_train_forward: token cross-entropy and the GenARM ARM loss. */
#include <math.h>
#include <string.h>

#include "train_model.h"

double gn_train_loss_lm(const gn_train_batch *b, const float *logp, float scale, float *dlogp,
                        int *n_tokens) {
    const size_t N = (size_t)b->n_seqs * (size_t)b->seq_len;
    int n = 0;
    double sum = 0;
    for (size_t i = 0; i < N; i++)
        if (b->targets[i] >= 0) {
            sum -= logp[i];
            n++;
        }
    if (n_tokens) *n_tokens = n;
    for (size_t i = 0; i < N; i++) dlogp[i] = b->targets[i] >= 0 ? -scale / (float)n : 0.0f;
    return n ? sum / n : 0.0;
}

/* log σ(z), stable for large |z| */
static double log_sigmoid(double z) { return z >= 0 ? -log1p(exp(-z)) : z - log1p(exp(z)); }

double gn_train_loss_arm(const gn_train_batch *b, const float *logp, float beta_r, float scale,
                         float *dlogp, float *margins) {
    const int T = b->seq_len, n_pairs = b->n_seqs / 2;
    memset(dlogp, 0, (size_t)b->n_seqs * (size_t)T * sizeof(float));
    double loss = 0;
    for (int p = 0; p < n_pairs; p++) {
        double r[2] = {0, 0};
        for (int w = 0; w < 2; w++) {
            size_t base = (size_t)(2 * p + w) * (size_t)T;
            for (int t = 0; t < T; t++)
                if (b->targets[base + t] >= 0) r[w] += logp[base + t];
        }
        double z = (double)beta_r * (r[0] - r[1]);
        loss -= log_sigmoid(z);
        if (margins) margins[p] = (float)(r[0] - r[1]);
        /* dL/dz = -(1 - σ(z)) = -σ(-z); dz/dr_w = β, dz/dr_l = -β */
        double g = -exp(log_sigmoid(-z)) * beta_r / n_pairs * scale;
        for (int w = 0; w < 2; w++) {
            size_t base = (size_t)(2 * p + w) * (size_t)T;
            for (int t = 0; t < T; t++)
                if (b->targets[base + t] >= 0) dlogp[base + t] = (float)(w ? -g : g);
        }
    }
    return n_pairs ? loss / n_pairs : 0.0;
}
