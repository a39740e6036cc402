"""What verifying L drafted tokens costs each backend on this machine: V(L), the time to
score L new tokens (logits for all L) after --context cached tokens (200), for L in --rows
(1, 2, 4, 8, 16, 32), and the time of a --prefill-token prefill (512), each the median of
--repeats forwards, on the same GGUF file and threads:

    python benchmarks/verify_cost.py --backends native,ggml
    python benchmarks/verify_cost.py --backends ggml,ggml-no-extra,ggml-amx-safe

Backends (each timed in its own child process: one that crashes is reported, not fatal):
- `native`: vocabtrim's own engine (`native_target.NativeTarget`, docs/native.md);
- `ggml`: the ggml target as vocabtrim runs it (llama.cpp's buffers, AMX kept out where
  llama.cpp offers it);
- `ggml-no-extra`: llama.cpp with extra buffer types off (no repacking, no AMX);
- `ggml-amx-safe`: the AMX avoidance forced on (extra buffer types off, the tensors llama.cpp
  would repack put in its CPU_REPACK buffer by name), as an AMX host runs it.
- `native-avx2`: the native engine forced onto its AVX2 path.
The last line printed is one JSON object: {"cpu": ..., "backends": {name: {"1": ms, ...,
"prefill_512": ms} or {"crashed": how}}}.

On hosts whose memory rate changes from minute to minute (the Zen 4 guests: ~35 or ~60 GB/s),
runs minutes apart do not compare. `--alternate SECONDS` times the backends in one child
process instead, one after the other, line after line, each line after a read of the memory
rate (`torch.sum` over --probe-mib, twice), and reports the medians of the lines by state: a
rate above --split GB/s is "fast", below "slow" (--split 0: all lines one state, "all"):

    python benchmarks/verify_cost.py --backends native,native-avx2,ggml --rows 1,8,16 --alternate 120 --split 45

There the JSON is {"cpu": ..., "split_gbs": ..., "states": {state: {"lines": n, "gbs": median,
"backends": {name: {"1": ms, ...}}}}}, no prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

from vocabtrim import catalog
from vocabtrim.errors import VocabtrimError
from vocabtrim.isolate import Crashed, run_isolated
from vocabtrim.kernels import cpu
from vocabtrim.profile import forward_ms

BACKENDS = ("native", "native-avx2", "ggml", "ggml-no-extra", "ggml-amx-safe")


@dataclass(frozen=True)
class Plan:
    path: str
    rows: tuple[int, ...]
    context: int
    prefill: int
    threads: int
    repeats: int


def target(name: str, plan: Plan):
    """The target of backend `name` on the plan's GGUF file."""
    from vocabtrim import ggml
    from vocabtrim.native_target import NativeTarget

    size = max(plan.context, plan.prefill) + max(plan.rows)
    if name.startswith("native"):
        return NativeTarget(plan.path, threads=plan.threads, context=size, isa="avx2" if name == "native-avx2" else None)
    if name == "ggml-no-extra":
        default = ggml.model_params
        ggml.model_params = lambda p, repack=True, info=None: default(p, False, info)
    elif name == "ggml-amx-safe":
        info = ggml.system_info()
        ggml.system_info = lambda: info + " | AMX_INT8 = 1"
    return ggml.GgmlTarget(plan.path, size, plan.threads)


def tokens(t, n: int) -> list[int]:
    """The n token ids every run scores, for target t's vocabulary."""
    return [(500 + 7 * i) % t.vocab_size for i in range(n)]


def measure(name: str, plan: Plan) -> dict[str, float]:
    """V(L) in ms for each L, and the prefill's ms."""
    t = target(name, plan)
    ids = tokens(t, max(plan.context, plan.prefill))
    out = {str(n): round(forward_ms(t.logits, t.vocab_size, ids[:plan.context], n, plan.repeats), 2)
           for n in plan.rows}
    times = []
    for _ in range(max(2, plan.repeats // 4)):
        t.reset()
        start = time.perf_counter()
        t.logits(ids[:plan.prefill], 1)
        times.append(time.perf_counter() - start)
    out[f"prefill_{plan.prefill}"] = round(1000 * statistics.median(times), 1)
    return out


def alternate(names: list[str], plan: Plan, seconds: float, probe_mib: int, split: float) -> dict:
    """The backends' V(L) line after line for `seconds`, each line after a memory-rate read:
    medians of the lines by state."""
    import torch

    targets = {name: target(name, plan) for name in names}
    context = {name: tokens(t, plan.context) for name, t in targets.items()}
    probe = torch.ones(probe_mib << 18, dtype=torch.float32)
    lines: list[tuple[float, dict[str, dict[str, float]]]] = []
    end = time.monotonic() + seconds
    while not lines or time.monotonic() < end:
        start = time.perf_counter()
        probe.sum(), probe.sum()
        gbs = 2 * probe.numel() * 4 / (time.perf_counter() - start) / 1e9
        ms = {}
        for name, t in targets.items():
            ms[name] = {str(n): forward_ms(t.logits, t.vocab_size, context[name], n, plan.repeats) for n in plan.rows}
        lines.append((gbs, ms))
        print(f"{gbs:5.1f} GB/s  " + "  ".join(f"{name} " + "/".join(f"{v:.1f}" for v in m.values())
                                           for name, m in ms.items()), file=sys.stderr, flush=True)
    states: dict[str, dict] = {}
    for state in ("all",) if split <= 0 else ("fast", "slow"):
        own = [(g, m) for g, m in lines if state == "all" or (g > split) == (state == "fast")]
        if own:
            states[state] = {"lines": len(own), "gbs": round(statistics.median(g for g, _ in own), 1),
                             "backends": {name: {n: round(statistics.median(m[name][n] for _, m in own), 2)
                                                 for n in map(str, plan.rows)} for name in names}}
    return states


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="native,ggml", help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--target", default=catalog.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="the L to time")
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the L scored")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--alternate", type=float, default=0, metavar="SECONDS",
                    help="time the backends in one process, alternated for SECONDS, by memory state")
    ap.add_argument("--split", type=float, default=0, metavar="GBS", help="with --alternate: fast above, slow below")
    ap.add_argument("--probe-mib", type=int, default=1024, help="with --alternate: the memory-rate read's size")
    args = ap.parse_args(argv)
    names = [b for b in args.backends.split(",") if b]
    try:
        rows = tuple(int(v) for v in args.rows.split(","))
    except ValueError:
        rows = ()
    if not names or set(names) - set(BACKENDS):
        raise VocabtrimError(f"--backends takes names of {', '.join(BACKENDS)}")
    if not rows or min(rows) < 1 or min(args.context, args.prefill, args.threads, args.repeats) < 1:
        raise VocabtrimError("--rows takes positive counts, and --context, --prefill, --threads and --repeats too")
    if args.alternate < 0 or args.split < 0 or args.probe_mib < 1:
        raise VocabtrimError("--alternate and --split take seconds and GB/s >= 0, --probe-mib a positive size")
    path = catalog.gguf_path(args.target)
    if path is None:
        raise VocabtrimError(f"{args.target} has no GGUF file")
    plan = Plan(str(path), rows, args.context, args.prefill, args.threads, args.repeats)
    result = {"cpu": cpu()["cpu"], "target": path.name, "threads": args.threads}
    if args.alternate:
        result["split_gbs"] = args.split
        try:
            result["states"] = run_isolated(alternate, names, plan, args.alternate, args.probe_mib, args.split)
        except Crashed as e:
            result["crashed"] = str(e)
        print(json.dumps(result))
        return
    result["backends"] = {}
    for name in names:
        try:
            result["backends"][name] = run_isolated(measure, name, plan)
        except Crashed as e:
            result["backends"][name] = {"crashed": str(e)}
        ms = result["backends"][name]
        ratios = {n: round(ms[n] / ms[str(rows[0])], 2) for n in map(str, rows)} if "crashed" not in ms else {}
        print(f"{name}: {ms}  V(L)/V({rows[0]}): {ratios}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except VocabtrimError as e:
        sys.exit(f"error: {e}")
