/* prompt_model.c — tokenizer + chat template of a model, and the prompt's
 * token ids (prompt_model.h). */
#include "prompt_model.h"

#include <stdio.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "lora_dir.h"

static char *tok_str(const gn_tokenizer *t, int id) {
    const char *s = id >= 0 ? gn_tok_token_str(t, id) : NULL;
    return s ? gn_strdup(s) : NULL;
}

int gn_prompt_model_load(gn_prompt_model *m, const char *path, gn_err *err) {
    memset(m, 0, sizeof *m);
    char backbone[GN_CTL_PATH_MAX];
    const char *from = path;
    char *tj = gn_fs_join(path, "tokenizer.json");
    if (tj && !gn_fs_is_file(tj) && gn_lora_is_adapter_dir(path)) {
        int rc = gn_lora_backbone_dir(path, backbone, sizeof backbone, err);
        if (rc) {
            gn_free(tj);
            return rc;
        }
        from = backbone;
    }
    gn_free(tj);
    gn_tokenizer *tok = gn_tok_load(from, err);
    if (!tok) return err && err->code ? err->code : GN_EIO;
    int rc = gn_prompt_model_init(m, tok, from, err);
    if (rc) {
        gn_tok_free(tok);
        return rc;
    }
    m->own_tok = tok;
    snprintf(m->path, sizeof m->path, "%s", path);
    return 0;
}

int gn_prompt_model_init(gn_prompt_model *m, const gn_tokenizer *tok, const char *label, gn_err *err) {
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", label);
    m->tok = tok;
    m->bos = tok_str(tok, gn_tok_bos(tok));
    m->eos = tok_str(tok, gn_tok_eos(tok));
    const char *src = gn_tok_chat_template(tok);
    if (src && *src && !(m->tmpl = gn_chat_template_parse(src, err))) {
        int rc = gn_err_prefix(err, "chat template of %s: ", label);
        gn_prompt_model_clear(m);
        return rc;
    }
    return 0;
}

void gn_prompt_model_clear(gn_prompt_model *m) {
    gn_chat_template_free(m->tmpl);
    gn_tok_free(m->own_tok);
    gn_free(m->bos);
    gn_free(m->eos);
    memset(m, 0, sizeof *m);
}

/* Without a template: "role: content" lines, then "assistant:". */
static char *fallback_chat(const gn_oai_request *r) {
    size_t n = 16;
    for (int i = 0; i < r->n_messages; i++) n += strlen(r->messages[i].role) + strlen(r->messages[i].content) + 3;
    char *s = gn_malloc(n);
    if (!s) return NULL;
    size_t off = 0;
    for (int i = 0; i < r->n_messages; i++)
        off += (size_t)snprintf(s + off, n - off, "%s: %s\n", r->messages[i].role, r->messages[i].content);
    snprintf(s + off, n - off, "assistant:");
    return s;
}

int gn_prompt_chat_text(const gn_prompt_model *m, const gn_oai_request *r, char **out, gn_err *err) {
    if (!m->tmpl) {
        *out = fallback_chat(r);
        return *out ? 0 : gn_errf(err, GN_ENOMEM, "out of memory");
    }
    gn_chat_message *msg = gn_malloc((size_t)(r->n_messages > 0 ? r->n_messages : 1) * sizeof *msg);
    if (!msg) return gn_errf(err, GN_ENOMEM, "out of memory");
    for (int i = 0; i < r->n_messages; i++) msg[i] = (gn_chat_message){r->messages[i].role, r->messages[i].content};
    gn_chat_render_opts o = gn_chat_render_default_opts();
    o.add_generation_prompt = 1;
    o.bos_token = m->bos;
    o.eos_token = m->eos;
    size_t len;
    int rc = gn_chat_template_render(m->tmpl, msg, r->n_messages, &o, out, &len, err);
    gn_free(msg);
    if (rc) gn_err_prefix(err, "chat template of %s: ", m->path);
    return rc;
}

int gn_prompt_tokens(const gn_prompt_model *m, const gn_oai_request *r, int32_t **ids, int *n, gn_err *err) {
    *ids = NULL;
    *n = 0;
    char *txt = NULL;
    const char *text = r->prompt;
    size_t len = r->prompt ? r->prompt_len : 0;
    int add_special = 1;
    if (r->kind == GN_OAI_CHAT) {
        int rc = gn_prompt_chat_text(m, r, &txt, err);
        if (rc) return rc;
        text = txt;
        len = strlen(txt);
        add_special = 0;
    }
    if (!text) return gn_errf(err, GN_EINVAL, "no prompt");
    int rc = gn_tok_encode(m->tok, text, len, add_special, ids, n, err);
    gn_free(txt);
    if (rc) return gn_err_prefix(err, "tokenizing the prompt: ");
    if (*n == 0) {
        gn_free(*ids);
        *ids = NULL;
        return gn_errf(err, GN_EINVAL, "the prompt is empty after tokenization");
    }
    return 0;
}
