#!/usr/bin/python3
"""ref_grad.py — an independent reference for the trainer's loss and gradients.

Reads a Hugging Face LLaMA-family model directory (config.json +
model.safetensors, parsed here with json + numpy), builds the model in PyTorch
float64 from scratch (RMSNorm, rotate-half RoPE, GQA attention with an
optional sliding window, SwiGLU, Qwen2 q/k/v bias, Qwen3 q/k norm, tied
embeddings), and computes on a fixed token batch:
  - the LM loss (mean token cross-entropy over counted targets) and its
    gradient for every parameter;
  - the GenARM ARM loss -log sigmoid(beta_r (r_w - r_l)) (mean over pairs,
    r = sum of counted-target log-probs) and its gradient.
Writes them, with the batch, to a safetensors fixture (float32; token ids
stored as exact float32 integers): tokens_lm, targets_lm, tokens_arm,
targets_arm, loss_lm, loss_arm, beta_r, grad_lm.<name>, grad_arm.<name>.

Imports nothing from the project. Regenerate the fixtures with
tests/train/make_fixtures.sh.

usage: ref_grad.py MODEL_DIR OUT.safetensors
"""
import json
import math
import struct
import sys

import numpy as np
import torch

DT = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = data[b:e]
        if t["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            a = u.view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=DT[t["dtype"]]).astype(np.float32)
        out[name] = torch.tensor(a.reshape(t["shape"]), dtype=torch.float64)
    return out


def write_safetensors(path, tensors):
    hdr, off, blobs = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        b = a.tobytes()
        hdr[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rms(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope_tables(cfg, T):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    sc = cfg.get("rope_scaling")
    if sc and sc.get("rope_type", sc.get("type")) == "linear":
        inv = inv / sc["factor"]
    elif sc and sc.get("rope_type", sc.get("type")) == "llama3":
        f, lo, hi, old = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"], sc[
            "original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        out = np.where(wl > old / lo, inv / f, inv)
        smooth = (old / wl - lo) / (hi - lo)
        med = (wl >= old / hi) & (wl <= old / lo)
        inv = np.where(med, (1 - smooth) * out / f + smooth * out, out)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    return torch.tensor(np.cos(ang)), torch.tensor(np.sin(ang))


def rotate(x, cos, sin):  # x (B, H, T, hd)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def log_probs(cfg, W, tokens, targets):
    """tokens, targets: LongTensor (B, T); returns per-position target log-probs (0 where -1)."""
    B, T = tokens.shape
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    Hk = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or D // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    arch = cfg["architectures"][0]
    window = cfg.get("sliding_window") if arch == "MistralForCausalLM" else None
    cos, sin = rope_tables(cfg, T)
    x = W["model.embed_tokens.weight"][tokens]
    idx = torch.arange(T)
    mask = idx[None, :] <= idx[:, None]
    if window:
        mask = mask & (idx[None, :] > idx[:, None] - window)
    for l in range(L):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ W[p + "self_attn.%s.weight" % name].T
            if p + "self_attn.%s.bias" % name in W:
                y = y + W[p + "self_attn.%s.bias" % name]
            return y
        q = proj("q_proj").view(B, T, H, hd)
        k = proj("k_proj").view(B, T, Hk, hd)
        v = proj("v_proj").view(B, T, Hk, hd)
        if p + "self_attn.q_norm.weight" in W:
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k = k.repeat_interleave(H // Hk, dim=1)
        v = v.repeat_interleave(H // Hk, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        o = torch.softmax(s, -1) @ v
        o = o.transpose(1, 2).reshape(B, T, H * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], eps)
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    lp = torch.log_softmax(x @ head.T, -1)
    tgt = targets.clamp(min=0)
    out = lp.gather(-1, tgt[..., None])[..., 0]
    return torch.where(targets >= 0, out, torch.zeros_like(out))


def make_batches(n_vocab, rng):
    # LM: 3 sequences of 9 with lengths 9, 7, 5 (right padding); all next tokens count.
    lens = [9, 7, 5]
    tok = np.zeros((3, 9), dtype=np.int64)
    tgt = -np.ones((3, 9), dtype=np.int64)
    for b, n in enumerate(lens):
        tok[b, :n] = rng.randint(0, n_vocab, size=n)
        tgt[b, :n - 1] = tok[b, 1:n]
    # ARM: 2 pairs (chosen, rejected) of at most 8 tokens; a shared prompt, responses count.
    T = 8
    atok = np.zeros((4, T), dtype=np.int64)
    atgt = -np.ones((4, T), dtype=np.int64)
    for pair, (np_, lw, ll) in enumerate([(3, 8, 6), (2, 5, 7)]):
        prompt = rng.randint(0, n_vocab, size=np_)
        for w, n in enumerate((lw, ll)):
            s = 2 * pair + w
            atok[s, :np_] = prompt
            atok[s, np_:n] = rng.randint(0, n_vocab, size=n - np_)
            for t in range(np_ - 1, n - 1):
                atgt[s, t] = atok[s, t + 1]
    return tok, tgt, atok, atgt


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(d + "/config.json"))
    W = read_safetensors(d + "/model.safetensors")
    for w in W.values():
        w.requires_grad_(True)
    tok, tgt, atok, atgt = make_batches(cfg["vocab_size"], np.random.RandomState(5))
    beta_r = 0.7
    res = {"tokens_lm": tok, "targets_lm": tgt, "tokens_arm": atok, "targets_arm": atgt,
           "beta_r": np.array([beta_r])}
    # LM
    t, g = torch.tensor(tok), torch.tensor(tgt)
    lp = log_probs(cfg, W, t, g)
    loss = -(lp.sum() / (g >= 0).sum())
    grads = torch.autograd.grad(loss, list(W.values()))
    res["loss_lm"] = np.array([loss.item()])
    res["logp_lm"] = lp.detach().numpy()
    for name, gr in zip(W.keys(), grads):
        res["grad_lm." + name] = gr.numpy()
    # ARM
    t, g = torch.tensor(atok), torch.tensor(atgt)
    lp = log_probs(cfg, W, t, g)
    r = lp.sum(-1)
    loss = -torch.nn.functional.logsigmoid(beta_r * (r[0::2] - r[1::2])).mean()
    grads = torch.autograd.grad(loss, list(W.values()))
    res["loss_arm"] = np.array([loss.item()])
    for name, gr in zip(W.keys(), grads):
        res["grad_arm." + name] = gr.numpy()
    write_safetensors(out, res)
    print("%s: loss_lm %.6f loss_arm %.6f" % (out, res["loss_lm"][0], res["loss_arm"][0]))


if __name__ == "__main__":
    main()
