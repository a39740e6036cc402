"""A drafter's GGUF file rewritten into a copy in the cache, for the backends that run GGUF
files (the native engine, llama.cpp): only the drafts move, verification stays the
target's, bit for bit.

- `merged`: a LoRA adapter of `vocabtrim adapt` merged in, so that an adapted drafter drafts
  on the native engine with its target (one runtime) instead of on torch. Each adapted
  matrix is read at its stored format, dequantized, given W + (alpha / r) B A and quantized
  again: to its own format where gguf can quantize it (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16,
  BF16, F32), to Q8_0 where it cannot (the K-quants: 8.5 bits a weight where the file had
  4.5-6.6). Where llama.cpp's converter permuted the rows of q and k (the `llama`
  architecture), the adapter's change is permuted the same way.
- `requantized`: the matrices at fewer bits (`q4`: Q4_0, `q8`: Q8_0) where they hold more,
  so that a draft step reads fewer bytes. The token embedding, read a row a token, keeps
  its format. The built-in 0.5B drafter's Q4_K_M file holds mostly Q5_0 and Q8_0 (its
  896-column rows are no multiple of the K-quants' 256): as Q4_0 it reads 20% less a step.

Each copy is made once, keyed by what it is made from, written atomically; the cache keeps
the KEEP copies of each kind used last.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .adapt import MODULES, meta_for, read
from .errors import VocabtrimError
from .files import atomic_write, version
from .gguf_header import read_gguf
from .paths import cache_root

# the modules an adapter changes (adapt.MODULES, transformers' names) -> their GGUF tensors
TENSORS = dict(zip(MODULES, ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), strict=True))
_KEY = re.compile(r"layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.weight$")


KEEP = 4  # copies of each kind the cache keeps (the least recently used go first)
SCHEMES = {"int4": "Q4_0", "int8": "Q8_0"}  # --draft-quant's schemes as GGUF formats


def merged(gguf_file: Path, adapter: Path, config, tokenizer) -> Path:
    """The GGUF file of `gguf_file`'s model with `adapter` merged in (made now if the cache
    lacks it); refused in one line where the adapter was made for another drafter."""
    meta = meta_for(adapter, config, tokenizer)
    out = _place("adapted", gguf_file, (version(gguf_file), version(adapter)))
    if _used(out):
        return out

    def make(tmp: str) -> None:  # the adapter's tensors read only to make it
        _write(gguf_file, _merge(gguf_file, changes(read(adapter)[0], meta["settings"]["alpha"])), tmp,
               f"merging the adapter into {gguf_file.name}")

    return _made(out, make)


def requantized(gguf_file: Path, scheme: str) -> Path:
    """`gguf_file` with its matrices (all but the token embedding) in `scheme`'s format
    (SCHEMES) where they hold more bits a weight; the file itself where none does."""
    import gguf

    out = _place("requantized", gguf_file, (version(gguf_file), scheme))
    if _used(out):
        return out
    kind = gguf.GGMLQuantizationType[SCHEMES[scheme]]
    lower = {name for name, t in read_gguf(gguf_file)[1].items() if _lower(name, t.type, t.dims, kind)}
    if not lower:
        return gguf_file

    def change(t, raw, old):
        if t.name not in lower:
            return raw, old
        from gguf.quants import dequantize, quantize

        return quantize(dequantize(raw, old).reshape(int(t.shape[1]), int(t.shape[0])), kind), kind

    return _made(out, lambda tmp: _write(gguf_file, change, tmp, f"{gguf_file.name} to {kind.name}"))


def _lower(name: str, type_id: int, dims: tuple[int, ...], kind) -> bool:
    """Whether a tensor is a matrix at more bits a weight than `kind` (whose blocks tile its
    rows, dims[0] long), other than the token embedding."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    def bits(k):
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(k)]
        return 8 * size / block

    return (len(dims) == 2 and name != "token_embd.weight" and bits(type_id) > bits(kind)
            and dims[0] % GGML_QUANT_SIZES[kind][0] == 0)


def _place(kind: str, src: Path, key: tuple) -> Path:
    """Where the cache keeps the copy of `src` of `kind` made from `key`."""
    return cache_root() / kind / f"{src.stem}-{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}.gguf"


def _used(out: Path) -> bool:
    """Whether the copy `out` is in the cache, marked used now if so (the last to go)."""
    try:
        os.utime(out)
    except FileNotFoundError:
        return False
    return True


def _made(out: Path, make) -> Path:
    """`out` written by `make(tmp_path)`; then the copies of its kind beyond the KEEP used
    last are removed (a process still reading one keeps its pages until it lets go)."""
    atomic_write(out, make)

    def last_use(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # another process removed it meanwhile
            return 0.0

    for old in sorted(out.parent.glob("*.gguf"), key=last_use, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
    return out


def changes(tensors: dict, alpha: float) -> dict[str, np.ndarray]:
    """GGUF tensor name -> the adapter's change to it, (alpha / r) B A, float32 [out, in]
    in transformers' row order."""
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = _KEY.search(name)
        if m and m.group(2) in TENSORS:
            parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float().numpy()
    out = {}
    for (layer, module), ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise VocabtrimError(f"the adapter lacks lora_{'AB'[('A' in ab)]} of layer {layer}'s {module}")
        out[f"blk.{layer}.{TENSORS[module]}.weight"] = (ab["B"] @ ab["A"]) * np.float32(alpha / ab["A"].shape[0])
    return out


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k in the order llama.cpp's converter writes a `llama` file's (each head's
    rotary pairs interleaved rather than in halves)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _merge(src: Path, deltas: dict[str, np.ndarray]):
    """The tensor change of `merged`: each adapted matrix plus its delta (permuted where
    llama.cpp permuted the file's rows), requantized; refused in one line, before anything
    is written, where a delta's shape is not its matrix's."""
    import gguf
    from gguf.quants import dequantize, quantize

    T = gguf.GGMLQuantizationType
    requantized = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
    meta, tensors = read_gguf(src)  # the header alone: _write reads the file once more, whole
    arch = meta[gguf.Keys.General.ARCHITECTURE]
    heads = {}  # the rows llama.cpp permuted: q's by the heads, k's by the kv heads
    if arch == "llama":
        heads["attn_q"] = heads["attn_k"] = meta[f"{arch}.attention.head_count"]
        if f"{arch}.attention.head_count_kv" in meta:
            heads["attn_k"] = meta[f"{arch}.attention.head_count_kv"]
    shapes = {name: (t.dims[1], t.dims[0]) for name, t in tensors.items() if len(t.dims) == 2}
    for name, delta in deltas.items():
        if shapes.get(name) != delta.shape:
            raise VocabtrimError(f"the adapter changes {name} as a {list(delta.shape)} matrix; "
                                 f"{src.name} holds {list(shapes[name]) if name in shapes else 'none'}")

    def change(t, raw, kind):
        if t.name not in deltas:
            return raw, kind
        delta = deltas[t.name]
        stem = t.name.split(".")[2]
        if stem in heads:
            delta = permute(delta, heads[stem])
        kind = kind if kind in requantized else T.Q8_0
        return quantize(dequantize(raw, t.tensor_type).reshape(delta.shape) + delta, kind), kind

    return change


def _write(src: Path, change, dst: str, desc: str) -> None:
    """A copy of GGUF file `src` at `dst`: every key as it was (gguf_new_metadata's copy),
    each tensor as `change(tensor, raw, kind)` returns its data and format."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields[gguf.Keys.General.ARCHITECTURE].contents(),
                             endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    data = []
    for t in tqdm(reader.tensors, desc=desc, unit="tensor"):
        raw, kind = change(t, t.data, t.tensor_type)
        writer.add_tensor_info(t.name, raw.shape, raw.dtype, raw.nbytes, kind)
        data.append(raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for raw in data:
        writer.write_tensor_data(raw, tensor_endianess=reader.endianess)
    writer.close()
