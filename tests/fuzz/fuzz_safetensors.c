/* fuzz_safetensors.c — fuzz target for the safetensors parsers
 * (formats/safetensors.h): the file-header parser and the shard index parser;
 * the same bytes also go through the config.json parser (formats/hf_config.h).
 *
 * Built two ways:
 *   - as a libFuzzer target (cmake -DGN_FUZZ=ON with clang): the
 *     LLVMFuzzerTestOneInput entry point below, e.g.
 *       ./fuzz_safetensors tests/fuzz/corpus/safetensors
 *   - as a replay test (GN_FUZZ_REPLAY, always, registered with ctest): main()
 *     runs every file of the corpus directories given on the command line
 *     through the same entry point, so CI replays the corpus and every crash
 *     input that was added to it.
 * Beyond "no crash, no sanitizer report", every accepted header is checked
 * against the invariants the parser promises; a violation aborts (this is a
 * test, not library code). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "hf_config.h"
#include "safetensors.h"

static void check_invariants(const gn_st_header *h, size_t len) {
    uint64_t covered = 0;
    if (h->data_start > len || h->data_start + h->data_len != len) abort();
    for (int i = 0; i < h->n_tensors; i++) {
        const gn_st_tensor *t = &h->tensors[i];
        if (!t->name || !t->name[0]) abort();
        if (i && strcmp(h->tensors[i - 1].name, t->name) >= 0) abort(); /* sorted, unique */
        if (t->begin > t->end || t->end > h->data_len) abort();
        if (t->n_dims < 0 || t->n_dims > GN_ST_MAX_DIMS) abort();
        if (gn_st_tensor_numel(t) * gn_dtype_size(t->dtype) != t->end - t->begin) abort();
        if (gn_st_header_find(h, t->name) != t) abort();
        covered += t->end - t->begin;
    }
    if (covered != h->data_len) abort(); /* tiles the data area exactly */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gn_st_header h;
    gn_err e = {0};
    if (gn_st_parse(data, size, "fuzz", &h, &e) == 0) {
        check_invariants(&h, size);
        gn_st_header_free(&h);
    } else if (h.n_tensors || h.tensors || h.n_meta || !e.msg[0]) {
        abort(); /* failure leaves the output empty and always explains itself */
    }
    /* The same bytes as an index file (the JSON after the length prefix). */
    if (size > 8) {
        char **names, **files;
        int n;
        if (gn_st_index_parse((const char *)data + 8, size - 8, "fuzz-index", &names, &files, &n, &e) == 0) {
            for (int i = 0; i < n; i++)
                if (strchr(files[i], '/') || !strcmp(files[i], "..")) abort();
            gn_st_index_free(names, files, n);
        }
        gn_model_config c;
        if (gn_hf_config_parse((const char *)data + 8, size - 8, NULL, 0, "fuzz-config", &c, &e) == 0) {
            if (c.n_heads % c.n_kv_heads || c.head_dim % 2 || c.dim < 1 || c.n_eos > GN_MAX_EOS) abort();
            for (int i = 0; i < c.n_eos; i++)
                if (c.eos_token_ids[i] < 0 || c.eos_token_ids[i] >= c.n_vocab) abort();
        }
    }
    return 0;
}

#ifdef GN_FUZZ_REPLAY
static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) return -1;
    /* Exact-size copy so ASan sees any read past the end. */
    uint8_t *exact = malloc(n ? n : 1);
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

int main(int argc, char **argv) {
    int files = 0, failed = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) {
            if (replay_file(argv[a]) == 0) files++;
            else {
                fprintf(stderr, "cannot read %s\n", argv[a]);
                failed++;
            }
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.') continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[a], de->d_name);
            if (replay_file(p) == 0) files++;
            else {
                fprintf(stderr, "cannot read %s\n", p);
                failed++;
            }
        }
        closedir(d);
    }
    if (files == 0) {
        fprintf(stderr, "no corpus files replayed\n");
        failed++;
    }
    /* Each file that ran through the target without aborting is a pass. */
    printf("%d passed, %d failed\n", files, failed);
    return failed ? 1 : 0;
}
#endif
