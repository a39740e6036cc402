"""How fast any drafter could make the target on this machine: the oracle's ceiling.

An oracle drafter knows the target's answer and drafts it for nothing. Each of its rounds
then costs only the target's verification of L tokens, V(L) (logits for all L positions,
as a verifier needs them), and brings L tokens; it splits every answer into the rounds
that cost least, and it still reads the prompt (the target alone's measured prefill). No
drafter, model or model-free, can beat that, so a speed bar above it cannot be met on this
CPU with this target, whatever the drafting. This measures V(L) on a GGUF backend (`--backend`:
native or ggml; default: the one the bench run's baseline ran on, else ggml) for
L = 1..`--max-len` and prints the ceiling for the answers of a `vocabtrim bench` run beside
the methods of that run and of the peer runs (e.g. `benchmarks/llamacpp_peers.py`), and
what an oracle limited to shorter rounds could reach (real drafts are rarely long). For
drafts that are not always right it prints what a free drafter whose drafts each survive
with probability a would bring to decoding (a model, not a bound), and the a each of
`--bars` needs:

    python benchmarks/ceiling.py --results results/bench --peers results/llamacpp_peers --max-len 128

Answers, their lengths and prefill times are the bench run's baseline method's (`ar`).
V(L) is measured after that run's first prompt, at every L up to 16 and every 8th beyond
(linear in between), each the median of --repeats forwards of other tokens.
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

from tqdm.auto import tqdm

from vocabtrim import backend, catalog, models
from vocabtrim.errors import VocabtrimError
from vocabtrim.target import Target
from vocabtrim.profile import forward_ms, interpolate


def read_run(out: Path) -> tuple[dict, list[dict]]:
    """A bench run's summary and its baseline method's answers."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise VocabtrimError(f"{out} is not a finished bench run ({e})") from e
    return summary, [r for r in rows if r["method"] == summary["baseline"]]


def verify_curve(target: Target, context: list[int], max_len: int, repeats: int) -> list[float]:
    """ms of verifying L = 0..max_len tokens (index 0: nothing), interpolated between the
    lengths measured."""
    lengths = sorted({*range(1, min(16, max_len) + 1), *range(24, max_len + 1, 8), max_len})
    measured = {0: 0.0}
    for n in tqdm(lengths, desc="V(L)", unit="length"):
        measured[n] = forward_ms(target.logits, target.vocab_size, context, n, repeats)
    return [interpolate(measured, n) for n in range(max_len + 1)]


def oracle_ms(tokens: int, curve: list[float]) -> float:
    """Least ms to verify `tokens` tokens in rounds of at most len(curve)-1 each."""
    @cache
    def best(n: int) -> float:
        return 0.0 if n == 0 else min(curve[k] + best(n - k) for k in range(1, min(n, len(curve) - 1) + 1))
    for n in range(tokens + 1):  # bottom-up, so the recursion stays shallow
        best(n)
    return best(tokens)


def free_speedup(alpha: float, curve: list[float]) -> tuple[float, int]:
    """A free drafter whose every draft survives with probability `alpha` (given the ones
    before it, the usual model of speculative decoding): its best expected decode speed-up
    over the target alone, and the draft length that gets it. A model, not a bound: a
    drafter whose long drafts are surer than its short ones (copying) does better."""
    def rate(k: int) -> float:  # expected tokens a ms of a round of k drafts
        return sum(alpha ** i for i in range(k + 1)) / curve[k + 1]
    k = max(range(len(curve) - 1), key=rate)
    return rate(k) * curve[1], k


def acceptance_for(speedup: float, curve: list[float]) -> float | None:
    """The least per-draft acceptance with which a free drafter reaches `speedup`."""
    if free_speedup(1.0, curve)[0] < speedup:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if free_speedup(mid, curve)[0] >= speedup else (mid, hi)
    return hi


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results/bench"), help="a vocabtrim bench --out directory")
    p.add_argument("--peers", type=Path, nargs="*", default=[], help="more run directories to compare")
    p.add_argument("--target", default=catalog.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    p.add_argument("--backend", choices=[b for b in backend.REGISTRY if backend.get(b).runs_gguf],
                   help="what runs the target (default: the bench run's baseline's backend, else ggml)")
    p.add_argument("--max-len", type=int, default=128, help="the longest round the oracle may verify")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bars", default="1.3,1.5", help="decode speed-ups to find a free drafter's needed acceptance for")
    a = p.parse_args()
    try:
        summary, answers = read_run(a.results)
        if not answers:
            raise VocabtrimError(f"{a.results} holds no answers of its baseline method")
        runs = [summary, *(read_run(d)[0] for d in a.peers)]
        if a.max_len < 1 or a.repeats < 1:
            raise VocabtrimError("--max-len and --repeats must be at least 1")
        if catalog.gguf_path(a.target) is None:
            raise VocabtrimError(f"{a.target} has no GGUF file to run")
        ran_on = summary["methods"][summary["baseline"]].get("backend", "torch")
        on = a.backend or (ran_on if ran_on in backend.REGISTRY and backend.get(ran_on).runs_gguf else "ggml")
        backend.get(on).check()
        target = models.load(a.target, "auto", on).as_target()
        print(f"V(L) on the {on} backend")
    except VocabtrimError as e:
        raise SystemExit(f"error: {e}") from None
    curve = verify_curve(target, answers[0]["turns"][0]["prompt_ids"], a.max_len, a.repeats)
    per_token = min(range(1, a.max_len + 1), key=lambda k: curve[k] / k)
    print("V(L) ms: " + ", ".join(f"{k}: {curve[k]:.0f}" for k in (1, 2, 4, 8, 16, 32, 64, a.max_len) if k <= a.max_len))
    print(f"cheapest ms a token: {curve[per_token] / per_token:.1f} at L = {per_token} (a single step: {curve[1]:.1f})")
    ceiling = print_oracle(summary, answers, curve)
    print_free(curve, [float(b) for b in a.bars.split(",")])
    print(f"\n| method | tok/s | share of the ceiling ({a.max_len}) | the ceiling over it |\n|---|---|---|---|")
    for run in runs:
        for name, m in run["methods"].items():
            tps = m["overall"]["tokens_per_second"]
            print(f"| {name} | {tps:.2f} | {tps / ceiling:.0%} | {ceiling / tps:.2f}x |")


def print_oracle(summary: dict, answers: list[dict], curve: list[float]) -> float:
    """The oracle's tok/s over the run's answers for longer and longer rounds; the last."""
    tokens = sum(r["new_tokens"] for r in answers)
    prefill = sum(r["prefill_s"] for r in answers)
    base = summary["methods"][summary["baseline"]]["overall"]["tokens_per_second"]
    print(f"{len(answers)} answers, {tokens} tokens, prefill {prefill:.2f} s (the run's {summary['baseline']})")
    print("\n| oracle rounds of at most | decode s | tok/s | over the run's baseline |\n|---|---|---|---|")
    longest = len(curve) - 1
    for cap in sorted({c for c in (4, 8, 16, 32, 64) if c < longest} | {longest}):
        decode = sum(oracle_ms(r["new_tokens"], curve[:cap + 1]) for r in answers) / 1000
        ceiling = tokens / (prefill + decode)
        print(f"| {cap} tokens | {decode:.2f} | {ceiling:.2f} | {ceiling / base:.2f}x |")
    return ceiling


def print_free(curve: list[float], bars: list[float]) -> None:
    """What a free drafter of a given acceptance could bring, and the acceptance each bar
    needs."""
    print("\n| a free drafter's per-draft acceptance | best draft length | decode speed-up over the target alone |"
          "\n|---|---|---|")
    for alpha in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        x, k = free_speedup(alpha, curve)
        print(f"| {alpha:.2f} | {k} | {x:.2f}x |")
    for bar in bars:
        need = acceptance_for(bar, curve)
        print(f"{bar}x decode speed-up needs a free drafter with acceptance >= "
              + ("(out of reach)" if need is None else f"{need:.3f}"))


if __name__ == "__main__":
    main()
