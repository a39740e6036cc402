"""Cross-vocabulary drafting: the built-in drafter of another tokenizer (SmolLM2-135M) for
the default target, through the shared tokens alone (`x`), with the n-gram cache of merged
tokens (`x+ngram`, also with the cost policy) and through transformers' own generation
across tokenizers (`hf+x`), with the same-vocabulary 0.5B drafter (`sd`) as reference.

One `vocabtrim bench` run per temperature over HumanEval problems 0..N-1 and the
Spec-Bench-format sample (every method meets every question in the same run); prints
acceptance, tau, c, tokens/s and the speed-up over the target alone per temperature and
writes cross.md next to the runs.

    python benchmarks/cross_vocab.py --humaneval 16 --per-category 2 --out results/cross
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from drafters_mix import write_questions

from vocabtrim.files import atomic_write

METHODS = "ar,sd,x,x+ngram,x+ngram+cost,hf+x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--humaneval", type=int, default=16, help="HumanEval problems 0..N-1")
    ap.add_argument("--per-category", type=int, default=2, help="Spec-Bench-format questions per category")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/cross"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    data = write_questions(args.out, args.humaneval, args.per_category)
    lines = ["| T | method | tok/s | speed-up | acceptance | tau | c | humaneval | prose (mean of categories) | identical |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in args.temperatures.split(","):
        out = args.out / f"T{t}"
        cmd = [sys.executable, "-m", "vocabtrim.cli", "bench", "--data", str(data), "--methods", args.methods,
               "--temperature", t, "--max-new-tokens", str(args.max_new_tokens), "--out", str(out)]
        if subprocess.call(cmd + (["--resume"] if args.resume and out.exists() else [])):
            sys.exit(1)
        summary = json.loads((out / "summary.json").read_text())
        for name, m in summary["methods"].items():
            lines.append(_row(t, name, m))
    table = "\n".join(lines) + "\n"
    atomic_write(args.out / "cross.md", lambda tmp: Path(tmp).write_text(table))
    print(table)


def _row(t: str, name: str, m: dict) -> str:
    o, cats = m["overall"], m["categories"]
    prose = [c["speedup"] for k, c in cats.items() if k != "humaneval" and c.get("speedup")]
    cell = lambda v, f: "-" if v is None else format(v, f)
    return (f"| {t} | {name} | {o['tokens_per_second']:.2f} | {cell(o.get('speedup'), '.2f')}x | "
            f"{cell(o.get('acceptance_rate'), '.2f')} | {o['tau']:.2f} | {cell(o.get('cost_ratio'), '.3f')} | "
            f"{cell(cats.get('humaneval', {}).get('speedup'), '.2f')}x | "
            f"{cell(sum(prose) / len(prose) if prose else None, '.2f')}x | {m.get('identical', '-')} |")


if __name__ == "__main__":
    main()
