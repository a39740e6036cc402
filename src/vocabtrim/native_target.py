"""A GGUF model of the Llama/Qwen2 architecture on vocabtrim's own kernels (csrc/model.c)
as a Target: one native call per `logits(seq, n)`, the weights read at their stored format
from the memory-mapped file, the KV cache held by the engine.

Every row is computed alone (its activation quantization, its matmul outputs, its
attention over its keys in order), so a position's logits are the same bits scored alone
or among any number of rows, after any crop, on any thread count: the tie tolerance is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import native
from .cache import common_prefix
from .errors import VocabtrimError
from .gguf_header import read_gguf

ARCHS = {"qwen2": True, "llama": False}  # architecture -> rotary embedding on halves (NEOX) rather than pairs
LAYER_TENSORS = ("attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias", "attn_v.weight",
                 "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                 "ffn_down.weight")  # csrc/model.c's slot order
GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
CHUNK = 64  # rows a native call takes at most: bounds a long prefill's buffers



class NativeTarget:
    """The GGUF model at `path` on `threads` threads (default: the machine's cores)."""

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


class NativeBackend:
    """The model's GGUF file on vocabtrim's own batch-invariant kernels (Llama/Qwen2)."""

    name, runs_gguf = "native", True
    max_context = 8192

    def available(self) -> bool:
        return native.available()

    def check(self) -> None:
        native.lib()

    def target(self, loaded) -> NativeTarget:
        return NativeTarget(loaded.gguf, context=loaded.context)


BACKEND = NativeBackend()
