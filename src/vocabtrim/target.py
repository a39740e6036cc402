"""The target: the model whose output is the output. What the engine, the profile and bench
need of it, and its torch implementation.

A target scores the last n positions of a sequence, reusing the cache of the longest
prefix that sequence shares with the previous call; it knows its vocabulary, its context,
what one forward reads (the unit of the cost ratio c) and how close two logits may be to
count as a numerical tie (a torch target's from the dtype its logits are computed in).
Nothing past this seam is touched, so another backend plugs in as another implementation.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from .cache import CachedLM, context_length
from .heads import Head
from .kernels import compute_dtype
from .metrics import bytes_per_forward

# How far apart (in logits) the target's two best tokens may be for a divergence between
# a 1-token and a many-token forward to count as a numerical tie, per compute dtype: two
# bf16 steps at the magnitude (16-32) of a confident top logit; fp32 accumulation-order
# noise is far below 0.01.
TIE_TOLERANCE = {torch.bfloat16: 0.25, torch.float16: 0.05, torch.float32: 0.01}


class Target(Protocol):
    vocab_size: int
    context: int  # the longest sequence it takes
    forward_bytes: int  # bytes one single-token forward reads
    tie_tolerance: float  # logits this close may come out in either order from 1- and n-token forwards

    def reset(self) -> None:
        """Forget the cache: the next sequence is read from its start."""

    def logits(self, seq: list[int], n: int) -> Tensor:
        """Logits [n, vocab_size] of the last `n` positions of `seq`."""


class TorchTarget:
    """A transformers causal LM (any dtype, packed or quantized) as a target; `model` stays
    reachable for transformers' own generation, bench's peer."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.head = model, Head.of(model)
        self.vocab_size, self.context = self.head.vocab_size, context_length(model)
        self.forward_bytes = bytes_per_forward(model, self.head.nbytes)
        self.tie_tolerance = TIE_TOLERANCE[compute_dtype(model)]
        self.lm = CachedLM(model)

    def reset(self) -> None:
        self.lm = CachedLM(self.model)

    def logits(self, seq: list[int], n: int) -> Tensor:
        return self.head(self.lm.hidden(seq, n))


class TorchBackend:
    """transformers' modules over 16-bit, packed or quantized torch weights: any model."""

    name, runs_gguf, max_context, drafts = "torch", False, None, False

    def available(self) -> bool:
        return True

    def build(self) -> str:
        return ""  # torch's speed is timed per dtype (kernels.py); its keys predate builds

    def check(self) -> None:
        pass

    def target(self, loaded) -> Target:
        return TorchTarget(loaded.model)

    def draft_model(self, loaded) -> nn.Module:
        return loaded.model


BACKEND = TorchBackend()
