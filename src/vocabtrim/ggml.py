"""A GGUF file as the target, on llama.cpp's kernels (ggml) through llama-cpp-python's
low-level API: the weights stay at their stored precision (Q4_K, Q6_K, ...), so a forward
reads the bytes of the user's own file instead of a 16-bit copy of it.

One round is one `llama_decode` over the tokens the cache lacks, with logits asked for the
last n positions only; a rejected draft is cropped with `llama_memory_seq_rm`, so nothing
already cached is computed again. The logits come back as one [n, vocab] copy of
llama.cpp's output buffer.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from torch import Tensor

from .cache import common_prefix
from .errors import VocabtrimError
from .files import version
from .gguf_header import read_gguf
from .metrics import GenerationStats
from .sampling import Sampling

try:
    import llama_cpp as ll
except ImportError:  # the optional extra [ggml]; the torch backend needs none of it
    ll = None

INSTALL_HINT = "pip install 'vocabtrim[ggml]' (builds llama-cpp-python from source, ~12 CPU-minutes once)"
_backend: list = []  # llama_backend_init once per process, and the log callback kept alive


def available() -> bool:
    return ll is not None


def _init() -> None:
    if ll is None:
        raise VocabtrimError(f"the ggml backend needs llama-cpp-python: {INSTALL_HINT}")
    if not _backend:
        quiet = ll.llama_log_callback(lambda level, text, data: None)  # llama.cpp logs every load to stderr
        ll.llama_log_set(quiet, ctypes.c_void_p())
        ll.llama_backend_init()
        _backend.append(quiet)


def system_info() -> str:
    """llama.cpp's own line of what its CPU library was built with and found here."""
    _init()
    return ll.llama_print_system_info().decode()


def avoids_amx(info: str) -> bool:
    """Whether llama.cpp's AMX buffer type must be kept out of a model: it is offered where
    the library was built with AMX_INT8 (-march=native on a Sapphire Rapids-class Xeon), and
    its matmul dies with SIGSEGV on the first multi-token decode there (llama.cpp issue
    20824, unfixed in 0.3.36)."""
    return "AMX_INT8 = 1" in info


# The types llama.cpp's CPU repacking takes on x86 (repack.cpp, ggml_repack_get_optimal_repack_type
# in the vendored 0.3.36), with the feature each needs; rows must be a multiple of 8. Q5_K, Q6_K
# and Q8_0 are repacked on ARM only. tests/test_ggml.py checks this against llama.cpp's own
# choice (its CPU_REPACK buffer size) where AMX does not take it over.
REPACKED_X86 = {T.Q4_0: "AVX2", T.Q4_K: "AVX2", T.IQ4_NL: "AVX2", T.MXFP4: "AVX2", T.Q2_K: "AVX512"}
_MATMUL_WEIGHT = re.compile(r"^(blk\.\d+\.(attn_(q|k|v|qkv|output)|ffn_(gate|up|down))|output)\.weight$")


def repacked(path: Path, info: str) -> list[str]:
    """The weight tensors of `path` that llama.cpp would repack on this CPU (read from the
    file's header: names, types and shapes)."""
    has = {feature for feature in ("AVX2", "AVX512") if f"{feature} = 1" in info}
    return [t.name for t in read_gguf(path)[1].values()
            if REPACKED_X86.get(t.type) in has and len(t.dims) == 2
            and t.dims[1] % 8 == 0 and _MATMUL_WEIGHT.match(t.name)]


def _repack_buffer_type() -> int | None:
    """llama.cpp's CPU_REPACK buffer type (an extra buffer type of the CPU device)."""
    lib = Path(ll.__file__).parent / "lib"
    base, core = ctypes.CDLL(str(lib / "libggml-base.so")), ctypes.CDLL(str(lib / "libggml.so"))
    base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    core.ggml_backend_dev_by_type.restype, core.ggml_backend_dev_by_type.argtypes = ctypes.c_void_p, [ctypes.c_int]
    core.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    core.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    dev = core.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    fn = base.ggml_backend_reg_get_proc_address(core.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return None
    extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
    i = 0
    while extra[i]:
        if base.ggml_backend_buft_name(extra[i]) == b"CPU_REPACK":
            return extra[i]
        i += 1
    return None


class _BuftOverride(ctypes.Structure):
    """llama.h's llama_model_tensor_buft_override (the binding declares the field void *)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def model_params(path: Path, repack: bool = True, info: str | None = None):
    """llama_model_params for `path`, the one place every llama.cpp model of the project gets
    them. Where AMX is offered it is kept out (see avoids_amx): extra buffer types off, and
    the tensors llama.cpp would repack put in the CPU_REPACK buffer by name, so the speed of
    repacking stays. `info` is llama.cpp's system info (the tests pass one). The returned
    params hold their override array alive."""
    params = ll.llama_model_default_params()
    info = system_info() if info is None else info
    if not avoids_amx(info):
        params.use_extra_bufts = repack
        return params
    params.use_extra_bufts = False
    names = repacked(path, info) if repack else []
    buft = _repack_buffer_type() if names else None
    if buft:
        kinds: dict[str, list[str]] = {}  # one pattern per tensor kind: llama.cpp compiles each per tensor
        for name in names:
            head, _, rest = name.partition(".weight")[0].rpartition(".")
            kinds.setdefault(rest, []).append(head.removeprefix("blk."))
        patterns = ["^output\\.weight$" if kind == "output" else
                    f"^blk\\.({'|'.join(layers)})\\.{kind}\\.weight$" for kind, layers in kinds.items()]
        table = (_BuftOverride * (len(patterns) + 1))()  # NULL-terminated
        for entry, pattern in zip(table, patterns):
            entry.pattern, entry.buft = pattern.encode(), buft
        params.tensor_buft_overrides = ctypes.addressof(table)
        params.keep = table  # the array (and its pattern bytes) lives as long as the params
    return params


class _Weights:
    """A GGUF file loaded by llama.cpp (mapped, its quantized tensors repacked for this CPU),
    shared by every context on it in this process: bench's engines and its llama.cpp peer
    read one copy."""

    def __init__(self, path: Path):
        self.params = model_params(path)
        self.ptr = ll.llama_model_load_from_file(str(path).encode(), self.params)
        if not self.ptr:
            raise VocabtrimError(f"llama.cpp cannot load {path} (not a GGUF model it supports)")

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            ll.llama_model_free(self.ptr)


_loaded: weakref.WeakValueDictionary[tuple, _Weights] = weakref.WeakValueDictionary()


def _weights(path: Path) -> _Weights:
    """The loaded weights of `path` (its size and time too: a rewritten file loads anew)."""
    key = version(path)
    weights = _loaded.get(key)
    if weights is None:
        weights = _loaded[key] = _Weights(path)
    return weights


class GgmlTarget:
    """A GGUF model as a Target (see target.py), decoding on `threads` threads (default:
    the machine's cores)."""

    # ggml accumulates in fp32 whatever the weights' format, but it quantizes activations
    # to 8 bits for k-quant weights, blocked differently by batch size and thread split:
    # scoring n tokens in one batch moved the default target's logits by up to 0.90 against
    # single steps (benchmarks/ggml_invariance.py), no argmax
    tie_tolerance = 1.0

    def __init__(self, path: Path | str, context: int = 4096, threads: int | None = None):
        _init()
        self.path = Path(path)
        self.weights = _weights(self.path)
        self.model = self.weights.ptr
        self.context = min(context, ll.llama_model_n_ctx_train(self.model))
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = self.context  # a round is one decode, split into ubatches inside
        cparams.n_threads = cparams.n_threads_batch = threads or os.cpu_count() or 1
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise VocabtrimError(f"llama.cpp cannot make a context of {self.context} tokens for {self.path}")
        self.memory = ll.llama_get_memory(self.ctx)
        self.vocab_size = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.forward_bytes = ll.llama_model_size(self.model)
        self.batch = ll.llama_batch_init(self.context, 0, 1)
        self.ids: list[int] = []

    def reset(self) -> None:
        ll.llama_memory_clear(self.memory, True)
        self.ids = []

    def logits(self, seq: list[int], n: int) -> Tensor:
        """Logits [n, vocab_size] of the last `n` positions of `seq`, decoding only what the
        cache does not hold."""
        if len(seq) > self.context:
            raise VocabtrimError(f"{len(seq)} tokens do not fit llama.cpp's context of {self.context}")
        keep = common_prefix(self.ids, seq, min(len(seq) - n, len(self.ids)))
        if keep < len(self.ids):
            ll.llama_memory_seq_rm(self.memory, 0, keep, -1)
        new = seq[keep:]
        b = self.batch
        b.n_tokens = len(new)
        for i, t in enumerate(new):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, keep + i, 1, i >= len(new) - n
            b.seq_id[i][0] = 0
        if ll.llama_decode(self.ctx, b) != 0:
            self.reset()
            raise VocabtrimError(f"llama.cpp failed to decode {len(new)} tokens of {self.path.name}")
        self.ids = list(seq)
        out = np.ctypeslib.as_array(ll.llama_get_logits(self.ctx), shape=(n, self.vocab_size))
        return torch.from_numpy(out.copy())

    def __del__(self) -> None:
        if getattr(self, "batch", None) is not None:
            ll.llama_batch_free(self.batch)
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)


class LlamaCppAlone:
    """llama.cpp decoding the target alone at its own default settings, through the same
    binding: bench's `llamacpp` peer, the speed a llama.cpp user gets from the same file.
    One `llama_decode` a token, each drawn by llama.cpp's sampler chain (greedy, or top-k,
    top-p, temperature and a seeded draw)."""

    def __init__(self, path: Path | str, context: int, sampling: Sampling, seed: int, stop_ids: frozenset[int]):
        self.target = GgmlTarget(path, context)
        self.stop_ids = stop_ids
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if sampling.greedy:
            stages = [ll.llama_sampler_init_greedy()]
        else:
            stages = [ll.llama_sampler_init_top_k(sampling.top_k)] if sampling.top_k else []
            stages += [ll.llama_sampler_init_top_p(sampling.top_p, 1), ll.llama_sampler_init_temp(sampling.temperature),
                       ll.llama_sampler_init_dist(seed % 2**32)]
        for stage in stages:
            ll.llama_sampler_chain_add(self.chain, stage)

    def __call__(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], GenerationStats]:
        t, stats, new = self.target, GenerationStats(), []
        start = time.perf_counter()
        ll.llama_sampler_reset(self.chain)
        t.reset()
        limit = min(max_new_tokens, t.context - len(ids))
        with stats.timing("prefill_s"):
            t.logits(ids, 1)
        while True:
            token = ll.llama_sampler_sample(self.chain, t.ctx, -1)
            new.append(token)
            if len(new) >= limit or token in self.stop_ids:
                break
            with stats.timing("verify_s"):
                t.logits(ids + new, 1)
        stats.new_tokens = stats.target_forwards = stats.bonus_tokens = len(new)
        stats.seconds = time.perf_counter() - start
        return new, stats

    def __del__(self) -> None:
        if getattr(self, "chain", None):
            ll.llama_sampler_free(self.chain)


class GgmlBackend:
    """The model's GGUF file at its stored precision on llama.cpp's kernels."""

    name, runs_gguf, drafts = "ggml", True, False
    max_context = 8192  # its KV cache: 28 KB a token for the default target

    def available(self) -> bool:
        return available()

    def check(self) -> None:
        _init()

    def build(self) -> str:
        from importlib.metadata import version

        return f"llama-cpp-python {version('llama-cpp-python')}"

    def target(self, loaded) -> GgmlTarget:
        return GgmlTarget(loaded.gguf, loaded.context)

    def draft_model(self, loaded):
        return loaded.model  # llama.cpp has no drafting forward here: the torch weights draft


BACKEND = GgmlBackend()
