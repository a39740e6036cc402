"""The native small-batch matmul alone, on the default target's own shapes, for L rows.

Speculative decoding pays while scoring L tokens costs about what scoring one does; this
times the kernel at the heart of that forward (vocabtrim.native.matmul: the GGUF weight
at its stored format, every activation row quantized alone, batch-invariant) on the
target's matrix shapes, and beside it torch's fbgemm dynamic int8 Linear on the same
shapes (int8 weights, one activation scale per batch: fast but neither GGUF nor
batch-invariant):

    python benchmarks/matmul_cost.py [--gguf PATH] [--threads 2] [--rows 1,2,4,8,16,32]

Weights are the target's own tensors when its GGUF is cached (`vocabtrim models fetch`),
else random blocks of the file's formats. Prints ms and V(L)/V(1) per shape, and one JSON
object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vocabtrim import catalog, kernels
from vocabtrim import native as N

# (label, a tensor of that shape in the target's file, rows, cols, its type in the Q4_K_M file)
SHAPES = [("attn_q 1536x1536", "blk.0.attn_q.weight", 1536, 1536, N.Q4_K),
          ("attn_k 256x1536", "blk.0.attn_k.weight", 256, 1536, N.Q4_K),
          ("attn_v 256x1536", "blk.0.attn_v.weight", 256, 1536, N.Q6_K),
          ("ffn_up 8960x1536", "blk.0.ffn_up.weight", 8960, 1536, N.Q4_K),
          ("ffn_down 1536x8960", "blk.0.ffn_down.weight", 1536, 8960, N.Q6_K),
          ("head 151936x1536", "output.weight", 151936, 1536, N.Q6_K)]


def file_tensors(path: Path | None) -> dict[str, tuple[np.ndarray, int]]:
    """The benchmark's tensors of the GGUF at `path` that have its shapes (raw bytes, type)."""
    if path is None or not path.exists():
        return {}
    from gguf import GGUFReader

    wanted = {name: (cols, rows) for _, name, rows, cols, _ in SHAPES}
    return {t.name: (np.asarray(t.data).view(np.uint8).reshape(-1), int(t.tensor_type))
            for t in GGUFReader(path).tensors if tuple(int(d) for d in t.shape) == wanted.get(t.name)}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm: page in the weights, wake the threads
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def fbgemm_linear(w: np.ndarray) -> torch.nn.Module:
    """torch's dynamic int8 Linear (fbgemm) with weights `w` [rows, cols]."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=catalog.model_dir(catalog.DEFAULT_TARGET) / catalog.GGUF_FILE,
                    help="the GGUF to take tensors from (default: the cached default target; random blocks if absent)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="the batch sizes L")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-fbgemm", action="store_true", help="time the native kernel only")
    args = ap.parse_args()
    Ls = [int(v) for v in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    pool = N.Pool(args.threads)
    tensors = file_tensors(args.gguf)
    out = {"cpu": kernels.cpu()["cpu"], "isa": N.ISAS[N.isa_index()], "threads": args.threads,
           "weights": str(args.gguf) if tensors else "random", "shapes": {}}
    print(f"{out['cpu']}, {args.threads} threads, native path {out['isa']}, weights: {out['weights']}")
    rng = np.random.default_rng(0)
    for label, name, rows, cols, wtype in SHAPES:
        w, wtype = tensors.get(name, (None, wtype))
        if w is None:
            w = N.random_weights(wtype, rows, cols)
        x = rng.standard_normal((max(Ls), cols)).astype(np.float32)
        res = {"type": N.TYPE_NAMES[wtype], "native": {}, "fbgemm": {}}
        lin = None if args.no_fbgemm else fbgemm_linear(N.dequantize(w, wtype, rows * cols).reshape(rows, cols))
        reps = max(3, args.repeats if rows * cols < 50e6 else args.repeats // 2)
        packed = N.pack(w, wtype, rows, cols)  # as a native model holds it
        for L in Ls:
            res["native"][L] = median_ms(lambda: N.matmul(packed, wtype, rows, cols, x[:L], pool=pool, packed=True), reps)
            if lin is not None:
                xt = torch.from_numpy(x[:L])
                with torch.inference_mode():
                    res["fbgemm"][L] = median_ms(lambda: lin(xt), reps)
        del lin
        out["shapes"][label] = res
        print(f"\n{label} ({res['type']})\n   L  native ms  V(L)/V(1)  fbgemm ms  V(L)/V(1)")
        for L in Ls:
            nat, fb = res["native"][L], res["fbgemm"].get(L)
            fbs = f"{fb:10.3f} {fb / res['fbgemm'][Ls[0]]:10.2f}" if fb is not None else ""
            print(f"{L:4d} {nat:10.3f} {nat / res['native'][Ls[0]]:10.2f} {fbs}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
