"""V(L): the time to score L new tokens after a cached context, per backend, on a GGUF.

Speculative decoding pays while V(L) stays close to V(1). This times it for the native
engine (vocabtrim.native_target) and llama.cpp (vocabtrim.ggml) on the same file and
threads, after `--context` cached tokens, plus a `--prefill`-token prefill:

    python benchmarks/verify_cost.py [--gguf PATH] [--backends native,ggml] [--threads 2]

Medians of `--repeats` runs; each run scores L fresh tokens, then the cache is cropped
back. Prints one JSON object on its last line:
{"cpu": ..., "backends": {"native": {"1": ms, "2": ms, ..., "prefill_512": ms}, ...}}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from vocabtrim import kernels, models


def make_target(backend: str, path: Path, threads: int, context: int):
    if backend == "native":
        from vocabtrim.native_target import NativeTarget

        return NativeTarget(path, threads=threads, context=context)
    if backend == "ggml":
        from vocabtrim.ggml import GgmlTarget

        return GgmlTarget(path, context=context, threads=threads)
    raise SystemExit(f"unknown backend {backend!r}: native or ggml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=models.model_dir(models.DEFAULT_TARGET) / models.GGUF_FILE)
    ap.add_argument("--backends", default="native,ggml")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="the L to time")
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the L scored")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    Ls = [int(v) for v in args.rows.split(",")]
    rng = np.random.default_rng(0)
    out = {"cpu": kernels.cpu()["cpu"], "threads": args.threads, "gguf": str(args.gguf), "backends": {}}
    for name in args.backends.split(","):
        target = make_target(name, args.gguf, args.threads, args.prefill + max(Ls) + 8)
        ids = (min(100, target.vocab_size // 2), min(20000, target.vocab_size))  # ordinary tokens
        prompt = [int(t) for t in np.random.default_rng(0).integers(*ids, max(args.context, args.prefill))]
        res = {}
        target.reset()
        t0 = time.perf_counter()
        target.logits(prompt[:args.prefill], 1)
        res["prefill_%d" % args.prefill] = 1000 * (time.perf_counter() - t0)
        ctx = prompt[:args.context]
        for L in Ls:
            times = []
            for r in range(args.repeats + 1):  # the first run warms up
                target.logits(ctx, 1)  # the cache back at the context
                new = [int(t) for t in rng.integers(*ids, L)]
                t0 = time.perf_counter()
                target.logits(ctx + new, L)
                times.append(time.perf_counter() - t0)
            res[str(L)] = 1000 * statistics.median(times[1:])
        out["backends"][name] = res
        print(f"{name}: " + ", ".join(f"V({L}) {res[str(L)]:.1f} ms ({res[str(L)] / res[str(Ls[0])]:.2f}x)" for L in Ls)
              + f", prefill {args.prefill}: {res['prefill_%d' % args.prefill]:.0f} ms")
        del target
    print(json.dumps(out))


if __name__ == "__main__":
    main()
