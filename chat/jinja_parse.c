/* jinja_parse.c — preprocessing, lexer and parser of the Jinja subset.
 *
 * Mirrors @huggingface/jinja's lexer.ts and parser.ts (the reference the
 * fixtures come from) so that the same template text gives the same tree:
 * the trim_blocks / lstrip_blocks preprocessing is the same textual rewrite,
 * the operator precedence is the same (filters bind tighter than `is`, which
 * binds tighter than * and +, `in` sits with the comparisons). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "jinja_internal.h"

#define MAX_DEPTH 256

enum tok {
    T_EOF, T_TEXT, T_NUM, T_STR, T_IDENT, T_EQUALS, T_LPAREN, T_RPAREN, T_OSTMT, T_CSTMT,
    T_OEXPR, T_CEXPR, T_LBRACK, T_RBRACK, T_LBRACE, T_RBRACE, T_COMMA, T_DOT, T_COLON,
    T_PIPE, T_ADD, T_MUL, T_POW, T_CMP, T_UNARY, T_COMMENT,
};

typedef struct {
    int type;
    const char *s;
    size_t len;
    size_t pos; /* offset in the original template */
} token;

typedef struct {
    gn_jinja *t;
    gn_err *err;
    int failed;
    /* preprocessed text and its map back to original offsets */
    char *p;
    size_t *map;
    size_t pl;
    token *toks;
    int ntok, captok;
    int cur;
    int depth;
} P;

static void *perr(P *p, size_t pos, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void *perr(P *p, size_t pos, int code, const char *fmt, ...) {
    if (p->failed) return NULL;
    p->failed = 1;
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    gn_jinja_linecol(p->t->src, p->t->src_len, pos, &line, &col);
    gn_errf(p->err, code, "chat template line %d, column %d: %s", line, col, msg);
    return NULL;
}

static void *poom(P *p) {
    if (!p->failed) {
        p->failed = 1;
        gn_errf(p->err, GN_ENOMEM, "chat template: out of memory");
    }
    return NULL;
}

/* ---- preprocessing (lexer.ts preprocess) ---- */

static int is_line_start(const char *s, size_t i) {
    if (i == 0) return 1;
    unsigned char c = (unsigned char)s[i - 1];
    if (c == '\n' || c == '\r') return 1;
    if (i >= 3 && (unsigned char)s[i - 3] == 0xE2 && (unsigned char)s[i - 2] == 0x80 &&
        (c == 0xA8 || c == 0xA9))
        return 1;
    return 0;
}

/* Whitespace as JavaScript's \s at byte offset i; returns its length or 0. */
static int ws_at(const char *s, size_t len, size_t i) {
    if (i >= len) return 0;
    uint32_t cp;
    int n = ju_decode(s, len, i, &cp);
    return ju_is_space(cp) ? n : 0;
}

/* {%(-?)\s*(?:end)?generation\s*(-?)%} at i; *e is the offset after it. */
static int generation_tag(const char *s, size_t n, size_t i, size_t *e, size_t *lflag, size_t *rflag) {
    size_t k = i + 2;
    int w;
    *lflag = k < n && s[k] == '-';
    if (*lflag) k++;
    while ((w = ws_at(s, n, k))) k += (size_t)w;
    if (k + 3 <= n && !memcmp(s + k, "end", 3)) k += 3;
    if (k + 10 > n || memcmp(s + k, "generation", 10)) return 0;
    k += 10;
    while ((w = ws_at(s, n, k))) k += (size_t)w;
    *rflag = k < n && s[k] == '-';
    if (*rflag) k++;
    if (k + 2 > n || s[k] != '%' || s[k + 1] != '}') return 0;
    *e = k + 2;
    return 1;
}

static int preprocess(P *p, const char *src, size_t len) {
    if (len && src[len - 1] == '\n') len--;
    char *a = gn_malloc(len + 4), *b = gn_malloc(len + 4);
    size_t *am = gn_malloc((len + 1) * sizeof *am), *bm = gn_malloc((len + 1) * sizeof *bm);
    if (!a || !b || !am || !bm) {
        gn_free(a), gn_free(b), gn_free(am), gn_free(bm);
        poom(p);
        return -1;
    }
    /* lstrip_blocks: ^[ \t]*({[#%-]) in multiline mode */
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (is_line_start(src, i)) {
            size_t j = i;
            while (j < len && (src[j] == ' ' || src[j] == '\t')) j++;
            if (j > i && j + 1 < len && src[j] == '{' &&
                (src[j + 1] == '#' || src[j + 1] == '%' || src[j + 1] == '-')) {
                i = j;
                continue;
            }
        }
        a[n] = src[i];
        am[n] = i;
        n++;
        i++;
    }
    /* trim_blocks: ([#%-]})\n */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        b[m] = a[i];
        bm[m] = am[i];
        m++;
        if (a[i] == '}' && i >= 1 && (a[i - 1] == '#' || a[i - 1] == '%' || a[i - 1] == '-') &&
            i + 1 < n && a[i + 1] == '\n' && m >= 2)
            i++;
    }
    bm[m] = len;
    b[m] = b[m + 1] = b[m + 2] = 0;
    /* transformers' {% generation %} / {% endgeneration %} markers:
     * (\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*) -> the whitespace around
     * them is kept unless the tag's side has a '-'. Written back into a. */
    size_t o = 0, last_end = 0;
    for (size_t i = 0; i < m;) {
        size_t e, lflag, rflag;
        if (b[i] == '{' && b[i + 1] == '%' && generation_tag(b, m, i, &e, &lflag, &rflag)) {
            if (lflag) { /* drop the whitespace just copied, back to the last match */
                size_t ws = i;
                for (;;) {
                    size_t st = ws;
                    if (st <= last_end) break;
                    st--;
                    while (st > last_end && (((unsigned char)b[st]) & 0xC0) == 0x80) st--;
                    uint32_t cp;
                    ju_decode(b, ws, st, &cp);
                    if (!ju_is_space(cp)) break;
                    ws = st;
                }
                o -= i - ws;
            }
            size_t aft = e;
            int w;
            while ((w = ws_at(b, m, aft))) aft += (size_t)w;
            if (!rflag)
                for (size_t k = e; k < aft; k++) a[o] = b[k], am[o] = bm[k], o++;
            i = last_end = aft;
            continue;
        }
        a[o] = b[i];
        am[o] = bm[i];
        o++;
        i++;
    }
    am[o] = len;
    a[o] = a[o + 1] = a[o + 2] = 0;
    gn_free(b);
    gn_free(bm);
    p->p = a;
    p->map = am;
    p->pl = o;
    return 0;
}

/* ---- lexer (lexer.ts tokenize) ---- */

static int push_tok(P *p, int type, const char *s, size_t len, size_t ppos) {
    if (p->ntok + 1 >= p->captok) {
        int nc = p->captok ? p->captok * 2 : 256;
        token *nt = gn_realloc(p->toks, (size_t)nc * sizeof *nt);
        if (!nt) {
            poom(p);
            return -1;
        }
        p->toks = nt;
        p->captok = nc;
    }
    token *t = &p->toks[p->ntok++];
    t->type = type;
    t->s = s;
    t->len = len;
    t->pos = p->map[ppos < p->pl ? ppos : p->pl];
    return 0;
}

static int last_type(P *p) { return p->ntok ? p->toks[p->ntok - 1].type : -1; }

static int is_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static void strip_trailing_ws(P *p) {
    if (!p->ntok) return;
    token *t = &p->toks[p->ntok - 1];
    if (t->type != T_TEXT) return;
    /* trimEnd: walk back over whitespace code points */
    size_t end = t->len;
    for (;;) {
        size_t st = end;
        if (!st) break;
        st--;
        while (st > 0 && (((unsigned char)t->s[st]) & 0xC0) == 0x80) st--;
        uint32_t cp;
        ju_decode(t->s, end, st, &cp);
        if (!ju_is_space(cp)) break;
        end = st;
    }
    t->len = end;
    if (!end) p->ntok--;
}

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

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A quoted string starting after the quote at *ip; escapes decoded. */
static int lex_string(P *p, size_t *ip, char q) {
    const char *s = p->p;
    size_t i = *ip, start = i - 1, j = i;
    while (j < p->pl && s[j] != q) j += s[j] == '\\' ? 2 : 1;
    char *o = ja_alloc(&p->t->arena, (j < p->pl ? j : p->pl) - i + 1);
    if (!o) return poom(p), -1;
    size_t n = 0;
    uint32_t pending_hi = 0;
    while (i < p->pl && s[i] != q) {
        if (s[i] == '\\') {
            i++;
            if (i >= p->pl) break;
            char e = s[i++];
            if (e == 'x' || e == 'u') {
                int L = e == 'x' ? 2 : 4;
                uint32_t v = 0;
                for (int k = 0; k < L; k++) {
                    int h = i + (size_t)k < p->pl ? hexval(s[i + (size_t)k]) : -1;
                    if (h < 0) return perr(p, p->map[i - 2], GN_EFORMAT, "invalid \\%c escape", e), -1;
                    v = v * 16 + (uint32_t)h;
                }
                i += (size_t)L;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    pending_hi = v;
                    continue;
                }
                if (v >= 0xDC00 && v <= 0xDFFF) {
                    if (!pending_hi)
                        return perr(p, p->map[i - 6], GN_EUNSUP, "lone surrogate escape in string"), -1;
                    v = 0x10000 + ((pending_hi - 0xD800) << 10) + (v - 0xDC00);
                    pending_hi = 0;
                }
                if (pending_hi) return perr(p, p->map[i - 6], GN_EUNSUP, "lone surrogate escape in string"), -1;
                n += (size_t)utf8_put(o + n, v);
                continue;
            }
            if (pending_hi) return perr(p, p->map[i - 2], GN_EUNSUP, "lone surrogate escape in string"), -1;
            char r;
            switch (e) {
            case 'n': r = '\n'; break;
            case 't': r = '\t'; break;
            case 'r': r = '\r'; break;
            case 'b': r = '\b'; break;
            case 'f': r = '\f'; break;
            case 'v': r = '\v'; break;
            case '\'': r = '\''; break;
            case '"': r = '"'; break;
            case '\\': r = '\\'; break;
            default:
                return perr(p, p->map[i - 2], GN_EFORMAT, "unexpected escaped character '%c'", e), -1;
            }
            o[n++] = r;
            continue;
        }
        if (pending_hi) return perr(p, p->map[i], GN_EUNSUP, "lone surrogate escape in string"), -1;
        o[n++] = s[i++];
    }
    if (pending_hi) return perr(p, p->map[i < p->pl ? i : p->pl], GN_EUNSUP, "lone surrogate escape in string"), -1;
    if (i >= p->pl) return perr(p, p->map[start], GN_EFORMAT, "unterminated string literal"), -1;
    o[n] = 0;
    if (push_tok(p, T_STR, o, n, start)) return -1;
    *ip = i + 1;
    return 0;
}

static int lex(P *p) {
    const char *s = p->p;
    size_t L = p->pl, i = 0;
    int curly = 0;
    while (i < L) {
        int lt = last_type(p);
        if (lt == -1 || lt == T_CSTMT || lt == T_CEXPR || lt == T_COMMENT) {
            size_t st = i;
            while (i < L && !(s[i] == '{' && (s[i + 1] == '%' || s[i + 1] == '{' || s[i + 1] == '#'))) i++;
            if (i > st) {
                if (push_tok(p, T_TEXT, s + st, i - st, st)) return -1;
                continue;
            }
        }
        if (s[i] == '{' && s[i + 1] == '#') {
            size_t st = i;
            i += 2;
            int strip_before = s[i] == '-';
            if (strip_before) i++;
            size_t cs = i;
            while (!(s[i] == '#' && s[i + 1] == '}')) {
                if (i + 2 >= L) return perr(p, p->map[st], GN_EFORMAT, "missing end of comment tag"), -1;
                i++;
            }
            int strip_after = i > cs && s[i - 1] == '-';
            if (strip_before) strip_trailing_ws(p);
            if (push_tok(p, T_COMMENT, s + cs, i - cs, st)) return -1;
            i += 2;
            if (strip_after) {
                int w;
                while ((w = ws_at(s, L, i))) i += (size_t)w;
            }
            continue;
        }
        if (s[i] == '{' && s[i + 1] == '%' && s[i + 2] == '-') {
            strip_trailing_ws(p);
            if (push_tok(p, T_OSTMT, "{%", 2, i)) return -1;
            i += 3;
            continue;
        }
        if (s[i] == '{' && s[i + 1] == '{' && s[i + 2] == '-') {
            strip_trailing_ws(p);
            if (push_tok(p, T_OEXPR, "{{", 2, i)) return -1;
            curly = 0;
            i += 3;
            continue;
        }
        {
            int w, any = 0;
            while ((w = ws_at(s, L, i))) i += (size_t)w, any = 1;
            if (any && i >= L) return perr(p, p->map[L], GN_EFORMAT, "unexpected end of template"), -1;
        }
        if (s[i] == '-' && s[i + 1] == '%' && s[i + 2] == '}') {
            if (push_tok(p, T_CSTMT, "%}", 2, i)) return -1;
            i += 3;
            int w;
            while ((w = ws_at(s, L, i))) i += (size_t)w;
            continue;
        }
        if (s[i] == '-' && s[i + 1] == '}' && s[i + 2] == '}') {
            if (push_tok(p, T_CEXPR, "}}", 2, i)) return -1;
            i += 3;
            int w;
            while ((w = ws_at(s, L, i))) i += (size_t)w;
            continue;
        }
        char c = s[i];
        if (c == '-' || c == '+') {
            int t = last_type(p);
            if (t == T_TEXT || t == -1) return perr(p, p->map[i], GN_EFORMAT, "unexpected character '%c'", c), -1;
            if (!(t == T_IDENT || t == T_NUM || t == T_STR || t == T_RPAREN || t == T_RBRACK)) {
                size_t st = i++;
                size_t ds = i;
                while (i < L && is_digit(s[i])) i++;
                if (i > ds && s[i] == '.' && is_digit(s[i + 1])) {
                    i++;
                    while (i < L && is_digit(s[i])) i++;
                }
                if (i > ds) {
                    if (push_tok(p, T_NUM, s + st, i - st, st)) return -1;
                } else {
                    if (push_tok(p, T_UNARY, s + st, 1, st)) return -1;
                }
                continue;
            }
        }
        static const struct { const char *seq; int type; } table[] = {
            {"{%", T_OSTMT}, {"%}", T_CSTMT}, {"{{", T_OEXPR}, {"}}", T_CEXPR},
            {"(", T_LPAREN}, {")", T_RPAREN}, {"{", T_LBRACE}, {"}", T_RBRACE},
            {"[", T_LBRACK}, {"]", T_RBRACK}, {",", T_COMMA}, {".", T_DOT}, {":", T_COLON},
            {"|", T_PIPE}, {"<=", T_CMP}, {">=", T_CMP}, {"==", T_CMP}, {"!=", T_CMP},
            {"<", T_CMP}, {">", T_CMP}, {"+", T_ADD}, {"-", T_ADD}, {"~", T_ADD},
            {"**", T_POW}, {"*", T_MUL}, {"//", T_MUL}, {"/", T_MUL}, {"%", T_MUL}, {"=", T_EQUALS},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) {
            if (table[k].type == T_CEXPR && curly > 0) continue;
            size_t sl = strlen(table[k].seq);
            if (i + sl <= L && !memcmp(s + i, table[k].seq, sl)) {
                if (push_tok(p, table[k].type, table[k].seq, sl, i)) return -1;
                if (table[k].type == T_OEXPR) curly = 0;
                else if (table[k].type == T_LBRACE) curly++;
                else if (table[k].type == T_RBRACE) curly--;
                i += sl;
                matched = 1;
                break;
            }
        }
        if (matched) continue;
        if (c == '\'' || c == '"') {
            i++;
            if (lex_string(p, &i, c)) return -1;
            continue;
        }
        if (is_digit(c)) {
            size_t st = i;
            while (i < L && is_digit(s[i])) i++;
            if (last_type(p) != T_DOT && s[i] == '.' && is_digit(s[i + 1])) {
                i++;
                while (i < L && is_digit(s[i])) i++;
            }
            if (i >= L) return perr(p, p->map[L], GN_EFORMAT, "unexpected end of template"), -1;
            if (push_tok(p, T_NUM, s + st, i - st, st)) return -1;
            continue;
        }
        if (is_word(c)) {
            size_t st = i;
            while (i < L && is_word(s[i])) i++;
            if (i >= L) return perr(p, p->map[L], GN_EFORMAT, "unexpected end of template"), -1;
            if (push_tok(p, T_IDENT, s + st, i - st, st)) return -1;
            continue;
        }
        return perr(p, p->map[i], GN_EFORMAT, "unexpected character '%c'", c), -1;
    }
    return push_tok(p, T_EOF, "", 0, L);
}

/* ---- parser (parser.ts) ---- */

static token *tk(P *p, int off) {
    int i = p->cur + off;
    if (i >= p->ntok) i = p->ntok - 1;
    return &p->toks[i];
}
static int is1(P *p, int type) { return tk(p, 0)->type == type; }
static int tok_is(const token *t, const char *name) {
    return t->type == T_IDENT && t->len == strlen(name) && !memcmp(t->s, name, t->len);
}
static int is_ident(P *p, const char *name) { return tok_is(tk(p, 0), name); }
static int is_stmt(P *p, const char *name) { return is1(p, T_OSTMT) && tok_is(tk(p, 1), name); }

static const char *tok_desc(int type) {
    static const char *names[] = {
        "end of template", "text", "number", "string", "identifier", "'='", "'('", "')'",
        "'{%'", "'%}'", "'{{'", "'}}'", "'['", "']'", "'{'", "'}'", "','", "'.'", "':'",
        "'|'", "operator", "operator", "'**'", "comparison", "operator", "comment",
    };
    return type >= 0 && type < (int)(sizeof names / sizeof names[0]) ? names[type] : "token";
}

static int expect(P *p, int type, const char *what) {
    token *t = tk(p, 0);
    if (t->type != type) {
        perr(p, t->pos, GN_EFORMAT, "expected %s, got %s", what, tok_desc(t->type));
        return -1;
    }
    p->cur++;
    return 0;
}

static int expect_ident(P *p, const char *name) {
    if (!is_ident(p, name)) {
        perr(p, tk(p, 0)->pos, GN_EFORMAT, "expected '%s'", name);
        return -1;
    }
    p->cur++;
    return 0;
}

static jnode *nn(P *p, int kind, size_t pos) {
    jnode *n = ja_alloc(&p->t->arena, sizeof *n);
    if (!n) return poom(p);
    n->kind = kind;
    n->pos = pos;
    return n;
}

/* Computes n's height and refuses trees deeper than MAX_DEPTH (the evaluator
 * recurses along it). */
static jnode *fin(P *p, jnode *n) {
    if (!n) return NULL;
    int d = 0;
    jnode *kids[3] = {n->a, n->b, n->c};
    for (int i = 0; i < 3; i++)
        if (kids[i] && kids[i]->depth > d) d = kids[i]->depth;
    for (int i = 0; i < n->n; i++)
        if (n->list[i] && n->list[i]->depth > d) d = n->list[i]->depth;
    for (int i = 0; i < n->n2; i++)
        if (n->list2[i] && n->list2[i]->depth > d) d = n->list2[i]->depth;
    n->depth = d + 1;
    if (n->depth > MAX_DEPTH)
        return perr(p, n->pos, GN_ERANGE, "template nested too deeply (more than %d levels)", MAX_DEPTH);
    return n;
}

typedef struct { jnode **v; int n, cap; } nvec;

static int nv_push(P *p, nvec *v, jnode *x) {
    if (!x) return -1;
    if (v->n == v->cap) {
        int nc = v->cap ? v->cap * 2 : 8;
        jnode **nv = ja_alloc(&p->t->arena, (size_t)nc * sizeof *nv);
        if (!nv) return poom(p), -1;
        if (v->n) memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = x;
    return 0;
}

static jnode *parse_any(P *p);
static jnode *parse_expr(P *p);
static jnode *parse_primary(P *p);

static int enter(P *p) {
    if (++p->depth > MAX_DEPTH) {
        perr(p, tk(p, 0)->pos, GN_ERANGE, "template nested too deeply (more than %d levels)", MAX_DEPTH);
        return -1;
    }
    return 0;
}
#define LEAVE(p, x) do { jnode *r_ = (x); (p)->depth--; return r_; } while (0)

/* Parses statements until one of the names (NULL-terminated) opens a tag. */
static int parse_body(P *p, nvec *v, const char *const *names, const char *what) {
    for (;;) {
        if (is1(p, T_EOF)) {
            perr(p, tk(p, 0)->pos, GN_EFORMAT, "missing %s", what);
            return -1;
        }
        for (int i = 0; names[i]; i++)
            if (is_stmt(p, names[i])) return 0;
        if (nv_push(p, v, parse_any(p))) return -1;
    }
}

static int in_list(const token *t, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (tok_is(t, names[i])) return 1;
    return 0;
}

/* Names are not checked here: like the reference, an unknown filter, test,
 * function or method is an error only when the template reaches it (Llama
 * 3.1's template, for one, names a filter neither engine has in a branch
 * plain conversations never take). Everything the reference implements is
 * implemented; only the statements it has and this interpreter lacks (macro,
 * call and filter blocks) and argument unpacking are refused here. */

static jnode *parse_args(P *p, nvec *v) {
    if (expect(p, T_LPAREN, "'(' to open the argument list")) return NULL;
    int saw_kw = 0;
    while (!is1(p, T_RPAREN)) {
        if (is1(p, T_EOF)) return perr(p, tk(p, 0)->pos, GN_EFORMAT, "missing ')'");
        if (is1(p, T_POW) || (is1(p, T_MUL) && tk(p, 0)->s[0] == '*'))
            return perr(p, tk(p, 0)->pos, GN_EUNSUP, "argument unpacking (* / **) is not supported");
        size_t pos = tk(p, 0)->pos;
        jnode *arg = parse_expr(p);
        if (!arg) return NULL;
        if (is1(p, T_EQUALS)) {
            p->cur++;
            if (arg->kind != N_IDENT) return perr(p, pos, GN_EFORMAT, "expected identifier for keyword argument");
            jnode *kw = nn(p, N_KWARG, pos);
            if (!kw) return NULL;
            kw->str = arg->str;
            kw->len = arg->len;
            if (!(kw->a = parse_expr(p))) return NULL;
            arg = fin(p, kw);
            saw_kw = 1;
        } else if (saw_kw) {
            return perr(p, pos, GN_EFORMAT, "positional arguments must come before keyword arguments");
        }
        if (nv_push(p, v, arg)) return NULL;
        if (is1(p, T_COMMA)) p->cur++;
    }
    p->cur++;
    return (jnode *)1;
}

static jnode *parse_call(P *p, jnode *callee) {
    size_t pos = tk(p, 0)->pos;
    jnode *n = nn(p, N_CALL, pos);
    if (!n) return NULL;
    n->a = callee;
    nvec args = {0};
    if (!parse_args(p, &args)) return NULL;
    n->list = args.v;
    n->n = args.n;
    return fin(p, n);
}

static jnode *parse_member(P *p, jnode *obj) {
    while (obj && (is1(p, T_DOT) || is1(p, T_LBRACK))) {
        token *op = tk(p, 0);
        p->cur++;
        jnode *m = nn(p, N_MEMBER, op->pos);
        if (!m) return NULL;
        m->a = obj;
        if (op->type == T_LBRACK) {
            m->flag = 1;
            jnode *sl[3] = {0};
            int ns = 0, is_slice = 0;
            while (!is1(p, T_RBRACK)) {
                if (is1(p, T_EOF)) return perr(p, op->pos, GN_EFORMAT, "missing ']'");
                if (ns >= 3) return perr(p, op->pos, GN_EFORMAT, "expected 0-3 arguments for slice expression");
                if (is1(p, T_COLON)) {
                    sl[ns++] = NULL;
                    p->cur++;
                    is_slice = 1;
                } else {
                    if (!(sl[ns++] = parse_expr(p))) return NULL;
                    if (is1(p, T_COLON)) {
                        p->cur++;
                        is_slice = 1;
                    }
                }
            }
            if (ns == 0)
                return perr(p, op->pos, GN_EFORMAT, "expected at least one argument for member/slice expression");
            if (is_slice) {
                jnode *s = nn(p, N_SLICE, op->pos);
                if (!s) return NULL;
                s->a = sl[0];
                s->b = ns > 1 ? sl[1] : NULL;
                s->c = ns > 2 ? sl[2] : NULL;
                if (!(m->b = fin(p, s))) return NULL;
            } else {
                m->b = sl[0];
            }
            if (expect(p, T_RBRACK, "']'")) return NULL;
        } else {
            jnode *prop = parse_primary(p);
            if (!prop) return NULL;
            if (prop->kind != N_IDENT && prop->kind != N_INT)
                return perr(p, prop->pos, GN_EFORMAT, "expected identifier or integer following '.'");
            m->b = prop;
        }
        obj = fin(p, m);
    }
    return obj;
}

static jnode *parse_call_member(P *p) {
    jnode *m = parse_member(p, parse_primary(p));
    while (m && is1(p, T_LPAREN)) m = parse_member(p, parse_call(p, m));
    return m;
}

static jnode *parse_unary_sign(P *p) {
    token *t = tk(p, 0);
    if ((t->type == T_UNARY || t->type == T_ADD) && (t->s[0] == '-' || t->s[0] == '+') && t->len == 1) {
        if (enter(p)) return NULL;
        p->cur++;
        jnode *n = nn(p, N_UNARY, t->pos);
        if (!n) LEAVE(p, NULL);
        n->op = t->s[0] == '-' ? OP_NEG : OP_POS;
        n->a = parse_unary_sign(p);
        LEAVE(p, n->a ? fin(p, n) : NULL);
    }
    return parse_call_member(p);
}

static jnode *parse_filter_expr(P *p) {
    jnode *x = parse_unary_sign(p);
    while (x && is1(p, T_PIPE)) {
        p->cur++;
        token *name = tk(p, 0);
        if (name->type != T_IDENT) return perr(p, name->pos, GN_EFORMAT, "expected identifier for the filter");
        p->cur++;
        jnode *f = nn(p, N_FILTER, name->pos);
        if (!f) return NULL;
        f->a = x;
        f->str = name->s;
        f->len = name->len;
        if (is1(p, T_LPAREN)) {
            nvec args = {0};
            if (!parse_args(p, &args)) return NULL;
            f->list = args.v;
            f->n = args.n;
            f->flag = 1;
            if (is1(p, T_DOT) || is1(p, T_LBRACK) || is1(p, T_LPAREN)) {
                /* `x|f(a).b` parses there but always fails when run: same here */
                jnode *m = parse_member(p, f);
                while (m && is1(p, T_LPAREN)) m = parse_member(p, parse_call(p, m));
                if (!m) return NULL;
                f->flag = 2;
            }
        }
        x = fin(p, f);
    }
    return x;
}

static jnode *parse_test_expr(P *p) {
    jnode *x = parse_filter_expr(p);
    while (x && is_ident(p, "is")) {
        p->cur++;
        int neg = 0;
        if (is_ident(p, "not")) {
            p->cur++;
            neg = 1;
        }
        token *name = tk(p, 0);
        if (name->type != T_IDENT) return perr(p, name->pos, GN_EFORMAT, "expected identifier for the test");
        p->cur++;
        jnode *n = nn(p, N_TEST, name->pos);
        if (!n) return NULL;
        n->a = x;
        n->flag = neg;
        n->str = name->s;
        n->len = name->len;
        x = fin(p, n);
    }
    return x;
}

static jnode *binary(P *p, int op, size_t pos, jnode *l, jnode *r) {
    if (!l || !r) return NULL;
    jnode *n = nn(p, N_BINARY, pos);
    if (!n) return NULL;
    n->op = op;
    n->a = l;
    n->b = r;
    return fin(p, n);
}

static jnode *parse_pow(P *p) {
    jnode *l = parse_test_expr(p);
    while (l && is1(p, T_POW)) {
        size_t pos = tk(p, 0)->pos;
        p->cur++;
        l = binary(p, OP_POW, pos, l, parse_test_expr(p));
    }
    return l;
}

static jnode *parse_mul(P *p) {
    jnode *l = parse_pow(p);
    while (l && is1(p, T_MUL)) {
        token *t = tk(p, 0);
        p->cur++;
        int op = t->s[0] == '*' ? OP_MUL : t->len == 2 ? OP_FLOORDIV : t->s[0] == '/' ? OP_DIV : OP_MOD;
        l = binary(p, op, t->pos, l, parse_pow(p));
    }
    return l;
}

static jnode *parse_add(P *p) {
    jnode *l = parse_mul(p);
    while (l && is1(p, T_ADD)) {
        token *t = tk(p, 0);
        p->cur++;
        int op = t->s[0] == '+' ? OP_ADD : t->s[0] == '-' ? OP_SUB : OP_CONCAT;
        l = binary(p, op, t->pos, l, parse_mul(p));
    }
    return l;
}

static jnode *parse_cmp(P *p) {
    jnode *l = parse_add(p);
    while (l) {
        token *t = tk(p, 0);
        int op;
        if (is_ident(p, "not") && tok_is(tk(p, 1), "in")) {
            op = OP_NOTIN;
            p->cur += 2;
        } else if (is_ident(p, "in")) {
            op = OP_IN;
            p->cur++;
        } else if (t->type == T_CMP) {
            p->cur++;
            op = t->s[0] == '=' ? OP_EQ : t->s[0] == '!' ? OP_NE : t->s[0] == '<' ? (t->len == 2 ? OP_LE : OP_LT)
                                                                  : (t->len == 2 ? OP_GE : OP_GT);
        } else {
            break;
        }
        l = binary(p, op, t->pos, l, parse_add(p));
    }
    return l;
}

static jnode *parse_not(P *p) {
    if (is_ident(p, "not")) {
        if (enter(p)) return NULL;
        size_t pos = tk(p, 0)->pos;
        p->cur++;
        jnode *n = nn(p, N_UNARY, pos);
        if (!n) LEAVE(p, NULL);
        n->op = OP_NOT;
        n->a = parse_not(p);
        LEAVE(p, n->a ? fin(p, n) : NULL);
    }
    return parse_cmp(p);
}

static jnode *parse_and(P *p) {
    jnode *l = parse_not(p);
    while (l && is_ident(p, "and")) {
        size_t pos = tk(p, 0)->pos;
        p->cur++;
        l = binary(p, OP_AND, pos, l, parse_not(p));
    }
    return l;
}

static jnode *parse_or(P *p) {
    jnode *l = parse_and(p);
    while (l && is_ident(p, "or")) {
        size_t pos = tk(p, 0)->pos;
        p->cur++;
        l = binary(p, OP_OR, pos, l, parse_and(p));
    }
    return l;
}

static jnode *parse_expr(P *p) {
    if (enter(p)) return NULL;
    jnode *a = parse_or(p);
    if (a && is_ident(p, "if")) {
        size_t pos = tk(p, 0)->pos;
        p->cur++;
        jnode *test = parse_or(p);
        if (!test) LEAVE(p, NULL);
        if (is_ident(p, "else")) {
            p->cur++;
            jnode *n = nn(p, N_TERNARY, pos);
            if (!n) LEAVE(p, NULL);
            n->a = test;
            n->b = a;
            n->c = parse_expr(p);
            LEAVE(p, n->c ? fin(p, n) : NULL);
        }
        jnode *n = nn(p, N_SELECT, pos);
        if (!n) LEAVE(p, NULL);
        n->a = a;
        n->b = test;
        LEAVE(p, fin(p, n));
    }
    LEAVE(p, a);
}

/* expr (, expr)* -> a tuple when there is a comma */
static jnode *parse_expr_seq(P *p, int primary) {
    size_t pos = tk(p, 0)->pos;
    jnode *first = primary ? parse_primary(p) : parse_expr(p);
    if (!first || !is1(p, T_COMMA)) return first;
    nvec v = {0};
    if (nv_push(p, &v, first)) return NULL;
    while (is1(p, T_COMMA)) {
        p->cur++;
        if (nv_push(p, &v, primary ? parse_primary(p) : parse_expr(p))) return NULL;
    }
    jnode *t = nn(p, N_TUPLE, pos);
    if (!t) return NULL;
    t->list = v.v;
    t->n = v.n;
    return fin(p, t);
}

static double parse_number(const token *t) {
    char buf[64];
    size_t n = t->len < sizeof buf - 1 ? t->len : sizeof buf - 1;
    memcpy(buf, t->s, n);
    buf[n] = 0;
    return strtod(buf, NULL);
}

static jnode *parse_primary(P *p) {
    if (enter(p)) return NULL;
    token *t = tk(p, 0);
    p->cur++;
    jnode *n;
    switch (t->type) {
    case T_NUM:
        if (!(n = nn(p, memchr(t->s, '.', t->len) ? N_FLOAT : N_INT, t->pos))) LEAVE(p, NULL);
        n->num = parse_number(t);
        LEAVE(p, fin(p, n));
    case T_STR: {
        if (!(n = nn(p, N_STR, t->pos))) LEAVE(p, NULL);
        if (!is1(p, T_STR)) {
            n->str = t->s;
            n->len = t->len;
            LEAVE(p, fin(p, n));
        }
        size_t total = t->len;
        for (int k = 0; tk(p, k)->type == T_STR; k++) total += tk(p, k)->len;
        char *s = ja_alloc(&p->t->arena, total + 1);
        if (!s) LEAVE(p, poom(p));
        memcpy(s, t->s, t->len);
        size_t o = t->len;
        while (is1(p, T_STR)) {
            memcpy(s + o, tk(p, 0)->s, tk(p, 0)->len);
            o += tk(p, 0)->len;
            p->cur++;
        }
        n->str = s;
        n->len = o;
        LEAVE(p, fin(p, n));
    }
    case T_IDENT:
        if (!(n = nn(p, N_IDENT, t->pos))) LEAVE(p, NULL);
        n->str = t->s;
        n->len = t->len;
        LEAVE(p, fin(p, n));
    case T_LPAREN:
        n = parse_expr_seq(p, 0);
        if (!n || expect(p, T_RPAREN, "')'")) LEAVE(p, NULL);
        LEAVE(p, n);
    case T_LBRACK: {
        nvec v = {0};
        while (!is1(p, T_RBRACK)) {
            if (is1(p, T_EOF)) LEAVE(p, perr(p, t->pos, GN_EFORMAT, "missing ']'"));
            if (nv_push(p, &v, parse_expr(p))) LEAVE(p, NULL);
            if (is1(p, T_COMMA)) p->cur++;
        }
        p->cur++;
        if (!(n = nn(p, N_ARRAY, t->pos))) LEAVE(p, NULL);
        n->list = v.v;
        n->n = v.n;
        LEAVE(p, fin(p, n));
    }
    case T_LBRACE: {
        nvec v = {0};
        while (!is1(p, T_RBRACE)) {
            if (is1(p, T_EOF)) LEAVE(p, perr(p, t->pos, GN_EFORMAT, "missing '}'"));
            if (nv_push(p, &v, parse_expr(p))) LEAVE(p, NULL);
            if (expect(p, T_COLON, "':' between key and value")) LEAVE(p, NULL);
            if (nv_push(p, &v, parse_expr(p))) LEAVE(p, NULL);
            if (is1(p, T_COMMA)) p->cur++;
        }
        p->cur++;
        if (!(n = nn(p, N_OBJECT, t->pos))) LEAVE(p, NULL);
        n->list = v.v;
        n->n = v.n;
        LEAVE(p, fin(p, n));
    }
    default:
        LEAVE(p, perr(p, t->pos, GN_EFORMAT, "unexpected %s", tok_desc(t->type)));
    }
}

static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_ENDIF[] = {"endif", NULL};
static const char *const END_FOR[] = {"endfor", "else", NULL};
static const char *const END_ENDFOR[] = {"endfor", NULL};
static const char *const END_SET[] = {"endset", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};

/* The reference binds varargs/kwargs only for macros that read them, and
 * caller only in call blocks; such macros are not supported here. */
static int uses_special(const jnode *n) {
    if (!n) return 0;
    if (n->kind == N_IDENT && ((n->len == 6 && (!memcmp(n->str, "kwargs", 6) || !memcmp(n->str, "caller", 6))) ||
                               (n->len == 7 && !memcmp(n->str, "varargs", 7))))
        return 1;
    if (uses_special(n->a) || uses_special(n->b) || uses_special(n->c)) return 1;
    for (int i = 0; i < n->n; i++)
        if (uses_special(n->list[i])) return 1;
    for (int i = 0; i < n->n2; i++)
        if (uses_special(n->list2[i])) return 1;
    return 0;
}

/* After `{% if` / `{% elif`: the test, the body and the alternates. */
static jnode *parse_if(P *p, size_t pos) {
    if (enter(p)) return NULL;
    jnode *n = nn(p, N_IF, pos);
    if (!n || !(n->a = parse_expr(p)) || expect(p, T_CSTMT, "'%}'")) LEAVE(p, NULL);
    nvec body = {0}, alt = {0};
    if (parse_body(p, &body, END_IF, "{% endif %}")) LEAVE(p, NULL);
    if (is_stmt(p, "elif")) {
        size_t epos = tk(p, 1)->pos;
        p->cur += 2;
        if (nv_push(p, &alt, parse_if(p, epos))) LEAVE(p, NULL);
    } else if (is_stmt(p, "else")) {
        p->cur += 2;
        if (expect(p, T_CSTMT, "'%}'")) LEAVE(p, NULL);
        if (parse_body(p, &alt, END_ENDIF, "{% endif %}")) LEAVE(p, NULL);
    }
    n->list = body.v;
    n->n = body.n;
    n->list2 = alt.v;
    n->n2 = alt.n;
    LEAVE(p, fin(p, n));
}

static int close_tag(P *p, const char *name) {
    if (expect(p, T_OSTMT, "'{%'") || expect_ident(p, name) || expect(p, T_CSTMT, "'%}'")) return -1;
    return 0;
}

static jnode *parse_stmt(P *p) {
    if (expect(p, T_OSTMT, "'{%'")) return NULL;
    token *name = tk(p, 0);
    if (name->type != T_IDENT) return perr(p, name->pos, GN_EFORMAT, "unknown statement, got %s", tok_desc(name->type));
    p->cur++;
    if (tok_is(name, "set")) {
        jnode *n = nn(p, N_SET, name->pos);
        if (!n || !(n->a = parse_expr_seq(p, 0))) return NULL;
        if (n->a->kind != N_IDENT && n->a->kind != N_TUPLE && n->a->kind != N_MEMBER)
            return perr(p, n->a->pos, GN_EFORMAT, "invalid assignment target");
        if (is1(p, T_EQUALS)) {
            p->cur++;
            if (!(n->b = parse_expr_seq(p, 0))) return NULL;
        } else {
            nvec body = {0};
            if (expect(p, T_CSTMT, "'%}'") || parse_body(p, &body, END_SET, "{% endset %}")) return NULL;
            p->cur += 2;
            n->list = body.v;
            n->n = body.n;
        }
        if (expect(p, T_CSTMT, "'%}'")) return NULL;
        return fin(p, n);
    }
    if (tok_is(name, "if")) {
        jnode *n = parse_if(p, name->pos);
        if (!n || close_tag(p, "endif")) return NULL;
        return n;
    }
    if (tok_is(name, "for")) {
        if (enter(p)) return NULL;
        jnode *n = nn(p, N_FOR, name->pos);
        if (!n || !(n->a = parse_expr_seq(p, 1))) LEAVE(p, NULL);
        if (n->a->kind != N_IDENT && n->a->kind != N_TUPLE)
            LEAVE(p, perr(p, n->a->pos, GN_EFORMAT, "expected identifier/tuple for the loop variable"));
        if (n->a->kind == N_TUPLE)
            for (int i = 0; i < n->a->n; i++)
                if (n->a->list[i]->kind != N_IDENT)
                    LEAVE(p, perr(p, n->a->list[i]->pos, GN_EFORMAT, "loop variables must be identifiers"));
        if (!is_ident(p, "in")) LEAVE(p, perr(p, tk(p, 0)->pos, GN_EFORMAT, "expected 'in' after the loop variable"));
        p->cur++;
        if (!(n->b = parse_expr(p)) || expect(p, T_CSTMT, "'%}'")) LEAVE(p, NULL);
        nvec body = {0}, alt = {0};
        if (parse_body(p, &body, END_FOR, "{% endfor %}")) LEAVE(p, NULL);
        if (is_stmt(p, "else")) {
            p->cur += 2;
            if (expect(p, T_CSTMT, "'%}'") || parse_body(p, &alt, END_ENDFOR, "{% endfor %}")) LEAVE(p, NULL);
        }
        if (close_tag(p, "endfor")) LEAVE(p, NULL);
        n->list = body.v;
        n->n = body.n;
        n->list2 = alt.v;
        n->n2 = alt.n;
        LEAVE(p, fin(p, n));
    }
    if (tok_is(name, "macro")) {
        if (enter(p)) return NULL;
        token *mn = tk(p, 0);
        if (mn->type != T_IDENT)
            LEAVE(p, perr(p, mn->pos, GN_EFORMAT, "expected identifier following macro statement"));
        p->cur++;
        jnode *n = nn(p, N_MACRO, name->pos);
        if (!n) LEAVE(p, NULL);
        n->str = mn->s;
        n->len = mn->len;
        nvec params = {0}, body = {0};
        if (!parse_args(p, &params)) LEAVE(p, NULL);
        int saw_default = 0;
        for (int i = 0; i < params.n; i++) {
            jnode *a = params.v[i];
            if (a->kind != N_IDENT && a->kind != N_KWARG)
                LEAVE(p, perr(p, a->pos, GN_EFORMAT, "expected identifier for parameter declaration"));
            if (a->kind == N_KWARG) saw_default = 1;
            else if (saw_default)
                LEAVE(p, perr(p, a->pos, GN_EFORMAT, "non-default argument follows default argument"));
            for (int j = 0; j < i; j++)
                if (params.v[j]->len == a->len && !memcmp(params.v[j]->str, a->str, a->len))
                    LEAVE(p, perr(p, a->pos, GN_EFORMAT, "duplicate parameter name: %.*s", (int)a->len, a->str));
        }
        if (expect(p, T_CSTMT, "'%}'") || parse_body(p, &body, END_MACRO, "{% endmacro %}") ||
            close_tag(p, "endmacro"))
            LEAVE(p, NULL);
        n->list = params.v;
        n->n = params.n;
        n->list2 = body.v;
        n->n2 = body.n;
        if (uses_special(n)) LEAVE(p, perr(p, name->pos, GN_EUNSUP, "macro using varargs, kwargs or caller"));
        LEAVE(p, fin(p, n));
    }
    if (tok_is(name, "break") || tok_is(name, "continue")) {
        jnode *n = nn(p, tok_is(name, "break") ? N_BREAK : N_CONTINUE, name->pos);
        if (!n || expect(p, T_CSTMT, "'%}'")) return NULL;
        return fin(p, n);
    }
    static const char *const unsup[] = {"call", "filter", "generation", "include", "import",
                                        "from", "extends", "block", "raw", "with", "autoescape", NULL};
    if (in_list(name, unsup))
        return perr(p, name->pos, GN_EUNSUP, "unsupported statement '{%% %.*s %%}'", (int)name->len, name->s);
    return perr(p, name->pos, GN_EFORMAT, "unexpected statement '%.*s'", (int)name->len, name->s);
}

static jnode *parse_any(P *p) {
    if (enter(p)) return NULL;
    token *t = tk(p, 0);
    jnode *n;
    switch (t->type) {
    case T_COMMENT:
        p->cur++;
        LEAVE(p, fin(p, nn(p, N_COMMENT, t->pos)));
    case T_TEXT:
        p->cur++;
        if (!(n = nn(p, N_TEXT, t->pos))) LEAVE(p, NULL);
        if (!(n->str = ja_strndup(&p->t->arena, t->s, t->len))) LEAVE(p, poom(p));
        n->len = t->len;
        LEAVE(p, fin(p, n));
    case T_OSTMT:
        LEAVE(p, parse_stmt(p));
    case T_OEXPR:
        p->cur++;
        n = parse_expr(p);
        if (!n || expect(p, T_CEXPR, "'}}'")) LEAVE(p, NULL);
        LEAVE(p, n);
    default:
        LEAVE(p, perr(p, t->pos, GN_EFORMAT, "unexpected %s", tok_desc(t->type)));
    }
}

gn_jinja *gn_jinja_parse(const char *src, size_t len, gn_err *err) {
    if (!src) {
        gn_errf(err, GN_EINVAL, "chat template: NULL source");
        return NULL;
    }
    gn_jinja *t = gn_calloc(1, sizeof *t);
    if (!t) {
        gn_errf(err, GN_ENOMEM, "chat template: out of memory");
        return NULL;
    }
    P p = {.t = t, .err = err};
    if (!(t->src = gn_malloc(len + 1))) {
        poom(&p);
        goto fail;
    }
    memcpy(t->src, src, len);
    t->src[len] = 0;
    t->src_len = len;
    if (!ju_valid_utf8(src, len)) {
        gn_errf(err, GN_EFORMAT, "chat template: not valid UTF-8");
        goto fail;
    }
    if (preprocess(&p, src, len) || lex(&p)) goto fail;
    nvec body = {0};
    while (!is1(&p, T_EOF))
        if (nv_push(&p, &body, parse_any(&p))) goto fail;
    t->body = body.v;
    t->n_body = body.n;
    t->pre = p.p; /* identifiers and text point into it */
    gn_free(p.map);
    gn_free(p.toks);
    return t;
fail:
    if (!p.failed && err && !err->code) gn_errf(err, GN_EFORMAT, "chat template: parse failed");
    gn_free(p.p);
    gn_free(p.map);
    gn_free(p.toks);
    gn_jinja_free(t);
    return NULL;
}

void gn_jinja_free(gn_jinja *t) {
    if (!t) return;
    ja_free(&t->arena);
    gn_free(t->pre);
    gn_free(t->src);
    gn_free(t);
}
