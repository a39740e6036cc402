"""Where speculative decoding's time goes on this machine: forward costs of the default pair.

Speculative decoding pays off when (a) a drafter forward is cheap next to a target forward
(the measured cost ratio c) and (b) the target scores K+1 tokens in one forward for about
the price of one (memory-bound). This prints both, measured in one run, for each dtype:

    python benchmarks/forward_cost.py --k 5 --dtypes bfloat16,float32,packed-fp16

On CPUs with native bf16 matmul (AVX512-BF16 / AMX) (b) holds in bf16; on AVX2-only CPUs
bf16 and fp16 matmuls are emulated, multi-token forwards turn compute-bound, and
verification of K+1 tokens costs several single-token forwards, while packed-fp16 (fbgemm
fp16 weights, fp32 math; what `auto` picks there) keeps it close to one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vocabtrim import models
from vocabtrim.engine import CachedLM
from vocabtrim.heads import Head


def forward_ms(lm: CachedLM, head: Head, context: list[int], n: int, repeats: int) -> float:
    """Median milliseconds to score n new tokens after a cached context (body + head)."""
    lm.hidden(context, 1)
    times = []
    for r in range(repeats):
        seq = context + [1000 + r + i for i in range(n)]
        t0 = time.perf_counter()
        head(lm.hidden(seq, n))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def prefill_s(model, context: list[int]) -> float:
    """Seconds to prefill `context` into an empty cache (what every generation pays first)."""
    t0 = time.perf_counter()
    CachedLM(model).hidden(context, 1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5, help="draft length: the target scores K+1 tokens")
    ap.add_argument("--dtypes", default="bfloat16,packed-fp16")
    ap.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    ap.add_argument("--prefill", type=int, default=150, help="prompt length whose prefill is timed")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    context = list(range(500, 500 + args.context))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'dtype':11} {'drafter 1':>9} {'target 1':>9} {f'target {args.k + 1}':>9} {'c (time)':>9} "
          f"{'verify/1':>9} {'round/ar':>9} {f'prefill {args.prefill}':>12}")
    for dtype in args.dtypes.split(","):
        ms = {}
        with torch.inference_mode():
            for role, name in (("draft", models.DEFAULT_DRAFT), ("target", models.DEFAULT_TARGET)):
                loaded = models.load(name, dtype=dtype)
                lm, head = CachedLM(loaded.model), Head.of(loaded.model)
                ms[role, 1] = forward_ms(lm, head, context, 1, args.repeats)
                if role == "target":
                    ms[role, args.k + 1] = forward_ms(lm, head, context, args.k + 1, args.repeats)
                    prefill = prefill_s(loaded.model, context[:args.prefill])
                del loaded, lm, head
        c = ms["draft", 1] / ms["target", 1]
        verify = ms["target", args.k + 1] / ms["target", 1]
        # one round drafting K tokens costs (K c + verify) single target forwards
        print(f"{dtype:11} {ms['draft', 1]:8.0f}ms {ms['target', 1]:8.0f}ms {ms['target', args.k + 1]:8.0f}ms "
              f"{c:9.3f} {verify:9.2f} {args.k * c + verify:9.2f} {prefill:11.2f}s")
    print(f"\nround/ar: the time of one K={args.k} round in target forwards; speculative decoding "
          "beats the target alone only when tau exceeds it.")


if __name__ == "__main__":
    main()
