/* train_test_util.h — helpers shared by the trainer tests: tiny models in
 * temporary directories and safetensors fixture access. */
#ifndef GN_TRAIN_TEST_UTIL_H
#define GN_TRAIN_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_test.h"
#include "model_maker.h"
#include "safetensors.h"

/* A fresh directory under $TMPDIR (or /tmp); the name is written to buf. */
static inline const char *tt_tmpdir(char *buf, size_t cap, const char *tag) {
    const char *t = getenv("TMPDIR");
    snprintf(buf, cap, "%s/gn_train_%s_XXXXXX", t ? t : "/tmp", tag);
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(1);
    }
    return buf;
}

static inline void tt_rmrf(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* The tiny reference models (tests/train/make_fixtures.sh writes the same
 * ones with genarm-make-model). */
static inline int tt_make_tiny(const char *arch, const char *dir) {
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.dim = 16;
    p.n_layers = 2;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.ffn_dim = 32;
    p.tok_merges = 30;
    p.dtype = GN_F32;
    p.init_std = 0.2f;
    p.seed = 3;
    if (!strcmp(arch, "mistral")) p.sliding_window = 4;
    gn_err err = {0};
    int rc = gn_make_model(&p, dir, &err);
    if (rc) fprintf(stderr, "gn_make_model %s: %s\n", arch, err.msg);
    return rc;
}

/* Copies fixture tensor `name` (n float32 values) into out; 0 or -1. */
static inline int tt_fixture(const gn_st_file *f, const char *name, float *out, size_t n) {
    const gn_st_tensor *t = gn_st_header_find(&f->hdr, name);
    if (!t || t->dtype != GN_F32 || gn_st_tensor_numel(t) != n) {
        fprintf(stderr, "fixture %s: tensor %s missing or not %zu floats\n", f->path, name, n);
        return -1;
    }
    memcpy(out, gn_st_data(f, t), n * sizeof(float));
    return 0;
}

#endif
