"""The native kernels (csrc/, vocabtrim.native): dequantization against gguf's reference,
the matmul against numpy, every instruction-set path this CPU runs against the portable
one bit for bit, and batch invariance (rows alone vs in batches, 1 vs 2 threads)."""

from __future__ import annotations

import numpy as np
import pytest

from vocabtrim import native as N
from vocabtrim.errors import VocabtrimError

try:
    N.lib()
except VocabtrimError as e:  # pragma: no cover - a build without a C compiler
    pytest.skip(str(e), allow_module_level=True)

QUANTIZED = [N.Q4_K, N.Q6_K, N.Q5_K, N.Q8_0, N.Q5_0, N.Q4_0, N.Q5_1, N.Q4_1]
FLOATS = [N.F32, N.F16, N.BF16]
FAST = [isa for isa in N.ISAS[1:] if isa in N.available_isas()]
ABSENT = [isa for isa in N.ISAS[1:] if isa not in N.available_isas()]


def reference_weights(w: np.ndarray, wtype: int, rows: int, cols: int) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(w, gguf.GGMLQuantizationType(wtype)).reshape(rows, cols).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def cols_of(wtype: int) -> int:
    return {N.Q8_0: 96, N.Q5_0: 128, N.Q4_0: 64, N.Q5_1: 160, N.Q4_1: 32,
            N.F32: 37, N.F16: 48, N.BF16: 53}.get(wtype, 512)


@pytest.mark.parametrize("wtype", QUANTIZED + FLOATS, ids=N.TYPE_NAMES.get)
def test_dequantize_matches_gguf(wtype):
    rows, cols = 5, cols_of(wtype)
    w = N.random_weights(wtype, rows, cols)
    assert same_bits(N.dequantize(w, wtype, rows * cols).reshape(rows, cols), reference_weights(w, wtype, rows, cols))


@pytest.mark.parametrize("wtype", QUANTIZED + FLOATS, ids=N.TYPE_NAMES.get)
def test_matmul_against_numpy(wtype):
    rows, cols, L = 19, cols_of(wtype), 6
    w = N.random_weights(wtype, rows, cols, seed=1)
    x = np.random.default_rng(2).standard_normal((L, cols)).astype(np.float32)
    y = N.matmul(w, wtype, rows, cols, x, isa="portable").astype(np.float64)
    wd = reference_weights(w, wtype, rows, cols).astype(np.float64)
    bound = np.abs(x.astype(np.float64)) @ np.abs(wd).T
    if wtype in QUANTIZED:  # tight: against the 8-bit rows the kernel multiplies
        q, d = N.quantize_rows(x, wtype)
        xq = (q.reshape(L, d.shape[1], -1).astype(np.float64) * d[..., None]).reshape(L, cols)
        assert np.all(np.abs(y - xq @ wd.T) <= 2e-6 * bound)
        assert np.all(np.abs(y - x.astype(np.float64) @ wd.T) <= 2e-2 * bound)  # loose: float rows
    else:
        assert np.all(np.abs(y - x.astype(np.float64) @ wd.T) <= 2e-6 * bound)


def test_activation_quantization_is_per_row_and_symmetric():
    x = np.random.default_rng(3).standard_normal((3, 512)).astype(np.float32)
    x[1] *= 100
    q, d = N.quantize_rows(x, N.Q4_K)
    assert d.shape == (3, 2) and np.abs(q).max() == 127
    assert np.array_equal(N.quantize_rows(x[1:2], N.Q4_K)[0], q[1:2])
    assert np.allclose(q * np.repeat(d, 256, axis=1), x, atol=np.repeat(d, 256, axis=1).max() / 2 + 1e-6)
    zero, dz = N.quantize_rows(np.zeros((1, 32), np.float32), N.Q8_0)
    assert not zero.any() and dz[0, 0] == 0


@pytest.mark.parametrize("isa", FAST or [pytest.param("avx2", marks=pytest.mark.skip("no SIMD path on this CPU"))])
@pytest.mark.parametrize("wtype", QUANTIZED + FLOATS, ids=N.TYPE_NAMES.get)
@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
def test_isa_paths_bit_identical_to_portable(wtype, isa, odd):
    # odd: an odd number of blocks a row (the 512-bit 32-block loop reads blocks in pairs)
    block = 256 if wtype in (N.Q4_K, N.Q5_K, N.Q6_K) else 32 if wtype in QUANTIZED else 1
    rows, cols, L = 23, cols_of(wtype) * 2 + (block if odd else 0), 9
    w = N.random_weights(wtype, rows, cols, seed=4)
    x = np.random.default_rng(5).standard_normal((L, cols)).astype(np.float32)
    x[3] *= 1e3  # rows of very different magnitude
    if wtype in QUANTIZED:  # blocks each path's activation quantizer must treat as the portable one
        x[4, :block] = 0.0
        x[5, 1], x[6, 2], x[7, :block] = np.inf, np.nan, 1e-44  # an inf zeroes its block; 127/1e-44 is inf
    for n in (L, 8, 5, 3, 2, 1):  # 1 and 2 rows: the drafter's weight-row streams
        assert same_bits(N.matmul(w, wtype, rows, cols, x[:n], isa=isa),
                         N.matmul(w, wtype, rows, cols, x[:n], isa="portable")), n


@pytest.mark.parametrize("isa", ["portable"] + FAST)
@pytest.mark.parametrize("wtype", QUANTIZED + FLOATS, ids=N.TYPE_NAMES.get)
def test_packed_weights(wtype, isa):
    """The SIMD paths read K-quants packed (each block's quants reordered, its scales and
    size as the file's), and hold 16 (AVX512) or 8 (256-bit) rows at a time in tiles
    (K-quants and the 32-element formats): what a native model holds; every other type and path the
    file's."""
    for rows in (7, 37):  # below a tile (pack_k's layout or the file's), then 2 (or 4) tiles and 5 rows
        cols = cols_of(wtype)
        w = N.random_weights(wtype, rows, cols, seed=8)
        packed = N.pack(w, wtype, rows, cols, isa=isa)
        if not N.packs(wtype, isa):
            assert packed is w
            continue
        assert packed.nbytes == w.nbytes and packed.ctypes.data % 64 == 0  # each 512-bit load one cache line
        k_quant = wtype in (N.Q4_K, N.Q5_K, N.Q6_K)
        assert k_quant or (isa != "portable" and wtype in (N.Q4_0, N.Q4_1, N.Q5_0, N.Q5_1, N.Q8_0))
        if rows == 7:  # no tile: K-quants reorder quants only, the rest stay the file's
            assert np.array_equal(packed, w.reshape(-1)) != k_quant
            if k_quant:
                blocks, pblocks = w.reshape(-1, N.BLOCKS[wtype][1]), packed.reshape(-1, N.BLOCKS[wtype][1])
                kept = {N.Q4_K: slice(0, 16), N.Q5_K: slice(0, 16), N.Q6_K: slice(192, 210)}[wtype]  # factors, scales
                assert np.array_equal(blocks[:, kept], pblocks[:, kept])
        x = np.random.default_rng(9).standard_normal((5, cols)).astype(np.float32)
        assert same_bits(N.matmul(packed, wtype, rows, cols, x, isa=isa, packed=True),
                         N.matmul(w, wtype, rows, cols, x, isa="portable")), rows


def exp_inputs() -> np.ndarray:
    rng = np.random.default_rng(11)
    edges = [0.0, -0.0, 1.0, -1.0, 88.37, 88.38, 89.0, -87.33, -87.34, -88.0, -104.0, 1e-30, -1e-30,
             np.inf, -np.inf, np.nan]
    return np.concatenate([edges, rng.uniform(-90, 90, 4001), rng.standard_normal(999) * 3]).astype(np.float32)


def test_exp_is_close_to_numpy():
    x = exp_inputs()
    x = x[np.isfinite(x) & (x > -87) & (x < 88)]
    y, ref = N.exp(x, isa="portable").astype(np.float64), np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - ref) / ref) < 4e-7  # a few ulp
    edge = N.exp(np.array([-np.inf, -200.0, np.inf, 200.0], np.float32), isa="portable")
    assert edge[0] == edge[1] and 0 < edge[0] < 1e-37 and np.isfinite(edge[2]) and edge[2] == edge[3]


def test_softmax_and_swiglu_recipes():
    """The portable softmax: the scaled scores less their max, vt_exp'd, summed as 8 running
    sums; SwiGLU: g / (1 + exp(-g)) * u; both against numpy in float64."""
    rng = np.random.default_rng(13)
    s = rng.standard_normal(211).astype(np.float32) * 5
    e, total = N.softmax(s, 0.125, isa="portable")
    ref = np.exp(s.astype(np.float64) * 0.125 - (s * np.float32(0.125)).max())
    assert np.allclose(e, ref, rtol=1e-6, atol=0) and e.max() == 1.0
    part = np.zeros(8, np.float32)
    for p, w in enumerate(e):
        part[p % 8] = part[p % 8] + w
    for h in (4, 2, 1):
        part[:h] = part[:h] + part[h:2 * h]
    assert np.float32(total) == part[0]
    g, u = rng.standard_normal(99).astype(np.float32) * 4, rng.standard_normal(99).astype(np.float32)
    assert np.allclose(N.swiglu(g, u, isa="portable"), g / (1 + np.exp(-g.astype(np.float64))) * u, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("isa", FAST or [pytest.param("avx2", marks=pytest.mark.skip("no SIMD path on this CPU"))])
def test_exp_softmax_swiglu_scores_and_wsum_paths_bit_identical_to_portable(isa):
    x = exp_inputs()
    for n in (len(x), 23, 7, 1):  # the vector body (16 or 8 lanes) and scalar tails
        assert same_bits(N.exp(x[:n], isa=isa), N.exp(x[:n], isa="portable")), n
    rng = np.random.default_rng(12)
    for n in (len(x) - 1, 216, 47, 31, 23, 15, 7, 1):  # scores with an inf and a nan, then without; tails of 1-15
        s = x[len(x) - n:] if n > 216 else rng.standard_normal(n).astype(np.float32) * 9
        (e, total), (e0, total0) = N.softmax(s, 0.088, isa=isa), N.softmax(s, 0.088, isa="portable")
        assert same_bits(e, e0) and same_bits(np.float32(total), np.float32(total0)), n
    g, u = x[np.isfinite(x)] / 4, rng.standard_normal(np.isfinite(x).sum()).astype(np.float32)
    for n in (len(g), 23, 7, 1):
        assert same_bits(N.swiglu(g[:n], u[:n], isa=isa), N.swiglu(g[:n], u[:n], isa="portable")), n
    for heads, n in ((1, 128), (3, 128), (4, 64), (6, 128), (5, 64), (2, 96), (2, 37)):  # 96: part of a pass; 37: a tail
        e = rng.random((heads, 53)).astype(np.float32)
        v = rng.standard_normal((53, n)).astype(np.float32)
        assert same_bits(N.wsum(e, v, isa=isa), N.wsum(e, v, isa="portable")), (heads, n)
    assert np.allclose(N.wsum(e, v, isa="portable"), e.astype(np.float64) @ v, rtol=1e-4, atol=1e-4)
    # 16-key blocks in pairs, a lone block, a part block; 1-6 queries
    for heads, n, keys in ((1, 64, 53), (4, 128, 48), (3, 64, 16), (2, 40, 37), (4, 64, 5), (6, 128, 70),
                           (5, 1, 9)):
        k, q = rng.standard_normal((keys, n)).astype(np.float32), rng.standard_normal((heads, n)).astype(np.float32)
        assert same_bits(N.scores(k, q, isa=isa), N.scores(k, q, isa="portable")), (heads, n, keys)
    assert np.allclose(N.scores(k, q, isa="portable"), q.astype(np.float64) @ k.T, rtol=1e-4, atol=1e-4)
    # the portable recipe itself: each score summed over the dims in order, in float32
    k, q = rng.standard_normal((21, 24)).astype(np.float32), rng.standard_normal((3, 24)).astype(np.float32)
    seq = np.zeros((3, 21), np.float32)
    for d in range(24):
        seq = seq + np.outer(q[:, d], k[:, d]).astype(np.float32)
    assert same_bits(N.scores(k, q, isa="portable"), seq)


@pytest.mark.parametrize("isa", ABSENT)
def test_absent_isa_paths(isa):
    pytest.skip(f"this CPU lacks {isa}: its path is compiled but cannot be checked here")


def assert_batch_and_thread_invariant(w, wtype, rows, cols, x, isa, Ls) -> np.ndarray:
    """The first L rows of x for each L in Ls, on 1 and on 2 threads, bit-identical to each
    row alone; returns the rows alone."""
    one, two = N.Pool(1), N.Pool(2)
    alone = np.concatenate([N.matmul(w, wtype, rows, cols, x[i:i + 1], pool=one, isa=isa) for i in range(len(x))])
    for L in Ls:
        for pool in (one, two):
            assert same_bits(N.matmul(w, wtype, rows, cols, x[:L], pool=pool, isa=isa), alone[:L]), (L, pool.threads)
    return alone


@pytest.mark.parametrize("isa", ["portable"] + FAST)
@pytest.mark.parametrize("wtype", QUANTIZED + FLOATS, ids=N.TYPE_NAMES.get)
def test_batch_and_thread_invariance(wtype, isa):
    cols = cols_of(wtype)
    rows = 29 + (1 << 16) // cols  # enough work for the pool to split even one row
    w = N.random_weights(wtype, rows, cols, seed=6)
    x = np.random.default_rng(7).standard_normal((32, cols)).astype(np.float32)
    alone = assert_batch_and_thread_invariant(w, wtype, rows, cols, x, isa, (2, 3, 4, 5, 7, 8, 13, 32))
    assert same_bits(N.matmul(w, wtype, rows, cols, x[5:20], pool=N.Pool(2), isa=isa), alone[5:20])


@pytest.mark.parametrize("isa", ["portable"] + FAST)
@pytest.mark.parametrize("wtype", [N.Q4_K, N.Q8_0], ids=N.TYPE_NAMES.get)
def test_batch_and_thread_invariance_of_a_large_matrix(wtype, isa):
    # past 4M weights a job's chunks are a quarter of a thread's share (below: a whole share)
    rows, cols = 4136, 1024
    w = N.random_weights(wtype, rows, cols, seed=8)
    x = np.random.default_rng(9).standard_normal((9, cols)).astype(np.float32)
    assert_batch_and_thread_invariant(w, wtype, rows, cols, x, isa, (2, 8, 9))


@pytest.mark.parametrize("isa", ["portable"] + FAST)
@pytest.mark.parametrize("wtype", [N.Q4_K, N.Q5_K, N.Q6_K], ids=N.TYPE_NAMES.get)
def test_long_rows_in_column_chunks(wtype, isa):
    # 23 blocks a row: past the activation blocks that stay in L1 for 2..8 rows, so each
    # row's sum runs over several column chunks; it must still equal the row alone
    rows, cols = 37, 256 * 23
    w = N.random_weights(wtype, rows, cols, seed=13)
    x = np.random.default_rng(14).standard_normal((13, cols)).astype(np.float32)
    alone = np.concatenate([N.matmul(w, wtype, rows, cols, x[i:i + 1], isa=isa) for i in range(13)])
    for L in (2, 5, 8, 13):
        assert same_bits(N.matmul(w, wtype, rows, cols, x[:L], isa=isa), alone[:L]), L
    assert same_bits(alone, N.matmul(w, wtype, rows, cols, x, isa="portable"))


def test_environment_forces_a_path(monkeypatch):
    w = N.random_weights(N.Q4_K, 3, 256)
    x = np.ones((1, 256), np.float32)
    monkeypatch.setenv(N.ISA_ENV, "portable")
    assert N.isa_index() == 0
    monkeypatch.setenv(N.ISA_ENV, "sse9")
    with pytest.raises(VocabtrimError, match="unknown instruction set"):
        N.matmul(w, N.Q4_K, 3, 256, x)


@pytest.mark.parametrize("call, message", [
    (lambda: N.matmul(np.zeros(84 * 4, np.uint8), 10, 4, 256, np.ones((1, 256), np.float32)), "do not read tensor type 10"),
    (lambda: N.matmul(np.zeros(144, np.uint8), N.Q4_K, 1, 200, np.ones((1, 200), np.float32)), "multiple of 256"),
    (lambda: N.matmul(np.zeros(100, np.uint8), N.Q4_K, 1, 256, np.ones((1, 256), np.float32)), "expected 144"),
    (lambda: N.matmul(np.zeros(144, np.uint8), N.Q4_K, 1, 256, np.ones((2, 128), np.float32)), "activations of shape"),
    (lambda: N.matmul(np.zeros(144, np.uint8), N.Q4_K, 1, 256, np.ones((0, 256), np.float32)), "activations of shape"),
    (lambda: N.Pool(0 - 5), "out of range"),
])
def test_bad_input_is_a_one_line_error(call, message):
    with pytest.raises(VocabtrimError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_sanitized_build(tmp_path):
    """The C sources built with AddressSanitizer and UBSan, run by tests/native/driver.c:
    every path this CPU runs against the portable one, rows alone against batches."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the sanitizer build")
    flags = ["-O0", "-g", "-std=c11", "-ffp-contract=off", "-D_GNU_SOURCE", "-pthread",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    toolchain = subprocess.run([cc, *flags, str(probe), "-o", str(tmp_path / "probe")], capture_output=True, text=True)
    if toolchain.returncode:  # the sanitizers' runtimes missing: a skip; our sources failing to build: a failure
        pytest.skip(f"the toolchain cannot build with -fsanitize=address,undefined: {toolchain.stderr.strip()[-200:]}")
    sources = [root / "tests/native/driver.c", *sorted((root / "csrc").glob("*.c"))]
    sources = [s for s in sources if s.name != "module.c"]  # module.c needs Python.h only
    jobs = [subprocess.Popen([cc, *flags, "-c", str(s), "-o", str(tmp_path / f"{s.stem}.o")], stderr=subprocess.PIPE,
                             text=True) for s in sources]  # in parallel: the x86 kernels take seconds each
    errors = [job.communicate()[1] for job in jobs if job.wait()]
    assert not errors, errors[0][-2000:]
    exe = tmp_path / "driver"
    link = subprocess.run([cc, *flags, *[str(tmp_path / f"{s.stem}.o") for s in sources], "-lm", "-o", str(exe)],
                          capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-2000:]
    run = subprocess.run([str(exe), "check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
