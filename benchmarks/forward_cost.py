"""Where speculative decoding's time goes on this machine: forward costs of the default pair.

Speculative decoding pays off when (a) a drafter forward is cheap next to a target forward
(the measured cost ratio c) and (b) the target scores K+1 tokens in one forward for about
the price of one (memory-bound). This prints both, measured in one run, for each dtype:

    python benchmarks/forward_cost.py --k 5 --dtypes bfloat16,float32,packed-fp16

On CPUs with native bf16 matmul (AVX512-BF16 / AMX) (b) holds in bf16; on AVX2-only CPUs
bf16 and fp16 matmuls are emulated, multi-token forwards turn compute-bound, and
verification of K+1 tokens costs several single-token forwards, while packed-fp16 (fbgemm
fp16 weights, fp32 math; what `auto` picks there) keeps it close to one. It also splits a
draft step into the drafter's body and its LM head (full and trimmed): the head's share is
the most that VocabTrim can take off a draft step, and times each drafter step through
transformers' modules and through the lean forward that drafters use (lean.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vocabtrim import catalog, kernels
from vocabtrim.cache import CachedLM
from vocabtrim.heads import Head
from vocabtrim.lean import lm_factory
from vocabtrim.loading import load_drafter
from vocabtrim.profile import forward_ms, prefill_s


def head_split_ms(lm: CachedLM, heads: dict[str, Head], context: list[int], repeats: int) -> dict[str, float]:
    """Median milliseconds of one drafter step's body and of each head on its hidden state:
    how much of a draft step any head trimming can save at most."""
    lm.hidden(context, 1)
    times: dict[str, list[float]] = {"body": [], **{n: [] for n in heads}}
    for r in range(repeats):
        t0 = time.perf_counter()
        h = lm.hidden(context + [1000 + r], 1)
        times["body"].append(time.perf_counter() - t0)
        for n, head in heads.items():
            t0 = time.perf_counter()
            head(h)
            times[n].append(time.perf_counter() - t0)
    return {n: 1000 * statistics.median(t) for n, t in times.items()}


def pair_ms(dtype: str, context: list[int], k: int, prefill: int, quant: list[str], trimmed: int, repeats: int,
            splits: dict) -> tuple[dict, float]:
    """ms of a drafter step and of the target scoring 1 and k+1 tokens in `dtype`, seconds
    of the target's prefill; each drafter weight scheme's head split goes into `splits`."""
    ms = {}
    with torch.inference_mode():
        for role, name in (("draft", catalog.DEFAULT_DRAFT), ("target", catalog.DEFAULT_TARGET)):
            loaded = load_drafter(name, dtype)  # both on torch: the ratio of their forwards
            target = loaded.as_target()
            ms[role, 1] = forward_ms(target.logits, target.vocab_size, context, 1, repeats)
            if role == "draft":
                for scheme in ["none", *quant]:
                    model = loaded.model if scheme == "none" else kernels.quantized(loaded.model, scheme)
                    heads = {"full": Head.of(model), "trimmed": Head.of(model, torch.arange(trimmed))}
                    for forward, lm in (("transformers", CachedLM(model)), ("lean", lm_factory(model)())):
                        splits[dtype, scheme, forward] = head_split_ms(lm, heads, context, repeats)
            else:
                ms[role, k + 1] = forward_ms(target.logits, target.vocab_size, context, k + 1, repeats)
                seconds = prefill_s(target, context[:prefill])
            del loaded, target
    return ms, seconds


def print_splits(splits: dict, trimmed: int) -> None:
    print(f"\n{'dtype':11} {'weights':7} {'forward':12} {'drafter body':>12} {'full head':>9} "
          f"{f'{trimmed} head':>10} {'head share':>10} {'step, trimmed':>13} {'vs first':>8}")
    first = None
    for (dtype, scheme, forward), t in splits.items():
        share = t["full"] / (t["body"] + t["full"])
        step = t["body"] + t["trimmed"]
        first = first or step
        print(f"{dtype:11} {scheme:7} {forward:12} {t['body']:10.1f}ms {t['full']:7.1f}ms {t['trimmed']:8.1f}ms "
              f"{share:10.1%} {step:11.1f}ms {step / first:7.2f}x")
    print("head share: the full head's part of a draft step, the most that trimming the head can save.\n"
          "weights: the drafter's linear layers as they are, or quantized (--draft-quant); forward: "
          "transformers' modules, or vocabtrim's lean forward (lean.py, what drafters use).\n"
          "vs first: the trimmed step against the first row's.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5, help="draft length: the target scores K+1 tokens")
    ap.add_argument("--dtypes", default="bfloat16,packed-fp16")
    ap.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    ap.add_argument("--prefill", type=int, default=150, help="prompt length whose prefill is timed")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--trimmed", type=int, default=16384, help="rows of the trimmed drafter head timed")
    ap.add_argument("--quant", default="int8,int4", help="drafter weight schemes timed too (empty: none)")
    args = ap.parse_args()
    context = list(range(500, 500 + args.context))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'dtype':11} {'drafter 1':>9} {'target 1':>9} {f'target {args.k + 1}':>9} {'c (time)':>9} "
          f"{'verify/1':>9} {'round/ar':>9} {f'prefill {args.prefill}':>12}")
    splits: dict = {}
    for dtype in args.dtypes.split(","):
        ms, prefill = pair_ms(dtype, context, args.k, args.prefill, list(filter(None, args.quant.split(","))),
                              args.trimmed, args.repeats, splits)
        c = ms["draft", 1] / ms["target", 1]
        verify = ms["target", args.k + 1] / ms["target", 1]
        # one round drafting K tokens costs (K c + verify) single target forwards
        print(f"{dtype:11} {ms['draft', 1]:8.0f}ms {ms['target', 1]:8.0f}ms {ms['target', args.k + 1]:8.0f}ms "
              f"{c:9.3f} {verify:9.2f} {args.k * c + verify:9.2f} {prefill:11.2f}s")
    print(f"\nround/ar: the time of one K={args.k} round in target forwards; speculative decoding "
          "beats the target alone only when tau exceeds it.")
    print_splits(splits, args.trimmed)


if __name__ == "__main__":
    main()
