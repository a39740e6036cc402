"""A GGUF file's header read straight from the file: its scalar and string metadata and
its tensors' names, types, shapes and places. Both the native engine (which maps the
weights itself) and the ggml backend's AMX avoidance (which names the tensors llama.cpp
would repack) need only that, and gguf's GGUFReader spends seconds on the arrays first."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VocabtrimError

ROPE_FACTORS = "rope_freqs.weight"


@dataclass
class GgufTensor:
    name: str
    type: int  # ggml_type id
    dims: tuple[int, ...]  # ggml order: dims[0] is a row's length
    offset: int  # from the start of the file


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path: Path) -> tuple[dict, dict[str, GgufTensor]]:
    """A GGUF file's scalar and string metadata and its tensors' places, read straight from
    the header: gguf's GGUFReader also turns the tokenizer's 150k-entry arrays into numpy
    views, which took ~13 of a 15 s load of the 1.5B target; arrays are skipped here."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise VocabtrimError(f"{path.name} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", head, 4)
        if version < 2:
            raise VocabtrimError(f"{path.name}: GGUF version {version} is too old (2 or later)")
        buf = f.read(1 << 20)
        pos = 0

        def need(n: int) -> None:
            nonlocal buf
            while len(buf) - pos < n:
                more = f.read(max(n, 1 << 20))
                if not more:
                    raise VocabtrimError(f"{path.name}: the GGUF header is cut short")
                buf += more

        def take(fmt: str):
            nonlocal pos
            size = struct.calcsize(fmt)
            need(size)
            value = struct.unpack_from(fmt, buf, pos)[0]
            pos += size
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            need(n)
            pos += n
            return bytes(buf[pos - n:pos]).decode("utf-8", errors="replace")

        def value(vtype: int):
            if vtype in _SCALARS:
                return take(_SCALARS[vtype])
            if vtype == 8:
                return string()
            if vtype == 9:  # an array: skipped
                etype, count = take("<I"), take("<Q")
                for _ in range(count):
                    value(etype)
                return None
            raise VocabtrimError(f"{path.name}: unknown GGUF value type {vtype}")

        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            infos.append((name, take("<I"), dims, take("<Q")))
        align = int(meta.get("general.alignment") or 32)
        start = (24 + pos + align - 1) // align * align
    return meta, {name: GgufTensor(name, t, dims, start + off) for name, t, dims, off in infos}


def check_gguf(path: Path) -> None:
    """Refuse, in one line and before anything loads it, a file that is not a whole GGUF:
    not one at all, its header cut short, or its tensors running past the file's end (a
    download or copy that stopped early)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    _, tensors = read_gguf(path)
    end = 0
    for t in tensors.values():
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type)]
        except (ValueError, KeyError):
            continue  # a type gguf does not know: the backend that loads it says so
        count = 1
        for d in t.dims:
            count *= d
        end = max(end, t.offset + count // block * size)
    have = path.stat().st_size
    if end > have:
        raise VocabtrimError(f"{path.name} is a truncated GGUF file: its tensors end at byte {end:,}, "
                             f"the file has {have:,}")


def rope_factors(path: Path, tensors: dict[str, GgufTensor], n: int) -> np.ndarray | None:
    """The file's rope_freqs.weight (Llama 3's long-context rope scaling, as llama.cpp's
    converter writes it): each of the `n` rotary frequencies' divisor, or None where the
    file has none. Both the native engine and torch's loading of the file apply it."""
    t = tensors.get(ROPE_FACTORS)
    if t is None:
        return None
    f = np.fromfile(path, np.float32, count=n, offset=t.offset) if t.type == 0 else None  # 0: F32
    if f is None or tuple(t.dims) != (n,) or len(f) != n or not (np.isfinite(f).all() and (f > 0).all()):
        raise VocabtrimError(f"{path.name}: {ROPE_FACTORS} is not {n} positive F32 factors")
    return f
