#!/usr/bin/env python3
"""bench_service.py — GenARM Serve through the whole service: redis-server,
one base_worker, one reward_worker and coordinators as real processes on
loopback; random models with a real tokenizer (Llama-2: 32,000 columns, or
Llama-3: 128,256).

For every row format (--rows, one coordinator each) and batch (--batches),
B concurrent guided requests (base + 1 ARM) run to the end, and the
coordinators' own counters give, per step:

  step      the coordinator's wall time per step (plan, exchange, fetches,
            draws, streaming)
  compute   the workers' forward pass with its log-softmax, as they report it
            (StepResponse.compute_us; the slowest worker). Candidate
            selection, packing and transfer are NOT compute.
  outside   1 - compute / step: everything the exchange adds (selection,
            packing, ZeroMQ, unpacking, fetches, combining, sampling,
            scheduling, waiting for a CPU on a busy machine), split into
            workers (first send to last reply, less compute: selection,
            packing, transfer) and coord (the rest of the step: drawing,
            streaming, planning)
  B/seq     bytes of worker replies (steps and fetches) per sequence-step
  fetch     share of draws (sequence-steps) that fetched missing values or
            whole rows first
  tok/s     generated tokens per second through the service (whole
            completions: the client wakes once per request)
  inproc    `genarm generate -n B` with the same models and ARM in one
            process, tokens/s, side by side in the same run

Then one batch over tcp:// and over ipc:// for the f32 rows (the heaviest),
which tells what crossing TCP costs on one host.

usage: bench/bench_service.py --build BUILD [--vocab 32000|128256] [--batches 1,8,32,64]
         [--rows sparse,f32] [--dim 768 --layers 12 --ffn 2048 --heads 12 --kv-heads 12]
         [--arm-shape DIM,LAYERS,FFN,HEADS,KV_HEADS] [--head-std 0.2] [--tokens 24] [--threads 1]
         [--sample-threads 1] [--transport-batch 32] [--device cpu|cuda:0] [--top-p 0.9] [--temperature 0.7]
--head-std gives the models peaked next-token rows, as trained models have (the
default 0 keeps genarm-make-model's nearly flat rows: the worst case for sparse
rows, which then fall back to dense ones). The ARM is a LoRA adapter of the
base by default (trained ARMs stay close to the model they were trained
from); --arm-shape makes it a model of its own with that shape instead (a
small ARM guiding a large base). Sampling: T 0.7, top-p 0.9 by default.
tests/gpu/check.sh runs it with --device cuda:0 on a 7B base and a 1B ARM.
"""
import argparse
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

TOKENIZERS = {32000: "llama2", 128256: "llama3"}
COUNTERS = ("coordinator_steps_total", "coordinator_step_seconds_total", "coordinator_step_wait_seconds_total",
            "coordinator_step_compute_seconds_total", "coordinator_sampled_tokens_total",
            "exchange_received_bytes_total", "exchange_fetches_total", "exchange_rows_total")


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    out = {k: 0.0 for k in COUNTERS}
    for line in text.splitlines():
        m = re.match(r"^genarm:(\w+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) in out:
            out[m.group(1)] += float(m.group(2))  # summed over label values
    return out


class Bench:
    def __init__(self, a):
        self.a = a
        self.b = os.path.abspath(a.build)
        self.s = e2e.Service(self.b)  # adm / post helpers
        self.s.host = "127.0.0.1"

    def make_model(self, name, seed, std, shape=None, lora=None):
        d = os.path.join(e2e.WORK, name)
        dim, layers, ffn, heads, kv = shape or (self.a.dim, self.a.layers, self.a.ffn, self.a.heads, self.a.kv_heads)
        argv = [os.path.join(self.b, "tools/genarm-make-model"), "--arch", "llama", "--out", d, "--tokenizer-from",
                os.path.join(self.b, "fixtures/tokenizers", TOKENIZERS[self.a.vocab]), "--dim", str(dim),
                "--layers", str(layers), "--heads", str(heads), "--kv-heads", str(kv), "--ffn", str(ffn),
                "--seed", str(seed), "--std", str(std)]
        if self.a.head_std > 0:
            argv += ["--head-std", str(self.a.head_std)]
        if lora:
            argv += ["--lora-out", lora]
        subprocess.run(argv, check=True, capture_output=True)
        return d

    def start(self):
        a, s = self.a, self.s
        if a.arm_shape:
            self.base = self.make_model("base", 1, 0.02)
            self.arm = self.make_model("arm", 2, 0.02, shape=[int(x) for x in a.arm_shape.split(",")])
            self.arm_cli = ["--arm", self.arm + ":1.0"]
        else:  # the ARM: a LoRA adapter of the base
            self.arm = os.path.join(e2e.WORK, "arm_adapter")
            self.base = self.make_model("base", 1, 0.02, lora=self.arm)
            self.arm_cli = ["--arm", self.base + ":1.0", "--lora", self.arm]
        rport = e2e.free_port()
        s.redis = "127.0.0.1:%d" % rport
        e2e.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                            "--appendonly", "no"])
        for _ in range(100):
            try:
                s.adm("tenant", "list")
                break
            except RuntimeError:
                time.sleep(0.05)
        s.adm("arm", "register", "a", "--version", "1", "--path", self.arm)
        s.adm("tenant", "add", "t1")
        self.key = s.adm("key", "create", "t1")
        s.adm("profile", "set", "t1", "pa", "--arm", "a:1.0", "--beta", "1.0")
        w = e2e.WORK
        e2e.spawn("base_worker", [os.path.join(self.b, "base_worker/base_worker"), "--model", self.base, "--bind",
                                  "tcp://127.0.0.1:*,ipc://%s/base.sock" % w, "--threads", str(a.threads),
                                  "--device", a.device,
                                  "--max-seqs", "64", "--ready-file", os.path.join(w, "base.ep")])
        e2e.spawn("reward_worker", [os.path.join(self.b, "reward_worker/reward_worker"), "--bind",
                                    "tcp://127.0.0.1:*,ipc://%s/rw.sock" % w, "--redis", s.redis, "--worker-id", "rw",
                                    "--arm", "a", "--threads", str(a.threads), "--capacity", "64", "--device", a.device,
                                    "--ready-file", os.path.join(w, "rw.ep")])
        self.base_tcp = e2e.wait_file(os.path.join(w, "base.ep"), 600).split(",")[0]
        self.base_ipc = "ipc://%s/base.sock" % w
        e2e.wait_file(os.path.join(w, "rw.ep"), 600)
        self.coords = {}

    def coordinator(self, name, rows, base_ep, ipc):
        if name in self.coords:
            return self.coords[name]
        w = e2e.WORK
        argv = [os.environ.get("GN_E2E_COORDINATOR") or os.path.join(self.b, "coordinator/coordinator"),
                "--listen", "127.0.0.1:0", "--redis", self.s.redis, "--base", base_ep, "--base-model", self.base,
                "--model-id", "bench", "--id", "bench-" + name, "--no-share", "--max-batch", "64",
                "--sample-threads", str(self.a.sample_threads), "--rows", rows,
                "--ready-file", os.path.join(w, name + ".addr")]
        if not ipc:
            argv.append("--no-ipc")
        e2e.spawn("coordinator_" + name, argv)
        port = int(e2e.wait_file(os.path.join(w, name + ".addr"), 120).rsplit(":", 1)[1])
        self.coords[name] = port
        return port

    def run(self, port, n, body):
        res = [None] * n

        def one(i):
            res[i] = self.s.post("/v1/completions", dict(body, seed=i), self.key, port=port)
        t0 = time.time()
        th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.time() - t0
        bad = [r for r in res if r[0] != 200]
        if bad:
            raise RuntimeError("request failed: %r" % (bad[0],))
        return wall

    def phase(self, port, n):
        body = {"model": "bench", "prompt": "Benchmark prompt", "max_tokens": self.a.tokens,
                "temperature": self.a.temperature, "top_p": self.a.top_p, "ignore_eos": True, "profile": "pa"}
        self.run(port, min(n, 2), dict(body, max_tokens=2))  # connections, sparse modes warmed up
        m0 = metrics(port)
        wall = self.run(port, n, body)
        m1 = metrics(port)
        d = {k: m1[k] - m0[k] for k in m0}
        d["wall"] = wall
        return d

    def inproc(self, n):
        argv = [os.path.join(self.b, "tools/genarm"), "generate", "--model", self.base] + self.arm_cli + [
            "--beta", "1.0", "--prompt", "Benchmark prompt", "--max-tokens", str(self.a.tokens),
            "--temperature", str(self.a.temperature), "--top-p", str(self.a.top_p), "--ignore-eos", "--no-stream",
            "-n", str(n), "--threads", str(self.a.threads), "--device", self.a.device]
        r = subprocess.run(argv, capture_output=True, text=True)
        m = re.search(r"decode ([0-9.]+) tokens/s", r.stderr)
        if r.returncode != 0 or not m:
            raise RuntimeError("genarm generate: " + r.stderr)
        return float(m.group(1))


def row(label, n, d, ref):
    steps = max(d["coordinator_steps_total"], 1)
    toks = max(d["coordinator_sampled_tokens_total"], 1)
    step_ms = 1000.0 * d["coordinator_step_seconds_total"] / steps
    comp_ms = 1000.0 * d["coordinator_step_compute_seconds_total"] / steps
    outside = max(0.0, 1.0 - comp_ms / step_ms) if step_ms > 0 else 0.0
    fetch = d["exchange_fetches_total"] / toks
    tps = d["coordinator_sampled_tokens_total"] / d["wall"]
    wait_ms = 1000.0 * d["coordinator_step_wait_seconds_total"] / steps
    print("%-8s %5d %9.1f %9.2f %10.2f %8.1f%% %7.1f%% %6.1f%% %10.0f %7.1f%% %9.1f %8.2fx" % (
        label, n, tps, step_ms, comp_ms, 100.0 * outside, 100.0 * max(0.0, wait_ms - comp_ms) / step_ms,
        100.0 * max(0.0, step_ms - wait_ms) / step_ms, d["exchange_received_bytes_total"] / toks, 100.0 * fetch,
        ref, tps / ref if ref else 0.0), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--vocab", type=int, default=32000, choices=sorted(TOKENIZERS))
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--rows", default="sparse,f32")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-std", type=float, default=0.0)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-threads", type=int, default=1)
    ap.add_argument("--transport-batch", type=int, default=32, help="batch of the tcp vs ipc comparison (0: skip)")
    ap.add_argument("--arm-shape", default="", help="DIM,LAYERS,FFN,HEADS,KV_HEADS: an ARM model of its own")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    a = ap.parse_args()
    e2e.WORK = tempfile.mkdtemp(prefix="gn_bench_")
    import atexit
    atexit.register(e2e.cleanup)
    bench = Bench(a)
    bench.start()
    batches = [int(x) for x in a.batches.split(",") if x]
    modes = [x for x in a.rows.split(",") if x]
    print("GenARM Serve bench on %s: llama dim %d, %d layers, %d/%d heads, ffn %d, %d columns (%s tokenizer), "
          "lm_head std %s, %d tokens/request, T %g top-p %g, %d thread(s)/worker, %d sampling thread(s); guided: "
          "base + 1 ARM (%s)" % (
              a.device, a.dim, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab, TOKENIZERS[a.vocab],
              a.head_std if a.head_std > 0 else "0.02 (flat rows)", a.tokens, a.temperature, a.top_p, a.threads,
              a.sample_threads, "shape " + a.arm_shape if a.arm_shape else "a LoRA adapter of the base"))
    print()
    print("%-8s %5s %9s %9s %10s %9s %8s %7s %10s %8s %9s %9s" % (
        "rows", "batch", "tok/s", "step ms", "compute ms", "outside", "workers", "coord", "B/seq", "fetch", "inproc",
        "vs inproc"))
    ref = {n: bench.inproc(n) for n in batches}
    for mode in modes:
        port = bench.coordinator(mode, mode, bench.base_tcp, ipc=False)
        for n in batches:
            row(mode, n, bench.phase(port, n), ref[n])
    if a.transport_batch:
        n = a.transport_batch
        print()
        print("transport, f32 rows, batch %d, base and reward worker on this host: tcp:// and ipc:// runs "
              "alternated three times, the median last" % n)
        ref_n = ref.get(n) or bench.inproc(n)
        tcp = bench.coordinator("f32", "f32", bench.base_tcp, ipc=False)
        ipc = bench.coordinator("f32-ipc", "f32", bench.base_ipc, ipc=True)
        runs = {"tcp": [], "ipc": []}
        for _ in range(3):
            for label, port in (("tcp", tcp), ("ipc", ipc)):
                d = bench.phase(port, n)
                runs[label].append(d)
                row(label, n, d, ref_n)
        for label in ("tcp", "ipc"):
            ds = sorted(runs[label], key=lambda d: d["coordinator_step_seconds_total"] / max(d["coordinator_steps_total"], 1))
            row(label + " med", n, ds[1], ref_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
