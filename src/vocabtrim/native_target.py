"""A GGUF model of the Llama/Qwen2 architecture on vocabtrim's own kernels (csrc/model.c)
as a Target: one native call per `logits(seq, n)`, the weights read at their stored format
from the memory-mapped file, the KV cache held by the engine.

Every row is computed alone (its activation quantization, its matmul outputs, its
attention over its keys in order), so a position's logits are the same bits scored alone
or among any number of rows, after any crop, on any thread count: the tie tolerance is 0.
"""

from __future__ import annotations

import ctypes
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

_p, _int, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def _lib() -> ctypes.CDLL:
    so = native.lib()
    if not getattr(so, "_model_typed", False):
        for name, res, args in (("vt_model_new", _p, [_int] * 7 + [_f, _f, _int, _p, _int]),
                                ("vt_model_free", None, [_p]),
                                ("vt_model_set", _int, [_p, _int, _int, _int, _p, ctypes.c_int64, ctypes.c_int64]),
                                ("vt_model_forward", _int, [_p, _p, _int, _int, _int, _p])):
            fn = getattr(so, name)
            fn.restype, fn.argtypes = res, args
        so._model_typed = True
    return so


class NativeTarget:
    """The GGUF model at `path` on `threads` threads (default: the machine's cores)."""

    compute_dtype = torch.float32
    tie_tolerance = 0.0  # batch-invariant by construction: no ties to allow for

    def __init__(self, path: Path | str, threads: int | None = None, context: int = 4096, isa: str | None = None):
        from gguf import GGUFReader

        self.path = Path(path)
        self.reader = GGUFReader(self.path)  # its memory map holds the weights the engine reads
        arch = self._field("general.architecture")
        if arch not in ARCHS:
            raise VocabtrimError(f"{self.path.name}: the native engine runs {' and '.join(ARCHS)} models, not {arch}: "
                                 "use the ggml backend")
        if self._field(f"{arch}.rope.scaling.type", "none") not in ("none", None):
            raise VocabtrimError(f"{self.path.name}: the native engine has no rope scaling: use the ggml backend")
        tensors = {t.name: t for t in self.reader.tensors}
        for t in tensors.values():
            if int(t.tensor_type) not in native.BLOCKS:
                raise VocabtrimError(f"{self.path.name}: tensor {t.name} is {t.tensor_type.name}, which the native "
                                     f"engine does not read ({', '.join(native.TYPE_NAMES.values())}): use the ggml backend")
        emb = tensors["token_embd.weight"]
        self.vocab_size = int(emb.shape[1])
        n_layer, heads = int(self._field(f"{arch}.block_count")), int(self._field(f"{arch}.attention.head_count"))
        self.context = min(context, int(self._field(f"{arch}.context_length")))
        self.forward_bytes = int(sum(int(t.n_bytes) for t in tensors.values()) - emb.n_bytes
                                 + emb.n_bytes // self.vocab_size)  # the embedding only by rows
        self.pool = native.Pool(threads)
        self._free = _lib().vt_model_free  # held: module globals may be gone when __del__ runs at exit
        self.model = _lib().vt_model_new(
            n_layer, int(self._field(f"{arch}.embedding_length")), heads,
            int(self._field(f"{arch}.attention.head_count_kv", heads)), int(self._field(f"{arch}.feed_forward_length")),
            self.vocab_size, self.context, float(self._field(f"{arch}.attention.layer_norm_rms_epsilon")),
            float(self._field(f"{arch}.rope.freq_base", 10000.0)), ARCHS[arch], self.pool.ptr, native.isa_index(isa))
        if not self.model:
            raise VocabtrimError(f"{self.path.name}: the native engine cannot hold a model of these dimensions "
                                 f"and a context of {self.context}")
        for layer, names in [(-1, GLOBAL_TENSORS)] + [(i, [f"blk.{i}.{n}" for n in LAYER_TENSORS]) for i in range(n_layer)]:
            for slot, name in enumerate(names):
                if name in tensors:
                    t = tensors[name]
                    rows, cols = (int(t.shape[1]), int(t.shape[0])) if len(t.shape) > 1 else (1, int(t.shape[0]))
                    native._check(_lib().vt_model_set(self.model, layer, slot, int(t.tensor_type), t.data.ctypes.data,
                                                      rows, cols), f"{self.path.name}: tensor {name}")
        self.ids: list[int] = []

    def _field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

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
            rc = _lib().vt_model_forward(self.model, tokens.ctypes.data, stop - start, start, rows,
                                         out[done:].data_ptr())
            if rc:
                self.reset()
                raise VocabtrimError(f"the native engine failed on {self.path.name}: "
                                     f"{native._ERRORS.get(rc, rc)} (token ids < {self.vocab_size}?)")
            done += rows
        self.ids = list(seq)
        return out

    def __del__(self) -> None:
        if getattr(self, "model", None):
            self._free(self.model)
            self.model = None
