/* lora_dir.c — adapter directories and their backbones (lora_dir.h). */
#include "lora_dir.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"

int gn_lora_is_adapter_dir(const char *dir) {
    char *p = dir ? gn_fs_join(dir, "adapter_config.json") : NULL;
    int yes = p && gn_fs_is_file(p);
    gn_free(p);
    return yes;
}

int gn_lora_backbone_dir(const char *adapter_dir, char *out, size_t cap, gn_err *err) {
    if (cap) out[0] = 0;
    char *path = gn_fs_join(adapter_dir, "adapter_config.json");
    if (!path) return gn_errf(err, GN_ENOMEM, "out of memory");
    char *text = NULL;
    size_t len = 0;
    int rc = gn_fs_read_file(path, 1u << 20, &text, &len, err);
    if (rc) {
        gn_free(path);
        return rc;
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    gn_free(text);
    const json_t *v = root && json_is_object(root) ? json_object_get(root, "base_model_name_or_path") : NULL;
    if (!root) {
        rc = gn_errf(err, GN_EFORMAT, "%s: line %d: %s", path, je.line, je.text);
    } else if (!v || !json_is_string(v) || !json_string_length(v)) {
        rc = gn_errf(err, GN_EFORMAT, "%s: base_model_name_or_path is missing: the adapter does not say "
                     "which backbone it belongs to", path);
    } else {
        const char *b = json_string_value(v);
        int n = b[0] == '/' ? snprintf(out, cap, "%s", b) : snprintf(out, cap, "%s/%s", adapter_dir, b);
        if (n < 0 || (size_t)n >= cap) {
            rc = gn_errf(err, GN_ERANGE, "%s: base_model_name_or_path is too long", path);
        } else {
            char *cfg = gn_fs_join(out, "config.json");
            if (!cfg || !gn_fs_is_file(cfg))
                rc = gn_errf(err, GN_ENOTFOUND, "%s: base_model_name_or_path \"%s\" is not a local model "
                             "directory (no %s)", path, b, cfg ? cfg : "config.json");
            gn_free(cfg);
        }
    }
    json_decref(root);
    gn_free(path);
    if (rc && cap) out[0] = 0;
    return rc;
}
