/* fuzz_chat_template.c — fuzz target for the chat-template parser and
 * renderer (chat/chat_template.h).
 *
 * Input: template text, optionally followed by a NUL byte and a JSON object
 * of variables (default: a two-message conversation). Built two ways, like
 * tests/fuzz/fuzz_safetensors.c:
 *   - libFuzzer (cmake -DGN_FUZZ=ON with clang): ./fuzz_chat_template tests/chat/corpus
 *   - replay (GN_FUZZ_REPLAY, registered with ctest): runs every file of the
 *     corpus directories given on the command line.
 * Beyond "no crash, no sanitizer report": a render either succeeds with a
 * NUL-terminated output (it may hold NULs) within the limit or fails with a message and no
 * output; a parse failure carries a message. Violations abort (a test). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "gn_alloc.h"

static const char *DEFAULT_VARS =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \" Hi 😀\"},"
    " {\"role\": \"assistant\", \"content\": \"<think>x</think>ok\"}], \"add_generation_prompt\": true,"
    " \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"xs\": [1, 2.5, \"a\", null, {\"k\": [true]}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *nul = memchr(data, 0, size);
    size_t tl = nul ? (size_t)(nul - (const char *)data) : size;
    char *src = malloc(tl + 1);
    memcpy(src, data, tl);
    src[tl] = 0;
    gn_err err = {0};
    gn_chat_template *t = gn_chat_template_parse(src, &err);
    if (!t) {
        if (!err.msg[0] || err.code >= 0) abort();
    } else {
        gn_chat_render_opts o = gn_chat_render_default_opts();
        o.max_steps = 200000;
        o.max_output = 1 << 16;
        o.max_memory = 16 << 20;
        const char *vars = DEFAULT_VARS;
        size_t vl = strlen(DEFAULT_VARS);
        if (nul) {
            vars = nul + 1;
            vl = size - tl - 1;
        }
        char *out = NULL;
        size_t len = 0;
        int rc = gn_chat_template_render_json(t, vars, vl, &o, &out, &len, &err);
        if (rc == 0) {
            if (!out || out[len] != 0 || len > o.max_output) abort();
        } else if (out || !err.msg[0]) {
            abort();
        }
        gn_free(out);
        gn_chat_template_free(t);
    }
    free(src);
    return 0;
}

#ifdef GN_FUZZ_REPLAY
int main(int argc, char **argv) {
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "cannot open %s\n", argv[a]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            FILE *f = fopen(path, "rb");
            if (!f) continue;
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
            size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
            fclose(f);
            LLVMFuzzerTestOneInput(buf, got);
            free(buf);
            files++;
        }
        closedir(d);
    }
    printf("replayed %d inputs\n", files);
    printf("%d passed, 0 failed\n", files);
    return files > 0 ? 0 : 1;
}
#endif
