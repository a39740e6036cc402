"""Cross-vocabulary drafting: the built-in drafter of another tokenizer (SmolLM2-135M) for
the default target, through the shared tokens alone (`x`), with the n-gram cache of merged
tokens (`x+ngram`, also with the cost policy) and through transformers' own generation
across tokenizers (`hf+x`), with the same-vocabulary 0.5B drafter (`sd`) as reference.

One `vocabtrim bench` run per temperature over HumanEval problems 0..N-1 and the
Spec-Bench-format sample (every method meets every question in the same run); prints
acceptance, tau, c, tokens/s and the speed-up over the target alone per temperature and
writes cross.md next to the runs. At T > 0 every method's answers are also scored under the
target's own sampling distribution (mean log-probability per token, and the share of tokens
the target gives less than 1e-4): a lossless method writes text as likely as the target
alone does; this is how transformers' cross-tokenizer sampling was found not to be.

    python benchmarks/cross_vocab.py --humaneval 16 --per-category 2 --out results/cross
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from drafters_mix import mix_parser, write_questions

from vocabtrim import catalog
from vocabtrim.bench.run import read_results
from vocabtrim.files import atomic_write
from vocabtrim.loading import load_drafter

METHODS = "ar,sd,x,x+ngram,x+ngram+cost,hf+x"
HEADER = "| T | method | tok/s | speed-up | acceptance | tau | c | humaneval | prose (mean of categories) | identical |"


def main() -> None:
    ap = mix_parser(__doc__, METHODS, 2, "results/cross")
    ap.add_argument("--temperatures", default="0,0.7")
    args = ap.parse_args()
    report = args.out / "cross.md"
    if report.exists() and not report.read_text().startswith(HEADER):  # checked before 40 minutes of runs
        sys.exit(f"error: refusing to overwrite {report}: this script did not write it")
    data = write_questions(args.out, args.humaneval, args.per_category)
    fidelity: list[str] = []
    lines = [HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for t in args.temperatures.split(","):
        out = args.out / f"T{t}"
        cmd = [sys.executable, "-m", "vocabtrim.cli", "bench", "--data", str(data), "--methods", args.methods,
               "--temperature", t, "--max-new-tokens", str(args.max_new_tokens), "--out", str(out)]
        if subprocess.call(cmd + (["--resume"] if args.resume and out.exists() else [])):
            sys.exit(1)
        summary = json.loads((out / "summary.json").read_text())
        for name, m in summary["methods"].items():
            lines.append(_row(t, name, m))
        if float(t) > 0:
            fidelity.append(f"T={t}: " + "; ".join(f"{name} {lp:.3f} ({rare:.2%})"
                                                    for name, (lp, rare) in _fidelity(out, float(t)).items()))
    table = "\n".join(lines) + "\n\nMean log-probability per token under the target's own distribution " \
        "(share of tokens below p=1e-4):\n\n" + "\n".join(fidelity) + "\n"
    atomic_write(report, lambda tmp: Path(tmp).write_text(table))
    print(table)


@torch.inference_mode()
def _fidelity(out: Path, temperature: float) -> dict[str, tuple[float, float]]:
    """Per method: the mean log-probability of its first-turn answers' tokens under the
    target at `temperature`, and the share of tokens below p = 1e-4."""
    target = load_drafter(catalog.DEFAULT_TARGET).model  # its torch weights, to score answers
    sums: dict[str, list[float]] = {}
    for r in read_results(out / "results.jsonl"):
        turn = r["turns"][0]
        prompt, answer = turn["prompt_ids"], turn["token_ids"]
        if not answer:
            continue
        logits = target(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1].float() / temperature
        lp = logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None])[:, 0]
        s = sums.setdefault(r["method"], [0.0, 0, 0])
        s[0], s[1], s[2] = s[0] + float(lp.sum()), s[1] + len(answer), s[2] + int((lp < math.log(1e-4)).sum())
    return {m: (s[0] / s[1], s[2] / s[1]) for m, s in sums.items()}


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
