/* tok_util.c — buffers, UTF-8 helpers and the two hash maps the tokenizer
 * is built from. */
#include <string.h>

#include "tok_internal.h"

/* ---- buffers ---- */

int tk_buf_reserve(tk_buf *b, size_t extra) {
    if (b->cap - b->n >= extra) return 0;
    size_t need;
    if (gn_size_add(b->n, extra, &need)) return GN_ENOMEM;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) return GN_ENOMEM;
        cap *= 2;
    }
    char *p = gn_realloc(b->p, cap);
    if (!p) return GN_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tk_buf_put(tk_buf *b, const void *p, size_t n) {
    if (tk_buf_reserve(b, n + 1)) return GN_ENOMEM;
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

void tk_buf_free(tk_buf *b) {
    gn_free(b->p);
    memset(b, 0, sizeof *b);
}

int tk_ids_push(tk_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        size_t bytes;
        if (gn_size_mul(cap, sizeof *v->p, &bytes)) return GN_ENOMEM;
        int32_t *p = gn_realloc(v->p, bytes);
        if (!p) return GN_ENOMEM;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = id;
    return 0;
}

void tk_ids_free(tk_ids *v) {
    gn_free(v->p);
    memset(v, 0, sizeof *v);
}

/* ---- UTF-8 ---- */

/* Examines the sequence at s[0..n): returns its length when valid; else 0
 * with *bad = length of the maximal invalid subpart and *incomplete = 1 when
 * that subpart ran into the end of the input while still a valid prefix. */
static int utf8_step(const unsigned char *s, size_t n, int *bad, int *incomplete) {
    unsigned c = s[0];
    *incomplete = 0;
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) {
            *bad = i;
            *incomplete = 1;
            return 0;
        }
        unsigned d = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (d < l || d > h) {
            *bad = i;
            return 0;
        }
    }
    return need + 1;
}

int tk_utf8_len(const unsigned char *s, size_t n) {
    int bad, inc;
    if (!n) return 0;
    return utf8_step(s, n, &bad, &inc);
}

int tk_utf8_dec(const unsigned char *s, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = (c & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = (c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return 3;
    }
    *cp = (c & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
          (s[3] & 0x3F);
    return 4;
}

int tk_utf8_enc(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t tk_utf8_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int bad, inc;
        int l = utf8_step(u + i, n - i, &bad, &inc);
        if (!l) return i;
        i += (size_t)l;
    }
    return (size_t)-1;
}

int tk_utf8_lossy(tk_buf *out, const char *s, size_t n, size_t *complete_out) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    size_t complete = 0;
    int have_complete = 0;
    if (tk_buf_reserve(out, n + 1)) return GN_ENOMEM;
    while (i < n) {
        int bad, inc;
        int l = u[i] < 0x80 ? 1 : utf8_step(u + i, n - i, &bad, &inc);
        if (l) {
            i += (size_t)l;
            run += (size_t)l;
            continue;
        }
        if (tk_buf_put(out, s + i - run, run)) return GN_ENOMEM;
        run = 0;
        if (inc) {
            complete = out->n;
            have_complete = 1;
        }
        if (tk_buf_put(out, fffd, 3)) return GN_ENOMEM;
        i += (size_t)bad;
    }
    if (tk_buf_put(out, s + i - run, run)) return GN_ENOMEM;
    if (complete_out) *complete_out = have_complete ? complete : out->n;
    return 0;
}

/* ---- hash maps ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

int tk_strmap_init(tk_strmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < expected * 2 + 16) cap *= 2;
    m->slot = gn_calloc(cap, sizeof *m->slot);
    m->ent = gn_malloc((expected + 1) * sizeof *m->ent);
    if (!m->slot || !m->ent) {
        tk_strmap_free(m);
        return GN_ENOMEM;
    }
    m->mask = cap - 1;
    m->cap = expected + 1;
    return 0;
}

static int strmap_grow(tk_strmap *m) {
    size_t cap = (m->mask + 1) * 2;
    uint32_t *slot = gn_calloc(cap, sizeof *slot);
    if (!slot) return GN_ENOMEM;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = hash_bytes(m->ent[e].s, m->ent[e].len) & (cap - 1);
        while (slot[i]) i = (i + 1) & (cap - 1);
        slot[i] = (uint32_t)e + 1;
    }
    gn_free(m->slot);
    m->slot = slot;
    m->mask = cap - 1;
    return 0;
}

int tk_strmap_put(tk_strmap *m, const char *s, size_t len, int32_t val) {
    if (len > UINT32_MAX || m->n >= UINT32_MAX - 1) return GN_ERANGE;
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slot[i]) {
        tk_sent *e = &m->ent[m->slot[i] - 1];
        if (e->len == len && memcmp(e->s, s, len) == 0) {
            e->val = val;
            return 0;
        }
        i = (i + 1) & m->mask;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap * 2;
        tk_sent *ent = gn_realloc(m->ent, cap * sizeof *ent);
        if (!ent) return GN_ENOMEM;
        m->ent = ent;
        m->cap = cap;
    }
    m->ent[m->n] = (tk_sent){s, (uint32_t)len, val};
    m->slot[i] = (uint32_t)++m->n;
    if (m->n * 2 > m->mask + 1) return strmap_grow(m);
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t len) {
    if (!m->slot) return -1;
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slot[i]) {
        const tk_sent *e = &m->ent[m->slot[i] - 1];
        if (e->len == len && memcmp(e->s, s, len) == 0) return e->val;
        i = (i + 1) & m->mask;
    }
    return -1;
}

void tk_strmap_free(tk_strmap *m) {
    gn_free(m->slot);
    gn_free(m->ent);
    memset(m, 0, sizeof *m);
}

int tk_pairmap_init(tk_pairmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < expected * 2 + 16) cap *= 2;
    m->key = gn_malloc(cap * sizeof *m->key);
    m->rank = gn_malloc(cap * sizeof *m->rank);
    m->new_id = gn_malloc(cap * sizeof *m->new_id);
    if (!m->key || !m->rank || !m->new_id) {
        tk_pairmap_free(m);
        return GN_ENOMEM;
    }
    memset(m->key, 0xFF, cap * sizeof *m->key);
    m->mask = cap - 1;
    return 0;
}

/* The table is sized for every merge up front, so put never grows it. A
 * repeated pair overwrites the earlier entry, as the reference's HashMap
 * collect does. */
void tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & m->mask;
    m->key[i] = k;
    m->rank[i] = rank;
    m->new_id[i] = new_id;
}

void tk_pairmap_free(tk_pairmap *m) {
    gn_free(m->key);
    gn_free(m->rank);
    gn_free(m->new_id);
    memset(m, 0, sizeof *m);
}

/* ---- GPT-2 byte-level map (bytes_to_unicode) ---- */

const uint16_t tk_byte_to_cp[256] = {
    0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107,
    0x108, 0x109, 0x10A, 0x10B, 0x10C, 0x10D, 0x10E, 0x10F,
    0x110, 0x111, 0x112, 0x113, 0x114, 0x115, 0x116, 0x117,
    0x118, 0x119, 0x11A, 0x11B, 0x11C, 0x11D, 0x11E, 0x11F,
    0x120, 0x021, 0x022, 0x023, 0x024, 0x025, 0x026, 0x027,
    0x028, 0x029, 0x02A, 0x02B, 0x02C, 0x02D, 0x02E, 0x02F,
    0x030, 0x031, 0x032, 0x033, 0x034, 0x035, 0x036, 0x037,
    0x038, 0x039, 0x03A, 0x03B, 0x03C, 0x03D, 0x03E, 0x03F,
    0x040, 0x041, 0x042, 0x043, 0x044, 0x045, 0x046, 0x047,
    0x048, 0x049, 0x04A, 0x04B, 0x04C, 0x04D, 0x04E, 0x04F,
    0x050, 0x051, 0x052, 0x053, 0x054, 0x055, 0x056, 0x057,
    0x058, 0x059, 0x05A, 0x05B, 0x05C, 0x05D, 0x05E, 0x05F,
    0x060, 0x061, 0x062, 0x063, 0x064, 0x065, 0x066, 0x067,
    0x068, 0x069, 0x06A, 0x06B, 0x06C, 0x06D, 0x06E, 0x06F,
    0x070, 0x071, 0x072, 0x073, 0x074, 0x075, 0x076, 0x077,
    0x078, 0x079, 0x07A, 0x07B, 0x07C, 0x07D, 0x07E, 0x121,
    0x122, 0x123, 0x124, 0x125, 0x126, 0x127, 0x128, 0x129,
    0x12A, 0x12B, 0x12C, 0x12D, 0x12E, 0x12F, 0x130, 0x131,
    0x132, 0x133, 0x134, 0x135, 0x136, 0x137, 0x138, 0x139,
    0x13A, 0x13B, 0x13C, 0x13D, 0x13E, 0x13F, 0x140, 0x141,
    0x142, 0x0A1, 0x0A2, 0x0A3, 0x0A4, 0x0A5, 0x0A6, 0x0A7,
    0x0A8, 0x0A9, 0x0AA, 0x0AB, 0x0AC, 0x143, 0x0AE, 0x0AF,
    0x0B0, 0x0B1, 0x0B2, 0x0B3, 0x0B4, 0x0B5, 0x0B6, 0x0B7,
    0x0B8, 0x0B9, 0x0BA, 0x0BB, 0x0BC, 0x0BD, 0x0BE, 0x0BF,
    0x0C0, 0x0C1, 0x0C2, 0x0C3, 0x0C4, 0x0C5, 0x0C6, 0x0C7,
    0x0C8, 0x0C9, 0x0CA, 0x0CB, 0x0CC, 0x0CD, 0x0CE, 0x0CF,
    0x0D0, 0x0D1, 0x0D2, 0x0D3, 0x0D4, 0x0D5, 0x0D6, 0x0D7,
    0x0D8, 0x0D9, 0x0DA, 0x0DB, 0x0DC, 0x0DD, 0x0DE, 0x0DF,
    0x0E0, 0x0E1, 0x0E2, 0x0E3, 0x0E4, 0x0E5, 0x0E6, 0x0E7,
    0x0E8, 0x0E9, 0x0EA, 0x0EB, 0x0EC, 0x0ED, 0x0EE, 0x0EF,
    0x0F0, 0x0F1, 0x0F2, 0x0F3, 0x0F4, 0x0F5, 0x0F6, 0x0F7,
    0x0F8, 0x0F9, 0x0FA, 0x0FB, 0x0FC, 0x0FD, 0x0FE, 0x0FF,
};

/* Bytes that are not printable map to U+0100.. in increasing byte order. */
static const uint8_t cp100_to_byte[68] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 173};

int tk_cp_to_byte(uint32_t cp) {
    if (cp >= 0x21 && cp <= 0x7E) return (int)cp;
    if ((cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + sizeof cp100_to_byte) return cp100_to_byte[cp - 0x100];
    return -1;
}
