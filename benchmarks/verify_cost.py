"""What verifying L drafted tokens costs each backend on this machine: V(L), the time to
score L new tokens (logits for all L) after 200 cached tokens, for L = 1, 2, 4, 8, 16, 32,
and the time of a 512-token prefill, each the median of --repeats forwards:

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
import statistics
import sys
import time

from vocabtrim import models
from vocabtrim.errors import VocabtrimError
from vocabtrim.isolate import Crashed, run_isolated
from vocabtrim.kernels import cpu
from vocabtrim.profile import forward_ms

LENGTHS = (1, 2, 4, 8, 16, 32)
CONTEXT, PREFILL = 200, 512
BACKENDS = ("native", "ggml", "ggml-no-extra", "ggml-amx-safe")


def target(name: str, path: str):
    """The target of backend `name` on the GGUF file `path`."""
    from vocabtrim import ggml
    from vocabtrim.native_target import NativeTarget

    if name == "native":
        return NativeTarget(path, context=CONTEXT + PREFILL + max(LENGTHS))
    if name == "ggml-no-extra":
        default = ggml.model_params
        ggml.model_params = lambda p, repack=True, info=None: default(p, False, info)
    elif name == "ggml-amx-safe":
        info = ggml.system_info()
        ggml.system_info = lambda: info + " | AMX_INT8 = 1"
    return ggml.GgmlTarget(path, CONTEXT + PREFILL + max(LENGTHS))


def measure(name: str, path: str, repeats: int) -> dict[str, float]:
    """V(L) in ms for each L, and the 512-token prefill's ms."""
    t = target(name, path)
    ids = [(500 + 7 * i) % t.vocab_size for i in range(PREFILL)]
    out = {str(n): round(forward_ms(t.logits, t.vocab_size, ids[:CONTEXT], n, repeats), 2) for n in LENGTHS}
    times = []
    for _ in range(max(2, repeats // 4)):
        t.reset()
        start = time.perf_counter()
        t.logits(ids, 1)
        times.append(time.perf_counter() - start)
    out[f"prefill_{PREFILL}"] = round(1000 * statistics.median(times), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(BACKENDS[:2]), help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--target", default=models.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    names = [b for b in args.backends.split(",") if b]
    if not names or set(names) - set(BACKENDS) or args.repeats < 1:
        raise VocabtrimError(f"--backends takes names of {', '.join(BACKENDS)} and --repeats a positive count")
    path = models.gguf_path(args.target)
    if path is None:
        raise VocabtrimError(f"{args.target} has no GGUF file")
    result = {"cpu": cpu()["cpu"], "target": path.name, "backends": {}}
    for name in names:
        try:
            result["backends"][name] = run_isolated(measure, name, str(path), args.repeats)
        except Crashed as e:
            result["backends"][name] = {"crashed": str(e)}
        ms = result["backends"][name]
        ratios = {n: round(ms[n] / ms["1"], 2) for n in map(str, LENGTHS)} if "1" in ms else {}
        print(f"{name}: {ms}  V(L)/V(1): {ratios}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except VocabtrimError as e:
        sys.exit(f"error: {e}")
