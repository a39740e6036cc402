"""Adapted drafters against plain ones on prompts the adaptation never saw.

A stream split in time: `vocabtrim adapt` distils an adapter from the target's answers to
the first prompts, and the later ones measure it. Code: HumanEval 0..N-1 adapt, the next M
measure. Prose: the Spec-Bench-format sample's questions outside one category adapt (each
turn a prompt; the sample holds three a category, too few to split one), that category
measures. Both drafters: the same-vocabulary 0.5B (reverse KL to the target's
distributions plus NLL) and SmolLM2-135M of another tokenizer (NLL on the target's text).
Each adaptation's CPU time (user + system of the `vocabtrim adapt` process) is recorded.
The measurement is one interleaved run of bench's runner per domain: the target alone, the
model drafter at static K=5 plain and adapted (`sd`, `sd@adapted`), the cross-vocabulary
drafter plain and adapted (`x`, `x@adapted`), greedy, with bench's identity check.

    python benchmarks/adapt_split.py --adapt-code 24 --eval-code 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from vocabtrim import catalog, prompts
from vocabtrim.assembly import Assembler, parse_method
from vocabtrim.bench import methods as bm
from vocabtrim.bench.common import identity_check, warm_up
from vocabtrim.bench.report import markdown, summarize
from vocabtrim.bench.run import is_results, run_matrix
from vocabtrim.data import humaneval, load_questions
from vocabtrim.engine import Stop
from vocabtrim.files import atomic_write
from vocabtrim.loading import Options, load_drafter, load_parts
from vocabtrim.sampling import Sampling

SAMPLE = Path(__file__).with_name("spec_bench_sample.jsonl")
DRAFTERS = {"sd": catalog.DEFAULT_DRAFT, "x": catalog.CROSS_DRAFT}


def adapters(args, prose_data: Path) -> dict[tuple[str, str], tuple[Path, float]]:
    """(drafter kind, domain) -> (adapter file, CPU seconds its adaptation took)."""
    out = {}
    for kind, draft in DRAFTERS.items():
        for domain, data in (("code", ["--data", "humaneval", "--limit", str(args.adapt_code)]),
                             ("prose", ["--data", str(prose_data)])):
            path = args.out / f"{kind}-{domain}.safetensors"
            before = os.times()
            cmd = ["vocabtrim", "adapt", *data, "--draft", draft, "--out", str(path),
                   "--max-new-tokens", str(args.max_new_tokens), "--epochs", str(args.epochs)]
            if path.exists():
                cmd.append("--resume")  # complete: nothing left to do; interrupted: continue
            subprocess.run(cmd, check=True)
            after = os.times()
            out[kind, domain] = path, (after.children_user - before.children_user) + (
                after.children_system - before.children_system)
    return out


def evaluate(questions, adapted: dict[str, Path], out: Path, max_new_tokens: int) -> dict:
    """One interleaved run: ar, sd, sd@adapted, x, x@adapted."""
    parts = load_parts(Options(draft=DRAFTERS["sd"], cross=DRAFTERS["x"]))
    target = parts.target
    stop, sampling = Stop(prompts.stop_token_ids(target)), Sampling()
    plain = Assembler(parts)
    tuned = Assembler(replace(parts, drafter=load_drafter(DRAFTERS["sd"], adapter=adapted["sd"]),
                              cross=load_drafter(DRAFTERS["x"], adapter=adapted["x"])))
    specs = [parse_method(m) for m in ("ar", "sd", "x")]
    matrix = bm.build(specs, plain, sampling, 0, stop) + [
        replace(m, name=f"{m.name}@adapted") for m in bm.build(specs[1:], tuned, sampling, 0, stop)]
    warm_up(matrix, target.tokenizer)
    records = run_matrix(questions, matrix, target.tokenizer, max_new_tokens, out / "results.jsonl", False, 1)
    return summarize(records, "ar", True, identity_check(plain.target))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapt-code", type=int, default=24, help="HumanEval problems 0..N-1 adapt")
    ap.add_argument("--eval-code", type=int, default=8, help="the next M measure")
    ap.add_argument("--prose", default="qa", help="the sample's category that measures; the others adapt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/adapt"))
    args = ap.parse_args()
    sample = load_questions(str(SAMPLE))
    prose_data = args.out / "prose_adapt.jsonl"
    prose = "".join(json.dumps({"prompt": t}) + "\n" for q in sample if q.category != args.prose for t in q.turns)
    results = [args.out / f"eval-{d}" / "results.jsonl" for d in ("code", "prose")]
    foreign = [p for p in results if p.exists() and not is_results(p)]
    if prose_data.exists() and prose_data.read_text() != prose:
        foreign.append(prose_data)
    if foreign:  # checked before any work: this script replaces only its own files
        raise SystemExit(f"error: refusing to overwrite {', '.join(map(str, foreign))}: this script did not write it")
    atomic_write(prose_data, lambda tmp: Path(tmp).write_text(prose))
    made = adapters(args, prose_data)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}")
    for (kind, domain), (path, seconds) in made.items():
        print(f"adapter {kind} on {domain}: {path}, {seconds / 60:.1f} CPU-minutes")
    for domain, questions in (("code", humaneval()[args.adapt_code:args.adapt_code + args.eval_code]),
                              ("prose", [q for q in sample if q.category == args.prose])):
        out = args.out / f"eval-{domain}"
        out.mkdir(exist_ok=True)
        (out / "results.jsonl").unlink(missing_ok=True)  # a fresh run each time (its own file, checked above)
        summary = evaluate(questions, {k: made[k, domain][0] for k in DRAFTERS}, out, args.max_new_tokens)
        print(f"\n## {domain}: {len(questions)} questions, {args.max_new_tokens} new tokens, greedy\n")
        print(markdown(summary))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
