"""A GGUF model of the Llama, Qwen2 or Qwen3 architecture on vocabtrim's own kernels (csrc/model.c):
`NativeModel` (the file, read once: its header, its memory-mapped weights), `NativeTarget`
(a KV cache over it: a target's logits, one native call per `logits(seq, n)`, or a
drafter's hidden states) and `NativeRows` (rows of a matrix at their stored format: a
drafter's full or VocabTrim'd head). Target and drafter share one thread pool.

Every row is computed alone (its activation quantization, its matmul outputs, its
attention over its keys in order), so a position's logits are the same bits scored alone
or among any number of rows, after any crop, on any thread count: the tie tolerance is 0.
"""

from __future__ import annotations

import mmap
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import native
from .cache import common_prefix
from .errors import VocabtrimError
from .files import version
from .gguf_header import ROPE_FACTORS, read_gguf, rope_factors

ARCHS = {"qwen2": True, "qwen3": True, "llama": False}  # architecture -> RoPE on halves (NEOX), not on pairs
LAYER_TENSORS = ("attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias", "attn_v.weight",
                 "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                 "ffn_down.weight", "attn_q_norm.weight", "attn_k_norm.weight")  # csrc/model.c's slot order
GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
QWEN3_ONLY = ("attn_q_norm.weight", "attn_k_norm.weight")  # its per-head RMSNorms of q and k, before RoPE
CHUNK = 64  # rows a native call takes at most: bounds a long prefill's buffers



class NativeModel:
    """The GGUF model at `path`, checked and mapped once; each `NativeTarget` over it holds a
    KV cache of `context` tokens. Runs on `threads` threads (default: the machine's cores,
    the pool every native model shares)."""

    def __init__(self, path: Path | str, context: int = 4096, threads: int | None = None, isa: str | None = None):
        self.path = Path(path)
        meta, self.tensors = read_gguf(self.path)
        self.map = np.memmap(self.path, dtype=np.uint8, mode="r")  # the weights the engine reads, mapped
        arch = meta.get("general.architecture")
        if arch not in ARCHS:
            raise VocabtrimError(f"{self.path.name}: the native engine runs {', '.join(ARCHS)} models, not {arch}: "
                                 "use the ggml backend")
        if meta.get(f"{arch}.rope.scaling.type", "none") != "none":
            raise VocabtrimError(f"{self.path.name}: the native engine has no rope scaling: use the ggml backend")
        for t in self.tensors.values():
            if t.type not in native.BLOCKS:
                from gguf import GGMLQuantizationType

                raise VocabtrimError(f"{self.path.name}: tensor {t.name} is {GGMLQuantizationType(t.type).name}, which "
                                     f"the native engine does not read ({', '.join(native.TYPE_NAMES.values())}): "
                                     "use the ggml backend")
        if "token_embd.weight" not in self.tensors:
            raise VocabtrimError(f"{self.path.name} has no token_embd.weight: not a model the native engine runs")
        self.nbytes = {n: int(np.prod(t.dims)) // native.BLOCKS[t.type][0] * native.BLOCKS[t.type][1]
                       for n, t in self.tensors.items()}
        for name, t in self.tensors.items():
            if t.offset + self.nbytes[name] > len(self.map) or len(t.dims) > 2:
                raise VocabtrimError(f"{self.path.name}: tensor {name} does not fit the file or is not a matrix")
        emb = self.tensors["token_embd.weight"]
        self.vocab_size, self.hidden_size = emb.dims[1], emb.dims[0]
        field = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
        self.n_layer, heads = field("block_count"), field("attention.head_count")
        self.context = min(context, field("context_length"))
        head_dim = field("attention.key_length", self.hidden_size // heads)  # Qwen3's small models: wider heads
        self.dims = (self.n_layer, self.hidden_size, heads, field("attention.head_count_kv", heads), head_dim,
                     field("feed_forward_length"), self.vocab_size, self.context)
        self.floats = (field("attention.layer_norm_rms_epsilon"), field("rope.freq_base", 10000.0), ARCHS[arch])
        self._check_names(arch)
        for key in ("attention.value_length", "rope.dimension_count"):
            if field(key, head_dim) != head_dim:  # values of another width, or rope on part of a head
                raise VocabtrimError(f"{self.path.name}: {arch}.{key} is {field(key)}, not the heads' width "
                                     f"({head_dim}), which the native engine assumes: use the ggml backend")
        self.rope_factors = rope_factors(self.path, self.tensors, head_dim // 2)
        head = self.nbytes.get("output.weight", self.nbytes["token_embd.weight"])
        self.body_bytes = (sum(self.nbytes.values()) - self.nbytes["token_embd.weight"] - self.nbytes.get("output.weight", 0)
                           + self.nbytes["token_embd.weight"] // self.vocab_size)  # the embedding only by rows
        self.forward_bytes = self.body_bytes + head
        self.pool = native.default_pool() if threads is None else native.Pool(threads)
        self.isa = native.isa_index(isa)
        self.packed = self._pack()

    def _check_names(self, arch: str) -> None:
        """Refuse a tensor the forward would not read: running without it would be another
        model than the file's (q/k norms in a file that says qwen2, say: llama.cpp refuses
        it too). Only Qwen3 has q/k norms."""
        layer = [n for n in LAYER_TENSORS if arch == "qwen3" or n not in QWEN3_ONLY]
        known = {*GLOBAL_TENSORS, ROPE_FACTORS, *(f"blk.{i}.{n}" for i in range(self.n_layer) for n in layer)}
        for name in self.tensors:
            if name not in known:
                raise VocabtrimError(f"{self.path.name}: tensor {name} is not one the native engine reads: "
                                     "use the ggml backend")

    def _pack(self) -> dict[str, np.ndarray]:
        """The matrices the kernels read in a layout of their own (native.pack: on the SIMD
        paths every quantized format, in tiles of a vector's lanes of rows), packed once for
        every cache over this model, their mapped pages then dropped (the file stays in the
        page cache; the process holds one copy). The embedding stays mapped (read by rows);
        a tied head is packed from it."""
        isa = native.ISAS[self.isa]
        matrices = [n for n in self.tensors if n != "token_embd.weight" and len(self.tensors[n].dims) == 2]
        if "output.weight" not in self.tensors:
            matrices.append("token_embd.weight")
        packed = {}
        for name in matrices:
            t, n = self.tensors[name], self.nbytes[name]
            if not native.packs(t.type, isa):
                continue
            packed["output.weight" if name == "token_embd.weight" else name] = native.pack(
                self.map[t.offset:t.offset + n], t.type, t.dims[1], t.dims[0], isa)
            if name != "token_embd.weight":
                self._release(t.offset, n)
        return packed

    def _release(self, offset: int, nbytes: int) -> None:
        """Drop this process's pages of the file's bytes offset.. (whole pages inside them)."""
        mm, page = getattr(self.map, "_mmap", None), mmap.PAGESIZE
        start, end = -(-offset // page) * page, (offset + nbytes) // page * page
        if mm is not None and end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def new(self) -> int:
        """A native model over these weights with an empty cache of `context` tokens (a pointer)."""
        lib = native.lib()
        ptr = lib.vt_model_new(*self.dims, *self.floats, self.pool.ptr, self.isa)
        if not ptr:
            raise VocabtrimError(f"{self.path.name}: the native engine cannot hold a model of these dimensions "
                                 f"and a context of {self.context}")
        if self.rope_factors is not None:
            lib.vt_model_rope_factors(ptr, self.rope_factors.ctypes.data)  # checked at load: cannot fail
        slots = [(-1, GLOBAL_TENSORS)] + [(i, [f"blk.{i}.{n}" for n in LAYER_TENSORS]) for i in range(self.n_layer)]
        for layer, names in slots:
            for slot, name in enumerate(names):
                if name in self.tensors or name in self.packed:
                    t = self.tensors.get(name, self.tensors["token_embd.weight"])  # a tied head: the embedding's
                    rows, cols = (t.dims[1], t.dims[0]) if len(t.dims) > 1 else (1, t.dims[0])
                    data = self.packed[name].ctypes.data if name in self.packed else self.map.ctypes.data + t.offset
                    rc = lib.vt_model_set(ptr, layer, slot, t.type, data, rows, cols)
                    if rc:
                        lib.vt_model_free(ptr)
                        native.check(rc, f"{self.path.name}: tensor {name}")
        if lib.vt_model_check(ptr):
            lib.vt_model_free(ptr)
            raise VocabtrimError(f"{self.path.name}: its tensors are not those of a model of its header's dimensions "
                                 "(or a vector is not F32) as the native engine reads it: use the ggml backend")
        return ptr

    def new_lm(self) -> NativeTarget:
        """A fresh cache to draft with (`hidden`), as lean.lm_factory's LMs."""
        return NativeTarget(self)

    def get_output_embeddings(self) -> NativeRows:
        """The LM head (the tied embedding where the file has no output.weight), as torch
        models name it: what `heads.Head` gathers a token map's rows from."""
        name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        t = self.tensors[name]
        raw = self.map[t.offset:t.offset + self.nbytes[name]].reshape(self.vocab_size, -1)
        packed = self.packed.get("output.weight")  # packed at load already: not again
        return NativeRows(raw, t.type, self.hidden_size, self.pool, self.isa,
                          None if packed is None else packed.reshape(raw.shape))


class NativeRows:
    """Rows of a GGUF matrix at their stored format (raw [rows, row bytes]), multiplied by
    the native kernels: a drafter's head, whole (the mapped file) or gathered (VocabTrim)."""

    def __init__(self, raw: np.ndarray, wtype: int, cols: int, pool: native.Pool, isa: int,
                 packed: np.ndarray | None = None):
        self.raw, self.wtype, self.in_features, self.pool, self.isa = raw, wtype, cols, pool, isa
        self.out_features = raw.shape[0]
        self.packed = packed  # the kernels' layout (native.pack): given, or made on first use

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def gather(self, ids: Tensor) -> NativeRows:
        """Rows `ids`, copied together (a draft step then reads K rows, not the vocabulary)."""
        return NativeRows(np.ascontiguousarray(self.raw[ids.numpy()]), self.wtype, self.in_features, self.pool,
                          self.isa)

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden [n, cols] -> [n, rows]."""
        isa = native.ISAS[self.isa]
        if self.packed is None:
            self.packed = native.pack(self.raw, self.wtype, self.out_features, self.in_features, isa)
        return torch.from_numpy(native.matmul(self.packed, self.wtype, self.out_features, self.in_features,
                                              hidden.float().numpy(), self.pool, isa, packed=True))


class NativeTarget:
    """A KV cache over a `NativeModel` (or the GGUF file at `path`, loaded for it): a target
    scoring positions (`logits`) or a drafter's body (`hidden`)."""

    tie_tolerance = 0.0  # batch-invariant by construction: no ties to allow for

    def __init__(self, path: NativeModel | Path | str, threads: int | None = None, context: int = 4096,
                 isa: str | None = None):
        self.weights = path if isinstance(path, NativeModel) else NativeModel(path, context, threads, isa)
        self.path, self.vocab_size, self.context = self.weights.path, self.weights.vocab_size, self.weights.context
        self.forward_bytes = self.weights.forward_bytes
        self._free = native.lib().vt_model_free  # held: module globals may be gone when __del__ runs at exit
        self.model = self.weights.new()
        self.ids: list[int] = []

    def reset(self) -> None:
        self.ids = []

    def logits(self, seq: list[int], n: int) -> Tensor:
        """Logits [n, vocab_size] of the last `n` positions of `seq`, computing only what the
        cache does not hold."""
        return self._run(seq, n, self.vocab_size, native.lib().vt_model_forward)

    def hidden(self, seq: list[int], last: int) -> Tensor:
        """The final normed hidden states [last, hidden size] of the last `last` positions."""
        return self._run(seq, last, self.weights.hidden_size, native.lib().vt_model_hidden)

    def _run(self, seq: list[int], n: int, width: int, call) -> Tensor:
        if not 1 <= n <= len(seq) <= self.context:
            raise VocabtrimError(f"cannot score the last {n} of {len(seq)} tokens in a context of {self.context}")
        keep = common_prefix(self.ids, seq, min(len(seq) - n, len(self.ids)))
        out = torch.empty(n, width, dtype=torch.float32)
        done = 0
        for start in range(keep, len(seq), CHUNK):
            stop = min(start + CHUNK, len(seq))
            rows = max(0, stop - max(start, len(seq) - n))  # of the last n: always a piece's last rows
            tokens = np.asarray(seq[start:stop], dtype=np.int32)
            rc = call(self.model, tokens.ctypes.data, stop - start, start, rows, out[done:].data_ptr())
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
    """The model's GGUF file on vocabtrim's own batch-invariant kernels (Llama, Qwen2, Qwen3)."""

    name, runs_gguf, drafts = "native", True, True
    max_context = None  # the model's trained length: its KV cache is reserved, resident only as written

    def available(self) -> bool:
        return native.available()

    def check(self) -> None:
        native.lib()

    def build(self) -> str:
        return native.build_id()

    def target(self, loaded) -> NativeTarget:
        return NativeTarget(self.draft_model(loaded))

    def draft_model(self, loaded) -> NativeModel:
        """The model of `loaded`'s GGUF file, read once (a target and drafters share it)."""
        key = (loaded.gguf, loaded.context, version(loaded.gguf))  # a changed file: another model
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = NativeModel(loaded.gguf, loaded.context)
        return model


# each file read once while anything (a target, a drafter) holds its model; then let go
_MODELS: weakref.WeakValueDictionary[tuple, NativeModel] = weakref.WeakValueDictionary()

BACKEND = NativeBackend()
