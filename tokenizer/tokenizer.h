/* tokenizer.h — Hugging Face tokenizers from tokenizer.json (+
 * tokenizer_config.json), producing exactly the ids that Hugging Face's
 * `tokenizers` library produces.
 *
 * Supported: byte-level BPE with Split/ByteLevel pre-tokenizers (Llama-3, Qwen,
 * GPT-2 style; Unicode regexes through PCRE2), SentencePiece-style BPE with
 * byte fallback and the ▁ (Prepend/Replace) normalizer (Llama-2, Mistral),
 * added and special tokens, TemplateProcessing post-processors (BOS/EOS),
 * decoding and incremental streaming decoding.
 *
 * A gn_tokenizer is immutable after loading and safe to share between threads.
 * Everything returned through out-pointers is owned by the caller and freed
 * with gn_free. */
#ifndef GN_TOKENIZER_H
#define GN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"

typedef struct gn_tokenizer gn_tokenizer;

/* Loads `path`: a directory holding tokenizer.json (and optionally
 * tokenizer_config.json), or a tokenizer.json file. NULL and err on failure;
 * errors name the file and the JSON path of the offending field. */
gn_tokenizer *gn_tok_load(const char *path, gn_err *err);

/* Pure variant: parses the tokenizer.json text (and tokenizer_config.json text,
 * or NULL/0). Never reads files. */
gn_tokenizer *gn_tok_load_mem(const char *tok_json, size_t tok_len, const char *cfg_json,
                              size_t cfg_len, gn_err *err);

void gn_tok_free(gn_tokenizer *t);

/* Number of token ids (max id + 1 over the model vocabulary and added tokens). */
int gn_tok_n_vocab(const gn_tokenizer *t);

/* Encodes UTF-8 text (len bytes; need not be NUL-terminated). add_special = 1
 * behaves like HF encode(text, add_special_tokens=True): the post-processor's
 * BOS/EOS are added. Added/special tokens appearing in the text are matched as
 * HF does. On success *ids (gn_malloc'd, never NULL, even for 0 ids) holds
 * *n_ids ids. Invalid UTF-8 is an error (GN_EINVAL) that says at which byte
 * offset.
 * Like HF `tokenizers`, only tokenizer.json's post_processor decides what
 * add_special adds; tokenizer_config.json's add_bos_token/add_eos_token are not
 * consulted. (The Llama-3 tokenizer.json has a ByteLevel post-processor, so no
 * BOS is added there: its chat template writes <|begin_of_text|> as text.)
 * Thread-safe: any number of threads may encode with one tokenizer. */
int gn_tok_encode(const gn_tokenizer *t, const char *text, size_t len, int add_special,
                  int32_t **ids, int *n_ids, gn_err *err);

/* Decodes ids to text like HF decode(ids, skip_special_tokens). Bytes that do
 * not form valid UTF-8 are replaced by U+FFFD. *out is gn_malloc'd and
 * NUL-terminated; *out_len excludes the NUL. Unknown ids are an error. */
int gn_tok_decode(const gn_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out,
                  size_t *out_len, gn_err *err);

/* Special ids, -1 when the tokenizer has none. BOS is the one the
 * post-processor adds (or tokenizer_config's bos_token); EOS is
 * tokenizer_config's eos_token. */
int gn_tok_bos(const gn_tokenizer *t);
int gn_tok_eos(const gn_tokenizer *t);

/* Id of a token given by its vocabulary string (e.g. "<|im_end|>"), -1 if none. */
int gn_tok_token_id(const gn_tokenizer *t, const char *token);
/* Vocabulary string of id (as stored in tokenizer.json; for an added token
 * with "normalized": true, its content after the normalizer, as HF reports it),
 * NULL if out of range. Valid while t lives. */
const char *gn_tok_token_str(const gn_tokenizer *t, int id);
/* 1 when id is an added token marked "special": true. */
int gn_tok_is_special(const gn_tokenizer *t, int id);

/* Hex SHA-256 (64 chars + NUL) over the id -> token mapping, the merges and
 * the special tokens: equal hashes mean interchangeable tokenizers (used to
 * refuse an ARM whose tokenizer differs from the base's). */
const char *gn_tok_hash(const gn_tokenizer *t);

/* tokenizer_config.json's chat_template string, or NULL. */
const char *gn_tok_chat_template(const gn_tokenizer *t);

/* Incremental decoding for streaming: push ids one at a time, get back only
 * text that is final — never a broken UTF-8 sequence, never text a later token
 * could change. The concatenation of every push's output and the final flush
 * equals gn_tok_decode of all ids. */
typedef struct gn_tok_stream gn_tok_stream;

/* One stream per generated sequence (not thread-safe; t must outlive it). */
gn_tok_stream *gn_tok_stream_create(const gn_tokenizer *t, int skip_special, gn_err *err);
void gn_tok_stream_free(gn_tok_stream *s);
/* On success *out points at *out_len new bytes (possibly 0), valid until the
 * next call on s. */
int gn_tok_stream_push(gn_tok_stream *s, int32_t id, const char **out, size_t *out_len,
                       gn_err *err);
/* Emits whatever is still held back (incomplete UTF-8 becomes U+FFFD). */
int gn_tok_stream_flush(gn_tok_stream *s, const char **out, size_t *out_len, gn_err *err);

#endif
