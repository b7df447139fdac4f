/* jinja_exec.c — scopes, expression evaluation, statements and the render
 * entry point. See jinja_eval.c for the value model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "jinja_internal.h"

enum { X_OK = 0, X_BREAK = 1, X_CONTINUE = 2 };

/* ---- scopes ---- */

static jscope *scope_new(R *r, jscope *parent) {
    jscope *s = ja_alloc(&r->a, sizeof *s);
    if (!s) return jr_oom(r), NULL;
    s->parent = parent;
    return s;
}

static int scope_set(R *r, jscope *s, const char *name, size_t nl, jval v) {
    for (int i = 0; i < s->n; i++)
        if (s->nlens[i] == nl && !memcmp(s->names[i], name, nl)) {
            s->vals[i] = v;
            return 0;
        }
    if (s->n == s->cap) {
        int nc = s->cap ? s->cap * 2 : 8;
        const char **nn = ja_alloc(&r->a, (size_t)nc * sizeof *nn);
        size_t *nls = ja_alloc(&r->a, (size_t)nc * sizeof *nls);
        jval *nv = ja_alloc(&r->a, (size_t)nc * sizeof *nv);
        if (!nn || !nls || !nv) return jr_oom(r);
        if (s->n) {
            memcpy(nn, s->names, (size_t)s->n * sizeof *nn);
            memcpy(nls, s->nlens, (size_t)s->n * sizeof *nls);
            memcpy(nv, s->vals, (size_t)s->n * sizeof *nv);
        }
        s->names = nn, s->nlens = nls, s->vals = nv, s->cap = nc;
    }
    s->names[s->n] = name;
    s->nlens[s->n] = nl;
    s->vals[s->n] = v;
    s->n++;
    return 0;
}

static jval scope_get(const jscope *s, const char *name, size_t nl) {
    for (; s; s = s->parent)
        for (int i = 0; i < s->n; i++)
            if (s->nlens[i] == nl && !memcmp(s->names[i], name, nl)) return s->vals[i];
    return jv_undef();
}

/* ---- expressions ---- */

static int is_num(const jval *v) { return v->k == V_INT || v->k == V_FLOAT; }
static int is_numlike(const jval *v) { return is_num(v) || v->k == V_BOOL; }
static double numval(const jval *v) { return v->k == V_BOOL ? v->u.b : v->u.num; }

static const char *op_name(int op) {
    static const char *n[] = {"", "+", "-", "~", "*", "/", "//", "%", "**", "==", "!=", "<", ">",
                              "<=", ">=", "and", "or", "in", "not in", "not", "-", "+"};
    return op >= 0 && op < (int)(sizeof n / sizeof n[0]) ? n[op] : "?";
}

static int str_contains(const char *h, size_t hl, const char *nd, size_t nl) {
    if (nl == 0) return 1;
    if (nl > hl) return 0;
    for (size_t i = 0; i + nl <= hl; i++)
        if (h[i] == nd[0] && !memcmp(h + i, nd, nl)) return 1;
    return 0;
}

static int concat(R *r, const jval *a, const jval *b, jval *out) {
    size_t mark = r->scratch.len;
    if (js_raw(r, &r->scratch, a) || js_raw(r, &r->scratch, b)) return -1;
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int eval_binary(R *r, const jnode *n, jscope *sc, jval *out) {
    jval l, rv;
    if (je_eval(r, n->a, sc, &l)) return -1;
    if (n->op == OP_AND) return jv_truthy(&l) ? je_eval(r, n->b, sc, out) : (*out = l, 0);
    if (n->op == OP_OR) return jv_truthy(&l) ? (*out = l, 0) : je_eval(r, n->b, sc, out);
    if (je_eval(r, n->b, sc, &rv)) return -1;
    int op = n->op;
    if (op == OP_EQ || op == OP_NE) {
        int eq = jv_loose_eq(r, &l, &rv);
        if (r->failed) return -1;
        *out = jv_bool(op == OP_EQ ? eq : !eq);
        return 0;
    }
    if (l.k == V_UNDEF || rv.k == V_UNDEF) {
        if (rv.k == V_UNDEF && (op == OP_IN || op == OP_NOTIN)) {
            *out = jv_bool(op == OP_NOTIN);
            return 0;
        }
        return jr_err(r, n, GN_EINVAL, "Cannot perform operation %s on undefined values", op_name(op));
    } else if (l.k == V_NULL || rv.k == V_NULL) {
        return jr_err(r, n, GN_EINVAL, "Cannot perform operation on null values");
    } else if (op == OP_CONCAT) {
        return concat(r, &l, &rv, out);
    } else if (op == OP_POW && is_numlike(&l) && is_numlike(&rv)) {
        double a = numval(&l), b = numval(&rv);
        if (a == 0 && b < 0) return jr_err(r, n, GN_EINVAL, "0.0 cannot be raised to a negative power");
        double res = pow(a, b);
        if (!isfinite(res)) return jr_err(r, n, GN_EINVAL, "Exponentiation result is not a finite real number");
        int isf = l.k == V_FLOAT || rv.k == V_FLOAT || b < 0;
        *out = isf ? jv_float(res) : jv_int(res);
        return 0;
    } else if (is_num(&l) && is_num(&rv)) {
        double a = l.u.num, b = rv.u.num;
        int isf = l.k == V_FLOAT || rv.k == V_FLOAT;
        switch (op) {
        case OP_ADD: *out = isf ? jv_float(a + b) : jv_int(a + b); return 0;
        case OP_SUB: *out = isf ? jv_float(a - b) : jv_int(a - b); return 0;
        case OP_MUL: *out = isf ? jv_float(a * b) : jv_int(a * b); return 0;
        case OP_DIV: *out = jv_float(a / b); return 0;
        case OP_FLOORDIV: *out = isf ? jv_float(floor(a / b)) : jv_int(floor(a / b)); return 0;
        case OP_MOD: *out = isf ? jv_float(fmod(a, b)) : jv_int(fmod(a, b)); return 0;
        case OP_LT: *out = jv_bool(a < b); return 0;
        case OP_GT: *out = jv_bool(a > b); return 0;
        case OP_GE: *out = jv_bool(a >= b); return 0;
        case OP_LE: *out = jv_bool(a <= b); return 0;
        default: break;
        }
    } else if (l.k == V_ARRAY && rv.k == V_ARRAY) {
        if (op == OP_ADD) {
            int na = l.u.arr->n, nb = rv.u.arr->n;
            if (na > (1 << 26) || nb > (1 << 26)) return jr_err(r, n, GN_ERANGE, "array too large");
            if (jr_charge(r, n, (size_t)(na + nb) / 8) || jv_arr(r, na + nb, out)) return -1;
            if (na) memcpy(out->u.arr->items, l.u.arr->items, (size_t)na * sizeof(jval));
            if (nb) memcpy(out->u.arr->items + na, rv.u.arr->items, (size_t)nb * sizeof(jval));
            return 0;
        }
    } else if (rv.k == V_ARRAY) {
        if (op == OP_IN || op == OP_NOTIN) {
            int found = 0;
            if (jr_charge(r, n, (size_t)rv.u.arr->n / 8)) return -1;
            for (int i = 0; i < rv.u.arr->n && !found; i++) found = jv_strict_eq(&rv.u.arr->items[i], &l);
            *out = jv_bool(op == OP_IN ? found : !found);
            return 0;
        }
    }
    if ((l.k == V_STR || rv.k == V_STR) && op == OP_ADD) return concat(r, &l, &rv, out);
    if (l.k == V_STR && rv.k == V_STR && (op == OP_IN || op == OP_NOTIN)) {
        if (jr_charge(r, n, rv.u.str.len / 64)) return -1;
        int c = str_contains(rv.u.str.s, rv.u.str.len, l.u.str.s, l.u.str.len);
        *out = jv_bool(op == OP_IN ? c : !c);
        return 0;
    }
    if (l.k == V_STR && rv.k == V_OBJECT && (op == OP_IN || op == OP_NOTIN)) {
        int c = jo_get(rv.u.obj, l.u.str.s, l.u.str.len) != NULL;
        *out = jv_bool(op == OP_IN ? c : !c);
        return 0;
    }
    return jr_err(r, n, GN_EINVAL, "Unknown operator \"%s\" between %s and %s", op_name(op), jv_type(&l),
                  jv_type(&rv));
}

/* JavaScript Array.prototype.at / String.prototype.at index. */
static int at_index(double idx, int n, int *out) {
    if (isnan(idx)) idx = 0;
    idx = trunc(idx);
    if (idx < 0) idx += n;
    if (idx < 0 || idx >= n) return 0;
    *out = (int)idx;
    return 1;
}

/* utils.ts slice() over n elements; calls back with each picked index. */
static int slice_indices(R *r, const jnode *at, int n, const jval *st, const jval *sp, const jval *stp,
                         int **idx, int *count) {
    double step = stp->k == V_UNDEF ? 1 : stp->u.num;
    double start, stop;
    *count = 0;
    if (isnan(step) || (st->k != V_UNDEF && isnan(st->u.num)) || (sp->k != V_UNDEF && isnan(sp->u.num)))
        return 0;
    double dir = step > 0 ? 1 : step < 0 ? -1 : 0;
    if (dir >= 0) {
        start = st->k == V_UNDEF ? 0 : st->u.num;
        start = start < 0 ? fmax(n + start, 0) : fmin(start, n);
        stop = sp->k == V_UNDEF ? n : sp->u.num;
        stop = stop < 0 ? fmax(n + stop, 0) : fmin(stop, n);
    } else {
        start = st->k == V_UNDEF ? n - 1 : st->u.num;
        start = start < 0 ? fmax(n + start, -1) : fmin(start, n - 1);
        stop = sp->k == V_UNDEF ? -1 : sp->u.num;
        stop = stop < -1 ? fmax(n + stop, -1) : fmin(stop, n - 1);
    }
    int cap = n > 0 ? n : 1;
    *idx = ja_alloc(&r->a, (size_t)cap * sizeof **idx);
    if (!*idx) return jr_oom(r);
    for (double i = start; dir * i < dir * stop && *count < cap; i += step) (*idx)[(*count)++] = (int)i;
    return jr_charge(r, at, (size_t)*count / 8);
}

static int eval_slice(R *r, const jnode *n, const jval *obj, jscope *sc, jval *out) {
    if (obj->k != V_ARRAY && obj->k != V_STR)
        return jr_err(r, n, GN_EINVAL, "Slice object must be an array or string");
    jval v[3];
    const jnode *parts[3] = {n->a, n->b, n->c};
    const char *nm[3] = {"start", "stop", "step"};
    for (int i = 0; i < 3; i++) {
        v[i] = jv_undef();
        if (parts[i] && je_eval(r, parts[i], sc, &v[i])) return -1;
        if (v[i].k != V_INT && v[i].k != V_UNDEF)
            return jr_err(r, n, GN_EINVAL, "Slice %s must be numeric or undefined", nm[i]);
    }
    int *idx, cnt;
    if (obj->k == V_ARRAY) {
        if (slice_indices(r, n, obj->u.arr->n, &v[0], &v[1], &v[2], &idx, &cnt)) return -1;
        if (jv_arr(r, cnt, out)) return -1;
        for (int i = 0; i < cnt; i++) out->u.arr->items[i] = obj->u.arr->items[idx[i]];
        return 0;
    }
    /* strings slice by code point (Array.from) */
    const char *s = obj->u.str.s;
    size_t len = obj->u.str.len;
    size_t ncp = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += (size_t)ju_decode(s, len, i, &cp);
        ncp++;
    }
    if (ncp > (1u << 28)) return jr_err(r, n, GN_ERANGE, "string too long");
    size_t *off = ja_alloc(&r->a, (ncp + 1) * sizeof *off);
    if (!off) return jr_oom(r);
    ncp = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        off[ncp++] = i;
        i += (size_t)ju_decode(s, len, i, &cp);
    }
    off[ncp] = len;
    if (slice_indices(r, n, (int)ncp, &v[0], &v[1], &v[2], &idx, &cnt)) return -1;
    size_t mark = r->scratch.len;
    for (int i = 0; i < cnt; i++)
        if (jb_put(&r->scratch, s + off[idx[i]], off[idx[i] + 1] - off[idx[i]])) return jr_oom(r);
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int eval_member(R *r, const jnode *n, jscope *sc, jval *out) {
    jval obj, prop;
    if (je_eval(r, n->a, sc, &obj)) return -1;
    if (n->flag) {
        if (n->b->kind == N_SLICE) return eval_slice(r, n->b, &obj, sc, out);
        if (je_eval(r, n->b, sc, &prop)) return -1;
    } else if (n->b->kind == N_INT) {
        prop = jv_int(n->b->num);
    } else {
        prop = jv_str_ref(n->b->str, n->b->len);
    }
    *out = jv_undef();
    if (obj.k == V_OBJECT || obj.k == V_NS) {
        if (prop.k != V_STR)
            return jr_err(r, n, GN_EINVAL, "Cannot access property with non-string: got %s", jv_type(&prop));
        if (jr_charge(r, n, (size_t)obj.u.obj->n / 8)) return -1;
        const jval *v = jo_get(obj.u.obj, prop.u.str.s, prop.u.str.len);
        if (v) *out = *v;
        else if (obj.k == V_OBJECT && jb_member_builtin(r, &obj, prop.u.str.s, prop.u.str.len, out) < 0) return -1;
        return 0;
    }
    if (obj.k == V_ARRAY || obj.k == V_STR) {
        if (prop.k == V_INT) {
            int i;
            if (obj.k == V_ARRAY) {
                if (at_index(prop.u.num, obj.u.arr->n, &i)) *out = obj.u.arr->items[i];
                return 0;
            }
            /* UTF-16 code unit at i: a BMP character, or half of a pair (U+FFFD) */
            const char *s = obj.u.str.s;
            size_t len = obj.u.str.len;
            size_t units = ju_utf16_len(s, len);
            if (units > (size_t)1 << 30 || !at_index(prop.u.num, (int)units, &i)) return 0;
            size_t u = 0;
            for (size_t k = 0; k < len;) {
                uint32_t cp;
                int w = ju_decode(s, len, k, &cp);
                size_t cu = cp >= 0x10000 ? 2 : 1;
                if ((size_t)i < u + cu) {
                    if (cu == 2) return jv_str(r, "\xEF\xBF\xBD", 3, out);
                    return jv_str(r, s + k, (size_t)w, out);
                }
                u += cu;
                k += (size_t)w;
            }
            return 0;
        }
        if (prop.k == V_STR) return jb_member_builtin(r, &obj, prop.u.str.s, prop.u.str.len, out) < 0 ? -1 : 0;
        return jr_err(r, n, GN_EINVAL, "Cannot access property with non-string/non-number: got %s", jv_type(&prop));
    }
    if (prop.k != V_STR)
        return jr_err(r, n, GN_EINVAL, "Cannot access property with non-string: got %s", jv_type(&prop));
    return 0;
}

int jb_eval_args(R *r, const jnode *c, jscope *sc, jval **args, int *nargs, jobj **kw) {
    int npos = 0;
    for (int i = 0; i < c->n; i++)
        if (c->list[i]->kind != N_KWARG) npos++;
    *args = ja_alloc(&r->a, (size_t)(npos + 1) * sizeof **args);
    if (!*args) return jr_oom(r);
    *nargs = 0;
    *kw = NULL;
    for (int i = 0; i < c->n; i++)
        if (c->list[i]->kind != N_KWARG && je_eval(r, c->list[i], sc, &(*args)[(*nargs)++])) return -1;
    for (int i = 0; i < c->n; i++) {
        const jnode *k = c->list[i];
        if (k->kind != N_KWARG) continue;
        if (!*kw && !(*kw = jo_new(r, 4))) return -1;
        if (jo_get(*kw, k->str, k->len))
            return jr_err(r, k, GN_EINVAL, "Got multiple values for keyword argument '%.*s'", (int)k->len, k->str);
        jval v;
        if (je_eval(r, k->a, sc, &v) || jo_set(r, *kw, k->str, k->len, v)) return -1;
    }
    return 0;
}

static int exec_block(R *r, jnode *const *list, int n, jscope *sc);

/* runtime.ts bindMacroArguments + evaluateBlock: the macro's scope hangs off
 * the caller's scope (dynamic scoping, as in the reference). */
static int call_macro(R *r, const jnode *at, const jnode *m, jval *args, int nargs, jobj *kw, jscope *caller,
                      jval *out) {
    if (r->macro_depth >= 64) return jr_err(r, at, GN_ERANGE, "macro calls nested more than 64 deep");
    jscope *ms = scope_new(r, caller);
    if (!ms) return -1;
    int *pending = ja_alloc(&r->a, (size_t)(m->n ? m->n : 1) * sizeof *pending), np = 0;
    char *used = ja_alloc(&r->a, (size_t)(kw ? kw->n : 1) + 1);
    if (!pending || !used) return jr_oom(r);
    for (int i = 0; i < m->n; i++) {
        const jnode *p = m->list[i];
        jval v = jv_undef();
        int have = 0;
        if (i < nargs) {
            v = args[i];
            have = 1;
        } else if (kw) {
            for (int k = 0; k < kw->n; k++)
                if (!used[k] && kw->klens[k] == p->len && !memcmp(kw->keys[k], p->str, p->len)) {
                    v = kw->vals[k];
                    used[k] = 1;
                    have = 1;
                    break;
                }
        }
        if (!have && p->kind == N_KWARG) pending[np++] = i;
        if (scope_set(r, ms, p->str, p->len, v)) return -1;
    }
    if (kw)
        for (int k = 0; k < kw->n; k++)
            if (!used[k])
                return jr_err(r, at, GN_EINVAL, "macro '%.*s' takes no keyword argument '%s'", (int)m->len, m->str,
                              kw->keys[k]);
    if (nargs > m->n)
        return jr_err(r, at, GN_EINVAL, "macro '%.*s' takes not more than %d argument(s)", (int)m->len, m->str, m->n);
    for (int i = 0; i < np; i++) {
        const jnode *p = m->list[pending[i]];
        jval v;
        if (je_eval(r, p->a, ms, &v) || scope_set(r, ms, p->str, p->len, v)) return -1;
    }
    r->macro_depth++;
    size_t mark = r->out.len;
    int rc = exec_block(r, m->list2, m->n2, ms);
    r->macro_depth--;
    if (rc < 0) return rc;
    if (rc) return jr_err(r, at, GN_EUNSUP, "break or continue that leaves a macro");
    return jv_from_buf(r, &r->out, mark, out);
}

static int eval_call(R *r, const jnode *n, jscope *sc, jval *out) {
    jval *args, fn;
    int nargs;
    jobj *kw;
    if (jb_eval_args(r, n, sc, &args, &nargs, &kw)) return -1;
    if (je_eval(r, n->a, sc, &fn)) return -1;
    if (fn.k != V_FUNC)
        return jr_err(r, n, GN_EINVAL, "Cannot call something that is not a function: got %s", jv_type(&fn));
    if (fn.fn == F_MACRO) return call_macro(r, n, fn.u.macro, args, nargs, kw, sc, out);
    return jb_call(r, n, &fn, args, nargs, kw, out);
}

static int eval_node(R *r, const jnode *n, jscope *sc, jval *out);

/* Macros make recursion possible at run time: bound the C stack here. */
#define MAX_EVAL_DEPTH 2000

int je_eval(R *r, const jnode *n, jscope *sc, jval *out) {
    if (r->depth >= MAX_EVAL_DEPTH)
        return jr_err(r, n, GN_ERANGE, "evaluation nested more than %d deep", MAX_EVAL_DEPTH);
    r->depth++;
    int rc = eval_node(r, n, sc, out);
    r->depth--;
    return rc;
}

static int eval_node(R *r, const jnode *n, jscope *sc, jval *out) {
    if (jr_charge(r, n, 1)) return -1;
    switch (n->kind) {
    case N_INT: *out = jv_int(n->num); return 0;
    case N_FLOAT: *out = jv_float(n->num); return 0;
    case N_STR: case N_TEXT: *out = jv_str_ref(n->str, n->len); return 0;
    case N_IDENT: *out = scope_get(sc, n->str, n->len); return 0;
    case N_ARRAY: case N_TUPLE:
        if (jv_arr(r, n->n, out)) return -1;
        out->tuple = n->kind == N_TUPLE;
        for (int i = 0; i < n->n; i++)
            if (je_eval(r, n->list[i], sc, &out->u.arr->items[i])) return -1;
        return 0;
    case N_OBJECT: {
        jobj *o = jo_new(r, n->n / 2);
        if (!o) return -1;
        for (int i = 0; i + 1 < n->n; i += 2) {
            jval k, v;
            if (je_eval(r, n->list[i], sc, &k)) return -1;
            if (k.k != V_STR)
                return jr_err(r, n->list[i], GN_EINVAL, "Object keys must be strings: got %s", jv_type(&k));
            if (je_eval(r, n->list[i + 1], sc, &v) || jo_set(r, o, k.u.str.s, k.u.str.len, v)) return -1;
        }
        *out = (jval){.k = V_OBJECT, .u.obj = o};
        return 0;
    }
    case N_MEMBER: return eval_member(r, n, sc, out);
    case N_CALL: return eval_call(r, n, sc, out);
    case N_UNARY: {
        jval a;
        if (je_eval(r, n->a, sc, &a)) return -1;
        if (n->op == OP_NOT) {
            *out = jv_bool(!jv_truthy(&a));
            return 0;
        }
        if (!is_numlike(&a))
            return jr_err(r, n, GN_EINVAL, "Unknown operator \"%s\" for %s", op_name(n->op), jv_type(&a));
        double x = (n->op == OP_NEG ? -1 : 1) * numval(&a);
        *out = a.k == V_FLOAT ? jv_float(x) : jv_int(x);
        return 0;
    }
    case N_BINARY: return eval_binary(r, n, sc, out);
    case N_FILTER: {
        jval a;
        if (je_eval(r, n->a, sc, &a)) return -1;
        return jb_filter(r, n, &a, sc, out);
    }
    case N_TEST: {
        jval a;
        int res;
        if (je_eval(r, n->a, sc, &a) || jb_test(r, n, &a, &res)) return -1;
        *out = jv_bool(n->flag ? !res : res);
        return 0;
    }
    case N_SELECT: {
        jval t;
        if (je_eval(r, n->b, sc, &t)) return -1;
        if (!jv_truthy(&t)) {
            *out = jv_undef();
            return 0;
        }
        return je_eval(r, n->a, sc, out);
    }
    case N_TERNARY: {
        jval c;
        if (je_eval(r, n->a, sc, &c)) return -1;
        return je_eval(r, jv_truthy(&c) ? n->b : n->c, sc, out);
    }
    case N_COMMENT: *out = jv_null(); return 0;
    default:
        return jr_err(r, n, GN_EINVAL, "statement used as a value");
    }
}

/* ---- statements ---- */

static int bind_target(R *r, const jnode *target, const jval *v, jscope *sc, int in_for) {
    if (target->kind == N_IDENT) return scope_set(r, sc, target->str, target->len, *v);
    /* tuple */
    if (v->k != V_ARRAY || (in_for && v->tuple))
        return jr_err(r, target, GN_EINVAL, "Cannot unpack non-iterable type: %s", jv_type(v));
    if (v->u.arr->n != target->n)
        return jr_err(r, target, GN_EINVAL, "Too %s items to unpack", target->n > v->u.arr->n ? "few" : "many");
    for (int i = 0; i < target->n; i++) {
        const jnode *e = target->list[i];
        if (e->kind != N_IDENT) return jr_err(r, e, GN_EINVAL, "Cannot unpack to non-identifier");
        if (scope_set(r, sc, e->str, e->len, v->u.arr->items[i])) return -1;
    }
    return 0;
}

static int exec_set(R *r, const jnode *n, jscope *sc) {
    jval rhs;
    if (n->b) {
        if (je_eval(r, n->b, sc, &rhs)) return -1;
    } else {
        size_t mark = r->out.len;
        int rc = exec_block(r, n->list, n->n, sc);
        if (rc < 0) return rc;
        if (jv_from_buf(r, &r->out, mark, &rhs)) return -1;
        if (rc) return rc;
    }
    const jnode *t = n->a;
    if (t->kind == N_MEMBER) {
        jval obj;
        if (je_eval(r, t->a, sc, &obj)) return -1;
        if (obj.k != V_NS) return jr_err(r, t, GN_EINVAL, "cannot assign attribute on non-namespace object");
        if (t->flag || t->b->kind != N_IDENT)
            return jr_err(r, t, GN_EINVAL, "Cannot assign to member with non-identifier property");
        return jo_set(r, obj.u.obj, t->b->str, t->b->len, rhs);
    }
    if (t->kind == N_TUPLE && rhs.k != V_ARRAY)
        return jr_err(r, t, GN_EINVAL, "Cannot unpack non-iterable type in set: %s", jv_type(&rhs));
    return bind_target(r, t, &rhs, sc, 0);
}

static int exec_for(R *r, const jnode *n, jscope *sc) {
    jscope *scope = scope_new(r, sc);
    if (!scope) return -1;
    const jnode *iter_node = n->b, *test = NULL;
    if (iter_node->kind == N_SELECT) {
        test = iter_node->b;
        iter_node = iter_node->a;
    }
    jval it;
    if (je_eval(r, iter_node, scope, &it)) return -1;
    if (it.k != V_ARRAY && it.k != V_OBJECT)
        return jr_err(r, n->b, GN_EINVAL, "Expected iterable or object type in for loop: got %s", jv_type(&it));
    if (it.k == V_OBJECT) {
        const jobj *o = it.u.obj;
        if (jv_arr(r, o->n, &it)) return -1;
        for (int i = 0; i < o->n; i++) it.u.arr->items[i] = jv_str_ref(o->keys[i], o->klens[i]);
    }
    const jarr *src = it.u.arr;
    jval *items = ja_alloc(&r->a, (size_t)(src->n ? src->n : 1) * sizeof *items);
    if (!items) return jr_oom(r);
    int ni = 0;
    for (int i = 0; i < src->n; i++) {
        const jval *cur = &src->items[i];
        if (n->a->kind == N_TUPLE) {
            if (cur->k != V_ARRAY || cur->tuple)
                return jr_err(r, n->a, GN_EINVAL, "Cannot unpack non-iterable type: %s", jv_type(cur));
            if (cur->u.arr->n != n->a->n)
                return jr_err(r, n->a, GN_EINVAL, "Too %s items to unpack", n->a->n > cur->u.arr->n ? "few" : "many");
        }
        if (test) {
            jscope *ls = scope_new(r, scope);
            jval tv;
            if (!ls || bind_target(r, n->a, cur, ls, 1) || je_eval(r, test, ls, &tv)) return -1;
            if (!jv_truthy(&tv)) continue;
        }
        items[ni++] = *cur;
    }
    int none = 1;
    for (int i = 0; i < ni; i++) {
        jobj *loop = jo_new(r, 9);
        if (!loop) return -1;
        struct { const char *k; jval v; } f[] = {
            {"index", jv_int(i + 1)}, {"index0", jv_int(i)}, {"revindex", jv_int(ni - i)},
            {"revindex0", jv_int(ni - i - 1)}, {"first", jv_bool(i == 0)}, {"last", jv_bool(i == ni - 1)},
            {"length", jv_int(ni)}, {"previtem", i > 0 ? items[i - 1] : jv_undef()},
            {"nextitem", i < ni - 1 ? items[i + 1] : jv_undef()},
        };
        for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
            loop->keys[k] = f[k].k;
            loop->klens[k] = strlen(f[k].k);
            loop->vals[k] = f[k].v;
        }
        loop->n = 9;
        if (scope_set(r, scope, "loop", 4, (jval){.k = V_OBJECT, .u.obj = loop})) return -1;
        if (bind_target(r, n->a, &items[i], scope, 1)) return -1;
        size_t mark = r->out.len;
        int rc = exec_block(r, n->list, n->n, scope);
        if (rc < 0) return rc;
        if (rc) { /* the reference drops this iteration's partial output */
            r->out.len = mark;
            if (r->out.p) r->out.p[mark] = 0;
            if (rc == X_BREAK) break;
            continue;
        }
        none = 0;
    }
    if (none) return exec_block(r, n->list2, n->n2, scope);
    return 0;
}

static int exec_block_inner(R *r, jnode *const *list, int n, jscope *sc);

static int exec_block(R *r, jnode *const *list, int n, jscope *sc) {
    if (r->depth >= MAX_EVAL_DEPTH)
        return jr_err(r, n ? list[0] : NULL, GN_ERANGE, "evaluation nested more than %d deep", MAX_EVAL_DEPTH);
    r->depth++;
    int rc = exec_block_inner(r, list, n, sc);
    r->depth--;
    return rc;
}

static int exec_block_inner(R *r, jnode *const *list, int n, jscope *sc) {
    for (int i = 0; i < n; i++) {
        const jnode *s = list[i];
        int rc = 0;
        switch (s->kind) {
        case N_TEXT:
            if (jr_charge(r, s, 1 + s->len / 256)) return -1;
            if (jb_put(&r->out, s->str, s->len)) return jr_oom(r);
            break;
        case N_COMMENT: break;
        case N_SET:
            if (jr_charge(r, s, 1)) return -1;
            rc = exec_set(r, s, sc);
            break;
        case N_IF: {
            jval t;
            if (jr_charge(r, s, 1) || je_eval(r, s->a, sc, &t)) return -1;
            rc = jv_truthy(&t) ? exec_block(r, s->list, s->n, sc) : exec_block(r, s->list2, s->n2, sc);
            break;
        }
        case N_FOR:
            if (jr_charge(r, s, 1)) return -1;
            rc = exec_for(r, s, sc);
            break;
        case N_BREAK: return X_BREAK;
        case N_CONTINUE: return X_CONTINUE;
        case N_MACRO:
            if (jr_charge(r, s, 1) ||
                scope_set(r, sc, s->str, s->len, (jval){.k = V_FUNC, .fn = F_MACRO, .u.macro = s}))
                return -1;
            break;
        default: {
            jval v;
            if (je_eval(r, s, sc, &v)) return -1;
            if (v.k != V_NULL && v.k != V_UNDEF) {
                if (v.k == V_FUNC) return jr_err(r, s, GN_EUNSUP, "cannot print a function");
                if (js_rt(r, &r->out, &v)) return -1;
            }
        }
        }
        if (rc) return rc;
    }
    return 0;
}

/* ---- entry point ---- */

int gn_jinja_render(const gn_jinja *t, const json_t *vars, const gn_jinja_limits *limits, char **out,
                    size_t *out_len, gn_err *err) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !out) return gn_errf(err, GN_EINVAL, "chat template: NULL argument");
    if (vars && !json_is_object(vars)) return gn_errf(err, GN_EINVAL, "chat template: variables must be a JSON object");
    gn_jinja_limits lim = limits ? *limits : (gn_jinja_limits){0};
    if (!lim.max_output) lim.max_output = (size_t)16 << 20;
    if (!lim.max_memory) lim.max_memory = (size_t)256 << 20;
    if (lim.max_steps <= 0) lim.max_steps = 20000000;
    R r = {.t = t, .err = err, .max_steps = lim.max_steps};
    r.a.cap = lim.max_memory;
    r.out.limit = lim.max_output;
    r.scratch.limit = lim.max_memory;
    int rc = 0;
    jscope *g = scope_new(&r, NULL);
    if (!g) goto done;
    static const struct { const char *name; int fn; int b; int kind; } globals[] = {
        {"namespace", F_NAMESPACE, 0, V_FUNC}, {"false", 0, 0, V_BOOL}, {"true", 0, 1, V_BOOL},
        {"none", 0, 0, V_NULL}, {"raise_exception", F_RAISE, 0, V_FUNC}, {"range", F_RANGE, 0, V_FUNC},
        {"strftime_now", F_STRFTIME, 0, V_FUNC}, {"True", 0, 1, V_BOOL}, {"False", 0, 0, V_BOOL},
        {"None", 0, 0, V_NULL},
    };
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        jval v = {.k = globals[i].kind, .fn = globals[i].fn};
        if (globals[i].kind == V_BOOL) v.u.b = globals[i].b;
        if (scope_set(&r, g, globals[i].name, strlen(globals[i].name), v)) goto done;
    }
    if (vars) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)vars, k, v) {
            size_t kl = strlen(k);
            for (int i = 0; i < g->n; i++)
                if (g->nlens[i] == kl && !memcmp(g->names[i], k, kl)) {
                    jr_err(&r, NULL, GN_EINVAL, "Variable already declared: %s", k);
                    goto done;
                }
            jval cv;
            if (jv_from_json(&r, v, &cv, 0) || scope_set(&r, g, k, kl, cv)) goto done;
        }
    }
    rc = exec_block(&r, t->body, t->n_body, g);
    if (rc > 0) jr_err(&r, NULL, GN_EINVAL, "break or continue outside a loop");
done:
    gn_free(r.scratch.p);
    ja_free(&r.a);
    if (r.failed) {
        gn_free(r.out.p);
        return r.code ? r.code : GN_EINVAL;
    }
    if (!r.out.p && jb_put(&r.out, "", 0)) {
        gn_free(r.out.p);
        return gn_errf(err, GN_ENOMEM, "chat template: out of memory");
    }
    *out = r.out.p;
    if (out_len) *out_len = r.out.len;
    return 0;
}
