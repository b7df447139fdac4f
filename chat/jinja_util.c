/* jinja_util.c — arena, byte buffer, UTF-8 and number formatting helpers for
 * the Jinja interpreter. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "jinja_internal.h"

struct jarena_chunk {
    jarena_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

/* Chunks start small (most renders need a few KiB) and double up to 64 KiB. */
#define JA_CHUNK_MIN 1024
#define JA_CHUNK_MAX 65536

void *ja_alloc(jarena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jarena_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t grow = c ? (c->size < JA_CHUNK_MAX ? c->size * 2 : JA_CHUNK_MAX) : JA_CHUNK_MIN;
        size_t sz = n > grow ? n : grow;
        if (sz > SIZE_MAX / 2) return NULL;
        if (a->cap && (a->used_total > a->cap || sz > a->cap - a->used_total)) {
            a->over_cap = 1;
            return NULL;
        }
        c = gn_malloc(sizeof *c + sz);
        if (!c) return NULL;
        c->size = sz;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->used_total += sz;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *ja_strndup(jarena *a, const char *s, size_t n) {
    if (n == SIZE_MAX) return NULL;
    char *p = ja_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void ja_free(jarena *a) {
    jarena_chunk *c = a->head;
    while (c) {
        jarena_chunk *nx = c->next;
        gn_free(c);
        c = nx;
    }
    a->head = NULL;
    a->used_total = 0;
}

/* ---- byte buffer ---- */

int jb_put(jbuf *b, const char *s, size_t n) {
    if (b->failed) return -1;
    if (n > b->limit || b->len > b->limit - n) {
        b->failed = 2;
        return -1;
    }
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1) nc *= 2;
        char *p = gn_realloc(b->p, nc);
        if (!p) {
            b->failed = 1;
            return -1;
        }
        b->p = p;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int jb_putc(jbuf *b, char c) { return jb_put(b, &c, 1); }

int jb_printf(jbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n >= sizeof tmp) n = sizeof tmp - 1;
    return jb_put(b, tmp, (size_t)n);
}

/* ---- UTF-8 ---- */

int ju_decode(const char *s, size_t len, size_t i, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (n == 1 || i + (size_t)n > len) {
        *cp = 0xFFFD;
        return 1;
    }
    uint32_t v = c & (0x7F >> n);
    for (int k = 1; k < n; k++) {
        if ((u[i + k] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        v = (v << 6) | (u[i + k] & 0x3F);
    }
    *cp = v;
    return n;
}

int ju_valid_utf8(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int n;
        uint32_t min;
        if ((c & 0xE0) == 0xC0) n = 2, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 3, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 4, min = 0x10000;
        else return 0;
        if (i + (size_t)n > len) return 0;
        uint32_t v = c & (0x7F >> n);
        for (int k = 1; k < n; k++) {
            if ((u[i + k] & 0xC0) != 0x80) return 0;
            v = (v << 6) | (u[i + k] & 0x3F);
        }
        if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
        i += (size_t)n;
    }
    return 1;
}

/* JavaScript's WhiteSpace and LineTerminator (String.prototype.trim, \s). */
int ju_is_space(uint32_t cp) {
    switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: case 0xFEFF:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

size_t ju_utf16_len(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += (size_t)ju_decode(s, len, i, &cp);
        n += cp >= 0x10000 ? 2 : 1;
    }
    return n;
}

/* ---- numbers ---- */

void ju_num_str(double x, char *buf) {
    if (isnan(x)) {
        strcpy(buf, "NaN");
        return;
    }
    if (isinf(x)) {
        strcpy(buf, x < 0 ? "-Infinity" : "Infinity");
        return;
    }
    if (x == 0) {
        strcpy(buf, "0");
        return;
    }
    char tmp[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    /* tmp: [-]d[.ddd]e[+-]xx */
    char digits[24];
    int k = 0, neg = 0;
    const char *q = tmp;
    if (*q == '-') neg = 1, q++;
    while (*q && *q != 'e') {
        if (*q >= '0' && *q <= '9' && k < 20) digits[k++] = *q;
        q++;
    }
    while (k > 1 && digits[k - 1] == '0') k--;
    digits[k] = 0;
    int e = atoi(q + 1);
    int n = e + 1; /* value = 0.d1..dk * 10^n */
    char *o = buf;
    if (neg) *o++ = '-';
    if (k <= n && n <= 21) {
        memcpy(o, digits, (size_t)k);
        o += k;
        for (int i = 0; i < n - k; i++) *o++ = '0';
    } else if (0 < n && n <= 21) {
        memcpy(o, digits, (size_t)n);
        o += n;
        *o++ = '.';
        memcpy(o, digits + n, (size_t)(k - n));
        o += k - n;
    } else if (-6 < n && n <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -n; i++) *o++ = '0';
        memcpy(o, digits, (size_t)k);
        o += k;
    } else {
        *o++ = digits[0];
        if (k > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)(k - 1));
            o += k - 1;
        }
        o += sprintf(o, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    *o = 0;
}

void gn_jinja_linecol(const char *src, size_t len, size_t pos, int *line, int *col) {
    int l = 1, c = 1;
    if (pos > len) pos = len;
    for (size_t i = 0; i < pos; i++) {
        if (src[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}
