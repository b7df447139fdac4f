/* jinja_eval.c — values, scopes and the tree-walking evaluator.
 *
 * The semantics follow @huggingface/jinja's runtime.ts, including where it
 * differs from Python's Jinja2, because that is the engine the fixtures (and
 * transformers.js) use: `==` is JavaScript's loose equality, numbers are
 * doubles, booleans print as true/false, an operation on undefined or none is
 * an error, and the output of a loop iteration cut short by break/continue is
 * dropped. Every value lives in the render's arena; the arena, the output
 * buffer and the step counter are capped. */
#define _GNU_SOURCE /* qsort_r */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "jinja_internal.h"

/* ---- errors and limits ---- */

int jr_err(R *r, const jnode *at, int code, const char *fmt, ...) {
    if (r->failed) return -1;
    r->failed = 1;
    r->code = code;
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at) {
        int line, col;
        gn_jinja_linecol(r->t->src, r->t->src_len, at->pos, &line, &col);
        gn_errf(r->err, code, "chat template line %d, column %d: %s", line, col, msg);
    } else {
        gn_errf(r->err, code, "chat template: %s", msg);
    }
    return -1;
}

int jr_oom(R *r) {
    if (r->a.over_cap) return jr_err(r, NULL, GN_ERANGE, "render needs more than the memory limit");
    if (r->out.failed == 2) return jr_err(r, NULL, GN_ERANGE, "output longer than the limit");
    if (r->scratch.failed == 2) return jr_err(r, NULL, GN_ERANGE, "string longer than the limit");
    return jr_err(r, NULL, GN_ENOMEM, "out of memory");
}

int jr_charge(R *r, const jnode *at, size_t units) {
    long u = units > (size_t)r->max_steps ? r->max_steps : (long)units;
    r->steps += u;
    if (r->steps > r->max_steps)
        return jr_err(r, at, GN_ERANGE, "render exceeded %ld evaluation steps", r->max_steps);
    return 0;
}

/* ---- values ---- */

jval jv_undef(void) { return (jval){.k = V_UNDEF}; }
jval jv_null(void) { return (jval){.k = V_NULL}; }
jval jv_bool(int b) { return (jval){.k = V_BOOL, .u.b = !!b}; }
jval jv_int(double x) { return (jval){.k = V_INT, .u.num = x}; }
jval jv_float(double x) { return (jval){.k = V_FLOAT, .u.num = x}; }
jval jv_str_ref(const char *s, size_t n) { return (jval){.k = V_STR, .u.str = {s, n}}; }

int jv_str(R *r, const char *s, size_t n, jval *out) {
    char *p = ja_strndup(&r->a, s, n);
    if (!p) return jr_oom(r);
    *out = jv_str_ref(p, n);
    return 0;
}

int jv_arr(R *r, int n, jval *out) {
    jarr *a = ja_alloc(&r->a, sizeof *a);
    if (!a || (n && !(a->items = ja_alloc(&r->a, (size_t)n * sizeof *a->items)))) return jr_oom(r);
    a->n = n;
    *out = (jval){.k = V_ARRAY, .u.arr = a};
    return 0;
}

jobj *jo_new(R *r, int cap) {
    jobj *o = ja_alloc(&r->a, sizeof *o);
    if (!o) return jr_oom(r), NULL;
    if (cap < 4) cap = 4;
    o->keys = ja_alloc(&r->a, (size_t)cap * sizeof *o->keys);
    o->klens = ja_alloc(&r->a, (size_t)cap * sizeof *o->klens);
    o->vals = ja_alloc(&r->a, (size_t)cap * sizeof *o->vals);
    if (!o->keys || !o->klens || !o->vals) return jr_oom(r), NULL;
    o->cap = cap;
    return o;
}

const jval *jo_get(const jobj *o, const char *k, size_t kl) {
    for (int i = 0; i < o->n; i++)
        if (o->klens[i] == kl && !memcmp(o->keys[i], k, kl)) return &o->vals[i];
    return NULL;
}

int jo_set(R *r, jobj *o, const char *k, size_t kl, jval v) {
    for (int i = 0; i < o->n; i++)
        if (o->klens[i] == kl && !memcmp(o->keys[i], k, kl)) {
            o->vals[i] = v;
            return 0;
        }
    if (o->n == o->cap) {
        if (o->cap > (1 << 28)) return jr_err(r, NULL, GN_ERANGE, "object too large");
        int nc = o->cap * 2;
        const char **nk = ja_alloc(&r->a, (size_t)nc * sizeof *nk);
        size_t *nl = ja_alloc(&r->a, (size_t)nc * sizeof *nl);
        jval *nv = ja_alloc(&r->a, (size_t)nc * sizeof *nv);
        if (!nk || !nl || !nv) return jr_oom(r);
        memcpy(nk, o->keys, (size_t)o->n * sizeof *nk);
        memcpy(nl, o->klens, (size_t)o->n * sizeof *nl);
        memcpy(nv, o->vals, (size_t)o->n * sizeof *nv);
        o->keys = nk, o->klens = nl, o->vals = nv, o->cap = nc;
    }
    o->keys[o->n] = k;
    o->klens[o->n] = kl;
    o->vals[o->n] = v;
    o->n++;
    return 0;
}

int jv_truthy(const jval *v) {
    switch (v->k) {
    case V_UNDEF: case V_NULL: return 0;
    case V_BOOL: return v->u.b;
    case V_INT: case V_FLOAT: return v->u.num != 0 && !isnan(v->u.num);
    case V_STR: return v->u.str.len > 0;
    case V_ARRAY: return v->u.arr->n > 0;
    case V_OBJECT: return v->u.obj->n > 0;
    default: return 1; /* namespace (a JS Map), function */
    }
}

const char *jv_type(const jval *v) {
    switch (v->k) {
    case V_UNDEF: return "UndefinedValue";
    case V_NULL: return "NullValue";
    case V_BOOL: return "BooleanValue";
    case V_INT: return "IntegerValue";
    case V_FLOAT: return "FloatValue";
    case V_STR: return "StringValue";
    case V_ARRAY: return v->tuple ? "TupleValue" : "ArrayValue";
    case V_OBJECT: return "ObjectValue";
    case V_NS: return "NamespaceValue";
    default: return "FunctionValue";
    }
}

/* JavaScript orders integer-like keys first (ascending), then the others in
 * insertion order; Object.entries, and so the reference, see that order. */
static int array_index_key(const char *k, size_t n, double *idx) {
    if (n == 0 || n > 10 || (n > 1 && k[0] == '0')) return 0;
    double v = 0;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < '0' || k[i] > '9') return 0;
        v = v * 10 + (k[i] - '0');
    }
    if (v >= 4294967295.0) return 0;
    *idx = v;
    return 1;
}

int jv_from_json(R *r, const json_t *j, jval *out, int depth) {
    if (depth > 512) return jr_err(r, NULL, GN_ERANGE, "variables nested too deeply");
    if (jr_charge(r, NULL, 1)) return -1;
    switch (json_typeof(j)) {
    case JSON_NULL: *out = jv_null(); return 0;
    case JSON_TRUE: *out = jv_bool(1); return 0;
    case JSON_FALSE: *out = jv_bool(0); return 0;
    case JSON_INTEGER: *out = jv_int((double)json_integer_value(j)); return 0;
    case JSON_REAL: {
        double x = json_real_value(j);
        *out = (x == floor(x) && isfinite(x)) ? jv_int(x) : jv_float(x);
        return 0;
    }
    case JSON_STRING: {
        const char *s = json_string_value(j);
        size_t n = json_string_length(j);
        *out = jv_str_ref(s, n); /* the json_t outlives the render */
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (n > (1u << 26)) return jr_err(r, NULL, GN_ERANGE, "array too large");
        if (jv_arr(r, (int)n, out)) return -1;
        for (size_t i = 0; i < n; i++)
            if (jv_from_json(r, json_array_get(j, i), &out->u.arr->items[i], depth + 1)) return -1;
        return 0;
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(j);
        if (n > (1u << 26)) return jr_err(r, NULL, GN_ERANGE, "object too large");
        jobj *o = jo_new(r, (int)n);
        if (!o) return -1;
        const char *k;
        json_t *v;
        /* pass 1: integer-like keys in ascending order (insertion sort; rare) */
        json_object_foreach((json_t *)j, k, v) {
            double idx;
            if (!array_index_key(k, strlen(k), &idx)) continue;
            int pos = o->n;
            while (pos > 0) {
                double prev = 0;
                array_index_key(o->keys[pos - 1], o->klens[pos - 1], &prev);
                if (prev < idx) break;
                pos--;
            }
            jval cv;
            if (jv_from_json(r, v, &cv, depth + 1)) return -1;
            memmove(o->keys + pos + 1, o->keys + pos, (size_t)(o->n - pos) * sizeof *o->keys);
            memmove(o->klens + pos + 1, o->klens + pos, (size_t)(o->n - pos) * sizeof *o->klens);
            memmove(o->vals + pos + 1, o->vals + pos, (size_t)(o->n - pos) * sizeof *o->vals);
            o->keys[pos] = k, o->klens[pos] = strlen(k), o->vals[pos] = cv;
            o->n++;
        }
        json_object_foreach((json_t *)j, k, v) {
            double idx;
            if (array_index_key(k, strlen(k), &idx)) continue;
            jval cv;
            if (jv_from_json(r, v, &cv, depth + 1)) return -1;
            o->keys[o->n] = k, o->klens[o->n] = strlen(k), o->vals[o->n] = cv;
            o->n++;
        }
        *out = (jval){.k = V_OBJECT, .u.obj = o};
        return 0;
    }
    }
    return jr_err(r, NULL, GN_EINVAL, "unsupported JSON value");
}

/* ---- text conversions ---- */

static int put(R *r, jbuf *b, const char *s, size_t n) { return jb_put(b, s, n) ? jr_oom(r) : 0; }
static int puts_(R *r, jbuf *b, const char *s) { return put(r, b, s, strlen(s)); }

static int put_num(R *r, jbuf *b, double x) {
    char tmp[48];
    ju_num_str(x, tmp);
    return puts_(r, b, tmp);
}

int js_rt(R *r, jbuf *b, const jval *v) {
    switch (v->k) {
    case V_UNDEF: return puts_(r, b, "undefined");
    case V_NULL: return puts_(r, b, "undefined"); /* NullValue's value is undefined there */
    case V_BOOL: return puts_(r, b, v->u.b ? "true" : "false");
    case V_INT: return put_num(r, b, v->u.num);
    case V_FLOAT: {
        double x = v->u.num;
        if (x == 0 && signbit(x)) return puts_(r, b, "-0.0");
        if (isfinite(x) && x == floor(x) && fabs(x) < 1e21) {
            char tmp[400];
            snprintf(tmp, sizeof tmp, "%.1f", x);
            return puts_(r, b, tmp);
        }
        return put_num(r, b, x);
    }
    case V_STR: return put(r, b, v->u.str.s, v->u.str.len);
    case V_ARRAY: case V_OBJECT: case V_NS: {
        jjson_opts o = {0, 0, 0, NULL, NULL};
        return js_json(r, b, v, &o, 0, 0, NULL);
    }
    default: return puts_(r, b, "[function]");
    }
}

int js_raw(R *r, jbuf *b, const jval *v) {
    switch (v->k) {
    case V_FLOAT: return put_num(r, b, v->u.num);
    case V_ARRAY:
        for (int i = 0; i < v->u.arr->n; i++) {
            if (i && puts_(r, b, ",")) return -1;
            if (js_rt(r, b, &v->u.arr->items[i])) return -1;
        }
        return 0;
    case V_OBJECT: case V_NS: return puts_(r, b, "[object Map]");
    default: return js_rt(r, b, v);
    }
}

static int json_str(R *r, jbuf *b, const char *s, size_t n, int ascii) {
    if (puts_(r, b, "\"")) return -1;
    size_t run = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[16];
        int used = 1;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c < 0x20) snprintf(tmp, sizeof tmp, "\\u%04x", c), esc = tmp;
        else if (ascii && c >= 0x7F) {
            uint32_t cp;
            used = ju_decode(s, n, i, &cp);
            if (cp >= 0x10000) {
                uint32_t x = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (x >> 10), 0xDC00 + (x & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            esc = tmp;
        }
        if (esc) {
            if (put(r, b, s + i - run, run) || puts_(r, b, esc)) return -1;
            run = 0;
            i += (size_t)used;
        } else {
            run++;
            i++;
        }
    }
    if (put(r, b, s + n - run, run)) return -1;
    return puts_(r, b, "\"");
}

static int cmp_keys(const void *pa, const void *pb, void *ctx) {
    const jobj *o = ctx;
    int a = *(const int *)pa, b = *(const int *)pb;
    size_t la = o->klens[a], lb = o->klens[b];
    int c = memcmp(o->keys[a], o->keys[b], la < lb ? la : lb);
    return c ? c : (la < lb ? -1 : la > lb);
}

int js_json(R *r, jbuf *b, const jval *v, const jjson_opts *o, int depth, int undef_null, const jnode *at) {
    if (depth > 600) return jr_err(r, at, GN_ERANGE, "value nested too deeply for JSON");
    const char *isep = o->isep ? o->isep : o->indent ? "," : ", ";
    const char *ksep = o->ksep ? o->ksep : ": ";
    switch (v->k) {
    case V_NULL: return puts_(r, b, "null");
    case V_UNDEF: return puts_(r, b, undef_null ? "null" : "undefined");
    case V_BOOL: return puts_(r, b, v->u.b ? "true" : "false");
    case V_INT: case V_FLOAT:
        if (!isfinite(v->u.num)) return puts_(r, b, "null");
        return put_num(r, b, v->u.num);
    case V_STR: return json_str(r, b, v->u.str.s, v->u.str.len, o->ascii);
    case V_ARRAY: {
        const jarr *a = v->u.arr;
        if (v->tuple) return jr_err(r, at, GN_EINVAL, "Cannot convert to JSON: TupleValue");
        if (puts_(r, b, "[")) return -1;
        for (int i = 0; i < a->n; i++) {
            if (i && puts_(r, b, isep)) return -1;
            if (o->indent) {
                if (puts_(r, b, "\n")) return -1;
                for (int k = 0; k < (depth + 1) * o->indent; k++)
                    if (puts_(r, b, " ")) return -1;
            }
            if (js_json(r, b, &a->items[i], o, depth + 1, undef_null, at)) return -1;
        }
        if (o->indent && a->n) {
            if (puts_(r, b, "\n")) return -1;
            for (int k = 0; k < depth * o->indent; k++)
                if (puts_(r, b, " ")) return -1;
        }
        return puts_(r, b, "]");
    }
    case V_OBJECT: case V_NS: {
        const jobj *ob = v->u.obj;
        int *order = ja_alloc(&r->a, (size_t)(ob->n ? ob->n : 1) * sizeof *order);
        if (!order) return jr_oom(r);
        for (int i = 0; i < ob->n; i++) order[i] = i;
        if (o->sort) qsort_r(order, (size_t)ob->n, sizeof *order, cmp_keys, (void *)ob);
        if (puts_(r, b, "{")) return -1;
        for (int i = 0; i < ob->n; i++) {
            int e = order[i];
            if (i && puts_(r, b, isep)) return -1;
            if (o->indent) {
                if (puts_(r, b, "\n")) return -1;
                for (int k = 0; k < (depth + 1) * o->indent; k++)
                    if (puts_(r, b, " ")) return -1;
            }
            if (json_str(r, b, ob->keys[e], ob->klens[e], o->ascii) || puts_(r, b, ksep) ||
                js_json(r, b, &ob->vals[e], o, depth + 1, undef_null, at))
                return -1;
        }
        if (o->indent && ob->n) {
            if (puts_(r, b, "\n")) return -1;
            for (int k = 0; k < depth * o->indent; k++)
                if (puts_(r, b, " ")) return -1;
        }
        return puts_(r, b, "}");
    }
    default: return jr_err(r, at, GN_EINVAL, "Cannot convert to JSON: FunctionValue");
    }
}

int jv_from_buf(R *r, jbuf *b, size_t mark, jval *out) {
    int rc = jv_str(r, b->p ? b->p + mark : "", b->len - mark, out);
    b->len = mark;
    if (b->p) b->p[mark] = 0;
    return rc;
}

/* ---- equality ---- */

enum { JT_UNDEF, JT_NULL, JT_BOOL, JT_NUM, JT_STR, JT_OBJ };
static int jtype(const jval *v) {
    switch (v->k) {
    case V_UNDEF: return JT_UNDEF;
    case V_NULL: return JT_UNDEF; /* the reference's NullValue holds undefined */
    case V_BOOL: return JT_BOOL;
    case V_INT: case V_FLOAT: return JT_NUM;
    case V_STR: return JT_STR;
    default: return JT_OBJ;
    }
}

int jv_strict_eq(const jval *a, const jval *b) {
    int ta = jtype(a);
    if (ta != jtype(b)) return 0;
    switch (ta) {
    case JT_UNDEF: case JT_NULL: return 1;
    case JT_BOOL: return a->u.b == b->u.b;
    case JT_NUM: return a->u.num == b->u.num;
    case JT_STR: return a->u.str.len == b->u.str.len && !memcmp(a->u.str.s, b->u.str.s, a->u.str.len);
    default:
        if (a->k != b->k) return 0;
        if (a->k == V_ARRAY) return a->u.arr == b->u.arr;
        if (a->k == V_OBJECT || a->k == V_NS) return a->u.obj == b->u.obj;
        return 0;
    }
}

/* JavaScript ToNumber on a string. */
static double str_to_num(const char *s, size_t n) {
    size_t i = 0, e = n;
    uint32_t cp;
    while (i < e) {
        int w = ju_decode(s, n, i, &cp);
        if (!ju_is_space(cp)) break;
        i += (size_t)w;
    }
    while (e > i) {
        size_t st = e - 1;
        while (st > i && (((unsigned char)s[st]) & 0xC0) == 0x80) st--;
        ju_decode(s, e, st, &cp);
        if (!ju_is_space(cp)) break;
        e = st;
    }
    if (i == e) return 0;
    char buf[400];
    size_t len = e - i;
    if (len >= sizeof buf) return NAN;
    memcpy(buf, s + i, len);
    buf[len] = 0;
    if (len > 2 && buf[0] == '0' && strchr("xXoObB", buf[1])) {
        int base = (buf[1] == 'x' || buf[1] == 'X') ? 16 : (buf[1] == 'o' || buf[1] == 'O') ? 8 : 2;
        double v = 0;
        for (size_t k = 2; k < len; k++) {
            int d = buf[k] >= '0' && buf[k] <= '9' ? buf[k] - '0'
                    : buf[k] >= 'a' && buf[k] <= 'f' ? buf[k] - 'a' + 10
                    : buf[k] >= 'A' && buf[k] <= 'F' ? buf[k] - 'A' + 10 : 99;
            if (d >= base) return NAN;
            v = v * base + d;
        }
        return v;
    }
    const char *q = buf;
    int neg = 0;
    if (*q == '+' || *q == '-') neg = *q++ == '-';
    if (!strcmp(q, "Infinity")) return neg ? -INFINITY : INFINITY;
    /* StrDecimalLiteral: digits [. digits] [e[+-]digits] | . digits [...] */
    const char *d = q;
    int nd = 0;
    while (*d >= '0' && *d <= '9') d++, nd++;
    if (*d == '.') {
        d++;
        while (*d >= '0' && *d <= '9') d++, nd++;
    }
    if (!nd) return NAN;
    if (*d == 'e' || *d == 'E') {
        d++;
        if (*d == '+' || *d == '-') d++;
        if (!(*d >= '0' && *d <= '9')) return NAN;
        while (*d >= '0' && *d <= '9') d++;
    }
    if (*d) return NAN;
    return strtod(buf, NULL);
}

int jv_loose_eq(R *r, const jval *a, const jval *b) {
    int ta = jtype(a), tb = jtype(b);
    if (ta == tb) return jv_strict_eq(a, b);
    if ((ta == JT_UNDEF || ta == JT_NULL) && (tb == JT_UNDEF || tb == JT_NULL)) return 1;
    if (ta == JT_UNDEF || ta == JT_NULL || tb == JT_UNDEF || tb == JT_NULL) return 0;
    if (ta == JT_NUM && tb == JT_STR) return a->u.num == str_to_num(b->u.str.s, b->u.str.len);
    if (ta == JT_STR && tb == JT_NUM) return b->u.num == str_to_num(a->u.str.s, a->u.str.len);
    if (ta == JT_BOOL) {
        jval x = jv_int(a->u.b);
        return jv_loose_eq(r, &x, b);
    }
    if (tb == JT_BOOL) {
        jval x = jv_int(b->u.b);
        return jv_loose_eq(r, a, &x);
    }
    if (ta == JT_OBJ || tb == JT_OBJ) { /* ToPrimitive: String(object) */
        const jval *o = ta == JT_OBJ ? a : b, *p = ta == JT_OBJ ? b : a;
        size_t mark = r->scratch.len;
        jval s;
        if (js_raw(r, &r->scratch, o) || jv_from_buf(r, &r->scratch, mark, &s)) return 0;
        return jv_loose_eq(r, &s, p);
    }
    return 0;
}
