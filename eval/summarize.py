#!/usr/bin/python3
"""Summarises a genarm-eval run (JSONL, one line per sample) into a markdown table, a CSV and PNG
plots.

  summarize.py EVAL.jsonl --out DIR --default-beta B [--arm-names sentiment,concise]

Per configuration: mean sentiment (AFINN-165 sum), mean conciseness (-words per sentence), mean
words per sentence, mean tokens and mean log-prob per token under the base model, over every sample
of every prompt. For each single-ARM profile
(weights e_i) at the default beta, the per-prompt win rate against base-only: a prompt is a win
when the mean score of its guided samples (the ARM's objective) is strictly above the mean score
of its base-only samples (same seeds), a tie when equal. Plots: reward against beta for each
single-ARM profile (base-only as a horizontal line), and the two-objective front traced by the
weight sweep at the default beta."""
import argparse
import json
import os
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("eval")
ap.add_argument("--out", required=True)
ap.add_argument("--default-beta", type=float, required=True)
ap.add_argument("--arm-names", default="sentiment,concise")
a = ap.parse_args()
objectives = a.arm_names.split(",")  # objective i is scored by the scorer of that name
os.makedirs(a.out, exist_ok=True)

rows = [json.loads(l) for l in open(a.eval)]
configs, by_cfg = [], defaultdict(list)
for r in rows:
    if r["config"] not in by_cfg:
        configs.append(r["config"])
    by_cfg[r["config"]].append(r)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def per_prompt(cfg, key):
    d = defaultdict(list)
    for r in by_cfg[cfg]:
        d[r["prompt_index"]].append(r[key])
    return {p: mean(v) for p, v in d.items()}


def kind(cfg):
    """('base',) | ('single', i, beta) | ('mix', weights, beta)"""
    r = by_cfg[cfg][0]
    if r["base_only"]:
        return ("base",)
    w = r["weights"]
    nz = [i for i, x in enumerate(w) if x != 0]
    if len(nz) == 1 and abs(w[nz[0]] - 1) < 1e-6:
        return ("single", nz[0], r["beta"])
    return ("mix", tuple(w), r["beta"])


summary = []
for c in configs:
    rs = by_cfg[c]
    summary.append({"config": c, "beta": rs[0]["beta"] if not rs[0]["base_only"] else "",
                    "weights": "" if rs[0]["base_only"] else " ".join(f"{w:g}" for w in rs[0]["weights"]),
                    "samples": len(rs),
                    "sentiment": mean([r["sentiment"] for r in rs]),
                    "concise": mean([r["concise"] for r in rs]),
                    "words_per_sentence": mean([r["words_per_sentence"] for r in rs]),
                    "tokens": mean([r["n_tokens"] for r in rs]),
                    "base_logp_per_token": mean([r.get("base_logp_per_token", float("nan")) for r in rs])})

base_cfg = next(c for c in configs if kind(c)[0] == "base")
wins = []
for c in configs:
    k = kind(c)
    if k[0] != "single":
        continue
    obj = objectives[k[1]]
    g, b = per_prompt(c, obj), per_prompt(base_cfg, obj)
    w = sum(1 for p in b if g[p] > b[p])
    t = sum(1 for p in b if g[p] == b[p])
    wins.append({"config": c, "objective": obj, "beta": k[2], "prompts": len(b), "wins": w, "ties": t,
                 "losses": len(b) - w - t, "win_rate": w / len(b),
                 "guided_mean": mean(list(g.values())), "base_mean": mean(list(b.values()))})

with open(os.path.join(a.out, "results.csv"), "w") as f:
    keys = list(summary[0].keys())
    f.write(",".join(keys) + "\n")
    for s in summary:
        f.write(",".join(f"{s[k]:.4f}" if isinstance(s[k], float) else str(s[k]) for k in keys) + "\n")

n_prompts = len({r["prompt_index"] for r in rows})
md = [f"# GenARM demo evaluation\n",
      f"{n_prompts} held-out prompts, {len(by_cfg[base_cfg]) // n_prompts} samples each per configuration "
      f"(the same seeds in every configuration). Objectives: ARM 1 = {objectives[0]}, "
      f"ARM 2 = {objectives[1] if len(objectives) > 1 else '-'}. Default beta = {a.default_beta:g}.\n",
      "## Every configuration (means over all samples)\n",
      "| config | beta | weights | samples | sentiment | concise | words/sentence | tokens | base log-prob/token |",
      "|---|---|---|---|---|---|---|---|---|"]
for s in summary:
    md.append(f"| {s['config']} | {s['beta']} | {s['weights']} | {s['samples']} | {s['sentiment']:.3f} | "
              f"{s['concise']:.3f} | {s['words_per_sentence']:.2f} | {s['tokens']:.1f} | "
              f"{s['base_logp_per_token']:.3f} |")
md += ["\n## Single-objective profiles against base-only, per prompt\n",
       "| profile | objective | beta | wins | ties | losses | win rate | guided mean | base mean |",
       "|---|---|---|---|---|---|---|---|---|"]
for w in wins:
    mark = " (default)" if abs(w["beta"] - a.default_beta) < 1e-6 else ""
    md.append(f"| {w['config']} | {w['objective']} | {w['beta']:g}{mark} | {w['wins']} | {w['ties']} | "
              f"{w['losses']} | {100 * w['win_rate']:.1f}% | {w['guided_mean']:.3f} | {w['base_mean']:.3f} |")
# The goals, checked on these numbers.
md += ["\n## Goals\n"]
for w in wins:
    if abs(w["beta"] - a.default_beta) < 1e-6:
        ok = w["win_rate"] >= 0.65
        md.append(f"- {w['objective']} profile at the default beta {a.default_beta:g}: guided beats base-only on "
                  f"{100 * w['win_rate']:.1f}% of held-out prompts (goal >= 65%): {'met' if ok else 'MISSED'}")
sm_ = {x["config"]: x for x in summary}
for i, obj in enumerate(objectives):
    pts = sorted(((kind(c)[2], sm_[c][obj]) for c in configs if kind(c)[0] == "single" and kind(c)[1] == i),
                 reverse=True)
    if len(pts) > 1:
        rising = all(pts[j + 1][1] > pts[j][1] for j in range(len(pts) - 1))
        md.append(f"- {obj}: mean reward as beta falls {' > '.join(f'{b:g}' for b, _ in pts)}: "
                  f"{', '.join(f'{v:.3f}' for _, v in pts)}: {'rises monotonically' if rising else 'NOT monotone'}")
if len(objectives) == 2:
    sweep = sorted((tuple(by_cfg[c][0]["weights"]), sm_[c]) for c in configs
                   if kind(c)[0] in ("mix", "single") and abs(kind(c)[-1] - a.default_beta) < 1e-6)
    o0, o1 = objectives
    mono = all(sweep[j + 1][1][o0] >= sweep[j][1][o0] and sweep[j + 1][1][o1] <= sweep[j][1][o1]
               for j in range(len(sweep) - 1))
    dominated = [w for w, x in sweep if any(y[o0] >= x[o0] and y[o1] >= x[o1] and (y[o0], y[o1]) != (x[o0], x[o1])
                                             for _, y in sweep)]
    md.append(f"- two-ARM sweep at beta {a.default_beta:g} (weights ARM1, ARM2): "
              + "; ".join(f"({w[0]:g}, {w[1]:g}) -> {o0} {x[o0]:.3f}, {o1} {x[o1]:.3f}" for w, x in sweep)
              + f". Moving weight to ARM1 {'trades' if mono else 'does NOT monotonically trade'} {o1} for {o0}; "
              + (f"no sweep point dominates another (a front)." if not dominated else
                 f"dominated points: {', '.join(str(w) for w in dominated)}."))
md += ["\n## Examples (sample 0 of the first three prompts, every configuration)\n"]
for p in sorted({r["prompt_index"] for r in rows})[:3]:
    md.append(f"**{next(r['prompt'] for r in rows if r['prompt_index'] == p)}**\n")
    md.append("| config | continuation | sentiment | words/sentence |")
    md.append("|---|---|---|---|")
    for c in configs:
        r = next(r for r in by_cfg[c] if r["prompt_index"] == p and r["sample"] == 0)
        text = r["response"].replace("|", "\\|").replace("\n", " ⏎ ")
        md.append(f"| {c} | {text} | {r['sentiment']:g} | {r['words_per_sentence']:.1f} |")
    md.append("")
with open(os.path.join(a.out, "results.md"), "w") as f:
    f.write("\n".join(md) + "\n")
with open(os.path.join(a.out, "winrates.json"), "w") as f:
    json.dump(wins, f, indent=1)
print("\n".join(md[:md.index("\n## Examples (sample 0 of the first three prompts, every configuration)\n")]))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing (apt-get install python3-matplotlib): no plots")
    raise SystemExit(0)

sm = {s["config"]: s for s in summary}
fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 4))
for i, obj in enumerate(objectives):
    ax = axes[i] if len(objectives) > 1 else axes
    pts = sorted((kind(c)[2], sm[c][obj]) for c in configs if kind(c)[0] == "single" and kind(c)[1] == i)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"guided by ARM {i + 1} ({obj})")
    ax.axhline(sm[base_cfg][obj], color="gray", ls="--", label="base only")
    ax.set_xscale("log")
    if pts:
        ax.set_xticks([p[0] for p in pts])
        ax.set_xticklabels([f"{p[0]:g}" for p in pts])
        ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("beta (log scale, decreasing ->)")
    ax.set_ylabel(f"mean {obj} score")
    ax.set_title(f"{obj}: reward vs beta")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(a.out, "reward_vs_beta.png"), dpi=100)

if len(objectives) == 2:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mix = sorted((tuple(by_cfg[c][0]["weights"]), sm[c]) for c in configs
                 if kind(c)[0] in ("mix", "single") and abs(kind(c)[-1] - a.default_beta) < 1e-6)
    if mix:
        ax.plot([m[1][objectives[0]] for m in mix], [m[1][objectives[1]] for m in mix], "o-",
                label=f"weight sweep, beta {a.default_beta:g}")
        for w, s in mix:
            ax.annotate(f"({w[0]:g}, {w[1]:g})", (s[objectives[0]], s[objectives[1]]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot([sm[base_cfg][objectives[0]]], [sm[base_cfg][objectives[1]]], "s", color="gray", label="base only")
    ax.set_xlabel(f"mean {objectives[0]} score")
    ax.set_ylabel(f"mean {objectives[1]} score")
    ax.set_title("two-objective front (weights ARM1, ARM2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "front.png"), dpi=100)
