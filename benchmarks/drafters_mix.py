"""Suffix and hybrid drafters against the model drafter and transformers' prompt lookup, on
code and prose in one interleaved run.

Writes a question file of HumanEval problems 0..N-1 (category `humaneval`) followed by the
Spec-Bench-format sample (3 questions per category, multi-turn where the format has it) and
runs `vocabtrim bench` on it, so every method meets every question in the same run.

    python benchmarks/drafters_mix.py --humaneval 16 --out results/drafters
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vocabtrim.data import humaneval
from vocabtrim.files import atomic_write

SAMPLE = Path(__file__).with_name("spec_bench_sample.jsonl")
METHODS = "ar,sd+vt,suffix,hybrid,hybrid+vt,pld"


def write_questions(out: Path, n_humaneval: int, per_category: int) -> Path:
    """out/questions.jsonl: HumanEval problems 0..N-1, then the sample's first questions of
    each category."""
    questions = [{"question_id": q.id, "category": "humaneval", "turns": list(q.turns)}
                 for q in humaneval(0, n_humaneval)]
    seen: dict[str, int] = {}
    for line in filter(str.strip, SAMPLE.read_text().splitlines()):
        q = json.loads(line)
        seen[q["category"]] = seen.get(q["category"], 0) + 1
        if seen[q["category"]] <= per_category:
            questions.append(q)
    data, text = out / "questions.jsonl", "".join(json.dumps(q) + "\n" for q in questions)
    if data.exists() and data.read_text() != text:  # another run's questions, or not ours at all
        sys.exit(f"error: refusing to overwrite {data}: it holds other questions; choose another --out")
    atomic_write(data, lambda tmp: Path(tmp).write_text(text))
    return data


def mix_parser(doc: str, methods: str, per_category: int, out: str) -> argparse.ArgumentParser:
    """The options of a run over write_questions' mix."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--humaneval", type=int, default=16, help="HumanEval problems 0..N-1")
    ap.add_argument("--per-category", type=int, default=per_category,
                    help="Spec-Bench-format questions per category")
    ap.add_argument("--methods", default=methods)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--resume", action="store_true")
    return ap


def main() -> None:
    args = mix_parser(__doc__, METHODS, 3, "results/drafters").parse_args()
    data = write_questions(args.out, args.humaneval, args.per_category)
    cmd = [sys.executable, "-m", "vocabtrim.cli", "bench", "--data", str(data), "--methods", args.methods,
           "--max-new-tokens", str(args.max_new_tokens), "--out", str(args.out)]
    sys.exit(subprocess.call(cmd + (["--resume"] if args.resume else [])))


if __name__ == "__main__":
    main()
