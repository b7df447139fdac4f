/* genarm-make-tokenizer — learns a byte-level BPE tokenizer (tokenizer.json +
 * tokenizer_config.json, the model maker's format) from a text file:
 *   genarm-make-tokenizer --text corpus.txt --merges 1200 --out DIR [--max-bytes N]
 * Deterministic: the output is a function of the text and --merges. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "gn_err.h"
#include "model_maker.h"

static int usage(void) {
    fprintf(stderr, "usage: genarm-make-tokenizer --text FILE --out DIR [--merges N (1200)]"
                    " [--max-bytes N (all)] [--max-len N (2048)]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *text = NULL, *out = NULL;
    long merges = 1200, max_bytes = -1, max_len = 2048;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        char *end = NULL;
        if (!strcmp(f, "--text")) text = v;
        else if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--merges")) merges = strtol(v, &end, 10);
        else if (!strcmp(f, "--max-bytes")) max_bytes = strtol(v, &end, 10);
        else if (!strcmp(f, "--max-len")) max_len = strtol(v, &end, 10);
        else return usage();
        if (end && *end) return usage();
        i++;
    }
    if (!text || !out || merges < 0 || merges > 4000 || max_len < 1 || max_len > 1 << 20) return usage();
    FILE *fp = fopen(text, "rb");
    if (!fp) {
        fprintf(stderr, "genarm-make-tokenizer: cannot open %s\n", text);
        return 1;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = gn_malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            char *nb = gn_realloc(buf, cap * 2);
            if (!nb) {
                gn_free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (r == 0) break;
    }
    fclose(fp);
    if (!buf) {
        fprintf(stderr, "genarm-make-tokenizer: out of memory reading %s\n", text);
        return 1;
    }
    if (max_bytes >= 0 && (size_t)max_bytes < n) n = (size_t)max_bytes;
    gn_err err = {0};
    int nv = 0, bos = 0, eos = 0;
    int rc = gn_make_tokenizer_from_text(out, buf, n, (int)merges, (int)max_len, &nv, &bos, &eos, &err);
    gn_free(buf);
    if (rc) {
        fprintf(stderr, "genarm-make-tokenizer: %s\n", err.msg);
        return 1;
    }
    printf("%s: %d tokens (bos %d, eos %d) from %zu bytes\n", out, nv, bos, eos, n);
    return 0;
}
