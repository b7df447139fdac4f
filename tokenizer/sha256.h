/* sha256.h — a small, self-contained SHA-256 (FIPS 180-4) used for the
 * tokenizer fingerprint. Pure functions over caller-owned state; thread-safe
 * as long as each context belongs to one thread. */
#ifndef GN_SHA256_H
#define GN_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct gn_sha256 {
    uint32_t h[8];
    uint64_t n_bytes;   /* total bytes fed so far */
    uint8_t block[64];  /* pending partial block */
    size_t n_block;     /* bytes in block */
} gn_sha256;

void gn_sha256_init(gn_sha256 *c);
void gn_sha256_update(gn_sha256 *c, const void *data, size_t len);
/* Writes the 32-byte digest; c must be re-initialised before reuse. */
void gn_sha256_final(gn_sha256 *c, uint8_t out[32]);
/* Lower-case hex of the digest into out (65 bytes incl. NUL). */
void gn_sha256_hex(const uint8_t digest[32], char out[65]);

#endif
