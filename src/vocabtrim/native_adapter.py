"""A LoRA adapter of `vocabtrim adapt` merged into a drafter's GGUF file, so that an adapted
drafter drafts on the native engine with its target (one runtime) instead of on torch.

Each adapted matrix is read at its stored format, dequantized, given W + (alpha / r) B A
and quantized again: to its own format where gguf can quantize it (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, F16, BF16, F32), to Q8_0 where it cannot (the K-quants: 8.5 bits a weight where the
file had 4.5-6.6, the rest of the file as it was). Where llama.cpp's converter permuted the
rows of q and k (the `llama` architecture), the adapter's change is permuted the same way.
The merged file is written once into the cache, keyed by both files' versions, and then
drafts like any GGUF. Only the drafts move: verification stays the target's, bit for bit.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .adapt import MODULES, meta_for, read
from .errors import VocabtrimError
from .files import atomic_write, version
from .paths import cache_root

# the modules an adapter changes (adapt.MODULES, transformers' names) -> their GGUF tensors
TENSORS = dict(zip(MODULES, ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), strict=True))
_KEY = re.compile(r"layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.weight$")


def merged(gguf_file: Path, adapter: Path, config, tokenizer) -> Path:
    """The GGUF file of `gguf_file`'s model with `adapter` merged in (made now if the cache
    lacks it); refused in one line where the adapter was made for another drafter."""
    meta = meta_for(adapter, config, tokenizer)
    key = hashlib.sha256(repr((version(gguf_file), version(adapter))).encode()).hexdigest()[:16]
    out = cache_root() / "adapted" / f"{gguf_file.stem}-{key}.gguf"
    if not out.is_file():  # the adapter's tensors read only to make it
        deltas = changes(read(adapter)[0], meta["settings"]["alpha"])
        atomic_write(out, lambda tmp: _write(gguf_file, deltas, tmp))
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


def _write(src: Path, deltas: dict[str, np.ndarray], dst: str) -> None:
    import gguf
    from gguf.quants import dequantize, quantize

    T = gguf.GGMLQuantizationType
    requantized = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    heads = {}  # the rows llama.cpp permuted: q's by the heads, k's by the kv heads
    if arch == "llama":
        heads["attn_q"] = heads["attn_k"] = reader.fields[f"{arch}.attention.head_count"].contents()
        if f"{arch}.attention.head_count_kv" in reader.fields:
            heads["attn_k"] = reader.fields[f"{arch}.attention.head_count_kv"].contents()
    shapes = {t.name: (int(t.shape[1]), int(t.shape[0])) for t in reader.tensors if len(t.shape) == 2}
    for name, delta in deltas.items():
        if shapes.get(name) != delta.shape:
            raise VocabtrimError(f"the adapter changes {name} as a {list(delta.shape)} matrix; "
                                 f"{src.name} holds {list(shapes[name]) if name in shapes else 'none'}")
    writer = gguf.GGUFWriter(dst, arch, endianess=reader.endianess)
    for field in reader.fields.values():  # every key as it was (gguf_new_metadata's copy)
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    data = []
    for t in tqdm(reader.tensors, desc=f"merging the adapter into {src.name}", unit="tensor"):
        raw, kind = t.data, t.tensor_type
        if t.name in deltas:
            delta = deltas[t.name]
            stem = t.name.split(".")[2]
            if stem in heads:
                delta = permute(delta, heads[stem])
            w = dequantize(raw, kind).reshape(delta.shape) + delta
            kind = kind if kind in requantized else T.Q8_0
            raw = quantize(w, kind)
        writer.add_tensor_info(t.name, raw.shape, raw.dtype, raw.nbytes, kind)
        data.append(raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for raw in data:
        writer.write_tensor_data(raw, tensor_endianess=reader.endianess)
    writer.close()
