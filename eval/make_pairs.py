#!/usr/bin/python3
"""Preference pairs from the base model's own samples (genarm-eval JSONL), labelled by one of the
transparent scorers (scorers.h): for every prompt, its samples are ranked by the objective (ties:
lower sample index first); the best is paired with the worst, the second best with the second
worst, ... (--pairs per prompt), keeping a pair only when the scores differ by at least --margin
and the texts differ. Output: JSONL {"prompt","chosen","rejected"} for `genarm-train arm`.

  make_pairs.py SAMPLES.jsonl --objective sentiment|concise --margin M --pairs P --out PAIRS.jsonl
"""
import argparse
import json
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("samples")
ap.add_argument("--objective", choices=["sentiment", "concise"], required=True)
ap.add_argument("--margin", type=float, default=1.0)
ap.add_argument("--pairs", type=int, default=2)
ap.add_argument("--out", required=True)
a = ap.parse_args()

by_prompt = defaultdict(list)
order = []
with open(a.samples) as f:
    for line in f:
        s = json.loads(line)
        if s["prompt_index"] not in by_prompt:
            order.append(s["prompt_index"])
        by_prompt[s["prompt_index"]].append(s)
n = 0
gaps = []
with open(a.out, "w") as f:
    for p in order:
        ss = sorted(by_prompt[p], key=lambda s: (-s[a.objective], s["sample"]))
        for i in range(min(a.pairs, len(ss) // 2)):
            w, l = ss[i], ss[-1 - i]
            if w[a.objective] - l[a.objective] < a.margin or w["response"] == l["response"]:
                continue
            f.write(json.dumps({"prompt": w["prompt"], "chosen": w["response"],
                                "rejected": l["response"]}) + "\n")
            gaps.append(w[a.objective] - l[a.objective])
            n += 1
print(f"{a.out}: {n} pairs from {len(order)} prompts ({a.objective}, margin {a.margin}, "
      f"mean gap {sum(gaps) / max(1, len(gaps)):.2f})")
