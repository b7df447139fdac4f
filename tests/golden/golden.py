#!/usr/bin/python3
"""golden.py — an independent reference for the engine's forward pass.

Writes the golden fixtures of tests/golden/test_golden.c: for every case in
CASES it has the model maker (the genarm-make-model program) write a tiny
random model in the Hugging Face layout, then reads that directory ITSELF
(config.json, safetensors parsed with json + numpy, tokenizer.json for the
vocabulary size) and runs the LLaMA / Mistral / Qwen2 / Qwen3 forward pass in
PyTorch float32, following Hugging Face transformers' modeling code. It does
not import or call any project code other than the maker that writes the
model files, and the model files are what both sides read.

Output (in --out, normally tests/golden/fixtures):
  manifest.json   the cases: maker parameters, prompts (token ids), n_out, and
                  the tolerances the C test applies
  <case>.bin      float32 little-endian log-probs, log_softmax over the first
                  n_out columns, one row per prompt position, prompts in order

Run (Debian's python3 with python3-numpy and python3-torch):
  cmake -S . -B build && make -C build genarm-make-model
  /usr/bin/python3 tests/golden/golden.py --maker build/tools/genarm-make-model \
      --out tests/golden/fixtures
The maker is deterministic (fixed seeds), so the C test regenerates the same
model directories at test time and compares against the committed files.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

# Common shape of every case: small, but with GQA (4 heads over 2 KV heads),
# three layers and weights large enough (std 0.15) that attention and the
# output distribution are far from uniform.
BASE = {"dim": 64, "layers": 3, "heads": 4, "kv_heads": 2, "ffn": 128, "merges": 40, "std": 0.15}

CASES = [
    # name, arch, dtype, extra maker parameters
    ("llama_bf16", "llama", "bf16", {"seed": 11}),
    ("llama_f32", "llama", "f32", {"seed": 12, "vocab": 320}),  # 22 padding rows: n_out < n_vocab
    ("llama_f16", "llama", "f16", {"seed": 13}),
    ("llama3_bf16", "llama3", "bf16", {"seed": 21}),
    ("llama3_f32", "llama3", "f32", {"seed": 22}),
    ("mistral_bf16", "mistral", "bf16", {"seed": 31, "sliding_window": 4}),
    ("mistral_f32", "mistral", "f32", {"seed": 32, "sliding_window": 4}),
    ("qwen2_bf16", "qwen2", "bf16", {"seed": 41}),
    ("qwen2_f32", "qwen2", "f32", {"seed": 42}),
    ("qwen3_bf16", "qwen3", "bf16", {"seed": 51}),
    ("qwen3_f32", "qwen3", "f32", {"seed": 52, "head_dim": 32}),  # n_heads*head_dim != hidden
]
PROMPT_LENS = [7, 18]  # 18 > 16: crosses a KV block; both > the sliding window 4

# What the C test allows between the engine's log-probs and these (float32
# both sides, different summation orders, cos/sin and exp implementations):
# |got - want| <= ATOL + RTOL * |want|.
ATOL = 5e-5
RTOL = 1e-5

MAKER_FLAGS = {"dim": "--dim", "layers": "--layers", "heads": "--heads", "kv_heads": "--kv-heads",
               "ffn": "--ffn", "merges": "--merges", "std": "--std", "seed": "--seed", "vocab": "--vocab",
               "sliding_window": "--sliding-window", "head_dim": "--head-dim"}


# ---------------------------------------------------------------- files

def read_safetensors(path):
    """name -> float32 torch tensor, from the raw file (header: u64 length + JSON)."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        raw = data[base + lo: base + hi]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {dt}")
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
    return out


def read_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(model_dir, f)))
    return w


def tokenizer_size(model_dir):
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1


# ---------------------------------------------------------------- model

def rope_inv_freq(cfg, head_dim):
    """transformers modeling_rope_utils: default and llama3 (float32 tensors)."""
    base = cfg.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv_freq
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv_freq / rs["factor"]
    if kind != "llama3":
        raise ValueError(f"rope_scaling {kind}")
    factor = rs["factor"]
    low = rs["low_freq_factor"]
    high = rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def sliding_window_of(cfg):
    mt = cfg["model_type"]
    if mt == "mistral":
        return cfg.get("sliding_window")
    if mt in ("qwen2", "qwen3"):
        return cfg.get("sliding_window") if cfg.get("use_sliding_window", False) else None
    return None


def forward(cfg, w, ids):
    """float32 logits (T, n_vocab) of one prompt, every position."""
    mt = cfg["model_type"]
    dim = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or dim // nh
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    pos = torch.arange(T)
    inv = rope_inv_freq(cfg, hd)
    freqs = pos.float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    qi = torch.arange(T)[:, None]
    kj = torch.arange(T)[None, :]
    allowed = kj <= qi
    win = sliding_window_of(cfg)
    if win:
        allowed = allowed & (kj > qi - win)
    bias_qkv = mt == "qwen2" or cfg.get("attention_bias", False)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if bias_qkv:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.view(T, nh, hd)
        k = k.view(T, nkv, hd)
        v = v.view(T, nkv, hd)
        if mt == "qwen3":
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)  # transformers repeat_kv: q head i reads kv head i // rep
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        att = torch.einsum("hqk,khd->qhd", probs, v).reshape(T, nh * hd)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maker", required=True, help="path of the genarm-make-model program")
    ap.add_argument("--out", required=True, help="fixture directory to write")
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    manifest = {
        "version": 1,
        "generator": "tests/golden/golden.py (PyTorch float32, independent of the engine)",
        "atol": ATOL,
        "rtol": RTOL,
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, dtype, extra in CASES:
            params = dict(BASE)
            params.update(extra)
            mdir = os.path.join(tmp, name)
            cmd = [a.maker, "--arch", arch, "--dtype", dtype, "--out", mdir]
            for k, v in params.items():
                cmd += [MAKER_FLAGS[k], str(v)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            cfg = json.load(open(os.path.join(mdir, "config.json")))
            w = read_weights(mdir)
            n_out = tokenizer_size(mdir)
            rng = np.random.RandomState(params["seed"])
            prompts = [[int(t) for t in rng.randint(0, n_out, size=n)] for n in PROMPT_LENS]
            rows = []
            with torch.no_grad():
                for ids in prompts:
                    logits = forward(cfg, w, ids)[:, :n_out]
                    rows.append(torch.log_softmax(logits.double(), dim=-1).float().numpy())
            lp = np.concatenate(rows, axis=0).astype("<f4")
            fname = name + ".bin"
            lp.tofile(os.path.join(a.out, fname))
            manifest["cases"].append({
                "name": name, "arch": arch, "dtype": dtype, "maker": params, "n_out": n_out,
                "n_vocab": cfg["vocab_size"], "prompts": prompts, "file": fname,
            })
            print(f"{name}: {lp.shape[0]} rows x {n_out}, mean max prob {np.exp(lp.max(-1)).mean():.3f}")
    # One case per line: small diffs when a fixture is regenerated.
    cases = manifest.pop("cases")
    head = json.dumps(manifest, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(c) for c in cases)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        f.write(head + ',\n "cases": [\n' + body + "\n ]\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
