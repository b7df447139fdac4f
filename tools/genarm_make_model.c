/* genarm-make-model — writes a tiny random-weight model in the Hugging Face
 * layout (see engine/model_maker.h for what is written and how the weights
 * are drawn). The same command always writes the same bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_cli.h"
#include "gn_err.h"
#include "model_maker.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: genarm-make-model --arch llama|llama3|mistral|qwen2|qwen3 --out DIR [options]\n"
            "  --dim N            hidden size (64)\n"
            "  --layers N         transformer layers (2)\n"
            "  --heads N          attention heads (4)\n"
            "  --kv-heads N       key/value heads, divides --heads (2)\n"
            "  --head-dim N       per-head dimension (dim / heads)\n"
            "  --ffn N            MLP intermediate size (128)\n"
            "  --vocab N          embedding rows; >= tokenizer size, extra rows are padding (tokenizer size)\n"
            "  --max-pos N        max_position_embeddings (architecture default)\n"
            "  --sliding-window N mistral only; 0 writes null (16)\n"
            "  --dtype bf16|f16|f32  stored dtype (bf16)\n"
            "  --seed S           random seed (1)\n"
            "  --std X            weight standard deviation (0.02)\n"
            "  --head-std X       lm_head standard deviation (default: --std); larger = peaked rows\n"
            "  --tied 0|1         tie_word_embeddings (qwen2/qwen3: 1, others 0)\n"
            "  --shards K         write K shards + model.safetensors.index.json (1)\n"
            "  --tokenizer-from P copy tokenizer.json (+ tokenizer_config.json) from dir or file P\n"
            "                     (default: generate a byte-level BPE tokenizer)\n"
            "  --merges N         generated tokenizer: BPE merges (254, i.e. 512 ids)\n"
            "  --lora-out DIR     also write a random PEFT LoRA adapter (q/k/v, alpha 16)\n"
            "  --lora-rank R      adapter rank (8)\n");
}

int main(int argc, char **argv) {
    gn_make_model_params p = gn_make_model_default_params();
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "genarm-make-model: %s needs a value\n", f);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long x = 0;
        int bad = 0;
        if (!strcmp(f, "--arch")) p.arch = v;
        else if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--tokenizer-from")) p.tokenizer_from = v;
        else if (!strcmp(f, "--lora-out")) p.lora_out = v;
        else if (!strcmp(f, "--dtype")) {
            if (!strcmp(v, "bf16")) p.dtype = GN_BF16;
            else if (!strcmp(v, "f16")) p.dtype = GN_F16;
            else if (!strcmp(v, "f32")) p.dtype = GN_F32;
            else {
                fprintf(stderr, "genarm-make-model: --dtype must be bf16, f16 or f32\n");
                return 2;
            }
        } else if (!strcmp(f, "--std")) {
            char *end;
            double d = strtod(v, &end);
            if (*end || end == v || !(d >= 0 && d < 100)) {
                fprintf(stderr, "genarm-make-model: --std: '%s' is not a number in [0, 100)\n", v);
                return 2;
            }
            p.init_std = (float)d;
        } else if (!strcmp(f, "--head-std")) {
            char *end;
            double d = strtod(v, &end);
            if (*end || end == v || !(d > 0 && d < 100)) {
                fprintf(stderr, "genarm-make-model: --head-std: '%s' is not a number in (0, 100)\n", v);
                return 2;
            }
            p.head_std = (float)d;
        } else if (!strcmp(f, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 0);
            if (errno || *end || end == v) {
                fprintf(stderr, "genarm-make-model: --seed: '%s' is not an integer\n", v);
                return 2;
            }
            p.seed = s;
        }
        else if (!strcmp(f, "--dim")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 16384, &x); p.dim = (int)x; }
        else if (!strcmp(f, "--layers")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 256, &x); p.n_layers = (int)x; }
        else if (!strcmp(f, "--heads")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 256, &x); p.n_heads = (int)x; }
        else if (!strcmp(f, "--kv-heads")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 256, &x); p.n_kv_heads = (int)x; }
        else if (!strcmp(f, "--head-dim")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 1024, &x); p.head_dim = (int)x; }
        else if (!strcmp(f, "--ffn")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 65536, &x); p.ffn_dim = (int)x; }
        else if (!strcmp(f, "--vocab")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 1 << 22, &x); p.n_vocab = (int)x; }
        else if (!strcmp(f, "--max-pos")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 1 << 24, &x); p.max_pos = (int)x; }
        else if (!strcmp(f, "--sliding-window")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 1 << 24, &x); p.sliding_window = (int)x; }
        else if (!strcmp(f, "--tied")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 1, &x); p.tied = (int)x; }
        else if (!strcmp(f, "--shards")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 1000, &x); p.shards = (int)x; }
        else if (!strcmp(f, "--merges")) { bad = gn_cli_long("genarm-make-model", f, v, 0, 4000, &x); p.tok_merges = (int)x; }
        else if (!strcmp(f, "--lora-rank")) { bad = gn_cli_long("genarm-make-model", f, v, 1, 1024, &x); p.lora_rank = (int)x; }
        else {
            fprintf(stderr, "genarm-make-model: unknown option %s\n", f);
            usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (!out) {
        fprintf(stderr, "genarm-make-model: --out DIR is required\n");
        usage(stderr);
        return 2;
    }
    gn_err err = {0};
    if (gn_make_model(&p, out, &err) != 0) {
        fprintf(stderr, "genarm-make-model: %s\n", err.msg);
        return 1;
    }
    return 0;
}
