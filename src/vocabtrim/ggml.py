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
from pathlib import Path

import llama_cpp as ll
import numpy as np
import torch
from torch import Tensor

from .cache import common_prefix
from .errors import VocabtrimError


@ll.llama_log_callback
def _quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
    """llama.cpp logs every load to stderr; vocabtrim's own output stays readable."""


_backend = []  # llama_backend_init once per process


def _init() -> None:
    if not _backend:
        ll.llama_log_set(_quiet, ctypes.c_void_p())
        ll.llama_backend_init()
        _backend.append(True)


class GgmlTarget:
    """A GGUF model as a Target (see target.py), decoding on `threads` threads (default:
    the machine's cores)."""

    compute_dtype = torch.float32  # ggml accumulates in fp32 whatever the weights' format

    def __init__(self, path: Path | str, context: int = 4096, threads: int | None = None):
        _init()
        self.path = Path(path)
        mparams = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise VocabtrimError(f"llama.cpp cannot load {self.path} (not a GGUF model it supports)")
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
        if getattr(self, "model", None):
            ll.llama_model_free(self.model)
