"""Logits -> processed distribution, and the two lossless verification rules.

Verification must compare the *same* processed distributions the tokens were drawn from
(temperature, top-k, top-p applied), otherwise rejection sampling is no longer lossless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import VocabtrimError

# the smallest temperature taken: logits of a few hundred stay far below float32's 3.4e38
# when divided by it, and between it and 0 sampling is greedy in all but name
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        # NaN compares false with everything, so a plain `< 0` test would let it through
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise VocabtrimError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise VocabtrimError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got "
                                 f"{self.temperature:g} (smaller ones can overflow the scaled logits)")
        if self.top_k < 0:
            raise VocabtrimError(f"top-k must be >= 0, got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise VocabtrimError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: Tensor) -> Tensor:
        """Processed distribution over the last dimension, float32."""
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        x = logits.float() / self.temperature
        if self.top_k and self.top_k < x.shape[-1]:
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_x, order = torch.sort(x, dim=-1, descending=True)
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop = cum - sorted_x.softmax(-1) >= self.top_p  # keep the smallest set reaching top_p
            x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
        return x.softmax(-1)

    def choose(self, logits: Tensor, gen: torch.Generator | None) -> tuple[int, Tensor | None]:
        """Pick one token from 1-D logits; also return the distribution it came from
        (None when greedy: the argmax needs no distribution)."""
        if self.greedy:
            return argmax(logits)[0], None
        p = self.probs(logits)
        return int(torch.multinomial(p, 1, generator=gen)), p


def argmax(logits: Tensor) -> list[int]:
    """The first index of each row's maximum (of a 1-D tensor: one index). numpy's where it
    can read the tensor in place: torch's argmax took 80 us over one row of 151936 logits on
    2 cores, numpy's 6, and a greedy generation takes one or more per token."""
    if logits.dtype == torch.float32 and logits.device.type == "cpu" and not logits.requires_grad:
        return np.atleast_1d(logits.numpy().argmax(-1)).tolist()
    return logits.argmax(-1).reshape(-1).tolist()


def verify(drafts: list[int], q: list[Tensor | None], target_logits: Tensor, sampling: Sampling,
           gen: torch.Generator | None) -> tuple[int, int]:
    """Decide how many drafts the target accepts and which token it adds after them.

    drafts: g draft token ids; q: per draft, the processed distribution [V] it was drawn
    from, or None for a deterministic draft (a one-hot q; read only under sampling);
    target_logits: [g + 1, V]. Returns (n_accepted, next_token).
    """
    g = len(drafts)
    if sampling.greedy:
        best = argmax(target_logits)
        n = 0
        while n < g and drafts[n] == best[n]:
            n += 1
        return n, best[n]
    p = sampling.probs(target_logits)
    if g:
        idx = torch.arange(g)
        tok = torch.tensor(drafts)
        qx = torch.tensor([1.0 if row is None else float(row[t]) for row, t in zip(q, drafts)])
        ratio = p[idx, tok] / qx
        u = torch.rand(g, generator=gen)
        rejected = (u >= ratio).nonzero()
        if len(rejected):
            n = int(rejected[0])
            residual = p[n].clone()
            if q[n] is None:  # p - one-hot: the draft's own mass removed
                residual[drafts[n]] = 0
            else:
                residual = (residual - q[n]).clamp_min(0)
            if residual.sum() <= 0:  # p == q up to rounding: any draw from p is exact
                residual = p[n]
            return n, int(torch.multinomial(residual, 1, generator=gen))
    return g, int(torch.multinomial(p[g], 1, generator=gen))
