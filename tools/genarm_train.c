/* genarm-train — trains a LLaMA-family model on the CPU: language modelling
 * on text or prompt/response JSONL, or a GenARM autoregressive reward model
 * on preference pairs (train/trainer.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gn_err.h"
#include "lora.h"
#include "model_maker.h"
#include "trainer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: genarm-train lm  (--model DIR | --init-arch ARCH [shape]) --data FILE --out DIR [options]\n"
            "       genarm-train arm --model DIR --pairs FILE --beta-r B --out DIR [options]\n"
            "data: lm: a text file, or .jsonl lines {\"prompt\",\"response\"} (only the response counts)\n"
            "      arm: .jsonl lines {\"prompt\",\"chosen\",\"rejected\"}; loss -log sigmoid(beta_r (r_w - r_l)),\n"
            "           r = sum of response-token log-probs\n"
            "options:\n"
            "  --steps N (100)  --lr X (1e-3)  --min-lr-ratio X (0.1)  --warmup N (0)\n"
            "  --batch N examples or pairs per micro-batch (8)  --accum N micro-batches per step (1)\n"
            "  --seq-len N (128)  --wd X decoupled weight decay (0)  --clip X grad-norm limit, 0 = off (1)\n"
            "  --beta-r X (1)  --threads N (all CPUs)  --seed S (1)  --save-every N (0 = end only)\n"
            "  --lora-rank R (0 = full fine-tuning)  --lora-alpha A (16)\n"
            "  --lora-targets q_proj,k_proj,v_proj[,o_proj,gate_proj,up_proj,down_proj]\n"
            "  --save-dtype bf16|f16|f32 (the base's)  --resume DIR (a checkpoint of this run)\n"
            "  --data-format text|jsonl (by extension)\n"
            "initial random model (lm only; written to OUT/init):\n"
            "  --init-arch llama|llama3|mistral|qwen2|qwen3  --dim N (64)  --layers N (2)  --heads N (4)\n"
            "  --kv-heads N (2)  --ffn N (128)  --max-pos N  --init-std X (0.02)  --tokenizer-from DIR\n"
            "  --merges N (generated tokenizer's BPE merges, 254)  --tied 0|1\n");
}

static int num(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "genarm-train: %s: '%s' is not a number in [%g, %g]\n", flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_targets(const char *s, unsigned *out) {
    static const char *const names[7] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                         "gate_proj", "up_proj", "down_proj"};
    unsigned bits = 0;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        int found = 0;
        for (int k = 0; k < 7; k++)
            if (strlen(names[k]) == n && !strncmp(s, names[k], n)) {
                bits |= 1u << k;
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "genarm-train: --lora-targets: unknown module '%.*s'\n", (int)n, s);
            return -1;
        }
        s += n + (e != NULL);
    }
    if (!bits) return -1;
    *out = bits;
    return 0;
}

static int parse_dtype(const char *v, int *out) {
    if (!strcmp(v, "bf16")) *out = GN_BF16;
    else if (!strcmp(v, "f16")) *out = GN_F16;
    else if (!strcmp(v, "f32")) *out = GN_F32;
    else return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    gn_train_opts p = gn_train_default_opts();
    gn_make_model_params mk = gn_make_model_default_params();
    if (!strcmp(argv[1], "arm")) p.mode = GN_TRAIN_ARM;
    else if (strcmp(argv[1], "lm") != 0) {
        fprintf(stderr, "genarm-train: the first argument must be lm or arm\n");
        usage(stderr);
        return 2;
    }
    p.log = stderr;
    const char *init_arch = NULL;
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "genarm-train: %s needs a value\n", f);
            return 2;
        }
        const char *v = argv[++i];
        double x = 0;
        int bad = 0;
#define NUM(lo, hi) (bad = num(f, v, lo, hi, &x), x)
        if (!strcmp(f, "--model")) p.model_dir = v;
        else if (!strcmp(f, "--data") || !strcmp(f, "--pairs")) p.data_path = v;
        else if (!strcmp(f, "--out")) p.out_dir = v;
        else if (!strcmp(f, "--resume")) p.resume_dir = v;
        else if (!strcmp(f, "--steps")) p.steps = (int)NUM(1, 1e9);
        else if (!strcmp(f, "--lr")) p.lr = (float)NUM(1e-12, 10);
        else if (!strcmp(f, "--min-lr-ratio")) p.min_lr_ratio = (float)NUM(0, 1);
        else if (!strcmp(f, "--warmup")) p.warmup = (int)NUM(0, 1e9);
        else if (!strcmp(f, "--batch")) p.batch = (int)NUM(1, 1e6);
        else if (!strcmp(f, "--accum")) p.accum = (int)NUM(1, 1e6);
        else if (!strcmp(f, "--seq-len")) p.seq_len = (int)NUM(2, 1 << 20);
        else if (!strcmp(f, "--wd")) p.wd = (float)NUM(0, 10);
        else if (!strcmp(f, "--clip")) p.clip = (float)NUM(0, 1e9);
        else if (!strcmp(f, "--beta-r")) p.beta_r = (float)NUM(1e-9, 1e9);
        else if (!strcmp(f, "--threads")) p.threads = (int)NUM(0, 4096);
        else if (!strcmp(f, "--seed")) p.seed = (uint64_t)NUM(0, 9e15);
        else if (!strcmp(f, "--save-every")) p.save_every = (int)NUM(0, 1e9);
        else if (!strcmp(f, "--lora-rank")) p.lora_rank = (int)NUM(0, 4096);
        else if (!strcmp(f, "--lora-alpha")) p.lora_alpha = (float)NUM(1e-9, 1e9);
        else if (!strcmp(f, "--lora-targets")) bad = parse_targets(v, &p.lora_targets);
        else if (!strcmp(f, "--save-dtype")) bad = parse_dtype(v, &p.save_dtype);
        else if (!strcmp(f, "--data-format")) {
            if (!strcmp(v, "text")) p.data_jsonl = 0;
            else if (!strcmp(v, "jsonl")) p.data_jsonl = 1;
            else bad = -1;
        } else if (!strcmp(f, "--init-arch")) init_arch = mk.arch = v;
        else if (!strcmp(f, "--dim")) mk.dim = (int)NUM(2, 65536);
        else if (!strcmp(f, "--layers")) mk.n_layers = (int)NUM(1, 256);
        else if (!strcmp(f, "--heads")) mk.n_heads = (int)NUM(1, 256);
        else if (!strcmp(f, "--kv-heads")) mk.n_kv_heads = (int)NUM(1, 256);
        else if (!strcmp(f, "--ffn")) mk.ffn_dim = (int)NUM(1, 1 << 20);
        else if (!strcmp(f, "--max-pos")) mk.max_pos = (int)NUM(1, 1 << 24);
        else if (!strcmp(f, "--init-std")) mk.init_std = (float)NUM(0, 10);
        else if (!strcmp(f, "--tokenizer-from")) mk.tokenizer_from = v;
        else if (!strcmp(f, "--merges")) mk.tok_merges = (int)NUM(0, 1 << 20);
        else if (!strcmp(f, "--tied")) mk.tied = (int)NUM(0, 1);
        else {
            fprintf(stderr, "genarm-train: unknown option %s\n", f);
            usage(stderr);
            return 2;
        }
#undef NUM
        if (bad) {
            fprintf(stderr, "genarm-train: bad value for %s: '%s'\n", f, v);
            return 2;
        }
    }
    if (!p.data_path || !p.out_dir || (!p.model_dir == !init_arch)) {
        fprintf(stderr, "genarm-train: need --%s FILE, --out DIR and exactly one of --model / "
                        "--init-arch\n", p.mode == GN_TRAIN_ARM ? "pairs" : "data");
        return 2;
    }
    gn_err err = {0};
    char *init_dir = NULL;
    if (init_arch) {
        if (p.resume_dir) {
            fprintf(stderr, "genarm-train: with --resume give --model OUT/init, not --init-arch\n");
            return 2;
        }
        mk.seed = p.seed;
        mk.dtype = GN_F32;
        init_dir = gn_fs_join(p.out_dir, "init");
        if (!init_dir || gn_make_model(&mk, init_dir, &err) != 0) {
            fprintf(stderr, "genarm-train: initial model: %s\n", err.msg);
            free(init_dir);
            return 1;
        }
        p.model_dir = init_dir;
    }
    int rc = gn_train_run(&p, &err);
    free(init_dir);
    if (rc) {
        fprintf(stderr, "genarm-train: %s\n", err.msg[0] ? err.msg : gn_strerror(rc));
        return 1;
    }
    fprintf(stderr, "genarm-train: wrote %s\n", p.out_dir);
    return 0;
}
