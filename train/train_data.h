/* train_data.h — training data: tokenised examples and the deterministic
 * batch order.
 *
 * Sources:
 *   - plain text: the file is tokenised (no special tokens) and cut into
 *     sequences of seq_len tokens, each starting with the tokenizer's BOS when
 *     it has one; every next token counts.
 *   - JSONL {"prompt", "response"} (LM) or {"prompt", "chosen", "rejected"}
 *     (ARM): the prompt is encoded with the tokenizer's special tokens (BOS
 *     where its post-processor adds one), the response without, followed by
 *     EOS; only response tokens count. Sequences longer than seq_len are cut
 *     at seq_len (counted in n_truncated); a prompt that leaves no room for a
 *     response token, a missing or non-string field, or invalid JSON rejects
 *     the file with a "file:line: ..." message.
 *
 * Batch order: example i of the run (i = 0, 1, 2, ... across micro-batches)
 * is perm_e[i mod n] with e = i / n and perm_e a Fisher-Yates shuffle seeded
 * by (seed, e). It depends only on (seed, i), so a resumed run sees exactly
 * the batches the uninterrupted run would have seen.
 *
 * A gn_train_data is used by one thread at a time (it caches the current
 * permutation). */
#ifndef GN_TRAIN_DATA_H
#define GN_TRAIN_DATA_H

#include <stdint.h>

#include "gn_err.h"

struct gn_tokenizer;

typedef enum gn_train_data_kind {
    GN_DATA_TEXT = 0,    /* plain text */
    GN_DATA_LM_JSONL = 1, /* {"prompt", "response"} per line */
    GN_DATA_PAIRS = 2,    /* {"prompt", "chosen", "rejected"} per line */
} gn_train_data_kind;

typedef struct gn_train_seq {
    int32_t *tokens; /* len ids (into the data's pool) */
    int len;
    int first;       /* index of the first token that counts as a target (>= 1) */
} gn_train_seq;

typedef struct gn_train_data gn_train_data;

/* Reads and tokenises `path`. Owned result; NULL and err on failure. */
gn_train_data *gn_train_data_load(const char *path, gn_train_data_kind kind,
                                  const struct gn_tokenizer *tok, int seq_len, gn_err *err);
void gn_train_data_free(gn_train_data *d);

/* Examples (pairs for GN_DATA_PAIRS), sequences per example (1 or 2). */
int gn_train_data_n_examples(const gn_train_data *d);
int gn_train_data_seqs_per_example(const gn_train_data *d);
int gn_train_data_n_truncated(const gn_train_data *d);
/* Sequence s of example i (s < seqs_per_example). */
const gn_train_seq *gn_train_data_seq(const gn_train_data *d, int i, int s);

/* Fills a micro-batch with examples first, first + 1, ..., first + n - 1 of
 * the run order (see above): tokens and targets are (n * seqs_per_example,
 * *T) with *T the longest sequence of the batch; shorter ones are padded with
 * token 0 and target -1. tokens/targets must hold n * seqs_per_example *
 * seq_len entries. Returns the number of counted targets. */
int gn_train_data_batch(gn_train_data *d, uint64_t seed, int64_t first, int n, int32_t *tokens,
                        int32_t *targets, int *T);

#endif
