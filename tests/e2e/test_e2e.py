#!/usr/bin/env python3
"""test_e2e.py — GenARM Serve end to end: a real redis-server, genarm-admin,
one base_worker, two reward_workers and the coordinator as real processes on
random loopback ports, tiny random models with the real Llama-2 tokenizer.

 (a) output streamed through the service is identical to the single-process
     `genarm generate` for the same models, profile and seed (T=0 and T>0);
 (b) two tenants with different profiles, interleaved: each matches the
     single-process result of its own profile; a tenant cannot use the
     other's profile;
 (c) promoting a new ARM version while 16 streams run: none fails, each
     finishes on exactly one version (its text equals the single-process
     result with v1, token for token), requests started after the promotion
     use v2;
 (d) unknown profile 404, bad key 401, malformed body 400, each with an
     OpenAI error object;
 (e) a reward worker killed mid-stream fails only the streams that need it;
 (f) an ARM no worker holds: the request is parked until a reward worker
     loads it; one no worker can load fails after the bounded wait;
 (g) SIGTERM drains: the running stream finishes, new requests get 503;
 (h) chat requests equal the single-process backend (--inproc);
 (i) a client that disconnects mid-stream has its sequence aborted;
 (k) a reward worker at capacity: the requests it refuses wait and run;
 (l) two ARMs that are LoRA adapters on one backbone, served by one reward
     worker that loads the backbone once;
 (j) two more coordinators share requests through the Redis queue: one with
     room for a single sequence queues the rest, the other runs them and
     streams them back (identical to the single-process result); a client
     that disconnects cancels its request on the other coordinator; one
     that drains (SIGTERM) finishes the requests it runs for others first;
     one killed while running another's request ends that stream with an
     error and the service goes on.

usage: test_e2e.py --build BUILD_DIR   (exit 77 = skipped: no redis-server)

GN_E2E_DEVICE=cuda:0 (tests/gpu's test_cuda_service, with GN_E2E_PARTS=a): the
base and reward workers and the single-process reference `genarm generate`
run on that device (exit 77 where it cannot be created).
"""
import argparse
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

DEVICE = os.environ.get("GN_E2E_DEVICE", "cpu")  # --device of the workers and of `genarm generate`
PASSED = 0
FAILED = 0
PROCS = []
WORK = None


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL: " + what, file=sys.stderr, flush=True)
    return cond


def cleanup():
    for p in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    t = time.time() + 5
    for p in PROCS:
        try:
            p.wait(max(0.1, t - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    if WORK and (FAILED or os.environ.get("GN_TEST_VERBOSE")):
        for f in sorted(os.listdir(WORK)):
            if f.endswith(".log"):
                print("== " + f, file=sys.stderr)
                with open(os.path.join(WORK, f), errors="replace") as fh:
                    print("".join(fh.readlines()[-40:]), file=sys.stderr)
    if WORK and not os.environ.get("GN_TEST_KEEP"):
        shutil.rmtree(WORK, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _die_with_parent():
    try:  # PR_SET_PDEATHSIG = 1: the child gets SIGKILL when the test dies
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def spawn(name, argv):
    log = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    PROCS.append(p)
    return p


def wait_file(path, secs=60):
    t = time.time() + secs
    while time.time() < t:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return f.read().strip()
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + path)


def set_template(model_dir, tmpl):
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = tmpl
    with open(path, "w") as f:
        json.dump(cfg, f)


class Service:
    def __init__(self, build):
        self.b = build
        self.admin = [os.path.join(build, "tools/genarm-admin")]

    def adm(self, *args):
        r = subprocess.run(self.admin + ["--redis", self.redis] + list(args), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("genarm-admin %s: %s" % (" ".join(args), r.stderr))
        return r.stdout.strip()

    def make_model(self, name, seed, std):
        d = os.path.join(WORK, name)
        subprocess.run([os.path.join(self.b, "tools/genarm-make-model"), "--arch", "llama", "--out", d,
                        "--tokenizer-from", os.path.join(self.b, "fixtures/tokenizers/llama2"), "--dim", "64",
                        "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--seed", str(seed),
                        "--std", str(std)], check=True, capture_output=True)
        return d

    def device_ok(self):
        """Whether DEVICE can be created here (a one-token `genarm generate` on it)."""
        r = subprocess.run([os.path.join(self.b, "tools/genarm"), "generate", "--model", self.base, "--prompt",
                            "hi", "--max-tokens", "1", "--device", DEVICE], capture_output=True, text=True)
        if r.returncode != 0:
            print("SKIP: --device %s: %s" % (DEVICE, r.stderr.strip()[:300]))
        return r.returncode == 0

    def start(self):
        self.base = self.make_model("base", 1, 0.02)
        if DEVICE != "cpu" and not self.device_ok():
            raise DeviceMissing()
        self.arm_a1 = self.make_model("arm_a1", 2, 0.15)
        self.arm_a2 = self.make_model("arm_a2", 4, 0.15)
        self.arm_b1 = self.make_model("arm_b1", 3, 0.15)
        # different chat templates for the base and ARM alpha v1 (same tokenizer): chat
        # prompts then differ per model, as ARCHITECTURE.md §1 says they may
        set_template(self.base, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                                "{% if add_generation_prompt %}[assistant] {% endif %}")
        set_template(self.arm_a1, "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                  "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        rport = free_port()
        self.redis = "127.0.0.1:%d" % rport
        spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                        "--appendonly", "no"])
        for _ in range(100):
            try:
                self.adm("tenant", "list")
                break
            except RuntimeError:
                time.sleep(0.05)
        self.adm("arm", "register", "alpha", "--version", "1", "--path", self.arm_a1)
        self.adm("arm", "register", "alpha", "--version", "2", "--path", self.arm_a2)
        self.adm("arm", "register", "beta", "--version", "1", "--path", self.arm_b1)
        self.adm("tenant", "add", "t1")
        self.adm("tenant", "add", "t2")
        self.key1 = self.adm("key", "create", "t1")
        self.key2 = self.adm("key", "create", "t2")
        self.adm("profile", "set", "t1", "pa", "--arm", "alpha:1.0", "--beta", "0.5")
        self.adm("profile", "set", "t2", "pb", "--arm", "beta:1.5", "--beta", "1.0")
        self.base_metrics = free_port()
        spawn("base_worker", [os.path.join(self.b, "base_worker/base_worker"), "--model", self.base, "--bind",
                              "tcp://127.0.0.1:*", "--threads", "1", "--device", DEVICE,
                              "--metrics-listen", "127.0.0.1:%d" % self.base_metrics,
                              "--ready-file", os.path.join(WORK, "base.ep")])
        for i, arm in ((1, "alpha"), (2, "beta")):
            spawn("reward_worker%d" % i,
                  [os.path.join(self.b, "reward_worker/reward_worker"), "--bind", "tcp://127.0.0.1:*", "--redis",
                   self.redis, "--worker-id", "rw%d" % i, "--arm", arm, "--threads", "1", "--heartbeat-ms", "300",
                   "--device", DEVICE, "--ready-file", os.path.join(WORK, "rw%d.ep" % i)])
        base_ep = self.base_ep = wait_file(os.path.join(WORK, "base.ep"))
        wait_file(os.path.join(WORK, "rw1.ep"))
        wait_file(os.path.join(WORK, "rw2.ep"))
        coord = os.environ.get("GN_E2E_COORDINATOR") or os.path.join(self.b, "coordinator/coordinator")
        spawn("coordinator", [coord, "--listen", "127.0.0.1:0", "--redis",
                              self.redis, "--base", base_ep, "--base-model", self.base, "--model-id", "tiny",
                              "--step-timeout-ms", "3000", "--arm-wait-ms", "4000", "--sample-threads",
                              os.environ.get("GN_E2E_SAMPLE_THREADS", "2"), "--ready-file", os.path.join(WORK, "coord.addr")])
        addr = wait_file(os.path.join(WORK, "coord.addr"))
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        # the single-process backend behind the same HTTP front, as a reference for chat
        spawn("coordinator_inproc", [coord, "--listen", "127.0.0.1:0", "--redis", self.redis, "--inproc",
                                     "--base-model", self.base, "--model-id", "tiny", "--threads", "1",
                                     "--ready-file", os.path.join(WORK, "inproc.addr")])
        self.inproc_port = int(wait_file(os.path.join(WORK, "inproc.addr")).rsplit(":", 1)[1])

    def post(self, path, body, key, raw=None, port=None):
        """Returns (status, text of the whole response)."""
        c = http.client.HTTPConnection(self.host, port or self.port, timeout=60)
        data = raw if raw is not None else json.dumps(body)
        hdr = {"Content-Type": "application/json"}
        if key:
            hdr["Authorization"] = "Bearer " + key
        c.request("POST", path, body=data, headers=hdr)
        r = c.getresponse()
        out = r.read().decode("utf-8", "replace")
        c.close()
        return r.status, out

    def stream(self, body, key, on_chunk=None, port=None, conn_out=None):
        """Streams a completion; returns (status, text, finish_reason, n_chunks, error).
        conn_out: a list that receives the connection (to close it from another thread)."""
        body = dict(body, stream=True)
        c = http.client.HTTPConnection(self.host, port or self.port, timeout=60)
        if conn_out is not None:
            conn_out.append(c)
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
        r = c.getresponse()
        if r.status != 200:
            out = r.read().decode()
            c.close()
            return r.status, out, None, 0, out
        text, finish, n, err, done = [], None, 0, None, False
        while True:
            try:
                line = r.readline()
            except (OSError, ValueError, AttributeError):  # closed from another thread
                break
            if not line:
                break
            line = line.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            obj = json.loads(payload)
            if "error" in obj:
                err = obj["error"]
                continue
            for ch in obj.get("choices", []):
                if ch.get("text"):
                    text.append(ch["text"])
                    n += 1
                    if on_chunk:
                        on_chunk(n)
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
        c.close()
        if not done and err is None:
            err = "stream ended without [DONE]"
        return 200, "".join(text), finish, n, err

    def cli(self, arm_dir, weight, beta, prompt, max_tokens, temperature, seed, ignore_eos=False):
        argv = [os.path.join(self.b, "tools/genarm"), "generate", "--model", self.base, "--arm",
                "%s:%s" % (arm_dir, weight), "--beta", str(beta), "--prompt", prompt, "--max-tokens",
                str(max_tokens), "--temperature", str(temperature), "--seed", str(seed), "--threads", "1",
                "--device", DEVICE]
        if ignore_eos:
            argv.append("--ignore-eos")
        r = subprocess.run(argv, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("genarm generate: " + r.stderr.decode())
        out = r.stdout.decode("utf-8")
        return out[:-1] if out.endswith("\n") else out


class DeviceMissing(Exception):
    pass


def error_object(status, body, want_status, what):
    ok = check(status == want_status, "%s: status %d, want %d (%s)" % (what, status, want_status, body[:200]))
    try:
        e = json.loads(body)["error"]
        check(isinstance(e.get("message"), str) and e["message"] and "type" in e and "code" in e,
              "%s: OpenAI error object, got %s" % (what, body[:200]))
    except (ValueError, KeyError, TypeError):
        check(False, "%s: body is not an OpenAI error object: %s" % (what, body[:200]))
    return ok


def test_a(s):
    prompt = "Once upon a time"
    for temp, seed in ((0, 0), (0.9, 7)):
        want = s.cli(s.arm_a1, 1.0, 0.5, prompt, 24, temp, seed)
        st, text, fin, n, err = s.stream({"model": "tiny", "prompt": prompt, "profile": "pa", "max_tokens": 24,
                                          "temperature": temp, "seed": seed}, s.key1)
        check(st == 200 and err is None, "(a) T=%g: status %d err %s" % (temp, st, err))
        check(text == want, "(a) T=%g: service %r != single process %r" % (temp, text, want))
        check(fin in ("length", "stop"), "(a) T=%g: finish_reason %r" % (temp, fin))
    # non-streamed, same result
    want = s.cli(s.arm_a1, 1.0, 0.5, prompt, 16, 0.7, 3)
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": prompt, "profile": "pa", "max_tokens": 16,
                                          "temperature": 0.7, "seed": 3}, s.key1)
    ok = check(st == 200, "(a) non-streamed status %d %s" % (st, body[:200]))
    if ok:
        j = json.loads(body)
        check(j["choices"][0]["text"] == want, "(a) non-streamed text %r != %r" % (j["choices"][0]["text"], want))
        check(j["usage"]["completion_tokens"] >= 1, "(a) usage block")
    # n = 2: choice i uses seed + i, both in one batch, like `genarm generate -n 2`
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": prompt, "profile": "pa", "max_tokens": 12,
                                          "temperature": 0.9, "seed": 40, "n": 2}, s.key1)
    argv = [os.path.join(s.b, "tools/genarm"), "generate", "--model", s.base, "--arm", s.arm_a1 + ":1.0", "--beta",
            "0.5", "--prompt", prompt, "--max-tokens", "12", "--temperature", "0.9", "--seed", "40", "-n", "2",
            "--threads", "1"]
    out = subprocess.run(argv, capture_output=True).stdout.decode()
    want = re.split(r"--- sample \d+ \(seed \d+\) ---\n", out)[1:]
    want = [w[:-1] if w.endswith("\n") else w for w in want]
    if check(st == 200 and len(want) == 2, "(a) n=2: status %d, %d CLI samples" % (st, len(want))):
        ch = sorted(json.loads(body)["choices"], key=lambda c: c["index"])
        check([c["text"] for c in ch] == want, "(a) n=2: %r != %r" % ([c["text"] for c in ch], want))


def test_b(s):
    prompts = ["The weather today", "In a distant land", "My favourite food"]
    jobs = []
    for i, p in enumerate(prompts):
        jobs.append(("t1", s.key1, "pa", s.arm_a1, 1.0, 0.5, p, 0.8, 10 + i))
        jobs.append(("t2", s.key2, "pb", s.arm_b1, 1.5, 1.0, p, 0.8, 20 + i))
    results = [None] * len(jobs)

    def run(i, jb):
        results[i] = s.stream({"model": "tiny", "prompt": jb[6], "profile": jb[2], "max_tokens": 20,
                               "temperature": jb[7], "seed": jb[8]}, jb[1])

    th = [threading.Thread(target=run, args=(i, jb)) for i, jb in enumerate(jobs)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for i, jb in enumerate(jobs):
        st, text, fin, n, err = results[i]
        want = s.cli(jb[3], jb[4], jb[5], jb[6], 20, jb[7], jb[8])
        check(st == 200 and err is None, "(b) %s/%s: status %d err %s" % (jb[0], jb[2], st, err))
        check(text == want, "(b) %s/%s %r: service %r != single process %r" % (jb[0], jb[2], jb[6], text, want))
    # the two profiles really steer differently
    check(results[0][1] != results[1][1], "(b) profiles pa and pb gave the same text")
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "x", "profile": "pb"}, s.key1)
    error_object(st, body, 404, "(b) tenant t1 using t2's profile")


def test_c(s):
    prompt = "A story about a dragon"
    n_streams, max_tokens = 16, 40
    results = [None] * n_streams
    started = threading.Semaphore(0)

    def run(i):
        first = [True]

        def on_chunk(_):
            if first[0]:
                first[0] = False
                started.release()
        results[i] = s.stream({"model": "tiny", "prompt": prompt, "profile": "pa", "max_tokens": max_tokens,
                               "temperature": 0.9, "seed": 100 + i, "ignore_eos": True}, s.key1, on_chunk)
        if first[0]:
            started.release()

    th = [threading.Thread(target=run, args=(i,)) for i in range(n_streams)]
    for t in th:
        t.start()
    for _ in range(n_streams):
        started.acquire(timeout=30)
    s.adm("arm", "promote", "alpha", "2")
    for t in th:
        t.join()
    # The text of each stream is the single-process result with v1, token for
    # token: the CPU kernels are batch-invariant (a sequence in a batch of 16
    # gets the bits it gets alone). The version itself is checked by the
    # coordinator on every step (SeqResult.model_version) and logged per
    # sequence (below).
    for i in range(n_streams):
        st, text, fin, n, err = results[i]
        check(st == 200 and err is None and fin == "length",
              "(c) stream %d: status %d finish %s err %s" % (i, st, fin, err))
        want = s.cli(s.arm_a1, 1.0, 0.5, prompt, max_tokens, 0.9, 100 + i)
        other = s.cli(s.arm_a2, 1.0, 0.5, prompt, max_tokens, 0.9, 100 + i)
        check(text == want and text != other, "(c) stream %d is not v1's text: %r vs v1 %r" % (i, text, want))
    # after the promotion: v2
    for seed in (1, 2):
        st, text, fin, n, err = s.stream({"model": "tiny", "prompt": prompt, "profile": "pa", "max_tokens": 16,
                                          "temperature": 0.9, "seed": seed, "ignore_eos": True}, s.key1)
        want2 = s.cli(s.arm_a2, 1.0, 0.5, prompt, 16, 0.9, seed, ignore_eos=True)
        check(st == 200 and err is None, "(c) after promotion: status %d err %s" % (st, err))
        check(text == want2, "(c) request after the promotion not on v2: %r != %r" % (text, want2))
    # the coordinator's log names exactly one version per sequence
    with open(os.path.join(WORK, "coordinator.log")) as f:
        lines = [l for l in f if "event=seq_done" in l and "alpha@" in l]
    check(all(re.search(r"arms=alpha@\d+\s*$", l) for l in lines), "(c) seq_done lines name one version each")
    on_v1 = [l for l in lines if "tokens=%d " % max_tokens in l and "finish=length" in l]
    check(len(on_v1) == n_streams and all("arms=alpha@1" in l for l in on_v1),
          "(c) the %d streams finished on alpha@1: %s" % (n_streams, on_v1[:3]))
    after = [l for l in lines if "tokens=16 " in l][-2:]
    check(len(after) == 2 and all("arms=alpha@2" in l for l in after), "(c) later requests on alpha@2: %s" % after)
    check(wait_for(lambda: metric(s.port, "genarm:arm_swap_duration_seconds_count") >= 1, 5),
          "(c) the reward worker's swap reached /metrics (arm_swap_duration_seconds)")


def test_f(s):
    """An ARM that no worker holds: the request is parked, a reward worker
    loads it on demand, the request resumes; an ARM no worker can load fails
    after the bounded wait with an error naming it."""
    s.adm("arm", "register", "gamma", "--version", "1", "--path", s.arm_b1)
    s.adm("profile", "set", "t1", "pg", "--arm", "gamma:1.0", "--beta", "1.0")
    want = s.cli(s.arm_b1, 1.0, 1.0, "Parked", 12, 0, 0)
    st, text, fin, n, err = s.stream({"model": "tiny", "prompt": "Parked", "profile": "pg", "max_tokens": 12,
                                      "temperature": 0}, s.key1)
    check(st == 200 and err is None, "(f) parked request: status %d err %s" % (st, err))
    check(text == want, "(f) parked request: %r != %r" % (text, want))
    bad = os.path.join(WORK, "not_a_model")
    os.makedirs(bad, exist_ok=True)
    shutil.copy(os.path.join(s.arm_b1, "tokenizer.json"), bad)
    s.adm("arm", "register", "delta", "--version", "1", "--path", bad)
    s.adm("profile", "set", "t1", "pd", "--arm", "delta:1.0", "--beta", "1.0")
    t = time.time()
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "x", "profile": "pd", "max_tokens": 4}, s.key1)
    check(st >= 500 and "delta" in body, "(f) unloadable ARM: status %d %s" % (st, body[:200]))
    check(time.time() - t < 15, "(f) the wait is bounded")
    time.sleep(1.0)  # the coordinator acknowledges the parked tokens the worker moved onto the stream
    out = s.adm("queue")
    check(re.search(r"^queued 0$", out, re.M) and re.search(r"^waiting_for_arm 0$", out, re.M),
          "(f) request stream and waiting lists drained: %r" % out)


def test_e(s):
    """A reward worker dies mid-stream: its sequences fail, the others finish."""
    res = {}
    started = threading.Semaphore(0)

    def run(key, prof, seed, mt):
        first = [True]

        def on_chunk(_):
            if first[0]:
                first[0] = False
                started.release()
        res[prof] = s.stream({"model": "tiny", "prompt": "Survive", "profile": prof, "max_tokens": mt,
                              "temperature": 0.5, "seed": seed, "ignore_eos": True}, key, on_chunk)
        if first[0]:
            started.release()

    th = [threading.Thread(target=run, args=(s.key1, "pa", 5, 60)),
          threading.Thread(target=run, args=(s.key2, "pb", 6, 400))]
    for t in th:
        t.start()
    started.acquire(timeout=30)
    started.acquire(timeout=30)
    os.kill(PROCS[3].pid, signal.SIGKILL)  # reward_worker2 (beta)
    for t in th:
        t.join()
    st, text, fin, n, err = res["pb"]
    check(err is not None or fin == "abort" or st >= 500, "(e) the stream on the dead worker failed: %s %s" % (fin, err))
    st, text, fin, n, err = res["pa"]
    check(st == 200 and err is None and fin == "length", "(e) the other stream finished: %s %s" % (fin, err))


def test_g(s):
    """SIGTERM drains: the running stream finishes, new requests get 503, exit 0."""
    res = {}
    started = threading.Semaphore(0)

    def run():
        first = [True]

        def on_chunk(_):
            if first[0]:
                first[0] = False
                started.release()
        res["r"] = s.stream({"model": "tiny", "prompt": "Drain", "profile": "pa", "max_tokens": 1500,
                             "temperature": 0, "ignore_eos": True}, s.key1, on_chunk)
        if first[0]:
            started.release()

    t = threading.Thread(target=run)
    t.start()
    started.acquire(timeout=30)
    coord = PROCS[4]  # the distributed coordinator
    coord.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    try:
        st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "x", "profile": "pa"}, s.key1)
        check(st == 503, "(g) a new request while draining: %d %s" % (st, body[:200]))
    except OSError as e:
        check(False, "(g) the server stopped listening while draining: %r" % e)
    t.join()
    st, text, fin, n, err = res["r"]
    check(st == 200 and err is None and fin == "length" and n > 100,
          "(g) the running stream finished: %s %s %d chunks" % (fin, err, n))
    try:
        rc = coord.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, "(g) coordinator exit status %r" % rc)


def test_h(s):
    """Chat: each model renders its own prompt; the distributed service equals
    the single-process backend (same HTTP front, --inproc) token for token."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    for temp, seed in ((0, 0), (0.8, 11)):
        body = {"model": "tiny", "messages": msgs, "profile": "pa", "max_tokens": 20, "temperature": temp,
                "seed": seed}
        st1, b1 = s.post("/v1/chat/completions", body, s.key1)
        st2, b2 = s.post("/v1/chat/completions", body, s.key1, port=s.inproc_port)
        if not check(st1 == 200 and st2 == 200, "(h) chat status %d / %d: %s %s" % (st1, st2, b1[:200], b2[:200])):
            continue
        c1 = json.loads(b1)["choices"][0]["message"]["content"]
        c2 = json.loads(b2)["choices"][0]["message"]["content"]
        check(c1 == c2, "(h) chat T=%g: service %r != single process %r" % (temp, c1, c2))
        check(json.loads(b1)["usage"]["prompt_tokens"] == json.loads(b2)["usage"]["prompt_tokens"],
              "(h) chat prompt_tokens differ")


def test_i(s):
    """A client that disconnects mid-stream: its sequence is aborted (and
    released on the workers) while the stream of another client goes on."""
    c = http.client.HTTPConnection(s.host, s.port, timeout=30)
    c.request("POST", "/v1/completions", body=json.dumps({"model": "tiny", "prompt": "Bye", "profile": "pa",
                                                          "max_tokens": 1500, "ignore_eos": True, "stream": True}),
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + s.key1})
    r = c.getresponse()
    check(r.status == 200, "(i) stream status %d" % r.status)
    got = False
    while not got:
        line = r.readline()
        if not line:
            break
        got = line.startswith(b"data: {")
    check(got, "(i) a first chunk")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    t = time.time() + 10
    aborted = False
    while time.time() < t and not aborted:
        with open(os.path.join(WORK, "coordinator.log")) as f:
            aborted = any("event=seq_done" in l and "finish=abort" in l for l in f)
        time.sleep(0.1)
    check(aborted, "(i) the disconnected stream's sequence was aborted")
    st, text, fin, n, err = s.stream({"model": "tiny", "prompt": "Still here", "profile": "pa", "max_tokens": 8,
                                      "temperature": 0}, s.key1)
    check(st == 200 and err is None, "(i) the service goes on: %d %s" % (st, err))


def log_has(name, *words):
    with open(os.path.join(WORK, name + ".log")) as f:
        return any(all(w in l for w in words) for l in f)


def wait_for(cond, secs):
    t = time.time() + secs
    while time.time() < t:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def metric(port, name):
    """The value of one sample (name with its labels) on a coordinator's /metrics, 0 when absent."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        for l in r.read().decode().splitlines():
            if l.startswith(name + " "):
                return float(l.split()[-1])
    return 0.0


def shared_total(port, role):
    return metric(port, 'genarm:shared_requests_total{role="%s"}' % role)


def test_j(s):
    """Coordinators sharing requests (runs after (g): the first coordinator is gone)."""
    coord = os.environ.get("GN_E2E_COORDINATOR") or os.path.join(s.b, "coordinator/coordinator")
    common = ["--redis", s.redis, "--base", s.base_ep, "--base-model", s.base, "--model-id", "tiny",
              "--step-timeout-ms", "3000", "--peer-timeout-ms", "1500", "--listen", "127.0.0.1:0"]
    spawn("coordinator_a", [coord, "--id", "coord-a", "--max-batch", "1", "--arm-wait-ms", "15000", "--ready-file",
                            os.path.join(WORK, "ca.addr")] + common)
    pb = spawn("coordinator_b", [coord, "--id", "coord-b", "--max-batch", "8", "--ready-file",
                                 os.path.join(WORK, "cb.addr")] + common)
    pa = int(wait_file(os.path.join(WORK, "ca.addr")).rsplit(":", 1)[1])
    pbp = int(wait_file(os.path.join(WORK, "cb.addr")).rsplit(":", 1)[1])
    # six concurrent requests to A (room for one): the rest go through the queue
    prompt = "The queue"
    want = {seed: s.cli(s.arm_b1, 1.5, 1.0, prompt, 16, 0.9, seed) for seed in range(6)}
    res = {}

    def run(seed):
        res[seed] = s.stream({"model": "tiny", "prompt": prompt, "profile": "pb", "max_tokens": 16,
                              "temperature": 0.9, "seed": seed}, s.key2, port=pa)
    th = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for seed in range(6):
        st, text, fin, n, err = res[seed]
        check(st == 200 and err is None, "(j) seed %d: %s %s" % (seed, st, err))
        check(text == want[seed], "(j) seed %d: shared %r != single process %r" % (seed, text, want[seed]))
    exported, executed = shared_total(pa, "exported"), shared_total(pbp, "executed")
    check(exported >= 4, "(j) A queued %g of 6 requests" % exported)
    check(executed >= 1, "(j) B ran %g of A's requests" % executed)

    # A's one slot held by a request waiting (up to 15 s) for an ARM no worker can load
    bad = os.path.join(WORK, "not_a_model_j")
    os.makedirs(bad, exist_ok=True)
    shutil.copy(os.path.join(s.arm_b1, "tokenizer.json"), bad)
    s.adm("arm", "register", "epsilon", "--version", "1", "--path", bad)
    hold = {}
    th = threading.Thread(target=lambda: hold.update(r=s.post(
        "/v1/completions", {"model": "tiny", "prompt": "hold", "max_tokens": 4,
                            "reward_models": [{"name": "epsilon", "weight": 1.0}]}, s.key1, port=pa)))
    th.start()
    check(wait_for(lambda: log_has("coordinator_a", "event=arm_wait", "epsilon"), 10), "(j) A's slot is held")
    taken_b = lambda: sum(1 for l in open(os.path.join(WORK, "coordinator_b.log")) if "event=request_taken_from" in l)
    aborts_b = lambda: sum(1 for l in open(os.path.join(WORK, "coordinator_b.log")) if "finish=abort" in l)

    def long_stream(name, out, started):
        def on_chunk(n):
            if n == 1:
                started.set()
        out[name] = s.stream({"model": "tiny", "prompt": name, "profile": "pb", "max_tokens": 1500,
                              "temperature": 0, "ignore_eos": True}, s.key2, on_chunk=on_chunk, port=pa,
                             conn_out=out.setdefault(name + "_conn", []))
        started.set()

    # the client of a request running on B goes away: B aborts it
    out, started = {}, threading.Event()
    n0, a0 = taken_b(), aborts_b()
    t2 = threading.Thread(target=long_stream, args=("L2", out, started))
    t2.start()
    check(started.wait(10) and taken_b() > n0, "(j) B runs A's next request")
    for c in out.get("L2_conn", []):
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
    t2.join(20)
    check(wait_for(lambda: aborts_b() > a0, 10), "(j) the disconnect cancelled the request on B")
    # B drains (SIGTERM) while running A's request: that stream still finishes
    started = threading.Event()
    n0 = taken_b()
    t4 = threading.Thread(target=long_stream, args=("L4", out, started))
    t4.start()
    check(started.wait(10) and taken_b() > n0, "(j) B runs L4")
    pb.send_signal(signal.SIGTERM)
    t4.join(30)
    st, text, fin, n, err = out.get("L4", (0, "", None, 0, "no result"))
    check(err is None and fin == "length" and n > 100, "(j) L4 finished through B's drain: %s %s %d" % (fin, err, n))
    try:
        rc = pb.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, "(j) B exited 0 after draining: %r" % rc)
    # C dies while running A's request: that stream ends with an error naming C
    pc = spawn("coordinator_c", [coord, "--id", "coord-c", "--max-batch", "8", "--ready-file",
                                 os.path.join(WORK, "cc.addr")] + common)
    wait_file(os.path.join(WORK, "cc.addr"))
    started = threading.Event()
    t3 = threading.Thread(target=long_stream, args=("L3", out, started))
    t3.start()
    check(started.wait(10) and wait_for(lambda: log_has("coordinator_c", "event=request_taken_from"), 5),
          "(j) C runs L3")
    pc.kill()
    t3.join(20)
    st, text, fin, n, err = out.get("L3", (0, "", None, 0, "no result"))
    check(not t3.is_alive() and err is not None and "coord-c" in str(err),
          "(j) L3 ended with an error naming coord-c: %r after %d chunks" % (err, n))
    th.join(20)
    st, body = hold.get("r", (0, ""))
    check(st >= 500 and "epsilon" in body, "(j) the held request failed naming its ARM: %d %s" % (st, body[:120]))
    st, text, fin, n, err = s.stream({"model": "tiny", "prompt": prompt, "profile": "pb", "max_tokens": 16,
                                      "temperature": 0.9, "seed": 3}, s.key2, port=pa)
    check(st == 200 and err is None and text == want[3], "(j) A still serves: %s %s %r" % (st, err, text))


def test_k(s):
    """A reward worker with room for 2 sequences and 5 concurrent requests for its
    ARM: the ones it refuses wait (ERROR_CAPACITY) and run once it has room."""
    s.adm("arm", "register", "zeta", "--version", "1", "--path", s.arm_b1)
    spawn("reward_worker3", [os.path.join(s.b, "reward_worker/reward_worker"), "--bind", "tcp://127.0.0.1:*",
                             "--redis", s.redis, "--worker-id", "rw3", "--arm", "zeta", "--threads", "1",
                             "--capacity", "2", "--heartbeat-ms", "300",
                             "--ready-file", os.path.join(WORK, "rw3.ep")])
    wait_file(os.path.join(WORK, "rw3.ep"))
    prompt = "Crowded"
    want = {seed: s.cli(s.arm_b1, 0.8, 1.0, prompt, 10, 0.9, seed) for seed in range(5)}
    res = {}

    def run(seed):
        res[seed] = s.stream({"model": "tiny", "prompt": prompt, "max_tokens": 10, "temperature": 0.9,
                              "seed": seed, "beta": 1.0, "reward_models": [{"name": "zeta", "weight": 0.8}]},
                             s.key1)
    th = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for seed in range(5):
        st, text, fin, n, err = res.get(seed, (0, "", None, 0, "no result"))
        check(st == 200 and err is None, "(k) seed %d: %s %s" % (seed, st, err))
        check(text == want[seed], "(k) seed %d: %r != single process %r" % (seed, text, want[seed]))
    check(log_has("coordinator", "event=capacity_wait", "zeta@1"), "(k) some sequences waited for room")
    # the base worker's KV-cache use reaches /metrics while long streams run (one after the
    # other until it shows: on an idle machine one stream of 1500 tokens is over in under a
    # second, before the next heartbeat)
    out, started, done = {}, threading.Event(), threading.Event()

    def run_long():
        while not done.is_set():
            out["r"] = s.stream({"model": "tiny", "prompt": "Long", "max_tokens": 1500, "temperature": 0,
                                 "ignore_eos": True}, s.key1, on_chunk=lambda n: started.set(),
                                conn_out=out.setdefault("c", []))
            started.set()
    t = threading.Thread(target=run_long)
    t.start()
    started.wait(10)
    check(wait_for(lambda: metric(s.port, "genarm:kv_cache_usage_perc") > 0, 5),
          "(k) kv_cache_usage_perc follows the base worker")
    done.set()
    for c in out.get("c", []):
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
    t.join(20)


def test_l(s):
    """ARMs that are LoRA adapters on one backbone: one reward worker loads the
    backbone once and serves both adapters from it; guided requests through
    both run and are reproducible."""
    bb = os.path.join(WORK, "lora_backbone")
    ad1 = os.path.join(WORK, "lora_adapter1")
    ad2 = os.path.join(WORK, "lora_adapter2")
    subprocess.run([os.path.join(s.b, "tools/genarm-make-model"), "--arch", "llama", "--out", bb,
                    "--tokenizer-from", os.path.join(s.b, "fixtures/tokenizers/llama2"), "--dim", "64",
                    "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--seed", "9",
                    "--std", "0.15", "--lora-out", ad1], check=True, capture_output=True)
    shutil.copytree(ad1, ad2)
    cfg_path = os.path.join(ad2, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["lora_alpha"] = 4 * cfg.get("lora_alpha", 16)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    s.adm("arm", "register", "lora1", "--version", "1", "--path", ad1)
    s.adm("arm", "register", "lora2", "--version", "1", "--path", ad2)
    spawn("reward_worker4", [os.path.join(s.b, "reward_worker/reward_worker"), "--bind", "tcp://127.0.0.1:*",
                             "--redis", s.redis, "--worker-id", "rw4", "--arm", "lora1", "--arm", "lora2",
                             "--threads", "1", "--heartbeat-ms", "300",
                             "--ready-file", os.path.join(WORK, "rw4.ep")])
    wait_file(os.path.join(WORK, "rw4.ep"))
    body = {"model": "tiny", "prompt": "Adapters", "max_tokens": 12, "temperature": 0.9, "seed": 5, "beta": 1.0,
            "reward_models": [{"name": "lora1", "weight": 1.0}, {"name": "lora2", "weight": 0.5}]}
    st1, t1, f1, n1, e1 = s.stream(body, s.key1)
    st2, t2, f2, n2, e2 = s.stream(body, s.key1)
    check(st1 == 200 and e1 is None and n1 > 0, "(l) two adapter ARMs: %s %s" % (st1, e1))
    check(t1 == t2, "(l) reproducible: %r != %r" % (t1, t2))
    with open(os.path.join(WORK, "reward_worker4.log")) as f:
        log = f.read()
    check(log.count("event=backbone_loaded") == 1 and log.count("event=arm_loaded") == 2 and
          log.count("adapter=") == 2, "(l) one backbone, two adapters: %r" % log[-600:])


def test_d(s):
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "hi", "profile": "nope"}, s.key1)
    error_object(st, body, 404, "(d) unknown profile")
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "hi", "profile": "pa"}, "gnk_" + "0" * 64)
    error_object(st, body, 401, "(d) bad key")
    st, body = s.post("/v1/completions", None, s.key1, raw='{"model": "tiny", "prompt": ')
    error_object(st, body, 400, "(d) malformed body")
    st, body = s.post("/v1/completions", {"model": "tiny", "prompt": "hi", "profile": "pa", "temperature": "hot"},
                      s.key1)
    error_object(st, body, 400, "(d) wrong field type")


def main():
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    a = ap.parse_args()
    if not shutil.which("redis-server"):
        print("SKIP: redis-server not found")
        return 77
    WORK = tempfile.mkdtemp(prefix="gn_e2e_")
    if os.environ.get("GN_TEST_KEEP"):
        print("work dir: " + WORK, flush=True)
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT):  # ctest's timeout: still clean up the children
        signal.signal(sig, lambda *_: sys.exit(1))
    s = Service(os.path.abspath(a.build))
    t0 = time.time()
    try:
        s.start()
    except DeviceMissing:
        return 77
    parts = (("d", test_d), ("a", test_a), ("h", test_h), ("b", test_b), ("c", test_c), ("i", test_i),
             ("f", test_f), ("e", test_e), ("k", test_k), ("l", test_l), ("g", test_g), ("j", test_j))
    only = os.environ.get("GN_E2E_PARTS")  # e.g. "d,a,b" (debugging, sanitizer runs)
    for name, fn in parts:
        if only and name not in only.split(","):
            continue
        t = time.time()
        try:
            fn(s)
        except Exception as e:  # a crash in one part is a failure, the others still run
            check(False, "(%s) raised %r" % (name, e))
        print("part (%s): %.1f s" % (name, time.time() - t), flush=True)
    print("total %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (PASSED, FAILED), flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
