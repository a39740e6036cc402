"""Issue 4 benchmark: draft-length policies at several temperatures, with and without VocabTrim.

Default pair, HumanEval problems 0..N-1, the same seed for every policy. Every (temperature,
head, policy) runs on every prompt, interleaved prompt by prompt, plus the target alone
(greedy) as a reference. Prints per temperature and head: tokens/s (wall-clock and
decode-only), tau, mean draft length, acceptance and MBSU, each policy also as a ratio to
static K=5 and to the best static K measured in the same run; writes policies.json,
policies.md and policies.png.

    python benchmarks/policy_sweep.py --eval 16 --out results/policies
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vocabtrim.assembly import Assembler, Parts, parse_method
from vocabtrim.bench.common import engine_method, identity_check, load_pair, warm_up
from vocabtrim.bench.report import aggregate, pyplot, save_figure, summarize
from vocabtrim.bench.run import run_matrix
from vocabtrim.calibrate import calibrated_map, parse_calibration
from vocabtrim.data import humaneval
from vocabtrim.files import atomic_write
from vocabtrim.policies import parse_policy
from vocabtrim.sampling import Sampling
from vocabtrim.tokenmap import TokenMap

POLICIES = "static:3;static:5;static:8;adaedl;confidence:0.4;heuristic;svip;cost"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=int, default=16, help="HumanEval problems 0..N-1 are evaluated")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", default="0,0.7,1.0")
    ap.add_argument("--policies", default=POLICIES, help="policy specs separated by ';'")
    ap.add_argument("--heads", default="full,vt", help="drafter heads: full, vt (the token map) or both")
    ap.add_argument("--token-map", type=Path, help="token map of the +vt runs (default: --calibrate)")
    ap.add_argument("--calibrate", default="humaneval:n=128,k=16384,tokens=128",
                    help="target-generated token map from HumanEval problems outside the evaluation set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/policies"))
    args = ap.parse_args()
    specs = [s.strip() for s in args.policies.split(";") if s.strip()]
    for s in specs:
        parse_policy(s)
    temps = [float(t) for t in args.temperatures.split(",")]
    tgt, drf, stop = load_pair()
    questions = humaneval(0, args.eval)
    if args.token_map:
        kept = TokenMap.load(args.token_map).kept_ids
    else:
        exclude = {q.turns[0] for q in questions}
        print("calibrating the token map (cached after the first run)", flush=True)
        kept = calibrated_map(parse_calibration(args.calibrate), exclude, tgt, drf)
    assembler = Assembler(Parts(tgt, drf, kept))
    heads = {h: parse_method({"full": "sd", "vt": "sd+vt"}[h]) for h in args.heads.split(",")}
    matrix = [engine_method("ar", *assembler.build(parse_method("ar"), "static:1"), Sampling(), args.seed, stop)]
    matrix += [engine_method(f"T={t}|{head}|{spec}", *assembler.build(method, spec), Sampling(t), args.seed, stop)
               for t in temps for head, method in heads.items() for spec in specs]
    warm_up(matrix, tgt.tokenizer)
    records = run_matrix(questions, matrix, tgt.tokenizer, args.max_new_tokens,
                         args.out / "results.jsonl", resume=True)

    rows = policy_rows(records, temps, list(heads), specs, identity_check(assembler.target))
    ar = aggregate([r for r in records if r["method"] == "ar"])
    report = {"settings": {**vars(args), "out": str(args.out), "token_map": str(args.token_map),
                           "k": len(kept), "dtype": tgt.dtype, "prompts": len(questions)},
              "ar": ar, "rows": rows}
    atomic_write(args.out / "policies.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    text = markdown(rows, ar, len(kept))
    atomic_write(args.out / "policies.md", lambda tmp: Path(tmp).write_text(text))
    plot(rows, temps, specs, args.out / "policies.png")
    print(text)
    print(f"wrote {args.out}/policies.md, policies.json and policies.png")


def policy_rows(records: list[dict], temps: list[float], heads: list[str], specs: list[str], check) -> list[dict]:
    """One row per (temperature, head, policy): its aggregate, its ratio to static:5 and to
    the best static K of the same temperature and head, and whether greedy output was identical."""
    greedy = summarize([r for r in records if r["method"] == "ar" or r["method"].startswith("T=0.0|")],
                       "ar", True, check)["methods"]
    rows = []
    for t in temps:
        for head in heads:
            stats = {s: aggregate([r for r in records if r["method"] == f"T={t}|{head}|{s}"]) for s in specs}
            statics = {s: a for s, a in stats.items() if s.startswith("static:")}
            best = max(statics, key=lambda s: statics[s]["tokens_per_second"]) if statics else None
            for s, a in stats.items():
                rows.append({"temperature": t, "head": head, "policy": s, **a,
                             "vs_static5": _ratio(a, stats.get("static:5")),
                             "best_static": best, "vs_best_static": _ratio(a, statics.get(best)),
                             "identical": greedy.get(f"T={t}|{head}|{s}", {}).get("identical")})
    return rows


def _ratio(a: dict, b: dict | None) -> float | None:
    return a["tokens_per_second"] / b["tokens_per_second"] if b and b["tokens_per_second"] else None


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rows: list[dict], ar: dict, k: int) -> str:
    lines = [(f"Target alone (greedy): {ar['tokens_per_second']:.2f} tok/s, "
              f"{ar['decode_tokens_per_second']:.2f} decode tok/s. `vt`: token map K={k}."), "",
             ("| T | head | policy | tok/s | decode tok/s | tau | mean draft | acceptance | MBSU | "
              "vs static:5 | vs best static | identical to ar |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "" if r["vs_best_static"] is None else f"{r['vs_best_static']:.3f}x ({r['best_static']})"
        lines.append(
            f"| {r['temperature']:g} | {r['head']} | {r['policy']} | {r['tokens_per_second']:.2f} | "
            f"{r['decode_tokens_per_second']:.2f} | {r['tau']:.2f} | {_num(r['mean_draft_length'])} | "
            f"{r['acceptance_rate']:.2f} | {r['mbsu']:.2f} | "
            f"{'' if r['vs_static5'] is None else format(r['vs_static5'], '.3f') + 'x'} | {best} | "
            f"{r['identical'] or '-'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], temps: list[float], specs: list[str], path: Path) -> None:
    plt = pyplot()
    heads = sorted({r["head"] for r in rows})
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 3.8), sharey=True, squeeze=False)
    width = 0.8 / len(temps)
    for ax, head in zip(axes[0], heads):
        for i, t in enumerate(temps):
            tps = {r["policy"]: r["tokens_per_second"] for r in rows if r["head"] == head and r["temperature"] == t}
            ax.bar([x + (i - (len(temps) - 1) / 2) * width for x in range(len(specs))],
                   [tps[s] for s in specs], width, label=f"T={t:g}")
        ax.set_xticks(range(len(specs)), specs, rotation=30, fontsize=8)
        ax.set_title(f"head: {head}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("tokens/s (wall-clock)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Draft-length policies, Qwen2.5-Coder 0.5B -> 1.5B, HumanEval, 128 new tokens", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
