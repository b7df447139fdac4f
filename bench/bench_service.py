#!/usr/bin/env python3
"""bench_service.py — GenARM Serve throughput through the whole service
(redis-server, base_worker, one reward_worker, coordinator as real processes
on loopback; random models with the real Llama-2 tokenizer, 32000 columns).

  (a) guided (base + 1 ARM) vs base-only tokens/s at 1 and 32 streams, in one
      run, and the share of each step spent outside model compute:
        step         coordinator's wall time per step (its /metrics counters)
        wait         last send .. last reply (worker compute + ZeroMQ + the
                     workers' (de)serialization)
        compute      the workers' own forward-pass time for the step, as they
                     report it (StepResponse.compute_us; the slowest worker,
                     since they run in parallel)
        outside      1 - compute / step  (serialization, ZeroMQ, combining,
                     sampling, scheduling, and waiting for a CPU on a busy
                     machine)
        client       sse: each stream read as Server-Sent Events, token by
                     token; whole: the completion in one response (the
                     client then wakes once per request, not per token)
        inproc       for reference: the same models' decode step in one
                     process (genarm generate -n B), base, and for guided the
                     extra time of the ARM
  (b) aggregate guided tokens/s at 1, 8 and 32 concurrent streams.

usage: bench/bench_service.py --build BUILD [--dim 256 --layers 4 --ffn 768 --heads 4 --kv-heads 2]
                              [--tokens 48] [--threads 1] [--sample-threads 1]
Prints a table; takes about a minute on a 2-core machine. The default model is
tiny (its step is about a millisecond, so fixed per-step costs weigh heavily);
--dim 768 --layers 12 --ffn 2048 --heads 12 --kv-heads 12 is bench_cpu's
~100M-parameter shape.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import test_e2e as e2e  # noqa: E402  (the process harness)


def metrics(s):
    with urllib.request.urlopen("http://%s:%d/metrics" % (s.host, s.port), timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name in ("steps_total", "step_seconds_total", "step_wait_seconds_total", "step_compute_seconds_total",
                 "sampled_tokens_total"):
        m = re.search(r"^genarm:coordinator_%s(?:\{[^}]*\})? ([0-9.eE+-]+)$" % name, text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def run_streams(s, n, body, key, stream=True):
    res = [None] * n

    def one(i):
        if stream:
            res[i] = s.stream(dict(body, seed=i), key)
        else:
            st, text = s.post("/v1/completions", dict(body, seed=i), key)
            res[i] = (st, text, None, 0, None if st == 200 else text)

    t0 = time.time()
    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.time() - t0
    bad = [r for r in res if r[0] != 200 or r[4] is not None]
    if bad:
        raise RuntimeError("stream failed: %r" % (bad[0],))
    return wall


def phase(s, n, body, key, rounds=1, stream=True):
    m0 = metrics(s)
    wall = 0.0
    for _ in range(rounds):
        wall += run_streams(s, n, body, key, stream)
    m1 = metrics(s)
    d = {k: m1[k] - m0[k] for k in m0}
    return {"wall": wall, "tokens": d["sampled_tokens_total"], "steps": d["steps_total"],
            "step_s": d["step_seconds_total"], "wait_s": d["step_wait_seconds_total"],
            "compute_s": d["step_compute_seconds_total"]}


def inproc_step_ms(s, arm, batch, tokens, threads):
    """Per-step decode time (ms) of the models in one process for this batch."""
    argv = [os.path.join(s.b, "tools/genarm"), "generate", "--model", s.base, "--prompt", "Benchmark prompt",
            "--max-tokens", str(tokens), "--temperature", "0.8", "--ignore-eos", "--no-stream", "-n", str(batch),
            "--threads", str(threads)]
    if arm:
        argv[4:4] = ["--arm", arm + ":1.0"]
    r = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(r"decode ([0-9.]+) tokens/s", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError("genarm generate: " + r.stderr)
    return 1000.0 * batch / float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-threads", type=int, default=1, help="coordinator sampling threads")
    a = ap.parse_args()
    os.environ["GN_E2E_SAMPLE_THREADS"] = str(a.sample_threads)
    e2e.WORK = tempfile.mkdtemp(prefix="gn_bench_")
    import atexit
    atexit.register(e2e.cleanup)

    s = e2e.Service(os.path.abspath(a.build))
    orig = s.make_model

    def make_model(name, seed, std):  # bigger than the test's models
        d = os.path.join(e2e.WORK, name)
        subprocess.run([os.path.join(s.b, "tools/genarm-make-model"), "--arch", "llama", "--out", d,
                        "--tokenizer-from", os.path.join(s.b, "fixtures/tokenizers/llama2"), "--dim", str(a.dim),
                        "--layers", str(a.layers), "--heads", str(a.heads), "--kv-heads", str(a.kv_heads), "--ffn", str(a.ffn),
                        "--seed", str(seed), "--std", str(std)], check=True, capture_output=True)
        return d
    s.make_model = make_model
    del orig
    s.start()
    base_body = {"model": "tiny", "prompt": "Benchmark prompt", "max_tokens": a.tokens, "temperature": 0.8,
                 "ignore_eos": True}
    guided_body = dict(base_body, profile="pa")
    # warm-up
    run_streams(s, 2, guided_body, s.key1)
    rows = []
    print("GenARM Serve bench: llama dim %d, %d layers, %d/%d heads, ffn %d, vocab 32000, %d tokens/stream, "
          "%d thread(s)/worker, %d sampling thread(s)" % (a.dim, a.layers, a.heads, a.kv_heads, a.ffn, a.tokens,
                                                          a.threads, a.sample_threads))
    print()
    print("(a) one stream, guided vs base-only, per step")
    print("%-10s %5s %-6s %9s %9s %9s %11s %9s %10s" % ("mode", "batch", "client", "tok/s", "step ms", "wait ms",
                                                       "compute ms", "outside", "inproc ms"))
    cmp_base = {}
    for batch in (1, 32):
        cb = inproc_step_ms(s, None, batch, a.tokens, a.threads)
        cg = inproc_step_ms(s, s.arm_a1, batch, a.tokens, a.threads)
        cmp_base[batch] = (cb, max(cb, cg - cb))
        for mode, body in (("base-only", base_body), ("guided", guided_body)):
            for stream in (True, False):  # SSE per token, or the whole completion at the end
                p = phase(s, batch, body, s.key1, rounds=2 if batch == 1 else 1, stream=stream)
                step_ms = 1000.0 * p["step_s"] / max(p["steps"], 1)
                wait_ms = 1000.0 * p["wait_s"] / max(p["steps"], 1)
                comp = 1000.0 * p["compute_s"] / max(p["steps"], 1)
                ref = cmp_base[batch][0] if mode == "base-only" else cmp_base[batch][1]
                outside = max(0.0, 1.0 - comp / step_ms) if step_ms > 0 else 0.0
                print("%-10s %5d %-6s %9.1f %9.2f %9.2f %11.2f %8.1f%% %10.2f" % (
                    mode, batch, "sse" if stream else "whole", p["tokens"] / p["wall"], step_ms, wait_ms, comp,
                    100.0 * outside, ref))
                rows.append((mode, batch, p))
    print()
    print("(b) aggregate guided tokens/s by concurrent streams")
    print("%8s %9s %9s" % ("streams", "tok/s", "step ms"))
    for n in (1, 8, 32):
        p = phase(s, n, guided_body, s.key1)
        print("%8d %9.1f %9.2f" % (n, p["tokens"] / p["wall"], 1000.0 * p["step_s"] / max(p["steps"], 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
