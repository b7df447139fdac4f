/* jinja_builtins.c — filters (including sort, dictsort, selectattr,
 * rejectattr, map), tests, global functions and the string / dict methods,
 * as @huggingface/jinja's runtime.ts defines them (for instance .strip('\n') ignores its argument and trims all
 * whitespace there, and so it does here).
 *
 * Case mapping (upper/lower/capitalize) covers ASCII, Latin-1, Latin
 * Extended-A, basic Greek and Cyrillic, without context rules (final sigma). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "jinja_internal.h"

/* ---- string helpers ---- */

static int utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

static int latin_ext_a_is_upper(uint32_t cp) {
    if (cp >= 0x100 && cp <= 0x137) return cp % 2 == 0;
    if (cp >= 0x139 && cp <= 0x148) return cp % 2 == 1;
    if (cp >= 0x14A && cp <= 0x177) return cp % 2 == 0;
    if (cp >= 0x179 && cp <= 0x17E) return cp % 2 == 1;
    return -1;
}

/* Writes the upper (up=1) or lower case of cp into o; returns bytes. */
static int case_map(uint32_t cp, int up, char *o) {
    if (up) {
        if (cp >= 'a' && cp <= 'z') cp -= 32;
        else if (cp == 0xDF) { o[0] = 'S'; o[1] = 'S'; return 2; }
        else if ((cp >= 0xE0 && cp <= 0xFE && cp != 0xF7)) cp -= 0x20;
        else if (cp == 0xFF) cp = 0x178;
        else if (cp == 0xB5) cp = 0x39C;
        else if (cp == 0x131) cp = 'I';
        else if (cp == 0x17F) cp = 'S';
        else if (latin_ext_a_is_upper(cp) == 0) cp -= 1;
        else if ((cp >= 0x3B1 && cp <= 0x3C1) || (cp >= 0x3C3 && cp <= 0x3CB)) cp -= 0x20;
        else if (cp == 0x3C2) cp = 0x3A3;
        else if (cp == 0x3AC) cp = 0x386;
        else if (cp >= 0x3AD && cp <= 0x3AF) cp -= 0x25;
        else if (cp == 0x3CC) cp = 0x38C;
        else if (cp == 0x3CD || cp == 0x3CE) cp -= 0x3F;
        else if (cp >= 0x430 && cp <= 0x44F) cp -= 0x20;
        else if (cp >= 0x450 && cp <= 0x45F) cp -= 0x50;
    } else {
        if (cp >= 'A' && cp <= 'Z') cp += 32;
        else if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) cp += 0x20;
        else if (cp == 0x178) cp = 0xFF;
        else if (cp == 0x130) { o[0] = 'i'; return 1 + utf8_put(o + 1, 0x307); }
        else if (latin_ext_a_is_upper(cp) == 1) cp += 1;
        else if ((cp >= 0x391 && cp <= 0x3A1) || (cp >= 0x3A3 && cp <= 0x3AB)) cp += 0x20;
        else if (cp == 0x386) cp = 0x3AC;
        else if (cp >= 0x388 && cp <= 0x38A) cp += 0x25;
        else if (cp == 0x38C) cp = 0x3CC;
        else if (cp == 0x38E || cp == 0x38F) cp += 0x3F;
        else if (cp >= 0x410 && cp <= 0x42F) cp += 0x20;
        else if (cp >= 0x400 && cp <= 0x40F) cp += 0x50;
    }
    return utf8_put(o, cp);
}

/* mode: 0 lower, 1 upper, 2 capitalize (first code unit only) */
static int str_case(R *r, const jval *s, int mode, jval *out) {
    size_t mark = r->scratch.len;
    const char *p = s->u.str.s;
    size_t n = s->u.str.len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int w = ju_decode(p, n, i, &cp);
        if (mode == 2 && i > 0) {
            if (jb_put(&r->scratch, p + i, n - i)) return jr_oom(r);
            break;
        }
        char tmp[8];
        int k = (mode == 2 && cp >= 0x10000) ? (memcpy(tmp, p + i, (size_t)w), w) : case_map(cp, mode != 0, tmp);
        if (jb_put(&r->scratch, tmp, (size_t)k)) return jr_oom(r);
        i += (size_t)w;
    }
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int is_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int str_title(R *r, const jval *s, jval *out) {
    char *p = ja_strndup(&r->a, s->u.str.s, s->u.str.len);
    if (!p) return jr_oom(r);
    for (size_t i = 0; i < s->u.str.len; i++)
        if (is_word(p[i]) && (i == 0 || !is_word(p[i - 1])) && p[i] >= 'a' && p[i] <= 'z') p[i] -= 32;
    *out = jv_str_ref(p, s->u.str.len);
    return 0;
}

/* which: 1 start, 2 end, 3 both */
static jval str_trim(const jval *s, int which) {
    const char *p = s->u.str.s;
    size_t i = 0, e = s->u.str.len;
    uint32_t cp;
    if (which & 1)
        while (i < e) {
            int w = ju_decode(p, e, i, &cp);
            if (!ju_is_space(cp)) break;
            i += (size_t)w;
        }
    if (which & 2)
        while (e > i) {
            size_t st = e - 1;
            while (st > i && (((unsigned char)p[st]) & 0xC0) == 0x80) st--;
            ju_decode(p, e, st, &cp);
            if (!ju_is_space(cp)) break;
            e = st;
        }
    return jv_str_ref(p + i, e - i);
}

static size_t find(const char *h, size_t hl, size_t from, const char *nd, size_t nl) {
    for (size_t i = from; i + nl <= hl; i++)
        if (!memcmp(h + i, nd, nl)) return i;
    return (size_t)-1;
}

static int str_split(R *r, const jnode *at, const jval *s, const jval *sep, const jval *maxs, jval *out) {
    if (sep->k != V_STR && sep->k != V_NULL) return jr_err(r, at, GN_EINVAL, "sep argument must be a string or null");
    if (maxs->k != V_INT) return jr_err(r, at, GN_EINVAL, "maxsplit argument must be a number");
    double mx = maxs->u.num;
    const char *p = s->u.str.s;
    size_t n = s->u.str.len;
    if (jr_charge(r, at, n / 16)) return -1;
    /* at most n + 1 parts */
    jval *parts = ja_alloc(&r->a, (n + 2) * sizeof *parts);
    if (!parts) return jr_oom(r);
    size_t np = 0;
    if (sep->k == V_NULL) {
        jval t = str_trim(s, 1);
        const char *q = t.u.str.s;
        size_t L = t.u.str.len, i = 0;
        while (i < L) {
            uint32_t cp;
            int w = ju_decode(q, L, i, &cp);
            if (ju_is_space(cp)) {
                i += (size_t)w;
                continue;
            }
            size_t st = i;
            while (i < L) {
                w = ju_decode(q, L, i, &cp);
                if (ju_is_space(cp)) break;
                i += (size_t)w;
            }
            if (mx != -1 && (double)np >= mx) {
                parts[np++] = jv_str_ref(q + st, L - st);
                break;
            }
            parts[np++] = jv_str_ref(q + st, i - st);
        }
    } else {
        const char *d = sep->u.str.s;
        size_t dl = sep->u.str.len;
        if (!dl) return jr_err(r, at, GN_EINVAL, "empty separator");
        size_t st = 0, f;
        while ((f = find(p, n, st, d, dl)) != (size_t)-1) {
            parts[np++] = jv_str_ref(p + st, f - st);
            st = f + dl;
        }
        parts[np++] = jv_str_ref(p + st, n - st);
        if (mx != -1 && (double)np > mx) {
            size_t k = mx < 0 ? (size_t)fmax((double)np + mx, 0) : (size_t)fmin(mx, (double)np);
            /* parts[k..] joined by sep: contiguous in p when k < np */
            if (k < np) {
                const char *b = parts[k].u.str.s;
                const char *e = parts[np - 1].u.str.s + parts[np - 1].u.str.len;
                parts[k] = jv_str_ref(b, (size_t)(e - b));
                np = k + 1;
            } else {
                parts[np++] = jv_str_ref("", 0);
            }
        }
    }
    if (jv_arr(r, (int)np, out)) return -1;
    if (np) memcpy(out->u.arr->items, parts, np * sizeof *parts);
    return 0;
}

static int str_replace(R *r, const jnode *at, const jval *s, const jval *old, const jval *nw, const jval *count,
                       jval *out) {
    if (old->k != V_STR || nw->k != V_STR) return jr_err(r, at, GN_EINVAL, "replace() arguments must be strings");
    if (count->k != V_INT && count->k != V_NULL)
        return jr_err(r, at, GN_EINVAL, "replace() count argument must be a number or null");
    if (count->k == V_INT && count->u.num == 0) {
        *out = *s;
        return 0;
    }
    double remaining = (count->k == V_NULL || count->u.num < 0) ? INFINITY : count->u.num;
    const char *p = s->u.str.s;
    size_t n = s->u.str.len, mark = r->scratch.len;
    if (jr_charge(r, at, n / 16)) return -1;
    if (old->u.str.len == 0) { /* (?=) with the u flag: every code point boundary */
        for (size_t i = 0;;) {
            if (remaining > 0) {
                remaining--;
                if (jb_put(&r->scratch, nw->u.str.s, nw->u.str.len)) return jr_oom(r);
            }
            if (i >= n) break;
            uint32_t cp;
            int w = ju_decode(p, n, i, &cp);
            if (jb_put(&r->scratch, p + i, (size_t)w)) return jr_oom(r);
            i += (size_t)w;
        }
    } else {
        size_t st = 0, f;
        while (remaining > 0 && (f = find(p, n, st, old->u.str.s, old->u.str.len)) != (size_t)-1) {
            if (jb_put(&r->scratch, p + st, f - st) || jb_put(&r->scratch, nw->u.str.s, nw->u.str.len))
                return jr_oom(r);
            st = f + old->u.str.len;
            remaining--;
        }
        if (jb_put(&r->scratch, p + st, n - st)) return jr_oom(r);
    }
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int starts_ends(R *r, const jnode *at, const jval *s, int nargs, const jval *args, int ends, jval *out) {
    const char *nm = ends ? "endswith" : "startswith";
    if (nargs == 0) return jr_err(r, at, GN_EINVAL, "%s() requires at least one argument", nm);
    const jval *pat = &args[0];
    int nitems = pat->k == V_STR ? 1 : pat->k == V_ARRAY ? pat->u.arr->n : -1;
    if (nitems < 0) return jr_err(r, at, GN_EINVAL, "%s() argument must be a string or tuple of strings", nm);
    for (int i = 0; i < nitems; i++) {
        const jval *x = pat->k == V_STR ? pat : &pat->u.arr->items[i];
        if (x->k != V_STR) return jr_err(r, at, GN_EINVAL, "%s() tuple elements must be strings", nm);
        size_t pl = x->u.str.len, sl = s->u.str.len;
        if (pl <= sl && !memcmp(s->u.str.s + (ends ? sl - pl : 0), x->u.str.s, pl)) {
            *out = jv_bool(1);
            return 0;
        }
    }
    *out = jv_bool(0);
    return 0;
}

/* ---- object helpers ---- */

static int obj_items(R *r, const jobj *o, int what, jval *out) { /* 0 items, 1 keys, 2 values */
    if (jv_arr(r, o->n, out)) return -1;
    for (int i = 0; i < o->n; i++) {
        jval k = jv_str_ref(o->keys[i], o->klens[i]);
        if (what == 1) out->u.arr->items[i] = k;
        else if (what == 2) out->u.arr->items[i] = o->vals[i];
        else {
            jval pair;
            if (jv_arr(r, 2, &pair)) return -1;
            pair.u.arr->items[0] = k;
            pair.u.arr->items[1] = o->vals[i];
            out->u.arr->items[i] = pair;
        }
    }
    return 0;
}

int jb_member_builtin(R *r, const jval *obj, const char *name, size_t nl, jval *out) {
    static const struct { const char *n; int fn; int kind; } tab[] = {
        {"upper", M_UPPER, V_STR}, {"lower", M_LOWER, V_STR}, {"strip", M_STRIP, V_STR},
        {"title", M_TITLE, V_STR}, {"capitalize", M_CAPITALIZE, V_STR}, {"rstrip", M_RSTRIP, V_STR},
        {"lstrip", M_LSTRIP, V_STR}, {"startswith", M_STARTSWITH, V_STR}, {"endswith", M_ENDSWITH, V_STR},
        {"split", M_SPLIT, V_STR}, {"replace", M_REPLACE, V_STR}, {"get", M_GET, V_OBJECT},
        {"items", M_ITEMS, V_OBJECT}, {"keys", M_KEYS, V_OBJECT}, {"values", M_VALUES, V_OBJECT},
        {"dictsort", M_DICTSORT, V_OBJECT},
    };
    *out = jv_undef();
    if (nl == 6 && !memcmp(name, "length", 6)) {
        if (obj->k == V_STR) *out = jv_int((double)ju_utf16_len(obj->u.str.s, obj->u.str.len));
        else if (obj->k == V_ARRAY) *out = jv_int(obj->u.arr->n);
        return out->k == V_UNDEF ? 0 : 1;
    }
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        if (tab[i].kind != obj->k || strlen(tab[i].n) != nl || memcmp(tab[i].n, name, nl)) continue;
        jval *self = ja_alloc(&r->a, sizeof *self);
        if (!self) return jr_oom(r);
        *self = *obj;
        *out = (jval){.k = V_FUNC, .fn = tab[i].fn, .u.self = self};
        return 1;
    }
    return 0;
}

static int name_is(const jnode *n, const char *s) { return n->len == strlen(s) && !memcmp(n->str, s, n->len); }

/* ---- sorting (runtime.ts compareRuntimeValues, a stable sort) ---- */

typedef struct {
    R *r;
    const jnode *at;
    int case_sensitive, reverse, failed;
} cmp_ctx;

static int lower_of(R *r, const jval *s, jval *out) { return str_case(r, s, 0, out); }

static int compare_values(cmp_ctx *c, const jval *a, const jval *b) {
    R *r = c->r;
    if (c->failed) return 0;
    int an = a->k == V_NULL, bn = b->k == V_NULL, au = a->k == V_UNDEF, bu = b->k == V_UNDEF;
    if (an && bn) return 0;
    if (an || bn || (au != bu)) {
        jr_err(r, c->at, GN_EINVAL, "Cannot compare %s with %s", jv_type(a), jv_type(b));
        c->failed = 1;
        return 0;
    }
    if (au && bu) return 0;
    int anum = a->k == V_INT || a->k == V_FLOAT || a->k == V_BOOL;
    int bnum = b->k == V_INT || b->k == V_FLOAT || b->k == V_BOOL;
    if (anum && bnum) {
        double x = a->k == V_BOOL ? a->u.b : a->u.num, y = b->k == V_BOOL ? b->u.b : b->u.num;
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a->k != b->k || (a->k == V_ARRAY && a->tuple != b->tuple)) {
        jr_err(r, c->at, GN_EINVAL, "Cannot compare different types: %s and %s", jv_type(a), jv_type(b));
        c->failed = 1;
        return 0;
    }
    if (a->k != V_STR) {
        jr_err(r, c->at, GN_EINVAL, "Cannot compare type: %s", jv_type(a));
        c->failed = 1;
        return 0;
    }
    jval x = *a, y = *b;
    if (!c->case_sensitive && (lower_of(r, a, &x) || lower_of(r, b, &y))) {
        c->failed = 1;
        return 0;
    }
    size_t n = x.u.str.len < y.u.str.len ? x.u.str.len : y.u.str.len;
    int d = memcmp(x.u.str.s, y.u.str.s, n);
    if (d) return d < 0 ? -1 : 1;
    return x.u.str.len < y.u.str.len ? -1 : x.u.str.len > y.u.str.len;
}

/* Stable merge sort of items (by keys[i], the value compared) in place. */
static int stable_sort(R *r, cmp_ctx *c, jval *items, jval *keys, int n) {
    if (jr_charge(r, c->at, (size_t)n * 4)) return -1;
    jval *ti = ja_alloc(&r->a, (size_t)(n ? n : 1) * sizeof *ti),
         *tk = ja_alloc(&r->a, (size_t)(n ? n : 1) * sizeof *tk);
    if (!ti || !tk) return jr_oom(r);
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int d = compare_values(c, &keys[j], &keys[i]);
                if (c->reverse) d = -d;
                if (d < 0) ti[k] = items[j], tk[k++] = keys[j++];
                else ti[k] = items[i], tk[k++] = keys[i++];
            }
            while (i < mid) ti[k] = items[i], tk[k++] = keys[i++];
            while (j < hi) ti[k] = items[j], tk[k++] = keys[j++];
        }
        memcpy(items, ti, (size_t)n * sizeof *items);
        memcpy(keys, tk, (size_t)n * sizeof *keys);
        if (c->failed) return -1;
    }
    return c->failed ? -1 : 0;
}

/* runtime.ts getAttributeValue: "a.b.0" through objects and arrays. */
static jval attr_path(const jval *item, const char *path, size_t pl) {
    jval v = *item;
    size_t st = 0;
    for (;;) {
        size_t e = st;
        while (e < pl && path[e] != '.') e++;
        if (v.k == V_OBJECT || v.k == V_NS) {
            const jval *x = jo_get(v.u.obj, path + st, e - st);
            v = x ? *x : jv_undef();
        } else if (v.k == V_ARRAY) {
            /* parseInt: leading digits (after an optional sign) */
            size_t k = st;
            int neg = 0;
            if (k < e && (path[k] == '+' || path[k] == '-')) neg = path[k++] == '-';
            double idx = 0;
            int nd = 0;
            while (k < e && path[k] >= '0' && path[k] <= '9') idx = idx * 10 + (path[k++] - '0'), nd++;
            if (neg) idx = -idx;
            if (!nd || idx < 0 || idx >= v.u.arr->n) return jv_undef();
            v = v.u.arr->items[(int)idx];
        } else {
            return jv_undef();
        }
        if (e >= pl) return v;
        st = e + 1;
    }
}

static int fn_dictsort(R *r, const jnode *at, const jval *self, jval *args, int nargs, jobj *kw, jval *out) {
    jval f = jv_bool(0), key = jv_str_ref("key", 3);
    const jval *cs = nargs > 0                                ? &args[0]
                     : kw && jo_get(kw, "case_sensitive", 14) ? jo_get(kw, "case_sensitive", 14)
                                                              : &f;
    const jval *by = nargs > 1 ? &args[1] : kw && jo_get(kw, "by", 2) ? jo_get(kw, "by", 2) : &key;
    const jval *rev = nargs > 2 ? &args[2] : kw && jo_get(kw, "reverse", 7) ? jo_get(kw, "reverse", 7) : &f;
    if (cs->k != V_BOOL) return jr_err(r, at, GN_EINVAL, "case_sensitive must be a boolean");
    if (by->k != V_STR) return jr_err(r, at, GN_EINVAL, "by must be a string");
    int byval = by->u.str.len == 5 && !memcmp(by->u.str.s, "value", 5);
    if (!byval && !(by->u.str.len == 3 && !memcmp(by->u.str.s, "key", 3)))
        return jr_err(r, at, GN_EINVAL, "by must be either 'key' or 'value'");
    if (rev->k != V_BOOL) return jr_err(r, at, GN_EINVAL, "reverse must be a boolean");
    if (obj_items(r, self->u.obj, 0, out)) return -1;
    int n = out->u.arr->n;
    jval *keys = ja_alloc(&r->a, (size_t)(n ? n : 1) * sizeof *keys);
    if (!keys) return jr_oom(r);
    for (int i = 0; i < n; i++) keys[i] = out->u.arr->items[i].u.arr->items[byval];
    cmp_ctx c = {r, at, cs->u.b, rev->u.b, 0};
    return stable_sort(r, &c, out->u.arr->items, keys, n);
}

static int filter_sort(R *r, const jnode *at, const jval *v, jval *args, int nargs, jobj *kw, jval *out) {
    jval f = jv_bool(0), null = jv_null();
    const jval *rev = nargs > 0 ? &args[0] : kw && jo_get(kw, "reverse", 7) ? jo_get(kw, "reverse", 7) : &f;
    const jval *cs = nargs > 1                                ? &args[1]
                     : kw && jo_get(kw, "case_sensitive", 14) ? jo_get(kw, "case_sensitive", 14)
                                                              : &f;
    const jval *attr = nargs > 2 ? &args[2] : kw && jo_get(kw, "attribute", 9) ? jo_get(kw, "attribute", 9) : &null;
    if (rev->k != V_BOOL) return jr_err(r, at, GN_EINVAL, "reverse must be a boolean");
    if (cs->k != V_BOOL) return jr_err(r, at, GN_EINVAL, "case_sensitive must be a boolean");
    if (attr->k != V_STR && attr->k != V_INT && attr->k != V_NULL)
        return jr_err(r, at, GN_EINVAL, "attribute must be a string, integer, or null");
    int n = v->u.arr->n;
    if (jv_arr(r, n, out)) return -1;
    jval *keys = ja_alloc(&r->a, (size_t)(n ? n : 1) * sizeof *keys);
    if (!keys) return jr_oom(r);
    char path[64];
    const char *ps = NULL;
    size_t pl = 0;
    if (attr->k == V_STR) ps = attr->u.str.s, pl = attr->u.str.len;
    else if (attr->k == V_INT) ju_num_str(attr->u.num, path), ps = path, pl = strlen(path);
    for (int i = 0; i < n; i++) {
        out->u.arr->items[i] = v->u.arr->items[i];
        keys[i] = ps ? attr_path(&v->u.arr->items[i], ps, pl) : v->u.arr->items[i];
    }
    cmp_ctx c = {r, at, cs->u.b, rev->u.b, 0};
    return stable_sort(r, &c, out->u.arr->items, keys, n);
}

static int filter_select(R *r, const jnode *n, const jval *v, jscope *sc, int select, jval *out) {
    const char *fname = select ? "selectattr" : "rejectattr";
    const jarr *a = v->u.arr;
    for (int i = 0; i < a->n; i++)
        if (a->items[i].k != V_OBJECT && a->items[i].k != V_NS)
            return jr_err(r, n, GN_EINVAL, "`%s` can only be applied to array of objects", fname);
    for (int i = 0; i < n->n; i++)
        if (n->list[i]->kind != N_STR) return jr_err(r, n, GN_EINVAL, "arguments of `%s` must be strings", fname);
    if (n->n < 1) return jr_err(r, n, GN_EINVAL, "`%s` needs an attribute name", fname);
    const jnode *attr = n->list[0], *test = n->n > 1 ? n->list[1] : NULL, *val = n->n > 2 ? n->list[2] : NULL;
    jnode tn = {0};
    if (test) {
        static const char *const known[] = {"boolean", "callable", "odd", "even", "false", "true", "none", "string",
                                            "number", "integer", "iterable", "mapping", "sequence", "lower",
                                            "upper", "defined", "undefined", "equalto", "eq", NULL};
        int ok = 0;
        for (int i = 0; known[i]; i++) ok |= name_is(test, known[i]);
        if (!ok) return jr_err(r, test, GN_EINVAL, "Unknown test: %.*s", (int)test->len, test->str);
        tn = *test;
        tn.kind = N_TEST;
    }
    if (jv_arr(r, a->n, out)) return -1;
    int k = 0;
    for (int i = 0; i < a->n; i++) {
        const jval *x = jo_get(a->items[i].u.obj, attr->str, attr->len);
        int res = 0;
        if (x) {
            if (!test) res = jv_truthy(x);
            else if (name_is(test, "equalto") || name_is(test, "eq")) {
                jval w = val ? jv_str_ref(val->str, val->len) : jv_undef();
                res = jv_strict_eq(x, &w);
            } else if (jb_test(r, &tn, x, &res)) {
                return -1;
            }
        }
        if (select ? res : !res) out->u.arr->items[k++] = a->items[i];
    }
    out->u.arr->n = k;
    (void)sc;
    return 0;
}

static int filter_map(R *r, const jnode *n, const jval *v, jobj *kw, jval *out) {
    const jval *attr = kw ? jo_get(kw, "attribute", 9) : NULL;
    if (!attr) return jr_err(r, n, GN_EINVAL, "`map` expressions without `attribute` set are not currently supported.");
    if (attr->k != V_STR) return jr_err(r, n, GN_EINVAL, "attribute must be a string");
    const jval *def = jo_get(kw, "default", 7);
    const jarr *a = v->u.arr;
    if (jv_arr(r, a->n, out)) return -1;
    for (int i = 0; i < a->n; i++) {
        if (a->items[i].k != V_OBJECT && a->items[i].k != V_NS)
            return jr_err(r, n, GN_EINVAL, "items in map must be an object");
        jval x = attr_path(&a->items[i], attr->u.str.s, attr->u.str.len);
        out->u.arr->items[i] = x.k == V_UNDEF ? (def ? *def : jv_undef()) : x;
    }
    return 0;
}

/* ---- calls ---- */

static int fn_namespace(R *r, const jnode *at, jval *args, int nargs, jobj *kw, jval *out) {
    if (nargs > 1) return jr_err(r, at, GN_EINVAL, "namespace expected at most 1 argument, got %d", nargs);
    jobj *o = jo_new(r, 8);
    if (!o) return -1;
    if (nargs == 1) {
        const jval *src = &args[0];
        if (src->k == V_OBJECT) {
            for (int i = 0; i < src->u.obj->n; i++)
                if (jo_set(r, o, src->u.obj->keys[i], src->u.obj->klens[i], src->u.obj->vals[i])) return -1;
        } else if (src->k == V_ARRAY) {
            for (int i = 0; i < src->u.arr->n; i++) {
                const jval *pr = &src->u.arr->items[i];
                if (pr->k != V_ARRAY || pr->u.arr->n != 2)
                    return jr_err(r, at, GN_EINVAL,
                                  "namespace expected an object or an iterable of [key, value] pairs");
                if (pr->u.arr->items[0].k != V_STR) return jr_err(r, at, GN_EINVAL, "namespace keys must be strings");
                const jval *k = &pr->u.arr->items[0];
                if (jo_set(r, o, k->u.str.s, k->u.str.len, pr->u.arr->items[1])) return -1;
            }
        } else {
            return jr_err(r, at, GN_EINVAL, "'%s' object is not iterable", jv_type(src));
        }
    }
    if (kw)
        for (int i = 0; i < kw->n; i++)
            if (jo_set(r, o, kw->keys[i], kw->klens[i], kw->vals[i])) return -1;
    *out = (jval){.k = V_NS, .u.obj = o};
    return 0;
}

static int fn_range(R *r, const jnode *at, jval *args, int nargs, jval *out) {
    double a[3];
    for (int i = 0; i < nargs && i < 3; i++) {
        if (args[i].k != V_INT && args[i].k != V_FLOAT)
            return jr_err(r, at, GN_EINVAL, "range() arguments must be numbers");
        a[i] = args[i].u.num;
    }
    if (nargs < 1) return jr_err(r, at, GN_EINVAL, "range() expects at least one argument");
    double start = 0, stop, step = 1;
    if (nargs == 1) stop = a[0];
    else start = a[0], stop = a[1];
    if (nargs >= 3) step = a[2];
    if (step == 0) return jr_err(r, at, GN_EINVAL, "range() step must not be zero");
    double cnt = step > 0 ? ceil((stop - start) / step) : ceil((start - stop) / -step);
    if (!(cnt > 0)) cnt = 0;
    if (cnt > 1000000) return jr_err(r, at, GN_ERANGE, "range() of more than 1000000 items");
    if (jr_charge(r, at, (size_t)cnt / 8) || jv_arr(r, (int)cnt, out)) return -1;
    for (int i = 0; i < (int)cnt; i++) {
        double x = start + i * step;
        out->u.arr->items[i] = x == floor(x) ? jv_int(x) : jv_float(x);
    }
    return 0;
}

static int fn_strftime(R *r, const jnode *at, jval *args, int nargs, jval *out) {
    if (nargs < 1 || args[0].k != V_STR) return jr_err(r, at, GN_EINVAL, "strftime_now() expects a format string");
    static const char *mon[] = {"January", "February", "March", "April", "May", "June", "July",
                                "August", "September", "October", "November", "December"};
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t mark = r->scratch.len;
    const char *f = args[0].u.str.s;
    size_t n = args[0].u.str.len;
    for (size_t i = 0; i < n; i++) {
        int rc = 0;
        if (f[i] == '%' && i + 1 < n && strchr("YmdbBHM%", f[i + 1]) && f[i + 1]) {
            char c = f[++i];
            if (c == 'Y') rc = jb_printf(&r->scratch, "%d", tm.tm_year + 1900);
            else if (c == 'm') rc = jb_printf(&r->scratch, "%02d", tm.tm_mon + 1);
            else if (c == 'd') rc = jb_printf(&r->scratch, "%02d", tm.tm_mday);
            else if (c == 'b') rc = jb_printf(&r->scratch, "%.3s", mon[tm.tm_mon]);
            else if (c == 'B') rc = jb_printf(&r->scratch, "%s", mon[tm.tm_mon]);
            else if (c == 'H') rc = jb_printf(&r->scratch, "%02d", tm.tm_hour);
            else if (c == 'M') rc = jb_printf(&r->scratch, "%02d", tm.tm_min);
            else rc = jb_putc(&r->scratch, '%');
        } else {
            rc = jb_putc(&r->scratch, f[i]);
        }
        if (rc) return jr_oom(r);
    }
    return jv_from_buf(r, &r->scratch, mark, out);
}

int jb_call(R *r, const jnode *at, const jval *fn, jval *args, int nargs, jobj *kw, jval *out) {
    const jval *self = fn->u.self;
    jval undef = jv_undef(), null = jv_null();
    /* the reference appends the keyword arguments as one last argument */
    jval kwv = kw ? (jval){.k = V_OBJECT, .u.obj = kw} : undef;
    int ntot = nargs + (kw ? 1 : 0);
#define ARG(i) ((i) < nargs ? &args[i] : ((i) == nargs && kw) ? &kwv : &undef)
    switch (fn->fn) {
    case F_NAMESPACE: return fn_namespace(r, at, args, nargs, kw, out);
    case F_RAISE: {
        size_t mark = r->scratch.len;
        if (nargs > 0 && args[0].k != V_UNDEF && js_raw(r, &r->scratch, &args[0])) return -1;
        return jr_err(r, at, GN_EINVAL, "raise_exception: %.*s", (int)(r->scratch.len - mark),
                      r->scratch.p ? r->scratch.p + mark : "");
    }
    case F_RANGE: return fn_range(r, at, args, nargs, out);
    case F_STRFTIME: return fn_strftime(r, at, args, nargs, out);
    case M_UPPER: return str_case(r, self, 1, out);
    case M_LOWER: return str_case(r, self, 0, out);
    case M_CAPITALIZE: return str_case(r, self, 2, out);
    case M_TITLE: return str_title(r, self, out);
    case M_STRIP: *out = str_trim(self, 3); return 0;
    case M_LSTRIP: *out = str_trim(self, 1); return 0;
    case M_RSTRIP: *out = str_trim(self, 2); return 0;
    case M_STARTSWITH: return starts_ends(r, at, self, ntot, nargs > 0 ? args : &kwv, 0, out);
    case M_ENDSWITH: return starts_ends(r, at, self, ntot, nargs > 0 ? args : &kwv, 1, out);
    case M_SPLIT: {
        jval m1 = jv_int(-1);
        const jval *sep = ntot > 0 ? ARG(0) : &null, *mx = ntot > 1 ? ARG(1) : &m1;
        return str_split(r, at, self, sep, mx, out);
    }
    case M_REPLACE: {
        if (ntot < 2) return jr_err(r, at, GN_EINVAL, "replace() requires at least two arguments");
        const jval *count = &null;
        if (nargs > 2) count = &args[2];
        else if (kw) {
            const jval *c = jo_get(kw, "count", 5);
            count = c ? c : &null;
        }
        return str_replace(r, at, self, ARG(0), ARG(1), count, out);
    }
    case M_GET: {
        const jval *key = ARG(0);
        if (key->k != V_STR) return jr_err(r, at, GN_EINVAL, "Object key must be a string: got %s", jv_type(key));
        const jval *v = jo_get(self->u.obj, key->u.str.s, key->u.str.len);
        *out = v ? *v : ntot > 1 ? *ARG(1) : null;
        return 0;
    }
    case M_ITEMS: return obj_items(r, self->u.obj, 0, out);
    case M_KEYS: return obj_items(r, self->u.obj, 1, out);
    case M_VALUES: return obj_items(r, self->u.obj, 2, out);
    case M_DICTSORT: return fn_dictsort(r, at, self, args, nargs, kw, out);
    }
#undef ARG
    return jr_err(r, at, GN_EINVAL, "unknown function");
}

/* ---- tests ---- */

int jb_test(R *r, const jnode *n, const jval *v, int *res) {
    if (name_is(n, "boolean")) *res = v->k == V_BOOL;
    else if (name_is(n, "callable")) *res = v->k == V_FUNC;
    else if (name_is(n, "odd") || name_is(n, "even")) {
        if (v->k != V_INT) return jr_err(r, n, GN_EINVAL, "cannot %.*s on %s", (int)n->len, n->str, jv_type(v));
        double m = fmod(v->u.num, 2);
        *res = name_is(n, "odd") ? m != 0 : m == 0;
    } else if (name_is(n, "false")) *res = v->k == V_BOOL && !v->u.b;
    else if (name_is(n, "true")) *res = v->k == V_BOOL && v->u.b;
    else if (name_is(n, "none")) *res = v->k == V_NULL;
    else if (name_is(n, "string")) *res = v->k == V_STR;
    else if (name_is(n, "number")) *res = v->k == V_INT || v->k == V_FLOAT;
    else if (name_is(n, "integer")) *res = v->k == V_INT;
    else if (name_is(n, "iterable")) *res = (v->k == V_ARRAY && !v->tuple) || v->k == V_STR;
    else if (name_is(n, "mapping")) *res = v->k == V_OBJECT;
    else if (name_is(n, "sequence")) *res = v->k == V_ARRAY || v->k == V_OBJECT || v->k == V_STR;
    else if (name_is(n, "lower") || name_is(n, "upper")) {
        if (v->k != V_STR) {
            *res = 0;
            return 0;
        }
        jval c;
        if (str_case(r, v, name_is(n, "upper"), &c)) return -1;
        *res = jv_strict_eq(&c, v);
    } else if (name_is(n, "defined")) *res = v->k != V_UNDEF;
    else if (name_is(n, "undefined")) *res = v->k == V_UNDEF;
    else if (name_is(n, "equalto") || name_is(n, "eq"))
        return jr_err(r, n, GN_EINVAL, "test '%.*s' needs an argument", (int)n->len, n->str);
    else return jr_err(r, n, GN_EINVAL, "Unknown test: %.*s", (int)n->len, n->str);
    return 0;
}

/* ---- filters ---- */

static double js_parse_int(const char *s, size_t n) {
    jval t = str_trim(&(jval){.k = V_STR, .u.str = {s, n}}, 1);
    const char *p = t.u.str.s, *e = p + t.u.str.len;
    int neg = 0;
    if (p < e && (*p == '+' || *p == '-')) neg = *p++ == '-';
    double v = 0;
    int nd = 0;
    while (p < e && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0'), nd++;
    if (!nd) return NAN;
    return neg ? -v : v;
}

static double js_parse_float(const char *s, size_t n) {
    jval t = str_trim(&(jval){.k = V_STR, .u.str = {s, n}}, 1);
    char buf[128];
    size_t L = t.u.str.len < sizeof buf - 1 ? t.u.str.len : sizeof buf - 1;
    memcpy(buf, t.u.str.s, L);
    buf[L] = 0;
    const char *q = buf;
    if (*q == '+' || *q == '-') q++;
    if (!strncmp(q, "Infinity", 8)) return buf[0] == '-' ? -INFINITY : INFINITY;
    if (!((*q >= '0' && *q <= '9') || (*q == '.' && q[1] >= '0' && q[1] <= '9'))) return NAN;
    /* strtod also takes hex and inf/nan, which parseFloat does not: cut at the first other char */
    size_t k = (size_t)(q - buf);
    while (buf[k] && strchr("0123456789.eE+-", buf[k])) k++;
    buf[k] = 0;
    return strtod(buf, NULL);
}

static int indent_str(R *r, const jval *s, int width, int first, int blank, jval *out) {
    size_t mark = r->scratch.len;
    const char *p = s->u.str.s;
    size_t n = s->u.str.len, st = 0;
    for (int line = 0;; line++) {
        size_t e = st;
        while (e < n && p[e] != '\n') e++;
        int skip = (!first && line == 0) || (!blank && e == st);
        if (!skip)
            for (int k = 0; k < width; k++)
                if (jb_putc(&r->scratch, ' ')) return jr_oom(r);
        if (jb_put(&r->scratch, p + st, e - st)) return jr_oom(r);
        if (e >= n) break;
        if (jb_putc(&r->scratch, '\n')) return jr_oom(r);
        st = e + 1;
    }
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int join_values(R *r, const jval *a, const char *sep, size_t sl, jval *out) {
    size_t mark = r->scratch.len;
    for (int i = 0; i < a->u.arr->n; i++) {
        const jval *x = &a->u.arr->items[i];
        if (i && jb_put(&r->scratch, sep, sl)) return jr_oom(r);
        if (x->k != V_NULL && x->k != V_UNDEF && js_raw(r, &r->scratch, x)) return -1;
    }
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int to_json_val(R *r, const jnode *at, const jval *v, const jjson_opts *o, jval *out) {
    size_t mark = r->scratch.len;
    if (js_json(r, &r->scratch, v, o, 0, 1, at)) return -1;
    return jv_from_buf(r, &r->scratch, mark, out);
}

static int filter_plain(R *r, const jnode *n, const jval *v, jval *out) {
    jjson_opts jo = {0, 0, 0, NULL, NULL};
    if (name_is(n, "safe")) return *out = *v, 0;
    if (name_is(n, "tojson")) return to_json_val(r, n, v, &jo, out);
    if (v->k == V_ARRAY) {
        const jarr *a = v->u.arr;
        if (name_is(n, "list")) return *out = *v, 0;
        if (name_is(n, "first")) return *out = a->n ? a->items[0] : jv_undef(), 0;
        if (name_is(n, "last")) return *out = a->n ? a->items[a->n - 1] : jv_undef(), 0;
        if (name_is(n, "length")) return *out = jv_int(a->n), 0;
        if (name_is(n, "reverse")) {
            if (jv_arr(r, a->n, out)) return -1;
            for (int i = 0; i < a->n; i++) out->u.arr->items[i] = a->items[a->n - 1 - i];
            return 0;
        }
        if (name_is(n, "join")) return join_values(r, v, "", 0, out);
        if (name_is(n, "sort")) return filter_sort(r, n, v, NULL, 0, NULL, out);
        if (name_is(n, "string")) {
            size_t mark = r->scratch.len;
            if (js_json(r, &r->scratch, v, &jo, 0, 0, n)) return -1;
            return jv_from_buf(r, &r->scratch, mark, out);
        }
        if (name_is(n, "unique")) {
            if (jr_charge(r, n, (size_t)a->n * (size_t)a->n / 64) || jv_arr(r, a->n, out)) return -1;
            int k = 0;
            for (int i = 0; i < a->n; i++) {
                int seen = 0;
                for (int j = 0; j < k && !seen; j++) {
                    const jval *x = &out->u.arr->items[j], *y = &a->items[i];
                    seen = jv_strict_eq(x, y) ||
                           (x->k != V_STR && y->k != V_STR && (x->k == V_INT || x->k == V_FLOAT) &&
                            (y->k == V_INT || y->k == V_FLOAT) && isnan(x->u.num) && isnan(y->u.num));
                }
                if (!seen) out->u.arr->items[k++] = a->items[i];
            }
            out->u.arr->n = k;
            return 0;
        }
        return jr_err(r, n, GN_EINVAL, "Unknown ArrayValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_STR) {
        if (name_is(n, "length")) return *out = jv_int((double)ju_utf16_len(v->u.str.s, v->u.str.len)), 0;
        if (name_is(n, "upper")) return str_case(r, v, 1, out);
        if (name_is(n, "lower")) return str_case(r, v, 0, out);
        if (name_is(n, "title")) return str_title(r, v, out);
        if (name_is(n, "capitalize")) return str_case(r, v, 2, out);
        if (name_is(n, "trim")) return *out = str_trim(v, 3), 0;
        if (name_is(n, "indent")) return indent_str(r, v, 4, 0, 0, out);
        if (name_is(n, "join") || name_is(n, "string")) return *out = *v, 0;
        if (name_is(n, "int")) {
            double x = js_parse_int(v->u.str.s, v->u.str.len);
            return *out = jv_int(isnan(x) ? 0 : x), 0;
        }
        if (name_is(n, "float")) {
            double x = js_parse_float(v->u.str.s, v->u.str.len);
            return *out = jv_float(isnan(x) ? 0 : x), 0;
        }
        return jr_err(r, n, GN_EINVAL, "Unknown StringValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_INT || v->k == V_FLOAT) {
        if (name_is(n, "abs")) return *out = v->k == V_INT ? jv_int(fabs(v->u.num)) : jv_float(fabs(v->u.num)), 0;
        if (name_is(n, "int")) return *out = jv_int(floor(v->u.num)), 0;
        if (name_is(n, "float")) return *out = jv_float(v->u.num), 0;
        if (name_is(n, "string")) {
            size_t mark = r->scratch.len;
            if (js_rt(r, &r->scratch, v)) return -1;
            return jv_from_buf(r, &r->scratch, mark, out);
        }
        return jr_err(r, n, GN_EINVAL, "Unknown NumericValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_OBJECT) {
        if (name_is(n, "items")) return obj_items(r, v->u.obj, 0, out);
        if (name_is(n, "length")) return *out = jv_int(v->u.obj->n), 0;
        jval fn;
        int found = jb_member_builtin(r, v, n->str, n->len, &fn);
        if (found < 0) return -1;
        if (found) return jb_call(r, n, &fn, NULL, 0, NULL, out);
        return jr_err(r, n, GN_EINVAL, "Unknown ObjectValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_BOOL) {
        if (name_is(n, "bool")) return *out = *v, 0;
        if (name_is(n, "int")) return *out = jv_int(v->u.b), 0;
        if (name_is(n, "float")) return *out = jv_float(v->u.b), 0;
        if (name_is(n, "string")) return jv_str(r, v->u.b ? "true" : "false", v->u.b ? 4 : 5, out);
        return jr_err(r, n, GN_EINVAL, "Unknown BooleanValue filter: %.*s", (int)n->len, n->str);
    }
    return jr_err(r, n, GN_EINVAL, "Cannot apply filter \"%.*s\" to type: %s", (int)n->len, n->str, jv_type(v));
}

static const jval *kwget(jobj *kw, const char *k) { return kw ? jo_get(kw, k, strlen(k)) : NULL; }

int jb_filter(R *r, const jnode *n, const jval *v, jscope *sc, jval *out) {
    if (!n->flag) return filter_plain(r, n, v, out);
    if (n->flag == 2) return jr_err(r, n, GN_EINVAL, "Unknown filter: MemberExpression");
    jval *args;
    int nargs;
    jobj *kw;
    if (jb_eval_args(r, n, sc, &args, &nargs, &kw)) return -1;
    const jval *x;
    if (name_is(n, "tojson")) {
        jjson_opts o = {0, 0, 0, NULL, NULL};
        if ((x = kwget(kw, "indent")) && x->k != V_NULL) {
            if (x->k != V_INT) return jr_err(r, n, GN_EINVAL, "If set, indent must be a number");
            if (x->u.num < 0 || x->u.num > 64) return jr_err(r, n, GN_ERANGE, "indent out of range");
            o.indent = (int)x->u.num;
        }
        if ((x = kwget(kw, "ensure_ascii"))) {
            if (x->k != V_BOOL) return jr_err(r, n, GN_EINVAL, "If set, ensure_ascii must be a boolean");
            o.ascii = x->u.b;
        }
        if ((x = kwget(kw, "sort_keys"))) {
            if (x->k != V_BOOL) return jr_err(r, n, GN_EINVAL, "If set, sort_keys must be a boolean");
            o.sort = x->u.b;
        }
        if ((x = kwget(kw, "separators")) && x->k != V_NULL) {
            if (x->k != V_ARRAY || x->u.arr->n != 2 || x->u.arr->items[0].k != V_STR || x->u.arr->items[1].k != V_STR)
                return jr_err(r, n, GN_EINVAL, "separators must be a tuple of two strings");
            o.isep = ja_strndup(&r->a, x->u.arr->items[0].u.str.s, x->u.arr->items[0].u.str.len);
            o.ksep = ja_strndup(&r->a, x->u.arr->items[1].u.str.s, x->u.arr->items[1].u.str.len);
            if (!o.isep || !o.ksep) return jr_oom(r);
        }
        return to_json_val(r, n, v, &o, out);
    }
    if (name_is(n, "join")) {
        if (v->k != V_STR && v->k != V_ARRAY)
            return jr_err(r, n, GN_EINVAL, "Cannot apply filter \"join\" to type: %s", jv_type(v));
        const jval *sep = nargs > 0 ? &args[0] : kwget(kw, "separator");
        jval empty = jv_str_ref("", 0);
        if (!sep) sep = &empty;
        if (sep->k != V_STR) return jr_err(r, n, GN_EINVAL, "separator must be a string");
        if (v->k == V_ARRAY) return join_values(r, v, sep->u.str.s, sep->u.str.len, out);
        size_t mark = r->scratch.len;
        for (size_t i = 0; i < v->u.str.len;) {
            uint32_t cp;
            int w = ju_decode(v->u.str.s, v->u.str.len, i, &cp);
            if ((i && jb_put(&r->scratch, sep->u.str.s, sep->u.str.len)) ||
                jb_put(&r->scratch, v->u.str.s + i, (size_t)w))
                return jr_oom(r);
            i += (size_t)w;
        }
        return jv_from_buf(r, &r->scratch, mark, out);
    }
    if (name_is(n, "int") || name_is(n, "float")) {
        int isint = name_is(n, "int");
        jval d0 = isint ? jv_int(0) : jv_float(0);
        const jval *def = nargs > 0 ? &args[0] : kwget(kw, "default");
        if (!def) def = &d0;
        if (v->k == V_STR) {
            double y = isint ? js_parse_int(v->u.str.s, v->u.str.len) : js_parse_float(v->u.str.s, v->u.str.len);
            return *out = isnan(y) ? *def : isint ? jv_int(y) : jv_float(y), 0;
        }
        if (v->k == V_INT || v->k == V_FLOAT) return *out = *v, 0;
        if (v->k == V_BOOL) return *out = isint ? jv_int(v->u.b) : jv_float(v->u.b), 0;
        return jr_err(r, n, GN_EINVAL, "Cannot apply filter \"%.*s\" to type: %s", (int)n->len, n->str, jv_type(v));
    }
    if (name_is(n, "default")) {
        jval empty = jv_str_ref("", 0), f = jv_bool(0);
        const jval *def = nargs > 0 ? &args[0] : &empty;
        const jval *bo = nargs > 1 ? &args[1] : kwget(kw, "boolean");
        if (!bo) bo = &f;
        if (bo->k != V_BOOL) return jr_err(r, n, GN_EINVAL, "`default` filter flag must be a boolean");
        *out = (v->k == V_UNDEF || (bo->u.b && !jv_truthy(v))) ? *def : *v;
        return 0;
    }
    if (v->k == V_STR) {
        if (name_is(n, "indent")) {
            const jval *w = nargs > 0 ? &args[0] : kwget(kw, "width");
            jval w4 = jv_int(4), fl = jv_bool(0);
            if (!w) w = &w4;
            if (w->k != V_INT) return jr_err(r, n, GN_EINVAL, "width must be a number");
            if (w->u.num < 0 || w->u.num > 1024) return jr_err(r, n, GN_ERANGE, "indent width out of range");
            const jval *first = nargs > 1 ? &args[1] : kwget(kw, "first");
            const jval *blank = nargs > 2 ? &args[2] : kwget(kw, "blank");
            if (!first) first = &fl;
            if (!blank) blank = &fl;
            return indent_str(r, v, (int)w->u.num, jv_truthy(first), jv_truthy(blank), out);
        }
        if (name_is(n, "replace")) {
            jval fn = {.k = V_FUNC, .fn = M_REPLACE, .u.self = v};
            jobj *k2 = kw ? kw : jo_new(r, 1);
            if (!k2) return -1;
            return jb_call(r, n, &fn, args, nargs, k2, out);
        }
        return jr_err(r, n, GN_EINVAL, "Unknown StringValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_OBJECT) {
        jval fn;
        int found = jb_member_builtin(r, v, n->str, n->len, &fn);
        if (found < 0) return -1;
        if (found) return jb_call(r, n, &fn, args, nargs, kw && kw->n ? kw : NULL, out);
        return jr_err(r, n, GN_EINVAL, "Unknown ObjectValue filter: %.*s", (int)n->len, n->str);
    }
    if (v->k == V_ARRAY) {
        if (name_is(n, "sort")) return filter_sort(r, n, v, args, nargs, kw, out);
        if (name_is(n, "selectattr") || name_is(n, "rejectattr"))
            return filter_select(r, n, v, sc, name_is(n, "selectattr"), out);
        if (name_is(n, "map")) return filter_map(r, n, v, kw, out);
        return jr_err(r, n, GN_EINVAL, "Unknown ArrayValue filter: %.*s", (int)n->len, n->str);
    }
    return jr_err(r, n, GN_EINVAL, "Cannot apply filter \"%.*s\" to type: %s", (int)n->len, n->str, jv_type(v));
}
