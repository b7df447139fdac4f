/* test_chat_template.c — chat templates against @huggingface/jinja.
 *
 * 1. Every fixture case (tests/chat/fixtures/NAME.json, written by
 *    gen_fixtures.js) renders byte for byte as the reference did, through the
 *    JSON API and, for plain role/content conversations, the message API.
 * 2. The templates read from the committed tokenizer_config.json files agree.
 * 3. Malformed or unsupported templates are refused with the right code and
 *    a line/column; hostile templates and inputs stop at a limit.
 * 4. Every allocation failure is reported as GN_ENOMEM without leaking.
 * 5. One template renders correctly from several threads at once.
 * Usage: test_chat_template FIXTURE_DIR TOKENIZER_FIXTURE_DIR */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "chat_template.h"
#include "gn_alloc.h"
#include "gn_test.h"

static const char *FIX_DIR, *TOK_DIR;

static json_t *load_fixture(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.json", FIX_DIR, name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    CHECK(j != NULL, "load %s: %s", path, je.text);
    return j;
}

/* Renders through the message API when vars holds only role/content strings,
 * add_generation_prompt and the special tokens; returns -2 when it does not. */
static int render_struct(const gn_chat_template *t, json_t *vars, char **out, size_t *len, gn_err *err) {
    const char *k;
    json_t *v;
    json_object_foreach(vars, k, v) {
        if (strcmp(k, "messages") && strcmp(k, "add_generation_prompt") && strcmp(k, "bos_token") &&
            strcmp(k, "eos_token"))
            return -2;
    }
    json_t *msgs = json_object_get(vars, "messages");
    size_t n = json_array_size(msgs);
    gn_chat_message *m = calloc(n + 1, sizeof *m);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(msgs, i);
        if (json_object_size(e) != 2 || !json_is_string(json_object_get(e, "role")) ||
            !json_is_string(json_object_get(e, "content"))) {
            free(m);
            return -2;
        }
        m[i].role = json_string_value(json_object_get(e, "role"));
        m[i].content = json_string_value(json_object_get(e, "content"));
    }
    gn_chat_render_opts o = gn_chat_render_default_opts();
    o.add_generation_prompt = json_is_true(json_object_get(vars, "add_generation_prompt"));
    json_t *b = json_object_get(vars, "bos_token"), *e = json_object_get(vars, "eos_token");
    o.bos_token = json_is_string(b) ? json_string_value(b) : NULL;
    o.eos_token = json_is_string(e) ? json_string_value(e) : NULL;
    int rc = gn_chat_template_render(t, m, (int)n, &o, out, len, err);
    free(m);
    return rc;
}

static void show_diff(const char *name, const char *got, size_t gl, const char *want, size_t wl) {
    size_t i = 0;
    while (i < gl && i < wl && got[i] == want[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  %s: first difference at byte %zu (got %zu bytes, want %zu)\n", name, i, gl, wl);
    fprintf(stderr, "    got:  \"%.*s\"\n", (int)((gl - from) < 100 ? gl - from : 100), got + from);
    fprintf(stderr, "    want: \"%.*s\"\n", (int)((wl - from) < 100 ? wl - from : 100), want + from);
}

/* Runs every case of one fixture file; returns the number of cases. */
static int run_fixture(const char *name, const gn_chat_template *override) {
    json_t *fx = load_fixture(name);
    if (!fx) return 0;
    gn_err err = {0};
    const char *top = json_string_value(json_object_get(fx, "template"));
    gn_chat_template *tt = NULL;
    if (top && *top) {
        tt = gn_chat_template_parse(top, &err);
        CHECK(tt != NULL, "%s: parse: %s", name, err.msg);
    }
    json_t *cases = json_object_get(fx, "cases");
    int ok_cases = 0, n = (int)json_array_size(cases);
    for (int i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        const char *cname = json_string_value(json_object_get(c, "name"));
        json_t *vars = json_object_get(c, "vars");
        json_t *own = json_object_get(c, "template");
        gn_chat_template *t = override ? (gn_chat_template *)override : tt, *ct = NULL;
        json_t *exp = json_object_get(c, "expected");
        if (own) {
            ct = gn_chat_template_parse(json_string_value(own), &err);
            /* the reference may refuse a template only when it runs it */
            if (!ct && !exp) {
                CHECK(err.code == GN_EFORMAT || err.code == GN_EUNSUP, "%s: parse error code %d", cname, err.code);
                ok_cases++;
                continue;
            }
            CHECK(ct != NULL, "%s: parse: %s", cname, err.msg);
            t = ct;
        }
        if (!t) {
            CHECK(0, "%s: no template", cname);
            continue;
        }
        char *vj = json_dumps(vars, JSON_COMPACT);
        char *out = NULL;
        size_t len = 0;
        gn_err_clear(&err);
        int rc = gn_chat_template_render_json(t, vj, strlen(vj), NULL, &out, &len, &err);
        int good = 1;
        if (exp) {
            const char *w = json_string_value(exp);
            size_t wl = json_string_length(exp);
            CHECK(rc == 0, "%s: render failed: %s", cname, err.msg);
            good = rc == 0 && len == wl && !memcmp(out, w, wl) && out[len] == 0;
            CHECK(good, "%s: output differs from @huggingface/jinja", cname);
            if (!good && rc == 0) show_diff(cname, out, len, w, wl);
            char *o2 = NULL;
            size_t l2 = 0;
            int rc2 = render_struct(t, vars, &o2, &l2, &err);
            if (rc2 != -2) {
                CHECK(rc2 == 0 && l2 == wl && !memcmp(o2, w, wl), "%s: message API differs (rc %d: %s)", cname, rc2,
                      err.msg);
                good = good && rc2 == 0;
            }
            gn_free(o2);
        } else {
            const char *want = json_string_value(json_object_get(c, "error"));
            CHECK(rc < 0 && out == NULL, "%s: expected an error (%s), got success", cname, want);
            /* raise_exception carries the template's own message */
            if (rc < 0 && strstr(err.msg, "raise_exception"))
                CHECK(strstr(err.msg, want) != NULL, "%s: error \"%s\" lacks \"%s\"", cname, err.msg, want);
            good = rc < 0;
        }
        ok_cases += good;
        if (!good) fprintf(stderr, "  not identical: %s\n", cname);
        free(vj);
        gn_free(out);
        gn_chat_template_free(ct);
    }
    printf("%-8s %d/%d cases identical to @huggingface/jinja%s\n", name, ok_cases, n,
           override ? " (template from tokenizer_config.json)" : "");
    gn_chat_template_free(tt);
    json_decref(fx);
    return n;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    b[*len] = 0;
    fclose(f);
    return b;
}

static void test_from_config(void) {
    const char *names[] = {"llama3", "qwen3"};
    for (int i = 0; i < 2; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s/tokenizer_config.json", TOK_DIR, names[i]);
        size_t len;
        char *txt = read_file(path, &len);
        CHECK(txt != NULL, "read %s", path);
        if (!txt) continue;
        gn_err err = {0};
        gn_chat_template *t = gn_chat_template_from_config(txt, len, NULL, &err);
        CHECK(t != NULL, "%s: from_config: %s", names[i], err.msg);
        char *bos = NULL, *eos = NULL;
        int rc = gn_chat_special_tokens(txt, len, &bos, &eos, &err);
        if (i == 0)
            CHECK(rc == 0 && bos && !strcmp(bos, "<|begin_of_text|>") && eos && !strcmp(eos, "<|end_of_text|>"),
                  "llama3 special tokens: %s %s", bos ? bos : "(null)", eos ? eos : "(null)");
        else
            CHECK(rc == 0 && !bos && eos && !strcmp(eos, "<|im_end|>"), "qwen3 special tokens: %s %s",
                  bos ? bos : "(null)", eos ? eos : "(null)");
        gn_free(bos);
        gn_free(eos);
        if (t) run_fixture(names[i], t);
        gn_chat_template_free(t);
        free(txt);
    }
    gn_err err = {0};
    const char *list = "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
                       "{\"name\": \"default\", \"template\": \"D{{ 1 }}\"}]}";
    gn_chat_template *t = gn_chat_template_from_config(list, strlen(list), NULL, &err);
    char *out = NULL;
    CHECK(t && gn_chat_template_render(t, NULL, 0, NULL, &out, NULL, &err) == 0 && !strcmp(out, "D1"),
          "list form picks default: %s", out ? out : err.msg);
    gn_free(out);
    gn_chat_template_free(t);
    t = gn_chat_template_from_config(list, strlen(list), "tool_use", &err);
    out = NULL;
    CHECK(t && gn_chat_template_render(t, NULL, 0, NULL, &out, NULL, &err) == 0 && !strcmp(out, "T"), "named");
    gn_free(out);
    gn_chat_template_free(t);
    t = gn_chat_template_from_config("{\"bos_token\": \"<s>\"}", 20, NULL, &err);
    CHECK(!t && err.code == GN_ENOTFOUND, "no template: %d %s", err.code, err.msg);
    t = gn_chat_template_from_config("{oops", 5, NULL, &err);
    CHECK(!t && err.code == GN_EFORMAT, "bad json: %d", err.code);
    char *bos, *eos;
    const char *obj = "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false}, \"eos_token\": null}";
    int rc = gn_chat_special_tokens(obj, strlen(obj), &bos, &eos, &err);
    CHECK(rc == 0 && bos && !strcmp(bos, "<s>") && !eos, "AddedToken form: %s", bos ? bos : "(null)");
    gn_free(bos);
    CHECK(gn_chat_special_tokens("[1]", 3, &bos, &eos, &err) == GN_EFORMAT && !bos && !eos, "not an object");
}

static int render_src(const char *src, const gn_chat_render_opts *o, const char *vars, gn_err *err, char **out);

static void test_malformed(void) {
    static const struct { const char *src; int code; const char *needle; } cases[] = {
        {"{% if x %}abc", GN_EFORMAT, "missing {% endif %}"},
        {"{{ x ", GN_EFORMAT, "line 1"},
        {"{{ x }", GN_EFORMAT, "line 1"},
        {"{% macro f() %}{{ kwargs }}{% endmacro %}", GN_EUNSUP, "macro using varargs"},
        {"{% macro f(a=1, b) %}{% endmacro %}", GN_EFORMAT, "positional"},
        {"{% macro f(a, a) %}{% endmacro %}", GN_EFORMAT, "duplicate"},
        {"{% macro f() %}x", GN_EFORMAT, "endmacro"},
        {"{% call f() %}x{% endcall %}", GN_EUNSUP, "call"},
        {"{% filter upper %}x{% endfilter %}", GN_EUNSUP, "filter"},
        {"{% generation x %}", GN_EUNSUP, "generation"},
        {"{% include 'x' %}", GN_EUNSUP, "include"},
        {"line1\n  {{ 'unterminated }}", GN_EFORMAT, "line 2, column 6: unterminated string"},
        {"{% endfor %}", GN_EFORMAT, "unexpected statement 'endfor'"},
        {"{{ 'a\\q' }}", GN_EFORMAT, "escaped character"},
        {"{% for %}{% endfor %}", GN_EFORMAT, "line 1"},
        {"{% for x of y %}{% endfor %}", GN_EFORMAT, "'in'"},
        {"{{ }}", GN_EFORMAT, "unexpected"},
        {"{% set %}", GN_EFORMAT, "unexpected"},
        {"{% set 1 = 2 %}", GN_EFORMAT, "assignment target"},
        {"{{ x[] }}", GN_EFORMAT, "at least one argument"},
        {"{{ x[1:2:3:4] }}", GN_EFORMAT, "0-3"},
        {"{{ f(a=1, 2) }}", GN_EFORMAT, "positional"},
        {"{{ range(a=1, 2) }}", GN_EFORMAT, "positional"},
        {"{{ range(*x) }}", GN_EUNSUP, "unpacking"},
        {"{# never closed", GN_EFORMAT, "comment"},
        {"{{ '\\ud800' }}", GN_EUNSUP, "surrogate"},
        {"{{ @ }}", GN_EFORMAT, "unexpected character '@'"},
        {"\xff\xfe{{ x }}", GN_EFORMAT, "UTF-8"},
        {"{% if x %}{% else %}{% else %}{% endif %}", GN_EFORMAT, "line 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gn_err err = {0};
        gn_chat_template *t = gn_chat_template_parse(cases[i].src, &err);
        CHECK(!t && err.code == cases[i].code && strstr(err.msg, cases[i].needle),
              "malformed #%zu \"%s\": code %d (want %d), message \"%s\" (want \"%s\")", i, cases[i].src, err.code,
              cases[i].code, err.msg, cases[i].needle);
        gn_chat_template_free(t);
    }
    /* names neither engine knows fail only when reached, as in the reference */
    static const struct { const char *src; const char *needle; } late[] = {
        {"ab\ncd {{ x|wordcount }}", "line 2, column 9: Unknown StringValue filter: wordcount"},
        {"{{ xs|reject('a') }}", "Unknown ArrayValue filter: reject"},
        {"{{ x is divisibleby }}", "Unknown test: divisibleby"},
        {"{{ foo() }}", "not a function"},
        {"{{ x.bar() }}", "not a function"},
        {"{{ xs|join(',').upper() }}", "Unknown filter"},
    };
    for (size_t i = 0; i < sizeof late / sizeof late[0]; i++) {
        gn_err e2 = {0};
        char *o = NULL;
        char src[128];
        snprintf(src, sizeof src, "{%% if false %%}%s{%% endif %%}ok", late[i].src);
        int rc = render_src(src, NULL, "{\"x\": \"s\", \"xs\": [1]}", &e2, &o);
        CHECK(rc == 0 && o && !strcmp(o, "ok"), "untaken \"%s\": %d %s", late[i].src, rc, e2.msg);
        gn_free(o);
        rc = render_src(late[i].src, NULL, "{\"x\": \"s\", \"xs\": [1]}", &e2, &o);
        CHECK(rc == GN_EINVAL && !o && strstr(e2.msg, late[i].needle), "late \"%s\": %d %s", late[i].src, rc, e2.msg);
    }
    /* runtime errors name the failing construct's line */
    gn_err err = {0};
    gn_chat_template *t = gn_chat_template_parse("a\n\n  {{ messages[0].content - 1 }}", &err);
    gn_chat_message m = {"user", "hi"};
    char *out = NULL;
    int rc = gn_chat_template_render(t, &m, 1, NULL, &out, NULL, &err);
    CHECK(rc == GN_EINVAL && strstr(err.msg, "line 3") && !out, "runtime error: %d %s", rc, err.msg);
    gn_chat_template_free(t);
}

static char *repeat(const char *a, int n, const char *mid, const char *b, int m) {
    size_t la = strlen(a), lb = strlen(b), lm = strlen(mid);
    char *s = malloc(la * (size_t)n + lb * (size_t)m + lm + 1), *p = s;
    for (int i = 0; i < n; i++) memcpy(p, a, la), p += la;
    memcpy(p, mid, lm), p += lm;
    for (int i = 0; i < m; i++) memcpy(p, b, lb), p += lb;
    *p = 0;
    return s;
}

static int render_src(const char *src, const gn_chat_render_opts *o, const char *vars, gn_err *err, char **out) {
    *out = NULL;
    gn_chat_template *t = gn_chat_template_parse(src, err);
    if (!t) return err->code;
    int rc = vars ? gn_chat_template_render_json(t, vars, strlen(vars), o, out, NULL, err)
                  : gn_chat_template_render(t, NULL, 0, o, out, NULL, err);
    gn_chat_template_free(t);
    return rc;
}

static void test_hostile(void) {
    gn_err err = {0};
    char *out;
    /* nesting: parens, if blocks, a long left-deep chain */
    char *s = repeat("(", 20000, "{{ 1", ")", 20000);
    memcpy(s, "{{ ", 3);
    char *s2 = repeat("(", 20000, "1", ")", 20000);
    char *s3 = malloc(strlen(s2) + 8);
    sprintf(s3, "{{ %s }}", s2);
    CHECK(render_src(s3, NULL, NULL, &err, &out) == GN_ERANGE, "deep parens: %s", err.msg);
    free(s), free(s2), free(s3);
    s = repeat("{% if true %}", 5000, "x", "{% endif %}", 5000);
    CHECK(render_src(s, NULL, NULL, &err, &out) == GN_ERANGE, "deep ifs: %s", err.msg);
    free(s);
    s = repeat("{{ 1", 1, "", " + 1", 100000);
    s = realloc(s, strlen(s) + 4);
    strcat(s, " }}");
    CHECK(render_src(s, NULL, NULL, &err, &out) == GN_ERANGE, "long chain: %s", err.msg);
    free(s);
    s = repeat("{{ not", 1, "", " not", 5000);
    s = realloc(s, strlen(s) + 8);
    strcat(s, " 1 }}");
    CHECK(render_src(s, NULL, NULL, &err, &out) == GN_ERANGE, "not chain: %s", err.msg);
    free(s);
    /* strftime_now uses the local clock; numbers beyond int64 and NULs in JSON */
    {
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char want[32];
        snprintf(want, sizeof want, "%d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
        int r1 = render_src("{{ strftime_now('%Y-%m') }}", NULL, NULL, &err, &out);
        CHECK(r1 == 0 && out && !strcmp(out, want), "strftime_now: %s vs %s", out ? out : err.msg, want);
        gn_free(out);
        r1 = render_src("{{ big }}|{{ s|length }}", NULL, "{\"big\": 100000000000000000000000, \"s\": \"a\\u0000b\"}",
                        &err, &out);
        CHECK(r1 == 0 && out && !strcmp(out, "1e+23|3"), "big ints, NUL: %s", out ? out : err.msg);
        gn_free(out);
    }
    /* unbounded macro recursion stops at a limit */
    int rc0 = render_src("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &err, &out);
    CHECK(rc0 == GN_ERANGE && !out && strstr(err.msg, "macro"), "macro recursion: %d %s", rc0, err.msg);
    rc0 = render_src("{% macro f(n) %}{{ ((((((((((n)))))))))) ~ f(n) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &err,
                     &out);
    CHECK(rc0 == GN_ERANGE && !out, "macro recursion in expressions: %d %s", rc0, err.msg);
    s = repeat("{% macro f(n) %}{{ ", 1, "", "not ", 200);
    s = realloc(s, strlen(s) + 64);
    strcat(s, "f(n) }}{% endmacro %}{{ f(0) }}");
    rc0 = render_src(s, NULL, NULL, &err, &out);
    CHECK(rc0 == GN_ERANGE && !out, "deep macro recursion: %d %s", rc0, err.msg);
    free(s);
    /* a moderately deep but legal template still works */
    s = repeat("{% if true %}", 60, "ok", "{% endif %}", 60);
    CHECK(render_src(s, NULL, NULL, &err, &out) == 0 && out && !strcmp(out, "ok"), "60 nested ifs: %s", err.msg);
    gn_free(out);
    free(s);
    /* huge loops end at a limit */
    gn_chat_render_opts o = gn_chat_render_default_opts();
    o.max_steps = 2000000;
    int rc = render_src("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", &o, NULL,
                        &err, &out);
    CHECK(rc == GN_ERANGE && !out, "nested huge loops: %d %s", rc, err.msg);
    rc = render_src("{% for i in range(100000000) %}x{% endfor %}", NULL, NULL, &err, &out);
    CHECK(rc == GN_ERANGE, "huge range: %d %s", rc, err.msg);
    o = gn_chat_render_default_opts();
    o.max_output = 100000;
    rc = render_src("{% for i in range(1000000) %}0123456789{% endfor %}", &o, NULL, &err, &out);
    CHECK(rc == GN_ERANGE && strstr(err.msg, "output"), "output cap: %d %s", rc, err.msg);
    o = gn_chat_render_default_opts();
    o.max_memory = 8 << 20;
    rc = render_src("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                    "{{ ns.s|length }}",
                    &o, NULL, &err, &out);
    CHECK(rc == GN_ERANGE && strstr(err.msg, "memory"), "doubling string: %d %s", rc, err.msg);
    rc = render_src("{% for m in messages %}{% for m2 in messages %}{{ m2.content }}{% endfor %}{% endfor %}", &o,
                    "{\"messages\": []}", &err, &out);
    CHECK(rc == 0 && out && !*out, "empty messages: %d", rc);
    gn_free(out);
    /* deep data */
    s = repeat("[", 1000, "1", "]", 1000);
    char *vars = malloc(strlen(s) + 16);
    sprintf(vars, "{\"x\": %s}", s);
    rc = render_src("{{ x|tojson }}", NULL, vars, &err, &out);
    CHECK(rc < 0 && !out, "deep data: %d %s", rc, err.msg);
    free(s), free(vars);
    /* invalid UTF-8 in a message, bad JSON variables */
    gn_chat_template *t = gn_chat_template_parse("{{ messages[0].content }}", &err);
    gn_chat_message m = {"user", "bad \xC3\x28 utf8"};
    rc = gn_chat_template_render(t, &m, 1, NULL, &out, NULL, &err);
    CHECK(rc == GN_EINVAL && !out, "invalid utf8 content: %d", rc);
    rc = gn_chat_template_render_json(t, "[1]", 3, NULL, &out, NULL, &err);
    CHECK(rc == GN_EINVAL, "vars not an object: %d", rc);
    rc = gn_chat_template_render_json(t, "{", 1, NULL, &out, NULL, &err);
    CHECK(rc == GN_EINVAL, "vars not JSON: %d", rc);
    gn_chat_render_opts ox = gn_chat_render_default_opts();
    ox.extra_vars_json = "{\"true\": 1}";
    m.content = "ok";
    rc = gn_chat_template_render(t, &m, 1, &ox, &out, NULL, &err);
    CHECK(rc == GN_EINVAL, "redeclared global: %d %s", rc, err.msg);
    ox.extra_vars_json = "{\"messages\": [{\"content\": \"from extra\"}]}";
    rc = gn_chat_template_render(t, &m, 1, &ox, &out, NULL, &err);
    CHECK(rc == 0 && out && !strcmp(out, "from extra"), "extra vars override: %s", out ? out : err.msg);
    gn_free(out);
    gn_chat_template_free(t);

    /* random token soup: never crashes, always a clean result or error */
    static const char *bits[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "if", "for", "in", "set", "endif",
                                 "endfor", "else", "x", "messages", "(", ")", "[", "]", ":", ",", ".", "|", "'",
                                 "\"", "1", "0", "not", "and", "or", "is", "none", "~", "*", "/", "%", "=", "==",
                                 " ", "\n", "loop", "trim", "length", "namespace", "ns", "tojson", "\\", "{", "}",
                                 "range", "break", "9999999", "-1", "é", "😀"};
    unsigned seed = 12345;
    int clean = 0;
    const int N = 3000;
    for (int i = 0; i < N; i++) {
        char buf[600];
        size_t L = 0;
        int nb = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 40;
        for (int k = 0; k < nb; k++) {
            const char *b = bits[((seed = seed * 1103515245u + 12345u) >> 16) % (sizeof bits / sizeof bits[0])];
            size_t bl = strlen(b);
            if (L + bl + 1 >= sizeof buf) break;
            memcpy(buf + L, b, bl);
            L += bl;
        }
        buf[L] = 0;
        gn_chat_render_opts lo = gn_chat_render_default_opts();
        lo.max_steps = 100000;
        lo.max_output = 1 << 16;
        lo.max_memory = 4 << 20;
        rc = render_src(buf, &lo, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"x\": [1, 2]}",
                        &err, &out);
        clean += (rc == 0 && out) || (rc < 0 && !out && err.msg[0]);
        gn_free(out);
    }
    CHECK(clean == N, "token soup: %d of %d clean", clean, N);
}

/* Fails the 1st, 2nd, ... allocation of parse + render until it succeeds;
 * every failure must be GN_ENOMEM with no output (and, under ASan, no leak). */
static int alloc_loop(const char *src, const char *vj, const char *want, const char *name, int *bad) {
    int failures = 0;
    for (long n = 0; n < 100000; n++) {
        gn_err err = {0};
        gn_alloc_fail_after(n);
        gn_chat_template *t = gn_chat_template_parse(src, &err);
        char *out = NULL;
        int rc = t ? gn_chat_template_render_json(t, vj, strlen(vj), NULL, &out, NULL, &err) : err.code;
        gn_alloc_fail_after(-1);
        gn_chat_template_free(t);
        if (rc == 0) {
            CHECK(out && !strcmp(out, want), "%s: output after %ld allocations", name, n);
            gn_free(out);
            break;
        }
        failures++;
        if (rc != GN_ENOMEM || out) {
            (*bad)++;
            fprintf(stderr, "  %s: failure at allocation %ld gave %d (%s)\n", name, n, rc, err.msg);
        }
        gn_free(out);
    }
    return failures;
}

static void test_alloc_failures(void) {
    const char *names[] = {"llama2", "llama3", "qwen3", "tulu", "llama31", "mistral_tools", "deepseek", "misc"};
    int points = 0, bad = 0, cases = 0;
    for (size_t f = 0; f < sizeof names / sizeof names[0]; f++) {
        json_t *fx = load_fixture(names[f]);
        if (!fx) continue;
        const char *top = json_string_value(json_object_get(fx, "template"));
        json_t *cs = json_object_get(fx, "cases");
        size_t n = json_array_size(cs);
        int is_misc = !strcmp(names[f], "misc");
        for (size_t i = 0; i < n; i++) {
            json_t *c = json_array_get(cs, i);
            json_t *exp = json_object_get(c, "expected");
            /* misc: every case; others: a few spread over the file plus the last ones (tools) */
            if (!exp || (!is_misc && i % 17 != 5 && i + 3 < n)) continue;
            json_t *own = json_object_get(c, "template");
            char *vj = json_dumps(json_object_get(c, "vars"), JSON_COMPACT);
            points += alloc_loop(own ? json_string_value(own) : top, vj, json_string_value(exp),
                                 json_string_value(json_object_get(c, "name")), &bad);
            cases++;
            free(vj);
        }
        json_decref(fx);
    }
    CHECK(bad == 0, "%d of %d injected failures not reported as GN_ENOMEM", bad, points);
    CHECK(points > 100, "only %d allocation points", points);
    printf("allocation failure injected at %d points over %d cases, all reported as GN_ENOMEM\n", points, cases);
}

/* One parsed template, rendered from several threads at once (it is
 * read-only after parsing); also a rough timing of a Qwen3 render. */
typedef struct {
    const gn_chat_template *t;
    const char *vars, *want;
    int ok, iters;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        char *out = NULL;
        gn_err err = {0};
        if (gn_chat_template_render_json(a->t, a->vars, strlen(a->vars), NULL, &out, NULL, &err) == 0 &&
            !strcmp(out, a->want))
            a->ok++;
        gn_free(out);
    }
    return NULL;
}

static void test_threads(void) {
    json_t *fx = load_fixture("qwen3");
    if (!fx) return;
    gn_err err = {0};
    gn_chat_template *t = gn_chat_template_parse(json_string_value(json_object_get(fx, "template")), &err);
    json_t *c = json_array_get(json_object_get(fx, "cases"), 60);
    char *vj = json_dumps(json_object_get(c, "vars"), JSON_COMPACT);
    thr_arg args[4];
    pthread_t th[4];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg){t, vj, json_string_value(json_object_get(c, "expected")), 0, 200};
        pthread_create(&th[i], NULL, thr_main, &args[i]);
    }
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(ok == 800, "threads: %d of 800 renders right", ok);
    printf("4 threads x 200 renders of %s: %.3f ms per render (wall / renders)\n",
           json_string_value(json_object_get(c, "name")), ms / 800);
    free(vj);
    gn_chat_template_free(t);
    json_decref(fx);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FIXTURE_DIR TOKENIZER_FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    FIX_DIR = argv[1];
    TOK_DIR = argv[2];
    const char *names[] = {"llama2", "llama3", "qwen3", "tulu", "zephyr", "gemma", "chatml", "mistral", "llama31",
                           "mistral_tools", "deepseek", "misc", "random"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) run_fixture(names[i], NULL);
    test_from_config();
    test_malformed();
    test_hostile();
    test_alloc_failures();
    test_threads();
    GN_TEST_MAIN_END();
}
