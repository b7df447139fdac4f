/* genarm — GenARM guided generation and ARM scoring from the command line.
 *
 *   genarm generate --model DIR [--arm DIR[:weight]]... [--beta B] --prompt TEXT ...
 *   genarm score --arm DIR --prompt TEXT --response TEXT [--json]        (an ARM's reward)
 *   genarm score --model DIR [--arm DIR[:weight]]... --prompt TEXT --response TEXT
 *                [--top-logprobs N] [--json]                           (guided log-probs)
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
#include "score.h"
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
    "  score      the reward an ARM gives a response: sum_t log p_arm(y_t | x, y_<t);\n"
    "             with --model, the response's guided log-probs (and top alternatives)\n"
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
    "genarm score --arm DIR --prompt TEXT (--response TEXT | --response-ids IDS) [options]\n"
    "  The reward an ARM gives a response: sum_t log p_arm(y_t | x, y_<t).\n"
    "  --arm DIR            the reward model\n"
    "  --lora DIR           PEFT LoRA adapter applied to it\n"
    "\n"
    "genarm score --model DIR [--arm DIR[:WEIGHT]]... [--beta B] --prompt TEXT\n"
    "             (--response TEXT | --response-ids IDS) [--top-logprobs N] [options]\n"
    "  The response's log-probs under guidance: per token log_softmax(score)(y_t) at\n"
    "  temperature 1 without filters, score = log p_base + sum_i (weight_i / beta) *\n"
    "  log p_arm_i, every model scoring the whole sequence at once: the reference for the\n"
    "  service's logprobs and top_logprobs. Without --arm: the base model's own log-probs.\n"
    "  --model, --arm, --lora, --beta   as for generate (ARMs share the base's tokenizer)\n"
    "  --top-logprobs N     also the N most likely tokens at each position, 0..20 (default 0;\n"
    "                       ties: lower id first)\n"
    "\n"
    "score options:\n"
    "  --prompt TEXT | --prompt-file F        the prompt x (tokenized with BOS etc.)\n"
    "  --response TEXT | --response-file F    the response y (tokenized without BOS)\n"
    "  --response-ids IDS   the response as token ids instead, e.g. 1,2,3\n"
    "  --add-eos            append the EOS token to the response (as in ARM training)\n"
    "  --json               print JSON (below) instead of the table\n"
    "  --device D, --threads N   as for generate\n"
    "  Prints one line per response token (id, log-prob, text piece; with --top-logprobs\n"
    "  its alternatives on numbered lines below it), then\n"
    "  'total T over N response tokens (prompt P tokens...)'.\n"
    "  JSON, reward: {\"arm\", \"n_prompt_tokens\", \"n_tokens\",\n"
    "                 \"tokens\": [{\"id\", \"piece\", \"logp\"}...], \"total\"}\n"
    "  JSON, guided: {\"model\", \"arms\": [{\"dir\", \"weight\"}...], \"beta\", \"n_prompt_tokens\",\n"
    "                 \"n_tokens\", \"tokens\": [{\"id\", \"piece\", \"logp\",\n"
    "                 \"top_logprobs\": [{\"id\", \"piece\", \"logp\"}...]}...], \"total\"}\n"
    "                 (top_logprobs with --top-logprobs N > 0 only; a log-prob of -inf is null)\n"
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

/* A comma-separated list of token ids ("1,2,3"; spaces around an entry are
 * allowed). Checks the syntax; the vocabulary range is checked once the model
 * is loaded (check_ids). *ids is malloc'd. */
static void parse_ids(const char *flag, const char *s, int32_t **ids, int *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *out = malloc(cap * sizeof *out);
    if (!out)
        die_usage("%s: out of memory", flag);
    int k = 0;
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0) {
            free(out); /* nothing is left allocated at the exit that follows */
            if (!end && k == 0)
                die_usage("%s: empty list (give token ids, e.g. 1,2,3)", flag);
            die_usage("%s: entry %d is empty", flag, k + 1);
        }
        char buf[32];
        char *e = NULL;
        long v = -1;
        if (len < sizeof buf && p[0] >= '0' && p[0] <= '9') {
            memcpy(buf, p, len);
            buf[len] = '\0';
            errno = 0;
            v = strtol(buf, &e, 10);
            if (errno || *e || v > INT32_MAX)
                v = -1;
        }
        if (v < 0) {
            char shown[41];
            snprintf(shown, sizeof shown, "%.*s", (int)(len < 40 ? len : 40), p);
            free(out);
            die_usage("%s: entry %d '%s' is not a token id (a non-negative integer)", flag, k + 1, shown);
        }
        out[k++] = (int32_t)v;
        if (!end)
            break;
        p = end + 1;
    }
    *ids = out;
    *n = k;
}

/* Every id in [0, n_vocab), else a usage error naming the entry. */
static void check_ids(const char *flag, const int32_t *ids, int n, int n_vocab) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= n_vocab)
            die_usage("%s: entry %d (%d) is outside the vocabulary [0, %d)", flag, i + 1, ids[i],
                      n_vocab);
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
    int32_t *response_ids; /* --response-ids (malloc'd), n_response_ids of them */
    int n_response_ids;
    int guided;       /* score: --model given (guided log-probs) */
    int top_logprobs; /* score: alternatives per position */
    int beta_given;
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
        } else if (FLAG("--model")) {
            if (o->have_base)
                die_usage("%s given twice", a);
            o->base.dir = VALUE();
            o->base.weight = 1.0f;
            o->have_base = 1;
            last = &o->base;
        } else if (FLAG("--arm")) {
            if (o->n_arms >= MAX_ARMS)
                die_usage("at most %d ARMs", MAX_ARMS);
            model_arg *m = &o->arms[o->n_arms++];
            if (is_score) { /* a weight only with --model: resolved after the loop */
                m->dir = VALUE();
                m->weight = 1.0f;
                m->lora = NULL;
            } else {
                parse_arm(VALUE(), m);
            }
            last = m;
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
            o->beta_given = 1;
        } else if (FLAG("--prompt")) {
            o->prompt = VALUE();
        } else if (FLAG("--prompt-file")) {
            o->prompt_file = VALUE();
        } else if (is_score && FLAG("--response")) {
            o->response = VALUE();
        } else if (is_score && FLAG("--response-file")) {
            o->response_file = VALUE();
        } else if (is_score && FLAG("--response-ids")) {
            if (o->response_ids)
                die_usage("--response-ids given twice");
            parse_ids(a, VALUE(), &o->response_ids, &o->n_response_ids);
        } else if (is_score && FLAG("--top-logprobs")) {
            o->top_logprobs = (int)parse_int(a, VALUE(), 0, GN_DRAW_MAX_TOP);
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
    if (is_score && o->have_base) { /* guided: --arm DIR[:WEIGHT] as for generate */
        o->guided = 1;
        for (int i = 0; i < o->n_arms; i++) {
            const char *lora = o->arms[i].lora;
            parse_arm(o->arms[i].dir, &o->arms[i]);
            o->arms[i].lora = lora;
        }
    } else if (is_score) { /* an ARM's reward: the one --arm, taken as it is */
        if (o->n_arms > 1)
            die_usage("score without --model takes one --arm (the reward model); give --model "
                      "BASE to score under guidance by several ARMs");
        if (o->n_arms == 1) {
            o->base = o->arms[0];
            o->have_base = 1;
            o->n_arms = 0;
        }
        if (o->have_base && o->beta_given)
            die_usage("--beta needs --model (guided log-probs); without it score reports the "
                      "ARM's reward");
        if (o->have_base && o->top_logprobs)
            die_usage("--top-logprobs needs --model (guided log-probs)");
    }
    if (!o->have_base)
        die_usage("%s", is_score ? "score needs --arm DIR (an ARM's reward) or --model DIR (guided "
                                   "log-probs)"
                                 : "generate needs --model DIR");
    if (!o->prompt == !o->prompt_file)
        die_usage("give exactly one of --prompt and --prompt-file");
    if (is_score && (!!o->response + !!o->response_file + !!o->response_ids) != 1)
        die_usage("give exactly one of --response, --response-file and --response-ids");
    const char *which = is_score && !o->guided ? "--arm" : "--model";
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

/* A token's text piece (gn_malloc'd) for the output. */
static int piece_of(const gn_tokenizer *t, int32_t id, char **piece, size_t *len, gn_err *err) {
    *piece = NULL;
    *len = 0;
    int rc = gn_tok_decode(t, &id, 1, 0, piece, len, err);
    if (rc)
        fail("decoding: ", err);
    return rc;
}

/* A JSON number, or null for -inf (JSON has no infinities). */
static json_t *json_num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static int print_json(json_t *root) {
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    if (!s) {
        fprintf(stderr, "genarm: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

/* The response ids from --response-ids or the text (tokenized without BOS),
 * then EOS with --add-eos. *ids is gn_malloc'd. */
static int response_tokens(const opts *o, const gn_tokenizer *t, const char *text, int n_vocab,
                           int32_t **ids, int *n, gn_err *err) {
    int32_t *r = NULL;
    int nr = 0, rc = 0;
    if (o->response_ids) {
        check_ids("--response-ids", o->response_ids, o->n_response_ids, n_vocab);
        nr = o->n_response_ids;
        if (!(r = gn_malloc((size_t)nr * sizeof *r)))
            return gn_errf(err, GN_ENOMEM, "out of memory");
        memcpy(r, o->response_ids, (size_t)nr * sizeof *r);
    } else if ((rc = gn_tok_encode(t, text, strlen(text), 0, &r, &nr, err))) {
        return gn_err_prefix(err, "tokenizing the response: ");
    }
    if (o->add_eos) {
        int eos = gn_tok_eos(t);
        int32_t *grown = eos >= 0 ? gn_realloc(r, (size_t)(nr + 1) * sizeof *grown) : NULL;
        if (!grown) {
            gn_free(r);
            return eos < 0 ? gn_errf(err, GN_EINVAL, "the tokenizer has no EOS token to append")
                           : gn_errf(err, GN_ENOMEM, "out of memory");
        }
        r = grown;
        r[nr++] = eos;
    }
    if (nr == 0) {
        gn_free(r);
        return gn_errf(err, GN_EINVAL, "the response is empty after tokenization");
    }
    *ids = r;
    *n = nr;
    return 0;
}

/* The reward of one ARM: sum_t log p_arm(y_t | x, y_<t) (gn_score_ids over
 * the prompt's ids with BOS and response_tokens', for --response and
 * --response-ids alike: the steps gn_score_text takes for a text). */
static int score_reward(const opts *o, const char *prompt, const char *response) {
    gn_err err = {0};
    int status = 1;
    gn_backend *be = NULL;
    gn_model *m = NULL;
    gn_runner *r = NULL;
    gn_score_result sr = {0};
    int32_t *p_ids = NULL;
    json_t *root = NULL;
    if (!(be = make_backend(o, &err)) || !(m = load_model(&o->base, be, "ARM", &err))) {
        fail("", &err);
        goto out;
    }
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 1;
    if (!(r = gn_runner_create(m, &rp, &err))) {
        fail("", &err);
        goto out;
    }
    const gn_tokenizer *t = gn_model_tokenizer(m); /* load_model loads it */
    int np = 0;
    if (gn_tok_encode(t, prompt, strlen(prompt), 1, &p_ids, &np, &err)) {
        fail("score: tokenizing the prompt: ", &err);
        goto out;
    }
    if (response_tokens(o, t, response, gn_model_n_out(m), &sr.tokens, &sr.n_tokens, &err)) {
        fail("score: ", &err);
        goto out;
    }
    if (!(sr.logp = gn_malloc((size_t)sr.n_tokens * sizeof *sr.logp))) {
        fprintf(stderr, "genarm: score: out of memory\n");
        goto out;
    }
    if (gn_score_ids(m, r, p_ids, np, sr.tokens, sr.n_tokens, sr.logp, &sr.total, &err)) {
        fail("", &err); /* its messages begin "score: " */
        goto out;
    }
    sr.n_prompt_tokens = np;
    if (o->json) {
        root = json_object();
        json_t *toks = json_array();
        json_object_set_new(root, "arm", json_string(o->base.dir));
        json_object_set_new(root, "n_prompt_tokens", json_integer(sr.n_prompt_tokens));
        json_object_set_new(root, "n_tokens", json_integer(sr.n_tokens));
        json_object_set_new(root, "tokens", toks);
        for (int i = 0; i < sr.n_tokens; i++) {
            char *piece;
            size_t plen;
            if (piece_of(t, sr.tokens[i], &piece, &plen, &err))
                goto out;
            json_t *tok = json_object();
            json_object_set_new(tok, "id", json_integer(sr.tokens[i]));
            json_object_set_new(tok, "piece", json_stringn(piece, plen));
            json_object_set_new(tok, "logp", json_real(sr.logp[i]));
            json_array_append_new(toks, tok);
            gn_free(piece);
        }
        json_object_set_new(root, "total", json_real(sr.total));
        if (print_json(root))
            goto out;
    } else {
        printf("%8s  %12s  %s\n", "token", "logp", "piece");
        for (int i = 0; i < sr.n_tokens; i++) {
            char *piece;
            size_t plen;
            if (piece_of(t, sr.tokens[i], &piece, &plen, &err))
                goto out;
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
    gn_free(p_ids);
    gn_score_result_free(&sr);
    gn_runner_free(r);
    gn_model_free(m);
    gn_backend_free(be);
    return status;
}

/* The guided log-probs of the response (gn_score_guided) and its top
 * alternatives: what the service reports as logprobs / top_logprobs. */
static int score_guided(const opts *o, const char *prompt, const char *response) {
    gn_err err = {0};
    int status = 1;
    gn_backend *be = NULL;
    gn_model *models[1 + MAX_ARMS] = {0};
    gn_generator *g = NULL;
    int32_t *p_ids = NULL, *r_ids = NULL;
    int np = 0, nr = 0;
    gn_guided_score gs = {0};
    json_t *root = NULL;
    if (!(be = make_backend(o, &err)) || !(models[0] = load_model(&o->base, be, "base model", &err))) {
        fail("", &err);
        goto out;
    }
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = o->n_arms;
    prof.beta = o->beta;
    for (int i = 0; i < o->n_arms; i++) {
        if (!(models[1 + i] = load_model(&o->arms[i], be, "ARM", &err))) {
            fail("", &err);
            goto out;
        }
        prof.weights[i] = o->arms[i].weight;
    }
    /* the generator checks that every ARM shares the base's tokenizer and
     * width, and makes the runners */
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 1;
    if (!(g = gn_generator_create(models[0], models + 1, o->n_arms, &prof, &rp, &err))) {
        fail("", &err);
        goto out;
    }
    const gn_tokenizer *t = gn_generator_tokenizer(g);
    if (gn_tok_encode(t, prompt, strlen(prompt), 1, &p_ids, &np, &err)) {
        fail("tokenizing the prompt: ", &err);
        goto out;
    }
    if (np == 0) {
        fprintf(stderr, "genarm: the prompt is empty after tokenization\n");
        goto out;
    }
    if (response_tokens(o, t, response, gn_generator_n_vocab(g), &r_ids, &nr, &err)) {
        fail("score: ", &err);
        goto out;
    }
    gn_runner *runners[1 + MAX_ARMS];
    const int32_t *prompts[1 + MAX_ARMS];
    int n_prompt[1 + MAX_ARMS];
    for (int mi = 0; mi <= o->n_arms; mi++) {
        runners[mi] = gn_generator_runner(g, mi);
        prompts[mi] = p_ids; /* one shared tokenizer: the same ids for every model */
        n_prompt[mi] = np;
    }
    if (gn_score_guided(models, runners, &prof, prompts, n_prompt, r_ids, nr, o->top_logprobs, &gs,
                        &err)) {
        fail("", &err);
        goto out;
    }
    if (o->json) {
        root = json_object();
        json_t *arms = json_array(), *toks = json_array();
        json_object_set_new(root, "model", json_string(o->base.dir));
        json_object_set_new(root, "arms", arms);
        for (int i = 0; i < o->n_arms; i++) {
            json_t *a = json_object();
            json_object_set_new(a, "dir", json_string(o->arms[i].dir));
            json_object_set_new(a, "weight", json_real(o->arms[i].weight));
            json_array_append_new(arms, a);
        }
        json_object_set_new(root, "beta", json_real(o->beta));
        json_object_set_new(root, "n_prompt_tokens", json_integer(np));
        json_object_set_new(root, "n_tokens", json_integer(nr));
        json_object_set_new(root, "tokens", toks);
        for (int p = 0; p < nr; p++) {
            char *piece;
            size_t plen;
            if (piece_of(t, r_ids[p], &piece, &plen, &err))
                goto out;
            json_t *tok = json_object();
            json_object_set_new(tok, "id", json_integer(r_ids[p]));
            json_object_set_new(tok, "piece", json_stringn(piece, plen));
            json_object_set_new(tok, "logp", json_num(gs.logp[p]));
            gn_free(piece);
            if (gs.n_top > 0) {
                json_t *top = json_array();
                json_object_set_new(tok, "top_logprobs", top);
                for (int j = 0; j < gs.n_top; j++) {
                    int32_t id = gs.top_ids[(size_t)p * gs.n_top + j];
                    if (piece_of(t, id, &piece, &plen, &err)) {
                        json_decref(tok);
                        goto out;
                    }
                    json_t *alt = json_object();
                    json_object_set_new(alt, "id", json_integer(id));
                    json_object_set_new(alt, "piece", json_stringn(piece, plen));
                    json_object_set_new(alt, "logp",
                                        json_num(gs.top_logp[(size_t)p * gs.n_top + j]));
                    json_array_append_new(top, alt);
                    gn_free(piece);
                }
            }
            json_array_append_new(toks, tok);
        }
        json_object_set_new(root, "total", json_num(gs.total));
        if (print_json(root))
            goto out;
    } else {
        printf("%8s  %12s  %s\n", "token", "logp", "piece");
        for (int p = 0; p < nr; p++) {
            for (int j = -1; j < gs.n_top; j++) { /* the token, then its alternatives */
                int32_t id = j < 0 ? r_ids[p] : gs.top_ids[(size_t)p * gs.n_top + j];
                double lp = j < 0 ? gs.logp[p] : gs.top_logp[(size_t)p * gs.n_top + j];
                char *piece;
                size_t plen;
                if (piece_of(t, id, &piece, &plen, &err))
                    goto out;
                if (j < 0)
                    printf("%8d  %12.6f  '", id, lp);
                else
                    printf("    %2d. %8d  %12.6f  '", j + 1, id, lp);
                print_escaped(piece, plen);
                printf("'\n");
                gn_free(piece);
            }
        }
        printf("total %.6f over %d response tokens (prompt %d tokens; guided by %d ARM%s, beta "
               "%g)\n",
               gs.total, nr, np, o->n_arms, o->n_arms == 1 ? "" : "s", (double)o->beta);
    }
    status = 0;
out:
    json_decref(root);
    gn_guided_score_free(&gs);
    gn_free(p_ids);
    gn_free(r_ids);
    gn_generator_free(g);
    for (int i = 0; i <= o->n_arms; i++)
        gn_model_free(models[i]);
    gn_backend_free(be);
    return status;
}

static int cmd_score(int argc, char **argv) {
    opts o;
    parse_opts(argc, argv, 1, &o);
    int status = 1;
    char *pbuf = NULL, *rbuf = NULL;
    const char *prompt = o.prompt, *response = o.response;
    if (o.prompt_file && !(prompt = pbuf = read_file(o.prompt_file)))
        goto out;
    if (o.response_file && !(response = rbuf = read_file(o.response_file)))
        goto out;
    status = o.guided ? score_guided(&o, prompt, response) : score_reward(&o, prompt, response);
out:
    free(pbuf);
    free(rbuf);
    free(o.response_ids);
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
