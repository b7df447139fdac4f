/* jinja_internal.h — shared between the Jinja lexer/parser, the evaluator and
 * the value helpers. Not a public header. */
#ifndef GN_JINJA_INTERNAL_H
#define GN_JINJA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"
#include "jinja.h"

/* ---- arena: every AST node and every runtime value lives in one ---- */

typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
    jarena_chunk *head;
    size_t used_total; /* bytes handed out by gn_malloc for chunks */
    size_t cap;        /* 0 = unlimited */
    int over_cap;      /* set when cap refused an allocation */
} jarena;

void *ja_alloc(jarena *a, size_t n); /* zeroed, 16-byte aligned; NULL on failure */
char *ja_strndup(jarena *a, const char *s, size_t n);
void ja_free(jarena *a);

/* ---- AST ---- */

enum jnode_kind {
    N_TEXT, N_INT, N_FLOAT, N_STR, N_IDENT, N_ARRAY, N_TUPLE, N_OBJECT, N_MEMBER, N_SLICE,
    N_CALL, N_KWARG, N_UNARY, N_BINARY, N_FILTER, N_TEST, N_SELECT, N_TERNARY,
    N_IF, N_FOR, N_SET, N_BREAK, N_CONTINUE, N_COMMENT, N_MACRO,
};

enum jop {
    OP_NONE, OP_ADD, OP_SUB, OP_CONCAT, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW,
    OP_EQ, OP_NE, OP_LT, OP_GT, OP_LE, OP_GE, OP_AND, OP_OR, OP_IN, OP_NOTIN,
    OP_NOT, OP_NEG, OP_POS,
};

typedef struct jnode jnode;
struct jnode {
    int kind;
    int op;      /* enum jop for N_UNARY / N_BINARY */
    int flag;    /* N_MEMBER: computed; N_TEST: negated; N_FILTER: has arguments */
    int depth;   /* height of the subtree (bounded at parse time) */
    size_t pos;  /* offset in the original template (for messages) */
    const char *str; size_t len; /* text, literal, identifier, filter/test name */
    double num;
    jnode *a, *b, *c;
    jnode **list; int n;   /* body / args / elements (object: key, value, key, value...) */
    jnode **list2; int n2; /* if: alternate; for: else block */
};

struct gn_jinja {
    jarena arena;
    jnode **body;
    int n_body;
    char *pre;      /* preprocessed text; tokens and text nodes point into it */
    char *src;      /* original template text (for line/column) */
    size_t src_len;
};

/* Line and column (1-based, columns in bytes) of offset pos in src. */
void gn_jinja_linecol(const char *src, size_t len, size_t pos, int *line, int *col);

/* ---- runtime values ---- */

enum jval_kind { V_UNDEF, V_NULL, V_BOOL, V_INT, V_FLOAT, V_STR, V_ARRAY, V_OBJECT, V_NS, V_FUNC };

typedef struct jarr jarr;
typedef struct jobj jobj;
typedef struct jval {
    int k;
    int tuple;      /* V_ARRAY that came from a tuple literal */
    int fn;         /* V_FUNC: builtin id */
    union {
        int b;
        double num;
        struct { const char *s; size_t len; } str;
        jarr *arr;
        jobj *obj;
        const struct jval *self; /* V_FUNC: bound receiver, or NULL */
        const struct jnode *macro; /* V_FUNC with fn == F_MACRO */
    } u;
} jval;

struct jarr { int n; jval *items; };
struct jobj { int n, cap; const char **keys; size_t *klens; jval *vals; };

/* String helpers (UTF-8, with JavaScript's notions of whitespace and length). */
int ju_decode(const char *s, size_t len, size_t i, uint32_t *cp); /* bytes used, >=1 */
int ju_is_space(uint32_t cp);
size_t ju_utf16_len(const char *s, size_t len);
int ju_valid_utf8(const char *s, size_t len);

/* Growable byte buffer with a size cap (gn_realloc). */
typedef struct jbuf {
    char *p;
    size_t len, cap, limit;
    int failed; /* 1: out of memory, 2: over limit */
} jbuf;
int jb_put(jbuf *b, const char *s, size_t n);
int jb_putc(jbuf *b, char c);
int jb_printf(jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* JavaScript Number.prototype.toString for a double (buf >= 32 bytes). */
void ju_num_str(double x, char *buf);


/* ---- render state (jinja_eval.c, jinja_builtins.c) ---- */

typedef struct jscope jscope;
struct jscope {
    jscope *parent;
    int n, cap;
    const char **names;
    size_t *nlens;
    jval *vals;
};

typedef struct R {
    const gn_jinja *t;
    jarena a;
    jbuf out;     /* the rendered text */
    jbuf scratch; /* temporary text for conversions */
    gn_err *err;
    long steps, max_steps;
    int depth;       /* evaluator recursion depth (bounded) */
    int macro_depth; /* nested macro calls (bounded) */
    int failed;
    int code; /* GN_E* of the first error */
} R;

enum jfunc {
    F_NAMESPACE = 1, F_RAISE, F_RANGE, F_STRFTIME, F_MACRO,
    M_UPPER, M_LOWER, M_STRIP, M_TITLE, M_CAPITALIZE, M_RSTRIP, M_LSTRIP, M_STARTSWITH,
    M_ENDSWITH, M_SPLIT, M_REPLACE, M_GET, M_ITEMS, M_KEYS, M_VALUES, M_DICTSORT,
};

/* Errors: record once (with the node's line/column), return -1. */
int jr_err(R *r, const jnode *at, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int jr_oom(R *r);
int jr_charge(R *r, const jnode *at, size_t units); /* counts work against max_steps */

/* Values */
jval jv_undef(void);
jval jv_null(void);
jval jv_bool(int b);
jval jv_int(double x);
jval jv_float(double x);
int jv_str(R *r, const char *s, size_t n, jval *out);     /* copies s into the arena */
jval jv_str_ref(const char *s, size_t n);                 /* s must outlive the render */
int jv_arr(R *r, int n, jval *out);                       /* n items, all undefined */
jobj *jo_new(R *r, int cap);
int jo_set(R *r, jobj *o, const char *k, size_t kl, jval v); /* replaces or appends */
const jval *jo_get(const jobj *o, const char *k, size_t kl);
int jv_truthy(const jval *v);
const char *jv_type(const jval *v); /* reference runtime type name, for messages */
int jv_from_json(R *r, const json_t *j, jval *out, int depth);

/* Text conversions, appended to a buffer */
int js_rt(R *r, jbuf *b, const jval *v);  /* RuntimeValue.toString (what {{ }} prints) */
int js_raw(R *r, jbuf *b, const jval *v); /* String(value.value) (what ~ and + use) */
typedef struct jjson_opts { int indent; int ascii; int sort; const char *isep, *ksep; } jjson_opts;
int js_json(R *r, jbuf *b, const jval *v, const jjson_opts *o, int depth, int undef_null, const jnode *at);
int jv_from_buf(R *r, jbuf *b, size_t mark, jval *out); /* b[mark..] -> string value; truncates b */

int jv_strict_eq(const jval *a, const jval *b);
int jv_loose_eq(R *r, const jval *a, const jval *b);

/* Builtins */
int jb_filter(R *r, const jnode *n, const jval *operand, jscope *sc, jval *out);
int jb_test(R *r, const jnode *n, const jval *operand, int *result);
int jb_call(R *r, const jnode *at, const jval *fn, jval *args, int nargs, jobj *kw, jval *out);
int jb_member_builtin(R *r, const jval *obj, const char *name, size_t nl, jval *out); /* 1 found */
int jb_eval_args(R *r, const jnode *call_or_filter, jscope *sc, jval **args, int *nargs, jobj **kw);
int je_eval(R *r, const jnode *n, jscope *sc, jval *out);

#endif
