/* genarm — GenARM guided generation and ARM scoring from the command line.
 *
 *   genarm generate --model DIR [--arm DIR[:weight]]... [--beta B] --prompt TEXT ...
 *   genarm score --arm DIR --prompt TEXT --response TEXT [--json]
 *
 * Exit status: 0 success, 1 runtime failure (missing or malformed model files,
 * tokenizer mismatch, backend error), 2 bad command line. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "generate.h"
#include "gn_alloc.h"
#include "tokenizer.h"

static const char k_usage[] =
    "usage: genarm <command> [options]\n"
    "\n"
    "GenARM: decode a frozen base model guided by autoregressive reward models (ARMs).\n"
    "At every step each model gives next-token log-probs and the sampler draws from\n"
    "  score(v) = log p_base(v) + sum_i (weight_i / beta) * log p_arm_i(v)\n"
    "  p(v) ~ exp(score(v) / T), then top-k, top-p, min-p on that combined score.\n"
    "\n"
    "commands:\n"
    "  generate   guided generation, streamed to stdout\n"
    "  score      the reward an ARM gives a response: sum_t log p_arm(y_t | x, y_<t)\n"
    "  help       this text\n"
    "\n"
    "genarm generate --model DIR [options]\n"
    "  --model DIR          base model: a Hugging Face directory (config.json, *.safetensors,\n"
    "                       tokenizer.json)\n"
    "  --arm DIR[:WEIGHT]   an autoregressive reward model guiding the base; repeat for\n"
    "                       several (multi-objective). WEIGHT defaults to 1, may be negative\n"
    "                       or 0 (ignored). Its tokenizer must equal the base model's.\n"
    "  --lora DIR           PEFT LoRA adapter applied to the model named just before it\n"
    "                       (--model or --arm)\n"
    "  --beta B             KL strength, > 0 (default 1): each ARM enters with weight/beta\n"
    "  --prompt TEXT        the prompt (every model tokenizes it with its own tokenizer)\n"
    "  --prompt-file F      read the prompt from file F instead\n"
    "  --max-tokens N       generate at most N tokens (default 256)\n"
    "  --temperature T      >= 0; 0 = greedy (default 1)\n"
    "  --top-k K            keep the K highest scores, 0 = off (default 0)\n"
    "  --top-p P            nucleus sampling, in (0, 1], 1 = off (default 1)\n"
    "  --min-p M            drop tokens below M x the top probability, 0 = off (default 0)\n"
    "  --seed S             random seed, same seed => same tokens (default 0)\n"
    "  --stop STR           stop before this text appears; repeatable\n"
    "  --ignore-eos         do not stop at the end-of-sequence token\n"
    "  -n N                 N samples of the prompt as one batch (seeds S, S+1, ...)\n"
    "  --device D           cpu (default), cpu-ref (reference kernels) or cuda[:N]\n"
    "  --threads N          CPU threads, 0 = all cores (default 0)\n"
    "  --no-stream          print the text when generation ends instead of as it comes\n"
    "  Text goes to stdout; statistics (tokens/s) go to stderr.\n"
    "\n"
    "genarm score --arm DIR --prompt TEXT --response TEXT [options]\n"
    "  --arm DIR            the reward model (also --model DIR)\n"
    "  --lora DIR           PEFT LoRA adapter applied to it\n"
    "  --prompt TEXT | --prompt-file F        the prompt x (tokenized with BOS)\n"
    "  --response TEXT | --response-file F    the response y (tokenized without BOS)\n"
    "  --add-eos            append the EOS token to the response (as in ARM training)\n"
    "  --json               print JSON: {\"tokens\":[{\"id\",\"piece\",\"logp\"}...], \"total\"}\n"
    "  --device D, --threads N   as for generate\n"
    "  Prints one line per response token (id, log-prob, text piece) and the total reward.\n"
    "\n"
    "exit status: 0 success, 1 failure (missing/malformed model files, tokenizer mismatch),\n"
    "2 bad command line.\n";

#define MAX_ARMS GN_GUIDANCE_MAX_ARMS
#define MAX_STOPS 64

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "genarm: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see genarm --help)\n");
    va_end(ap);
    exit(2);
}

static int fail(const char *what, const gn_err *e) {
    fprintf(stderr, "genarm: %s%s\n", what, e->msg[0] ? e->msg : gn_strerror(e->code));
    return 1;
}

/* ---- strict value parsing --------------------------------------------------- */

static float parse_float(const char *flag, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || fabs(v) > 3.4e38)
        die_usage("%s: '%s' is not a number", flag, s);
    return (float)v;
}

static long parse_int(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno)
        die_usage("%s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi)
        die_usage("%s must be between %ld and %ld (got %s)", flag, lo, hi, s);
    return v;
}

static uint64_t parse_u64(const char *flag, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (!*s || *end || errno || s[0] == '-')
        die_usage("%s: '%s' is not a non-negative integer", flag, s);
    return (uint64_t)v;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "genarm: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        fprintf(stderr, "genarm: cannot read %s\n", path);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        fprintf(stderr, "genarm: %s contains a NUL byte\n", path);
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- command line ----------------------------------------------------------- */

typedef struct model_arg {
    const char *dir;
    const char *lora;
    float weight;
} model_arg;

typedef struct opts {
    model_arg base;
    int have_base;
    model_arg arms[MAX_ARMS];
    int n_arms;
    float beta;
    const char *prompt, *prompt_file, *response, *response_file;
    int max_tokens;
    gn_sampler_params sp;
    const char *stops[MAX_STOPS];
    int n_stops;
    int ignore_eos, n_samples;
    const char *device;
    int threads;
    int no_stream, json, add_eos;
} opts;

/* DIR[:WEIGHT]: the weight is taken only when what follows the last ':'
 * parses completely as a number (so a directory may contain ':'). */
static void parse_arm(const char *s, model_arg *a) {
    a->dir = s;
    a->weight = 1.0f;
    a->lora = NULL;
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return;
    char *end;
    errno = 0;
    double w = strtod(colon + 1, &end);
    if (colon[1] && !*end && !errno) {
        if (!isfinite(w))
            die_usage("--arm %s: the weight must be finite", s);
        static char dirs[MAX_ARMS][4096];
        static int nd;
        size_t n = (size_t)(colon - s);
        if (n >= sizeof dirs[0] || nd >= MAX_ARMS)
            die_usage("--arm %s: too long", s);
        memcpy(dirs[nd], s, n);
        dirs[nd][n] = '\0';
        a->dir = dirs[nd++];
        a->weight = (float)w;
    }
}

static void parse_opts(int argc, char **argv, int is_score, opts *o) {
    memset(o, 0, sizeof *o);
    o->beta = 1.0f;
    o->max_tokens = 256;
    o->sp = gn_sampler_default_params();
    o->device = "cpu";
    o->n_samples = 1;
    model_arg *last = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        char flagbuf[64];
        const char *val = NULL;
        /* --flag=value */
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof flagbuf) {
            memcpy(flagbuf, a, (size_t)(eq - a));
            flagbuf[eq - a] = '\0';
            val = eq + 1;
            a = flagbuf;
        }
#define FLAG(name) (strcmp(a, name) == 0)
#define VALUE() (val ? val : i + 1 < argc ? argv[++i] : (die_usage("%s needs a value", a), ""))
        if (FLAG("-h") || FLAG("--help")) {
            fputs(k_usage, stdout);
            exit(0);
        } else if (FLAG("--model") || (is_score && FLAG("--arm"))) {
            if (o->have_base)
                die_usage("%s given twice", a);
            o->base.dir = VALUE();
            o->base.weight = 1.0f;
            o->have_base = 1;
            last = &o->base;
        } else if (FLAG("--arm")) {
            if (o->n_arms >= MAX_ARMS)
                die_usage("at most %d ARMs", MAX_ARMS);
            parse_arm(VALUE(), &o->arms[o->n_arms]);
            last = &o->arms[o->n_arms++];
        } else if (FLAG("--lora")) {
            const char *v = VALUE();
            if (!last)
                die_usage("--lora %s must follow the --model or --arm it applies to", v);
            if (last->lora)
                die_usage("--lora %s: that model already has an adapter", v);
            last->lora = v;
        } else if (FLAG("--beta")) {
            const char *v = VALUE();
            o->beta = parse_float(a, v);
            if (!(o->beta > 0.0f))
                die_usage("--beta must be > 0 (got %s)", v);
        } else if (FLAG("--prompt")) {
            o->prompt = VALUE();
        } else if (FLAG("--prompt-file")) {
            o->prompt_file = VALUE();
        } else if (is_score && FLAG("--response")) {
            o->response = VALUE();
        } else if (is_score && FLAG("--response-file")) {
            o->response_file = VALUE();
        } else if (!is_score && FLAG("--max-tokens")) {
            o->max_tokens = (int)parse_int(a, VALUE(), 0, 1 << 30);
        } else if (!is_score && FLAG("--temperature")) {
            const char *v = VALUE();
            o->sp.temperature = parse_float(a, v);
            if (o->sp.temperature < 0.0f)
                die_usage("--temperature must be >= 0 (got %s)", v);
        } else if (!is_score && FLAG("--top-k")) {
            o->sp.top_k = (int)parse_int(a, VALUE(), 0, 1 << 30);
        } else if (!is_score && FLAG("--top-p")) {
            const char *v = VALUE();
            o->sp.top_p = parse_float(a, v);
            if (!(o->sp.top_p > 0.0f && o->sp.top_p <= 1.0f))
                die_usage("--top-p must be in (0, 1] (got %s)", v);
        } else if (!is_score && FLAG("--min-p")) {
            const char *v = VALUE();
            o->sp.min_p = parse_float(a, v);
            if (!(o->sp.min_p >= 0.0f && o->sp.min_p <= 1.0f))
                die_usage("--min-p must be in [0, 1] (got %s)", v);
        } else if (!is_score && FLAG("--seed")) {
            o->sp.seed = parse_u64(a, VALUE());
        } else if (!is_score && FLAG("--stop")) {
            const char *v = VALUE();
            if (!v[0])
                die_usage("--stop needs a non-empty string");
            if (o->n_stops >= MAX_STOPS)
                die_usage("at most %d stop strings", MAX_STOPS);
            o->stops[o->n_stops++] = v;
        } else if (!is_score && FLAG("--ignore-eos")) {
            o->ignore_eos = 1;
        } else if (!is_score && FLAG("-n")) {
            o->n_samples = (int)parse_int(a, VALUE(), 1, 4096);
        } else if (!is_score && FLAG("--no-stream")) {
            o->no_stream = 1;
        } else if (is_score && FLAG("--json")) {
            o->json = 1;
        } else if (is_score && FLAG("--add-eos")) {
            o->add_eos = 1;
        } else if (FLAG("--device")) {
            o->device = VALUE();
        } else if (FLAG("--threads")) {
            o->threads = (int)parse_int(a, VALUE(), 0, 4096);
        } else {
            die_usage("unknown option '%s' for %s", argv[i], is_score ? "score" : "generate");
        }
#undef FLAG
#undef VALUE
    }
    if (!o->have_base)
        die_usage("%s", is_score ? "score needs --arm DIR" : "generate needs --model DIR");
    if (!o->prompt == !o->prompt_file)
        die_usage("give exactly one of --prompt and --prompt-file");
    if (is_score && !o->response == !o->response_file)
        die_usage("give exactly one of --response and --response-file");
    const char *which = is_score ? "--arm" : "--model";
    if (!is_dir(o->base.dir)) {
        fprintf(stderr, "genarm: %s %s: no such directory\n", which, o->base.dir);
        exit(1);
    }
    if (o->base.lora && !is_dir(o->base.lora)) {
        fprintf(stderr, "genarm: --lora %s: no such directory\n", o->base.lora);
        exit(1);
    }
    for (int i = 0; i < o->n_arms; i++) {
        if (!is_dir(o->arms[i].dir)) {
            fprintf(stderr, "genarm: --arm %s: no such directory\n", o->arms[i].dir);
            exit(1);
        }
        if (o->arms[i].lora && !is_dir(o->arms[i].lora)) {
            fprintf(stderr, "genarm: --lora %s: no such directory\n", o->arms[i].lora);
            exit(1);
        }
    }
}

static gn_model *load_model(const model_arg *a, gn_backend *be, const char *role, gn_err *err) {
    gn_model_params mp = gn_model_default_params();
    mp.lora_dir = a->lora;
    mp.load_tokenizer = 1;
    gn_model *m = gn_model_load(a->dir, be, &mp, err);
    if (!m)
        gn_err_prefix(err, "loading %s %s: ", role, a->dir);
    return m;
}

static gn_backend *make_backend(const opts *o, gn_err *err) {
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = o->threads;
    gn_backend *be = gn_backend_create(o->device, &bp, err);
    if (!be)
        gn_err_prefix(err, "--device %s: ", o->device);
    return be;
}

/* ---- generate --------------------------------------------------------------- */

static int on_text_stdout(void *ud, int seq, int32_t token, const char *text, size_t len) {
    (void)ud, (void)seq, (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int cmd_generate(int argc, char **argv) {
    opts o;
    parse_opts(argc, argv, 0, &o);
    gn_err err = {0};
    int status = 1;
    char *prompt_buf = NULL;
    gn_backend *be = NULL;
    gn_model *base = NULL, *arms[MAX_ARMS] = {0};
    gn_generator *g = NULL;
    gn_gen_request *reqs = NULL;
    gn_gen_result *res = NULL;
    const char *prompt = o.prompt;
    if (o.prompt_file) {
        if (!(prompt_buf = read_file(o.prompt_file)))
            goto out;
        prompt = prompt_buf;
    }
    if (!(be = make_backend(&o, &err))) {
        fail("", &err);
        goto out;
    }
    if (!(base = load_model(&o.base, be, "base model", &err))) {
        fail("", &err);
        goto out;
    }
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = o.n_arms;
    prof.beta = o.beta;
    for (int i = 0; i < o.n_arms; i++) {
        if (!(arms[i] = load_model(&o.arms[i], be, "ARM", &err))) {
            fail("", &err);
            goto out;
        }
        prof.weights[i] = o.arms[i].weight;
    }
    if (!(g = gn_generator_create(base, arms, o.n_arms, &prof, NULL, &err))) {
        fail("", &err);
        goto out;
    }
    reqs = calloc((size_t)o.n_samples, sizeof *reqs);
    res = calloc((size_t)o.n_samples, sizeof *res);
    if (!reqs || !res) {
        fprintf(stderr, "genarm: out of memory\n");
        goto out;
    }
    for (int i = 0; i < o.n_samples; i++) {
        reqs[i] = gn_gen_default_request();
        reqs[i].prompt = prompt;
        reqs[i].sampling = o.sp;
        reqs[i].sampling.seed = o.sp.seed + (uint64_t)i;
        reqs[i].max_tokens = o.max_tokens;
        reqs[i].stop = o.stops;
        reqs[i].n_stop = o.n_stops;
        reqs[i].ignore_eos = o.ignore_eos;
    }
    int stream = !o.no_stream && o.n_samples == 1;
    gn_gen_callbacks cb = {stream ? on_text_stdout : NULL, NULL, NULL};
    if (gn_generate(g, reqs, o.n_samples, res, &cb, &err)) {
        if (stream)
            fputc('\n', stdout);
        fail("", &err);
        goto out;
    }
    long gen = 0;
    double total_ms = 0.0, ttft = 0.0;
    for (int i = 0; i < o.n_samples; i++) {
        if (!stream) {
            if (o.n_samples > 1)
                printf("--- sample %d (seed %llu) ---\n", i,
                       (unsigned long long)reqs[i].sampling.seed);
            fwrite(res[i].text, 1, res[i].text_len, stdout);
        }
        fputc('\n', stdout);
        gen += res[i].n_tokens;
        if (res[i].total_ms > total_ms)
            total_ms = res[i].total_ms;
        if (res[i].ttft_ms > ttft)
            ttft = res[i].ttft_ms;
    }
    fflush(stdout);
    double decode_s = (total_ms - ttft) / 1e3;
    long decode_tok = gen - o.n_samples;
    fprintf(stderr,
            "genarm: base %s + %d ARM%s (beta %g) on %s, %d sequence%s\n"
            "genarm: prompt %d tokens; generated %ld token%s in %.2f s (finish: %s); first "
            "token %.0f ms; decode %.1f tokens/s\n",
            o.base.dir, o.n_arms, o.n_arms == 1 ? "" : "s", (double)o.beta, o.device, o.n_samples,
            o.n_samples == 1 ? "" : "s", res[0].n_prompt_tokens, gen, gen == 1 ? "" : "s",
            total_ms / 1e3, res[0].finish_reason, ttft,
            decode_s > 0 && decode_tok > 0 ? (double)decode_tok / decode_s : 0.0);
    status = 0;
out:
    if (res)
        for (int i = 0; i < o.n_samples; i++)
            gn_gen_result_free(&res[i]);
    free(res);
    free(reqs);
    gn_generator_free(g);
    for (int i = 0; i < o.n_arms; i++)
        gn_model_free(arms[i]);
    gn_model_free(base);
    gn_backend_free(be);
    free(prompt_buf);
    return status;
}

/* ---- score ------------------------------------------------------------------ */

/* Prints a token's text with control bytes escaped, for the table output. */
static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            fputc(c, stdout);
    }
}

static int cmd_score(int argc, char **argv) {
    opts o;
    parse_opts(argc, argv, 1, &o);
    gn_err err = {0};
    int status = 1;
    char *pbuf = NULL, *rbuf = NULL;
    gn_backend *be = NULL;
    gn_model *m = NULL;
    gn_runner *r = NULL;
    gn_score_result sr = {0};
    json_t *root = NULL;
    const char *prompt = o.prompt, *response = o.response;
    if (o.prompt_file && !(prompt = pbuf = read_file(o.prompt_file)))
        goto out;
    if (o.response_file && !(response = rbuf = read_file(o.response_file)))
        goto out;
    if (!(be = make_backend(&o, &err)) || !(m = load_model(&o.base, be, "ARM", &err))) {
        fail("", &err);
        goto out;
    }
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 1;
    if (!(r = gn_runner_create(m, &rp, &err))) {
        fail("", &err);
        goto out;
    }
    if (gn_score_text(m, r, prompt, response, o.add_eos, &sr, &err)) {
        fail("", &err);
        goto out;
    }
    const gn_tokenizer *t = gn_model_tokenizer(m);
    if (o.json) {
        root = json_object();
        json_t *toks = json_array();
        json_object_set_new(root, "arm", json_string(o.base.dir));
        json_object_set_new(root, "n_prompt_tokens", json_integer(sr.n_prompt_tokens));
        json_object_set_new(root, "n_tokens", json_integer(sr.n_tokens));
        json_object_set_new(root, "tokens", toks);
        for (int i = 0; i < sr.n_tokens; i++) {
            char *piece = NULL;
            size_t plen = 0;
            if (gn_tok_decode(t, &sr.tokens[i], 1, 0, &piece, &plen, &err)) {
                fail("decoding: ", &err);
                goto out;
            }
            json_t *tok = json_object();
            json_object_set_new(tok, "id", json_integer(sr.tokens[i]));
            json_object_set_new(tok, "piece", json_stringn(piece, plen));
            json_object_set_new(tok, "logp", json_real(sr.logp[i]));
            json_array_append_new(toks, tok);
            gn_free(piece);
        }
        json_object_set_new(root, "total", json_real(sr.total));
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
        if (!s) {
            fprintf(stderr, "genarm: out of memory\n");
            goto out;
        }
        puts(s);
        free(s);
    } else {
        printf("%8s  %12s  %s\n", "token", "logp", "piece");
        for (int i = 0; i < sr.n_tokens; i++) {
            char *piece = NULL;
            size_t plen = 0;
            if (gn_tok_decode(t, &sr.tokens[i], 1, 0, &piece, &plen, &err)) {
                fail("decoding: ", &err);
                goto out;
            }
            printf("%8d  %12.6f  '", sr.tokens[i], (double)sr.logp[i]);
            print_escaped(piece, plen);
            printf("'\n");
            gn_free(piece);
        }
        printf("total %.6f over %d response tokens (prompt %d tokens)\n", sr.total, sr.n_tokens,
               sr.n_prompt_tokens);
    }
    status = 0;
out:
    json_decref(root);
    gn_score_result_free(&sr);
    gn_runner_free(r);
    gn_model_free(m);
    gn_backend_free(be);
    free(pbuf);
    free(rbuf);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(k_usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(k_usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "generate"))
        return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "score"))
        return cmd_score(argc - 2, argv + 2);
    fprintf(stderr,
            "genarm: unknown command '%s' (expected generate or score; see genarm --help)\n", cmd);
    return 2;
}
