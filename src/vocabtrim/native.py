"""vocabtrim's native kernels (csrc/, built into vocabtrim._native by `pip install`),
through ctypes: GGUF weights multiplied at their stored format, batch-invariant by
construction (every output is the same operations in the same order whatever the number
of rows, the thread count and the instruction set; see csrc/kern_portable.c).

Instruction-set paths: portable (the reference), avx2, avxvnni, avx512vnni; the best the
CPU runs is used unless VOCABTRIM_NATIVE_ISA names another."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from .errors import VocabtrimError

ISAS = ("portable", "avx2", "avxvnni", "avx512vnni")
ISA_ENV = "VOCABTRIM_NATIVE_ISA"

# GGUF tensor types (ggml_type ids) the kernels read: elements and bytes per block
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
          Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
TYPE_NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1",
              Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}

ERRORS = {-1: "unsupported tensor type", -2: "bad shape", -3: "out of memory", -4: "instruction set not available"}

_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def lib() -> ctypes.CDLL:
    """The native library, its functions typed; a one-line error where it was not built."""
    spec = importlib.util.find_spec("vocabtrim._native")
    if spec is None or spec.origin is None:
        raise VocabtrimError("vocabtrim's native kernels are not built (vocabtrim._native is missing): "
                             "reinstall with a C compiler (gcc or clang) present")
    so = ctypes.CDLL(spec.origin)
    for name, res, args in (("vt_matmul", _int, [_p, _int, _int, _p, _i64, _i64, _p, _i64, _p]),
                            ("vt_dequantize", _int, [_int, _p, _i64, _p]),
                            ("vt_packs", _int, [_int, _int]), ("vt_pack", _int, [_int, _int, _p, _i64, _i64, _p]),
                            ("vt_quantize_rows", _int, [_int, _p, _i64, _i64, _p, _p]),
                            ("vt_exp_n", _int, [_int, _p, _p, _i64]),
                            ("vt_softmax", _int, [_int, _p, _i64, ctypes.c_float, _p]),
                            ("vt_swiglu", _int, [_int, _p, _p, _i64]),
                            ("vt_scores", _int, [_int, _p, _i64, _p, _int, _i64, _p, _i64]),
                            ("vt_wsum", _int, [_int, _p, _int, _p, _i64, _p, _i64, _i64, _i64]),
                            ("vt_pool_new", _p, [_int]), ("vt_pool_free", None, [_p]),
                            ("vt_isa_supported", _int, [_int]), ("vt_isa_best", _int, []),
                            ("vt_model_new", _p, [_int] * 8 + [ctypes.c_float] * 2 + [_int, _p, _int]),
                            ("vt_model_free", None, [_p]), ("vt_model_rope_factors", _int, [_p, _p]),
                            ("vt_model_check", _int, [_p]),
                            ("vt_model_set", _int, [_p, _int, _int, _int, _p, _i64, _i64]),
                            ("vt_model_forward", _int, [_p, _p, _int, _int, _int, _p]),
                            ("vt_model_hidden", _int, [_p, _p, _int, _int, _int, _p])):
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


@functools.cache
def build_id() -> str:
    """A digest of the built library: its kernels' identity (a changed kernel is timed again)."""
    return hashlib.sha256(Path(lib()._name).read_bytes()).hexdigest()[:12]


def available() -> bool:
    """Whether the native kernels were built into this install."""
    return importlib.util.find_spec("vocabtrim._native") is not None


def available_isas() -> list[str]:
    """The instruction-set paths this CPU runs, the portable one first."""
    return [name for i, name in enumerate(ISAS) if lib().vt_isa_supported(i)]


def isa_index(isa: str | None = None) -> int:
    """`isa`, else $VOCABTRIM_NATIVE_ISA, else the best this CPU runs, as the library's index."""
    isa = isa or os.environ.get(ISA_ENV)
    if not isa:
        return lib().vt_isa_best()
    if isa not in ISAS:
        raise VocabtrimError(f"unknown instruction set {isa!r}: one of {', '.join(ISAS)}")
    if not lib().vt_isa_supported(ISAS.index(isa)):
        raise VocabtrimError(f"this CPU cannot run the {isa} path: it runs {', '.join(available_isas())}")
    return ISAS.index(isa)


class Pool:
    """A persistent pool of `threads` threads (default: the machine's cores) that the
    matmuls split their output rows over."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        if not 1 <= self.threads <= 1024:
            raise VocabtrimError(f"thread count {self.threads} out of range 1..1024")
        self._free = lib().vt_pool_free  # held: module globals may be gone when __del__ runs at exit
        self.ptr = lib().vt_pool_new(self.threads)
        if not self.ptr:
            raise VocabtrimError(f"cannot start {self.threads} threads")

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._free(self.ptr)
            self.ptr = None


@functools.cache
def default_pool() -> Pool:
    return Pool()


def check(rc: int, what: str) -> None:
    """A library call's error code as a one-line VocabtrimError."""
    if rc:
        raise VocabtrimError(f"{what}: {ERRORS.get(rc, f'error {rc}')}")


def _row_bytes(wtype: int, cols: int) -> int:
    if wtype not in BLOCKS:
        raise VocabtrimError(f"the native kernels do not read tensor type {wtype}: "
                             f"they read {', '.join(TYPE_NAMES.values())}")
    per, nbytes = BLOCKS[wtype]
    if cols < 1 or cols % per:
        raise VocabtrimError(f"a {TYPE_NAMES[wtype]} row of {cols} columns: must be a positive multiple of {per}")
    return cols // per * nbytes


def _raw(w: np.ndarray, nbytes: int, what: str) -> np.ndarray:
    if not w.flags.c_contiguous or w.nbytes != nbytes:
        raise VocabtrimError(f"{what}: expected {nbytes} contiguous bytes, got {w.nbytes}"
                             f"{'' if w.flags.c_contiguous else ' (not contiguous)'}")
    return w


def random_weights(wtype: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random valid raw data of `wtype`, [rows, row bytes] uint8 (for tests and benchmarks):
    random bytes with fp16 block scales in 1e-3..1e-2 for the quantized types, normal
    values for the float ones."""
    rng = np.random.default_rng(seed)
    if BLOCKS.get(wtype, (0,))[0] == 1:
        v = rng.standard_normal((rows, cols)).astype(np.float32)
        if wtype == F16:
            v = v.astype(np.float16)
        elif wtype == BF16:
            v = (v.view(np.uint32) >> 16).astype(np.uint16)
        return v.view(np.uint8).reshape(rows, -1)
    per, nbytes = BLOCKS[wtype]
    blocks = rng.integers(0, 256, (rows * cols // per, nbytes), dtype=np.uint8)
    scales = {Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q4_0: (0,), Q5_0: (0,), Q8_0: (0,), Q4_1: (0, 2), Q5_1: (0, 2)}
    for at in scales[wtype]:
        blocks[:, at:at + 2] = rng.uniform(1e-3, 1e-2, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def packs(wtype: int, isa: str | None = None) -> bool:
    """Whether `isa`'s kernels read `wtype` weights in a layout of their own (`pack`)."""
    return bool(lib().vt_packs(isa_index(isa), wtype))


def aligned_empty(nbytes: int) -> np.ndarray:
    """nbytes uninitialized bytes on a 64-byte boundary: the kernels' 512-bit loads then each
    read one cache line (numpy's 16-byte alignment split most of them: Q4_K tiles ~5% slower
    at L = 8-16, Zen 5)."""
    buf = np.empty(nbytes + 64, dtype=np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes]


def pack(w: np.ndarray, wtype: int, rows: int, cols: int, isa: str | None = None) -> np.ndarray:
    """W [rows, cols], raw GGUF data of `wtype`, in the layout `isa`'s kernels read: a copy
    of the same size with each K-quant block's quants reordered (so that unpacking yields
    them in the order the kernel multiplies them), each 16 (AVX512) or 8 (256-bit paths) rows
    as one tile (lanes = rows), or `w` itself where they read the file's."""
    w = _raw(w, rows * _row_bytes(wtype, cols), f"{TYPE_NAMES[wtype]} weight [{rows}, {cols}]")
    if not packs(wtype, isa):
        return w
    out = aligned_empty(w.nbytes)
    check(lib().vt_pack(isa_index(isa), wtype, w.ctypes.data, rows, cols, out.ctypes.data), "native pack")
    return out


def matmul(w: np.ndarray, wtype: int, rows: int, cols: int, x: np.ndarray, pool: Pool | None = None,
           isa: str | None = None, packed: bool = False) -> np.ndarray:
    """Y [L, rows] = X [L, cols] @ W^T, W [rows, cols] as raw GGUF data of `wtype` (any
    dtype; the file's bytes, e.g. a memory map), or with `packed` as `pack` returned it
    (else each call packs a copy)."""
    w = _raw(w, rows * _row_bytes(wtype, cols), f"{TYPE_NAMES[wtype]} weight [{rows}, {cols}]")
    if not packed:
        w = pack(w, wtype, rows, cols, isa)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != cols or x.shape[0] < 1:
        raise VocabtrimError(f"activations of shape {list(x.shape)} for a weight of {cols} columns: "
                             f"need [L >= 1, {cols}]")
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    pool = pool or default_pool()
    check(lib().vt_matmul(pool.ptr, isa_index(isa), wtype, w.ctypes.data, rows, cols, x.ctypes.data,
                           x.shape[0], y.ctypes.data), "native matmul")
    return y


def dequantize(w: np.ndarray, wtype: int, n: int) -> np.ndarray:
    """The first n elements of raw `wtype` data as fp32 (ggml's dequantization)."""
    w = _raw(w, _row_bytes(wtype, n), f"{n} elements of {TYPE_NAMES.get(wtype, wtype)}")
    out = np.empty(n, dtype=np.float32)
    check(lib().vt_dequantize(wtype, w.ctypes.data, n, out.ctypes.data), "native dequantize")
    return out


def quantize_rows(x: np.ndarray, wtype: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8-bit activations the matmul computes with for a weight of `wtype`: q [L, cols]
    int8 and one fp32 scale per block [L, cols / block] (256 for K-quants, 32 for Q8_0)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    per = BLOCKS.get(wtype, (1, 0))[0]
    if per == 1:
        raise VocabtrimError(f"tensor type {TYPE_NAMES.get(wtype, wtype)} multiplies float activations")
    if x.ndim != 2 or x.shape[1] % per:
        raise VocabtrimError(f"activations of shape {list(x.shape)}: need [L, a multiple of {per}]")
    q = np.empty(x.shape, dtype=np.int8)
    d = np.empty((x.shape[0], x.shape[1] // per), dtype=np.float32)
    check(lib().vt_quantize_rows(wtype, x.ctypes.data, x.shape[0], x.shape[1], q.ctypes.data, d.ctypes.data),
           "native quantize")
    return q, d


def exp(x: np.ndarray, isa: str | None = None) -> np.ndarray:
    """The engine's exp (vt_exp: softmax and SiLU) of each element, on path `isa`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    check(lib().vt_exp_n(isa_index(isa), x.ctypes.data, y.ctypes.data, x.size), "native exp")
    return y


def softmax(s: np.ndarray, scale: float, isa: str | None = None) -> tuple[np.ndarray, float]:
    """Attention's weights on path `isa`: e = vt_exp(s * scale - max) and their sum (8
    running sums, as the engine's), the division left to the caller, as the engine leaves it."""
    e = np.array(s, dtype=np.float32, copy=True).reshape(-1)
    total = ctypes.c_float()
    check(lib().vt_softmax(isa_index(isa), e.ctypes.data, e.size, scale, ctypes.byref(total)), "native softmax")
    return e, total.value


def swiglu(g: np.ndarray, u: np.ndarray, isa: str | None = None) -> np.ndarray:
    """SwiGLU on path `isa`: g / (1 + vt_exp(-g)) * u, elementwise."""
    y = np.array(g, dtype=np.float32, copy=True).reshape(-1)
    u = np.ascontiguousarray(u, dtype=np.float32).reshape(-1)
    if u.size != y.size:
        raise VocabtrimError("native swiglu: gate and up differ in size")
    check(lib().vt_swiglu(isa_index(isa), y.ctypes.data, u.ctypes.data, y.size), "native swiglu")
    return y


def scores(k: np.ndarray, q: np.ndarray, isa: str | None = None) -> np.ndarray:
    """Attention's scores on path `isa`: s [heads, positions] = q [heads, n] @ k [positions, n]^T,
    each as the engine sums a dot product (over the dims in order, each key its own lane);
    up to 6 heads."""
    k, q = np.ascontiguousarray(k, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32)
    s = np.zeros((q.shape[0], k.shape[0]), dtype=np.float32)
    rows = (ctypes.c_void_p * q.shape[0])(*[q[i].ctypes.data for i in range(q.shape[0])])
    check(lib().vt_scores(isa_index(isa), k.ctypes.data, k.shape[0], rows, q.shape[0], k.shape[1],
                          s.ctypes.data, s.shape[1]), "native scores")
    return s


def wsum(e: np.ndarray, v: np.ndarray, isa: str | None = None) -> np.ndarray:
    """Attention's weighted values on path `isa`: o [heads, n] = e [heads, positions] @
    v [positions, n], each output summed in position order from 0."""
    e, v = np.ascontiguousarray(e, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32)
    o = np.zeros((e.shape[0], v.shape[1]), dtype=np.float32)
    rows = (ctypes.c_void_p * e.shape[0])(*[o[i].ctypes.data for i in range(e.shape[0])])
    check(lib().vt_wsum(isa_index(isa), rows, e.shape[0], e.ctypes.data, e.shape[1], v.ctypes.data, v.shape[1],
                        v.shape[0], v.shape[1]), "native wsum")
    return o
