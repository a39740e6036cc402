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
The last line printed is one JSON object: {"cpu": ..., "backends": {name: {"1": ms, ...,
"prefill_512": ms} or {"crashed": how}}}.
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

BACKENDS = ("native", "ggml", "ggml-no-extra", "ggml-amx-safe")


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
    if name == "native":
        return NativeTarget(plan.path, threads=plan.threads, context=size)
    if name == "ggml-no-extra":
        default = ggml.model_params
        ggml.model_params = lambda p, repack=True, info=None: default(p, False, info)
    elif name == "ggml-amx-safe":
        info = ggml.system_info()
        ggml.system_info = lambda: info + " | AMX_INT8 = 1"
    return ggml.GgmlTarget(plan.path, size, plan.threads)


def measure(name: str, plan: Plan) -> dict[str, float]:
    """V(L) in ms for each L, and the prefill's ms."""
    t = target(name, plan)
    ids = [(500 + 7 * i) % t.vocab_size for i in range(max(plan.context, plan.prefill))]
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="native,ggml", help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--target", default=catalog.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="the L to time")
    ap.add_argument("--context", type=int, default=200, help="cached tokens before the L scored")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=9)
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
    path = catalog.gguf_path(args.target)
    if path is None:
        raise VocabtrimError(f"{args.target} has no GGUF file")
    plan = Plan(str(path), rows, args.context, args.prefill, args.threads, args.repeats)
    result = {"cpu": cpu()["cpu"], "target": path.name, "threads": args.threads, "backends": {}}
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
