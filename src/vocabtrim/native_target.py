"""A GGUF model of the Llama/Qwen2 architecture on vocabtrim's own kernels (csrc/model.c)
as a Target: one native call per `logits(seq, n)`, the weights read at their stored format
from the memory-mapped file, the KV cache held by the engine.

Every row is computed alone (its activation quantization, its matmul outputs, its
attention over its keys in order), so a position's logits are the same bits scored alone
or among any number of rows, after any crop, on any thread count: the tie tolerance is 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import native
from .cache import common_prefix
from .errors import VocabtrimError

ARCHS = {"qwen2": True, "llama": False}  # architecture -> rotary embedding on halves (NEOX) rather than pairs
LAYER_TENSORS = ("attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias", "attn_v.weight",
                 "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                 "ffn_down.weight")  # csrc/model.c's slot order
GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
CHUNK = 64  # rows a native call takes at most: bounds a long prefill's buffers

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


class NativeTarget:
    """The GGUF model at `path` on `threads` threads (default: the machine's cores)."""

    compute_dtype = torch.float32
    tie_tolerance = 0.0  # batch-invariant by construction: no ties to allow for

    def __init__(self, path: Path | str, threads: int | None = None, context: int = 4096, isa: str | None = None):
        self.path = Path(path)
        meta, tensors = read_gguf(self.path)
        self.map = np.memmap(self.path, dtype=np.uint8, mode="r")  # the weights the engine reads, mapped
        arch = meta.get("general.architecture")
        if arch not in ARCHS:
            raise VocabtrimError(f"{self.path.name}: the native engine runs {' and '.join(ARCHS)} models, not {arch}: "
                                 "use the ggml backend")
        if meta.get(f"{arch}.rope.scaling.type", "none") != "none":
            raise VocabtrimError(f"{self.path.name}: the native engine has no rope scaling: use the ggml backend")
        for t in tensors.values():
            if t.type not in native.BLOCKS:
                from gguf import GGMLQuantizationType

                raise VocabtrimError(f"{self.path.name}: tensor {t.name} is {GGMLQuantizationType(t.type).name}, which "
                                     f"the native engine does not read ({', '.join(native.TYPE_NAMES.values())}): "
                                     "use the ggml backend")
        if "token_embd.weight" not in tensors:
            raise VocabtrimError(f"{self.path.name} has no token_embd.weight: not a model the native engine runs")
        nbytes = {n: int(np.prod(t.dims)) // native.BLOCKS[t.type][0] * native.BLOCKS[t.type][1]
                  for n, t in tensors.items()}
        emb = tensors["token_embd.weight"]
        self.vocab_size = emb.dims[1]
        field = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
        n_layer, heads = field("block_count"), field("attention.head_count")
        self.context = min(context, field("context_length"))
        self.forward_bytes = (sum(nbytes.values()) - nbytes["token_embd.weight"]
                              + nbytes["token_embd.weight"] // self.vocab_size)  # the embedding only by rows
        self.pool = native.Pool(threads)
        self._free = native.lib().vt_model_free  # held: module globals may be gone when __del__ runs at exit
        self.model = native.lib().vt_model_new(
            n_layer, field("embedding_length"), heads, field("attention.head_count_kv", heads),
            field("feed_forward_length"), self.vocab_size, self.context, field("attention.layer_norm_rms_epsilon"),
            field("rope.freq_base", 10000.0), ARCHS[arch], self.pool.ptr, native.isa_index(isa))
        if not self.model:
            raise VocabtrimError(f"{self.path.name}: the native engine cannot hold a model of these dimensions "
                                 f"and a context of {self.context}")
        slots = [(-1, GLOBAL_TENSORS)] + [(i, [f"blk.{i}.{n}" for n in LAYER_TENSORS]) for i in range(n_layer)]
        for layer, names in slots:
            for slot, name in enumerate(names):
                if name in tensors:
                    t = tensors[name]
                    rows, cols = (t.dims[1], t.dims[0]) if len(t.dims) > 1 else (1, t.dims[0])
                    if t.offset + nbytes[name] > len(self.map) or len(t.dims) > 2:
                        raise VocabtrimError(f"{self.path.name}: tensor {name} does not fit the file "
                                             "or is not a matrix")
                    native.check(native.lib().vt_model_set(self.model, layer, slot, t.type,
                                                           self.map.ctypes.data + t.offset, rows, cols),
                                 f"{self.path.name}: tensor {name}")
        self.ids: list[int] = []

    def reset(self) -> None:
        self.ids = []

    def logits(self, seq: list[int], n: int) -> Tensor:
        """Logits [n, vocab_size] of the last `n` positions of `seq`, computing only what the
        cache does not hold."""
        if not 1 <= n <= len(seq) <= self.context:
            raise VocabtrimError(f"cannot score the last {n} of {len(seq)} tokens in a context of {self.context}")
        keep = common_prefix(self.ids, seq, min(len(seq) - n, len(self.ids)))
        out = torch.empty(n, self.vocab_size, dtype=torch.float32)
        done = 0
        for start in range(keep, len(seq), CHUNK):
            stop = min(start + CHUNK, len(seq))
            rows = max(0, stop - max(start, len(seq) - n))  # of the last n: always a piece's last rows
            tokens = np.asarray(seq[start:stop], dtype=np.int32)
            rc = native.lib().vt_model_forward(self.model, tokens.ctypes.data, stop - start, start, rows,
                                         out[done:].data_ptr())
            if rc:
                self.reset()
                raise VocabtrimError(f"the native engine failed on {self.path.name}: "
                                     f"{native.ERRORS.get(rc, rc)} (token ids < {self.vocab_size}?)")
            done += rows
        self.ids = list(seq)
        return out

    def __del__(self) -> None:
        if getattr(self, "model", None):
            self._free(self.model)
            self.model = None
