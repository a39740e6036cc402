"""How a model's linear layers multiply on this hardware: plain torch dtypes, or fbgemm's
packed fp16 weights with fp32 math.

Speculative decoding pays only when the target scores K+1 tokens for about the price of
one. That holds on CPUs with native bf16 matmul (AVX512-BF16, AMX) and on GPUs. On
AVX2-only x86 CPUs torch emulates bf16 and fp16 GEMMs: six tokens cost about five times
one, and a 150-token prefill of the 1.5B target takes ~20 s. fbgemm's fp16-weight /
fp32-activation GEMM (the kernel behind torch's dynamic fp16 quantization) reads 16-bit
weights and stays memory-bound at small M, so six tokens cost ~1.4x one and that prefill
~2 s. Its weights are the same 16-bit weights: every bf16 value in fp16's normal range
(above 6e-5 in magnitude) is exact in fp16; the math is fp32.

Flags do not decide which is faster: packed-fp16 also beat bf16 by ~2x on an AVX512-BF16
EPYC. `auto` therefore times both on the model's matrix shapes once per machine
(fastest_dtype) and uses the faster; bfloat16 where fbgemm is missing.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import VocabtrimError
from .files import atomic_write
from .paths import cache_file

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
PACKED = "packed-fp16"
DTYPES = ("auto", *TORCH_DTYPES, PACKED)


def packed_available() -> bool:
    """fbgemm's fp16 GEMM ships in torch's x86 builds only."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_dynamic_fp16")


def resolve(dtype: str) -> str:
    """The concrete choice behind `dtype` (`auto` -> what is fastest here)."""
    if dtype not in DTYPES:
        raise VocabtrimError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if dtype == "auto":
        return fastest_dtype()
    if dtype == PACKED and not packed_available():
        raise VocabtrimError(f"{PACKED} needs torch's fbgemm kernels (x86 builds); use bfloat16")
    return dtype


WIDE_ROWS = 64  # products of this many rows or more (reading a prompt) may run in bf16


class PackedLinear(nn.Module):
    """A linear layer whose weight lives packed for fbgemm as fp16; inputs and outputs fp32.

    With `wide`, products of WIDE_ROWS rows or more multiply a bf16 copy of the weight
    instead (bf16 activations, fp32 out): on CPUs with native bf16 GEMMs fbgemm's kernel
    stays memory-bound for decode steps but is ~2x slower than bf16 for a prompt's rows.
    Verification with the shipped policies scores at most 41 rows (svip's max 40 + 1), so it
    reads the fp16 copy; a longer static K would reach the bf16 one."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, wide: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        b = None if bias is None else bias.detach().float().contiguous()
        self.register_buffer("bias", b)  # kept beside the packed copy: cheap to read
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), b)
        self.wide = weight.detach().bfloat16().contiguous() if wide else None  # no buffer: pack()'s .float() skips it

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.wide is not None and len(flat) >= WIDE_ROWS:
            y = F.linear(flat.bfloat16(), self.wide).float()
            y = y if self.bias is None else y + self.bias
        else:
            y = torch.ops.quantized.linear_dynamic_fp16(flat.float(), self.packed)
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def weight(self) -> Tensor:
        """The fp32 weight, unpacked on each access (slow: not for decoding)."""
        return torch.ops.quantized.linear_unpack_fp16(self.packed)[0]

    @functools.cached_property
    def weight16(self) -> Tensor:
        """The fp16 weight, unpacked once and kept: rows to gather for trimmed heads."""
        return self.weight.half()

    @property
    def nbytes(self) -> int:
        """Bytes a forward reads: the fp16 weights fbgemm holds and the fp32 bias."""
        return 2 * self.in_features * self.out_features + (0 if self.bias is None else self.bias.nbytes)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 packed"

    def remake(self, weight: Tensor, bias: Tensor | None) -> PackedLinear:
        """A layer of the same kind holding `weight` (rows of this one, say)."""
        return PackedLinear(weight, bias, self.wide is not None)


QUANT = ("none", "int8", "int4")
INT4_GROUP = 32
# What quantized drafters compute in. torch's int8/int4 weight-only CPU kernels are made for
# bf16 activations: with fp32 ones a draft step ran 6x (int8) and 13x (int4) slower than
# with bf16 on an AVX512-BF16 EPYC, and int8 ~4x slower than packed-fp16 on AVX2.
QUANT_ACT = torch.bfloat16


def owned(t: Tensor | None) -> Tensor | None:
    """`t` in memory torch allocated itself: contiguous and 64-byte aligned. Tensors that
    safetensors reads from a file live in its memory map at whatever offset the file gives
    them, and torch's packed CPU kernels crash the process (SIGSEGV, nothing to catch) on
    such an operand: `_weight_int8pack_mm` did, on int8 codes read back from the cache."""
    if t is None or (t.is_contiguous() and t.untyped_storage().resizable() and t.data_ptr() % 64 == 0):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def check_scheme(scheme: str) -> None:
    if scheme not in QUANT[1:]:
        raise VocabtrimError(f"unknown quantization {scheme!r}; choose from {', '.join(QUANT)}")


class QuantLinear(nn.Module):
    """A linear layer with weight-only int8 (one scale per output row) or int4 weights
    (asymmetric, one scale and offset per group of `group` inputs), multiplied by torch's
    own CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`); activations,
    scales and outputs in the scales' dtype. For drafters only: their precision decides how
    many drafts are accepted, never what is output, since the target verifies at its own
    precision. `quantize` makes one from a float weight; the constructor takes the
    quantized parts (`parts()`), so a saved layer comes back without quantizing again."""

    def __init__(self, scheme: str, codes: Tensor, scales: Tensor, bias: Tensor | None,
                 shape: tuple[int, int], group: int = INT4_GROUP):
        """`codes`: int8 weights [out, in], or int4 codes 0..15 as uint8 [out padded to 16, in];
        `scales`: [out] for int8, [in / group, padded out, (scale, zero)] for int4. Parts of
        another shape (a stale or foreign file) are refused. Every part is copied into memory of
        its own where it is not already (see `owned`): the kernels read them as they are."""
        super().__init__()
        codes, scales, bias = owned(codes), owned(scales), owned(bias)
        self.out_features, self.in_features = shape
        self.scheme, self.act, self.group = scheme, scales.dtype, group
        rows = self.out_features + (-self.out_features % 16 if scheme == "int4" else 0)
        want = {"int8": (torch.int8, (rows,)), "int4": (torch.uint8, (self.in_features // group, rows, 2))}
        dtype, scale_shape = want[scheme]
        if (codes.dtype, codes.shape, scales.shape) != (dtype, (rows, self.in_features), scale_shape) or (
                bias is not None and bias.shape != (self.out_features,)):
            raise VocabtrimError(f"quantized {scheme} parts of shape {tuple(codes.shape)} do not make a "
                                 f"{self.out_features}x{self.in_features} layer")
        self.register_buffer("bias", bias)
        self.register_buffer("scales", scales)
        if scheme == "int8":
            self.register_buffer("qweight", codes)
        else:
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1))
            self._codes = codes  # unpacked, for weight16 (the kernel reads the packed copy)

    @classmethod
    def quantize(cls, weight: Tensor, bias: Tensor | None, scheme: str, act: torch.dtype = torch.float32,
                 group: int = INT4_GROUP) -> QuantLinear:
        """`weight` and `bias` quantized to `scheme`, with scales and outputs in `act`."""
        check_scheme(scheme)
        w = weight.detach().float()
        b = None if bias is None else bias.detach().to(act)
        if scheme == "int8":
            scales = w.abs().amax(1).clamp_min(1e-12) / 127
            codes = torch.round(w / scales[:, None]).to(torch.int8)
            return cls(scheme, codes, scales.to(act), b, weight.shape)
        if w.shape[1] % group:
            raise VocabtrimError(f"int4 needs input sizes divisible by {group}; this layer has {w.shape[1]}")
        w = torch.cat([w, w.new_zeros(-len(w) % 16, w.shape[1])])  # the kernel packs 16 rows at a time
        g = w.reshape(-1, group)
        low = g.amin(1, keepdim=True)
        step = (g.amax(1, keepdim=True) - low).clamp_min(1e-12) / 15
        codes = ((g - low) / step).round().clamp(0, 15).to(torch.uint8).reshape(w.shape)
        zeros = low + 8 * step  # the kernel computes (q - 8) * scale + zero per group
        sz = torch.cat([step.reshape(len(w), -1, 1), zeros.reshape(len(w), -1, 1)], 2)
        return cls(scheme, codes, sz.transpose(0, 1).contiguous().to(act), b, weight.shape, group)

    def parts(self) -> dict[str, Tensor]:
        """The constructor's tensors: what rebuilds this layer without quantizing."""
        codes = self.qweight if self.scheme == "int8" else self._codes
        return {"codes": codes, "scales": self.scales} | ({} if self.bias is None else {"bias": self.bias})

    @property
    def nbytes(self) -> int:
        """Bytes a forward reads: the packed weights, their scales (and zeros), the bias."""
        return sum(t.nbytes for t in (self.qweight, self.scales, self.bias) if t is not None)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(self.act)
        if self.scheme == "int8":
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group,
                                                           self.scales)[:, :self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    @functools.cached_property
    def weight16(self) -> Tensor:
        """The dequantized weight in fp16, computed once: rows to gather for trimmed heads."""
        if self.scheme == "int8":
            return (self.qweight.float() * self.scales.float()[:, None]).half()
        step, zero = self.scales.float().transpose(0, 1).unbind(-1)  # [N, groups] each
        codes = self._codes.float().reshape(len(self._codes), -1, self.group)
        w = (codes - 8) * step[..., None] + zero[..., None]
        return w.reshape(len(self._codes), -1)[:self.out_features].half()

    def remake(self, weight: Tensor, bias: Tensor | None) -> QuantLinear:
        return QuantLinear.quantize(weight, bias, self.scheme, self.act, self.group)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme}"


def quantized(model: nn.Module, scheme: str, saved: dict[str, Tensor] | None = None) -> nn.Module:
    """A copy of `model` whose linear layers, LM head included, hold `scheme` weights (see
    QuantLinear): quantized here, or rebuilt from `saved` (`quantized_parts` of an earlier
    copy; a missing or misshapen part raises KeyError or VocabtrimError). The copy computes
    in QUANT_ACT whatever `model`'s dtype: its embeddings and norms are cast to it."""
    check_scheme(scheme)
    act = QUANT_ACT

    def layer(name: str, m: nn.Module) -> QuantLinear:
        if saved is None:
            return QuantLinear.quantize(m.weight, m.bias, scheme, act)
        bias = None if m.bias is None else saved[f"{name}.bias"]
        return QuantLinear(scheme, saved[f"{name}.codes"], saved[f"{name}.scales"], bias,
                           (m.out_features, m.in_features))

    memo = {id(m): layer(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | PackedLinear)}
    memo |= {id(m): nn.Embedding.from_pretrained(m.weight.detach().to(act), padding_idx=m.padding_idx)
             for m in model.modules() if isinstance(m, nn.Embedding)}  # without pack's cast to fp32
    out = copy.deepcopy(model, memo)
    for p in out.parameters():  # parameters only: buffers such as rotary frequencies keep their dtype
        p.data = p.data.to(act)
    return out


def quantized_parts(model: nn.Module) -> dict[str, Tensor]:
    """The tensors `quantized(..., saved=...)` rebuilds `model`'s QuantLinear layers from."""
    return {f"{n}.{k}": t for n, m in model.named_modules() if isinstance(m, QuantLinear)
            for k, t in m.parts().items()}


def in_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """`model` (in place) as it serves in `dtype`, a concrete choice (see `resolve`): cast to
    that torch dtype, or packed for fbgemm (bf16 weights first, as loading reads them)."""
    model.to(TORCH_DTYPES.get(dtype, torch.bfloat16))
    return pack(model) if dtype == PACKED else model


def pack(model: nn.Module, wide: bool | None = None) -> nn.Module:
    """Replace every nn.Linear of `model` by a PackedLinear and make the rest fp32, in place,
    but for the embeddings: a lookup reads a few rows, so they keep their dtype (the weight
    file's pages as loaded) and each row read is cast to fp32 (an fp32 copy of the 1.5B
    target's would cost 0.9 GB). `wide` (default: where this machine measured bf16 faster
    for a prompt's rows, wide_in_bf16) keeps a bf16 copy of each weight for products of
    many rows.

    Packing converts and reorders every weight once (~150 ms per 14 M weights); it runs on
    all threads, one layer per thread."""
    if wide is None:
        wide = wide_in_bf16()
    slots = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        packed = list(pool.map(lambda s: PackedLinear(s[2].weight, s[2].bias, wide), slots))
    for (parent, name, _), new in zip(slots, packed):
        setattr(parent, name, new)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            m.register_forward_hook(_rows_in_fp32)
        else:
            m._apply(lambda t: t.float() if t.is_floating_point() else t, recurse=False)
    return model


def _rows_in_fp32(module: nn.Module, args: tuple, rows: Tensor) -> Tensor:
    return rows.float()


def rows(linear: nn.Module, ids: Tensor, packed: bool = True) -> nn.Module:
    """A new linear layer holding only output rows `ids` (a real copy): of the same kind,
    or a plain nn.Linear when `packed` is False (a few rows are not worth packing)."""
    custom = isinstance(linear, PackedLinear | QuantLinear)
    source = linear.weight16 if custom else linear.weight.detach()
    weight = source.index_select(0, ids)
    bias = None if linear.bias is None else linear.bias.detach().index_select(0, ids)
    if packed and custom:
        return linear.remake(weight, bias)
    return plain_linear(weight, bias)


def plain_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An nn.Linear holding `weight` and `bias` themselves (no initialisation, no copy)."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return out


def stacked(layers: list[nn.Module]) -> nn.Module:
    """One layer of the same kind whose output rows are those of `layers` in order (q, k and
    v, or gate and up: one product instead of several), built from their stored parts, so
    each row is exactly what it was; a missing bias counts as zeros."""
    first = layers[0]
    if any(type(m) is not type(first) or m.in_features != first.in_features for m in layers):
        raise VocabtrimError("only layers of one kind and input size can be stacked")
    outs = sum(m.out_features for m in layers)
    bias = None
    if any(m.bias is not None for m in layers):
        dtype = next(m.bias.dtype for m in layers if m.bias is not None)
        bias = torch.cat([m.bias.detach() if m.bias is not None else torch.zeros(m.out_features, dtype=dtype)
                          for m in layers])
    if isinstance(first, QuantLinear):
        if first.scheme == "int8":
            codes, scales = (torch.cat([m.qweight for m in layers]), torch.cat([m.scales for m in layers]))
        else:  # drop each layer's padding rows, pad the stack again to the kernel's 16
            pad = -outs % 16
            codes = torch.cat([m._codes[:m.out_features] for m in layers]
                              + [first._codes.new_zeros(pad, first.in_features)])
            scales = torch.cat([m.scales[:, :m.out_features] for m in layers]
                               + [first.scales.new_zeros(first.scales.shape[0], pad, 2)], 1)
        return QuantLinear(first.scheme, codes, scales, bias, (outs, first.in_features), first.group)
    weight = torch.cat([m.weight.detach() for m in layers])
    return first.remake(weight, bias) if isinstance(first, PackedLinear) else plain_linear(weight, bias)


def weight_count(module: nn.Module) -> int:
    """Weights held by `module` and its children, packed ones included."""
    return sum(p.numel() for p in module.parameters()) + sum(
        m.in_features * m.out_features + (0 if m.bias is None else m.out_features)
        for m in module.modules() if isinstance(m, PackedLinear | QuantLinear))


def weight_bytes(module: nn.Module) -> int:
    """Bytes the weights of `module` and its children are stored in: parameters at their
    dtype, packed and quantized layers at what they hold (their `nbytes`)."""
    return sum(p.nbytes for p in module.parameters()) + sum(
        m.nbytes for m in module.modules() if isinstance(m, PackedLinear | QuantLinear))


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's matmuls accumulate in (fp32 for packed layers), which is
    also the dtype of its norms and hidden states (not always its embeddings': see pack)."""
    return next(p for m in model.modules() if not isinstance(m, nn.Embedding)
                for p in m.parameters(recurse=False)).dtype


# The machine: what it is, and which dtype measured faster on it


def cpu() -> dict:
    """The CPU model, a digest of its flags, and torch's view of it."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    flags = info.get("flags") or info.get("Features") or ""
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:12],
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def fastest_dtype() -> str:
    """bfloat16 or packed-fp16, whichever runs a decode step's matrix products faster on
    this machine (the target's MLP shapes at 1 and 6 tokens: a draft step and a verify)."""
    return machine_choice()["dtype"] if packed_available() else "bfloat16"


def wide_in_bf16() -> bool:
    """Whether packed-fp16 layers should multiply a prompt's rows in bf16 here (the same
    shapes at 150 rows: bf16 faster than fbgemm's fp16 kernel)."""
    return packed_available() and machine_choice()["wide"]


def machine_choice() -> dict:
    """The two measurements above, timed once (about a second) and cached per CPU, threads
    and torch version."""
    machine = cpu()
    path = cache_file("profiles", {"dtype_choice": machine}, ".json")
    try:
        choice = json.loads(path.read_text())
    except FileNotFoundError:
        choice = None
    except (OSError, ValueError):
        choice = {}
    if isinstance(choice, dict) and choice.get("dtype") in ("bfloat16", PACKED) \
            and isinstance(choice.get("wide"), bool):
        return choice
    if choice is not None:
        print(f"warning: {path} is not a whole dtype choice; timing again", file=sys.stderr)
    ms = {d: _matmul_ms(d, (1, 6)) for d in ("bfloat16", PACKED)}
    wide_ms = {d: _matmul_ms(d, (150,)) for d in ("bfloat16", PACKED)}
    choice = {"dtype": min(ms, key=ms.get), "ms": ms, "wide": wide_ms["bfloat16"] < wide_ms[PACKED],
              "wide_ms": wide_ms, **machine}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(choice)))
    return choice


@torch.inference_mode()
def _matmul_ms(dtype: str, rows: tuple[int, ...], hidden: int = 1536, inner: int = 8960,
               repeats: int = 5) -> float:
    """Median ms of an up and a down projection at each of `rows` tokens in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(inner, hidden, generator=gen) * 0.02, torch.randn(hidden, inner, generator=gen) * 0.02]
    act = torch.float32 if dtype == PACKED else torch.bfloat16
    layers = [PackedLinear(w) if dtype == PACKED else torch.nn.Linear(
        w.shape[1], w.shape[0], bias=False, dtype=act).requires_grad_(False) for w in weights]
    for layer, w in zip(layers, weights):
        if dtype != PACKED:
            layer.weight.copy_(w)
    xs = [torch.randn(m, hidden, generator=gen).to(act) for m in rows]
    times = []
    for _ in range(repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        for x in xs:
            layers[1](layers[0](x))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])
