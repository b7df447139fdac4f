/* fuzz_openai.c — fuzz target for the OpenAI request parsers (openai.h).
 *
 * libFuzzer build (clang, -DGN_FUZZ=ON): LLVMFuzzerTestOneInput feeds each
 * input to both parsers. Replay build (always, under ctest): runs every file
 * of the corpus directory given as argv[1], then 20,000 deterministic
 * mutations (byte flips, truncations, splices of corpus files) of them.
 * Invariants checked on every input: no crash or sanitizer report; success
 * gives a consistent request; failure gives an error object that formats to
 * JSON, with a status of 400 or 413 and a non-empty code. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gn_alloc.h"
#include "openai.h"

static long g_bad, g_ok, g_err;

static void check_one(int kind, const uint8_t *data, size_t size) {
    gn_oai_request r;
    gn_oai_error e;
    int rc = kind == GN_OAI_CHAT ? gn_oai_parse_chat((const char *)data, size, &r, &e)
                                 : gn_oai_parse_completion((const char *)data, size, &r, &e);
    if (rc == 0) {
        int ok = r.model && r.model[0] && r.n >= 1 && r.n <= GN_OAI_MAX_N && r.n_stop <= GN_OAI_MAX_STOP &&
                 r.n_arms <= GN_OAI_MAX_ARMS && !(r.profile[0] && r.n_arms) &&
                 (kind == GN_OAI_CHAT ? r.n_messages >= 1 && r.messages && !r.prompt
                                      : r.prompt && r.prompt_len > 0 && !r.messages);
        if (!ok) g_bad++;
        g_ok++;
        gn_oai_request_free(&r);
        return;
    }
    g_err++;
    if (rc != GN_EINVAL || (e.status != 400 && e.status != 413) || !e.code[0] || r.model || r.prompt) g_bad++;
    size_t n = 0;
    char *j = gn_oai_format_error(&e, &n);
    json_t *v = j ? json_loadb(j, n, 0, NULL) : NULL;
    if (!v) g_bad++;
    json_decref(v);
    gn_free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_one(GN_OAI_COMPLETION, data, size);
    check_one(GN_OAI_CHAT, data, size);
    return 0;
}

#ifdef GN_FUZZ_REPLAY
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    char *files[256];
    size_t lens[256];
    int nf = 0;
    struct dirent *de;
    while ((de = readdir(d)) && nf < 256) {
        if (de->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", argv[1], de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        char *buf = malloc(1 << 20);
        size_t n = fread(buf, 1, (1 << 20) - 1, f);
        fclose(f);
        files[nf] = buf;
        lens[nf++] = n;
        LLVMFuzzerTestOneInput((const uint8_t *)buf, n);
    }
    closedir(d);
    int mutations = 0;
    uint8_t *m = malloc(1 << 21);
    for (int it = 0; it < 20000 && nf > 0; it++) {
        int a = (int)(rnd() % (uint64_t)nf);
        size_t n = lens[a];
        memcpy(m, files[a], n);
        int kinds = 1 + (int)(rnd() % 4);
        for (int k = 0; k < kinds && n > 0; k++) {
            switch (rnd() % 5) {
            case 0: m[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8)); break;         /* bit flip */
            case 1: m[rnd() % n] = "{}[]\":,0-9e.\\ntfu"[rnd() % 17]; break;    /* JSON-ish byte */
            case 2: n = rnd() % n; break;                                        /* truncate */
            case 3: {                                                            /* splice */
                int b = (int)(rnd() % (uint64_t)nf);
                size_t at = rnd() % n, from = lens[b] ? rnd() % lens[b] : 0, len = lens[b] - from;
                if (at + len < (1 << 21)) {
                    memcpy(m + at, files[b] + from, len);
                    n = at + len;
                }
                break;
            }
            default: { /* duplicate a slice */
                size_t at = rnd() % n, len = rnd() % (n - at + 1);
                if (n + len < (1 << 21)) {
                    memmove(m + at + len, m + at, n - at);
                    n += len;
                }
            }
            }
        }
        LLVMFuzzerTestOneInput(m, n);
        mutations++;
    }
    free(m);
    for (int i = 0; i < nf; i++) free(files[i]);
    int failed = g_bad != 0 || nf == 0;
    if (g_bad) fprintf(stderr, "FAIL: %ld inputs broke an invariant\n", g_bad);
    printf("replayed %d corpus files and %d mutations: %ld parses accepted, %ld refused\n", nf, mutations, g_ok,
           g_err);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed;
}
#endif
