"""The multiply floor of the target's verification forward on this CPU (AVX512-VNNI hosts).

Times the integer dot-product instruction (vpdpbusd) alone and mixed 4:1 with the other
multiplies the K-quant tiles issue (vpmulld for the sub-block scales, vpdpwssd for the mins,
vmulps for the float step) and, as controls, with an add and with a load: where the mixes
run at 4/5 of the rate, those instructions share the multiply ports. Then, from the GGUF's
tensor types, the time L rows of the target's matmuls need at that rate if the tiles'
multiplies kept both ports busy all the time, per thread with the threads in parallel:
the floor under V(L) before attention. Prints one JSON object on its last line.

    python benchmarks/multiply_floor.py [--target NAME|FILE] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from vocabtrim import catalog
from vocabtrim.errors import VocabtrimError
from vocabtrim.gguf_header import read_gguf

# Multiplies a tile issues per 256-weight block and activation row, over the 64 vpdpbusd its
# products take (kern_x86.h, kt_s1_45/kt_sums45, kt_sums6, kt_k): Q4_K/Q5_K 64 vpdpbusd +
# 8 vpmulld (scales) + 4 vpdpwssd (mins, two sub-blocks each) + 3 vmulps per 16 rows of a
# tile, i.e. 79/16 a weight row; Q6_K 64 + 16 vpmulld + 8 vpdpwssd + 2 vmulps = 90/16.
SLOTS = {12: 79 / 16, 13: 79 / 16, 14: 90 / 16}

PROBE = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int buf[64] __attribute__((aligned(64)));
#define DP(i) "vpdpbusd %%zmm21, %%zmm20, %%zmm" #i "\n"
#define BODY DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7) DP(8) DP(9) DP(10) DP(11) DP(12) DP(13) DP(14) DP(15)
#define X4(op) op "16\n" op "17\n" op "18\n" op "19\n"
#define CLOB "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21"
#define RUN(name, extra) { const long n = 20000000; double t0 = now(), best = 1e9;              \
    for (int r = 0; r < 3; r++, t0 = now()) {                                                      \
        for (long i = 0; i < n; i++) __asm__ volatile(BODY extra :: "r"(buf) : CLOB);              \
        const double dt = now() - t0; best = dt < best ? dt : best; }                              \
    printf("%s %.3f\n", name, 16.0 * n / best / 1e9); }
int main(void) {
    RUN("alone", "")
    RUN("vpmulld", X4("vpmulld %%zmm20, %%zmm21, %%zmm"))
    RUN("vpdpwssd", X4("vpdpwssd %%zmm20, %%zmm21, %%zmm"))
    RUN("vmulps", X4("vmulps %%zmm20, %%zmm21, %%zmm"))
    RUN("vpaddd", X4("vpaddd %%zmm20, %%zmm21, %%zmm"))
    RUN("load", X4("vmovdqu32 (%0), %%zmm"))
    return 0;
}
"""


def probe() -> dict[str, float]:
    """vpdpbusd a ns, alone and with 4 of each other instruction per 16."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_vnni" not in flags:
        raise VocabtrimError("this probe needs AVX512-VNNI (the floor it measures is that path's)")
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "probe.c", Path(d) / "probe"
        src.write_text(PROBE)
        try:
            subprocess.run(["gcc", "-O2", "-mavx512f", "-mavx512vnni", str(src), "-o", str(exe)], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise VocabtrimError(f"could not compile the probe with gcc: {getattr(e, 'stderr', e)}") from None
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: float(rate) for name, rate in (line.split() for line in out.splitlines())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=catalog.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="the L to compute the floor for")
    args = ap.parse_args(argv)
    path = catalog.gguf_path(args.target)
    if path is None:
        raise VocabtrimError(f"{args.target} has no GGUF file")
    try:
        rows = [int(v) for v in args.rows.split(",")]
    except ValueError:
        rows = []
    if not rows or min(rows) < 1 or args.threads < 1:
        raise VocabtrimError("--rows takes positive counts, and --threads a positive number")
    rates = probe()
    for name, rate in rates.items():
        print(f"vpdpbusd {'alone' if name == 'alone' else 'with 1 ' + name + ' per 4'}: {rate:.2f} a ns")
    _, tensors = read_gguf(path)
    blocks = {}
    for name, t in tensors.items():
        if name != "token_embd.weight" and len(t.dims) == 2:
            blocks[t.type] = blocks.get(t.type, 0) + int(np.prod(t.dims)) // 256
    unknown = sorted(set(blocks) - set(SLOTS))
    slots = sum(n * SLOTS.get(t, 0) for t, n in blocks.items())  # multiplies per activation row
    floor = {str(L): round(L * slots / rates["alone"] / args.threads / 1e6, 2) for L in rows}
    print(f"{path.name}: {sum(blocks.values())} blocks of 256 weights, {slots / 1e6:.2f} M multiplies a row; "
          f"matmul floor on {args.threads} threads, ms: {floor}" + (f" (types {unknown} not counted)" if unknown else ""))
    print(json.dumps({"target": path.name, "threads": args.threads, "vpdpbusd_per_ns": rates, "floor_ms": floor}))


if __name__ == "__main__":
    try:
        main()
    except VocabtrimError as e:
        sys.exit(f"error: {e}")
