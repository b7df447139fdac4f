/* test_train_cli.c — the genarm-train program end to end: LM training from a
 * random --init-arch model on a text file, ARM training with LoRA on pairs
 * from that checkpoint, a resumed run, and file:line errors for bad data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "train_test_util.h"

static char g_bin[1024];

/* Runs genarm-train with args, stderr into log; returns the exit status. */
static int run(const char *args, const char *log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s' 2>&1", g_bin, args, log);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int file_has(const char *path, const char *needle) {
    char *buf = NULL;
    size_t len = 0;
    int found = !gn_fs_read_file(path, 1 << 24, &buf, &len, NULL) && strstr(buf, needle);
    gn_free(buf);
    return found;
}

static int exists(const char *dir, const char *name) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return gn_fs_is_file(p);
}

int main(void) {
    const char *bd = getenv("GN_BUILD_DIR");
    snprintf(g_bin, sizeof g_bin, "%s/tools/genarm-train", bd ? bd : ".");
    if (!gn_fs_is_file(g_bin)) GN_TEST_SKIP("genarm-train not built");
    char tmp[512], p[900], args[4096], log[900], lm[700], arm[700], res[700];
    tt_tmpdir(tmp, sizeof tmp, "cli");
    snprintf(log, sizeof log, "%s/log.txt", tmp);
    snprintf(lm, sizeof lm, "%s/lm", tmp);
    snprintf(arm, sizeof arm, "%s/arm", tmp);
    snprintf(res, sizeof res, "%s/arm_resumed", tmp);

    snprintf(p, sizeof p, "%s/text.txt", tmp);
    FILE *f = fopen(p, "w");
    for (int i = 0; f && i < 40; i++) fprintf(f, "line %d: the quick brown fox jumps over the lazy dog.\n", i);
    if (f) fclose(f);
    snprintf(args, sizeof args,
             "lm --init-arch qwen2 --dim 32 --layers 1 --heads 4 --kv-heads 2 --ffn 48 --merges 40 "
             "--data '%s' --out '%s' --steps 6 --batch 2 --seq-len 24 --lr 3e-3 --threads 1 --save-dtype bf16",
             p, lm);
    int rc = run(args, log);
    CHECK(rc == 0 && file_has(log, "step 6/6 loss") && file_has(log, "tok/s") && file_has(log, "grad-norm"),
          "lm run exit %d", rc);
    CHECK(exists(lm, "model.safetensors") && exists(lm, "config.json") && exists(lm, "tokenizer.json") &&
              exists(lm, "generation_config.json") && exists(lm, "trainer_state.json"),
          "lm checkpoint files");
    snprintf(p, sizeof p, "%s/config.json", lm);
    CHECK(file_has(p, "\"torch_dtype\": \"bfloat16\""), "config.json names the saved dtype (bf16)");

    snprintf(p, sizeof p, "%s/pairs.jsonl", tmp);
    f = fopen(p, "w");
    for (int i = 0; f && i < 6; i++)
        fprintf(f, "{\"prompt\":\"Q%d\",\"chosen\":\"yes indeed\",\"rejected\":\"no\"}\n", i);
    if (f) fclose(f);
    snprintf(args, sizeof args,
             "arm --model '%s' --pairs '%s' --beta-r 0.5 --out '%s' --steps 4 --batch 2 --seq-len 24 "
             "--lora-rank 2 --lora-alpha 4 --lora-targets q_proj,v_proj,down_proj --save-every 2 --threads 1",
             lm, p, arm);
    rc = run(args, log);
    CHECK(rc == 0 && file_has(log, "margin") && exists(arm, "adapter_config.json") &&
              exists(arm, "adapter_model.safetensors") && exists(arm, "checkpoint-2/trainer_state.safetensors"),
          "arm run exit %d", rc);
    snprintf(p, sizeof p, "%s/adapter_config.json", arm);
    CHECK(file_has(p, "\"down_proj\"") && file_has(p, "\"LORA\""), "adapter_config targets");

    /* resume from checkpoint-2: the last step's log line equals the first run's */
    char first_last[256] = "";
    {
        char *buf = NULL;
        size_t len = 0;
        if (!gn_fs_read_file(log, 1 << 24, &buf, &len, NULL)) {
            char *s = strstr(buf, "step 4/4 loss ");
            char *e = s ? strstr(s, " tok/s") : NULL;
            if (s && e) snprintf(first_last, sizeof first_last, "%.*s", (int)(e - s), s);
        }
        gn_free(buf);
    }
    snprintf(p, sizeof p, "%s/pairs.jsonl", tmp);
    snprintf(args, sizeof args,
             "arm --model '%s' --pairs '%s' --beta-r 0.5 --out '%s' --steps 4 --batch 2 --seq-len 24 "
             "--lora-rank 2 --lora-alpha 4 --lora-targets q_proj,v_proj,down_proj --threads 1 "
             "--resume '%s/checkpoint-2'", lm, p, res, arm);
    rc = run(args, log);
    CHECK(rc == 0 && first_last[0] && file_has(log, first_last) && !file_has(log, "step 2/4"),
          "resumed run exit %d, want '%s'", rc, first_last);

    /* bad data: file:line */
    f = fopen(p, "w");
    if (f) {
        fputs("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\",\"chosen\":3}\n", f);
        fclose(f);
    }
    snprintf(args, sizeof args, "arm --model '%s' --pairs '%s' --out '%s/bad' --steps 1", lm, p, tmp);
    rc = run(args, log);
    CHECK(rc == 1 && file_has(log, "pairs.jsonl:2:") && file_has(log, "chosen"), "bad pairs exit %d", rc);
    rc = run("lm --data x --out y", log);
    CHECK(rc == 2 && file_has(log, "--init-arch"), "missing model exit %d", rc);
    rc = run("lm --model x --data y --out z --lr nope", log);
    CHECK(rc == 2 && file_has(log, "--lr"), "bad number exit %d", rc);
    tt_rmrf(tmp);
    GN_TEST_MAIN_END();
}
