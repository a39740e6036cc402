"""The native engine on a real GGUF: batch invariance bit for bit, and how far its logits are
from llama.cpp's on the same file.

    python benchmarks/native_check.py [--gguf PATH] [--tokens 48] [--threads 2]

Scores `--tokens` positions after a prefix (token ids from a fixed random draw, or the
given text) one at a time, in batches of 2..16, after a crop and on 1 thread, and compares
every position's logits bit for bit; then scores the same positions with llama.cpp
(GgmlTarget, if llama-cpp-python is installed) and reports the largest |logit difference|
and how often the two argmaxes agree. With `--answers DIR` (a `vocabtrim bench` --out) it
also teacher-forces every answer of that run's target alone (`ar`) through both engines (the
prompt and the answer in one forward, logits at every answer position) and reports how
often each engine's argmax is the answer's next token and how often the two agree. Prints
one JSON object on its last line.

    python benchmarks/native_check.py --answers results/bench
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from vocabtrim import catalog
from vocabtrim.native_target import NativeTarget


def one_at_a_time(target, seq: list[int], start: int) -> torch.Tensor:
    target.reset()
    target.logits(seq[:start], 1)
    return torch.cat([target.logits(seq[:i], 1) for i in range(start + 1, len(seq) + 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=catalog.model_dir(catalog.DEFAULT_TARGET) / catalog.GGUF_FILE)
    ap.add_argument("--tokens", type=int, default=48, help="positions scored")
    ap.add_argument("--prefix", type=int, default=64, help="tokens before them")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--answers", type=Path, help="a vocabtrim bench --out: teacher-force its ar answers")
    args = ap.parse_args()
    t0 = time.time()
    target = NativeTarget(args.gguf, threads=args.threads, context=1024)
    print(f"loaded {args.gguf.name} in {time.time() - t0:.1f} s")
    ids = (min(100, target.vocab_size // 2), min(20000, target.vocab_size))  # ordinary tokens
    seq = [int(t) for t in np.random.default_rng(0).integers(*ids, args.prefix + args.tokens)]
    n = args.tokens
    alone = one_at_a_time(target, seq, args.prefix)
    same = {}
    for size in (2, 3, 4, 8, 16):
        target.reset()
        target.logits(seq[:args.prefix], 1)
        got = torch.cat([target.logits(seq[:i + size], size) for i in range(args.prefix, len(seq) - size + 1, size)])
        same[f"batches of {size}"] = torch.equal(got.view(torch.int32), alone[:len(got)].view(torch.int32))
    target.logits(seq[:args.prefix + 10] + [5, 6, 7], 3)  # a detour, then back: a crop
    same["after a crop"] = torch.equal(target.logits(seq, n).view(torch.int32), alone.view(torch.int32))
    same["1 thread"] = torch.equal(one_at_a_time(NativeTarget(args.gguf, threads=1, context=1024), seq, args.prefix)
                                   .view(torch.int32), alone.view(torch.int32))
    print("bit-identical to one at a time:", same)
    out = {"gguf": str(args.gguf), "positions": n, "bit_identical": same}
    try:
        from vocabtrim.ggml import GgmlTarget
    except ImportError:
        GgmlTarget = None
    if GgmlTarget is not None:
        ggml = GgmlTarget(args.gguf, context=1024, threads=args.threads)
        ref = one_at_a_time(ggml, seq, args.prefix)
        diff = (alone - ref).abs().max(dim=-1).values
        agree = (alone.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"vs llama.cpp, one at a time: max |logit difference| {diff.max():.3f} (median over positions "
              f"{diff.median():.3f}), argmax agreement {agree:.3f}")
        out["vs_llamacpp"] = {"max_abs_diff": diff.max().item(), "median_max_abs_diff": diff.median().item(),
                              "argmax_agreement": agree}
        if args.answers:
            out["teacher_forced"] = teacher_forced(args.answers, {"native": target, "ggml": ggml})
            print("teacher-forced over the answers:", out["teacher_forced"])
    print(json.dumps(out))


def teacher_forced(run: Path, targets: dict) -> dict:
    """Over every turn of the bench run's `ar` answers: the share of answer positions where
    each target's argmax is the answer's token, where the targets' argmaxes agree, and the
    largest |logit difference| between the first two."""
    from vocabtrim.bench.run import read_results

    room = min(tg.context for tg in targets.values())
    turns = [t for r in read_results(run / "results.jsonl") if r["method"] == "ar" for t in r["turns"]
             if t["token_ids"] and len(t["prompt_ids"]) + len(t["token_ids"]) <= room]
    hits, agree, positions, worst = dict.fromkeys(targets, 0), 0, 0, 0.0
    for t in turns:
        seq, n = t["prompt_ids"] + t["token_ids"], len(t["token_ids"])
        logits = {name: tg.logits(seq[:-1], n) for name, tg in targets.items()}  # predicts each answer token
        want = torch.tensor(t["token_ids"])
        for name, lg in logits.items():
            hits[name] += int((lg.argmax(-1) == want).sum())
        a, b = logits.values()
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        worst = max(worst, (a - b).abs().max().item())
        positions += n
    return {"answers": len(turns), "positions": positions, "argmax_agreement": agree / positions,
            "max_abs_diff": worst, **{f"{name}_matches_answer": h / positions for name, h in hits.items()}}


if __name__ == "__main__":
    main()
