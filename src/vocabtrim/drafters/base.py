"""What the engine needs from any drafter, and what a drafter hands back each round."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..policies import Policy
from ..sampling import Sampling


@dataclass
class Proposal:
    """One round's drafts.

    q holds the processed distributions the drafts were drawn from ([len(tokens), V] over
    the target's vocabulary; None when greedy). A deterministic draft (a suffix match) has a
    one-hot row: verification then accepts x with probability p(x) and on rejection samples
    from p with x removed, which is exactly the target's distribution."""

    tokens: list[int] = field(default_factory=list)  # target-vocabulary ids
    q: Tensor | None = None
    forwards: int = 0  # drafter forwards computed, a discarded last one included
    source: str = "none"  # which proposer drafted: "model", "suffix" or "none"


class Drafter:
    """Base class: a drafter that proposes nothing. Subclasses override what they need.

    The engine calls `prefill` once per generation, `propose` once per round with the
    committed sequence, and `finish` with the whole sequence when the generation ends."""

    cost_per_forward: int = 0  # bytes one drafting forward reads (metrics.bytes_per_forward)
    prefill_cost: int = 0  # bytes reading the prompt took this generation (read when it ends)
    context: int = 1 << 30  # longest sequence the drafter can take
    head_rows: int = 0  # rows of the LM head a drafting forward reads (0: no model)

    def prefill(self, seq: list[int]) -> None:
        """Start a new generation whose prompt is `seq`."""

    def propose(self, seq: list[int], room: int, policy: Policy, sampling: Sampling,
                gen: torch.Generator | None) -> Proposal:
        """Up to `room` drafts to follow `seq`."""
        return Proposal()

    def finish(self, seq: list[int], prompt_len: int) -> None:
        """The generation is over: `seq[prompt_len:]` is what the target wrote."""


def one_hot_rows(tokens: list[int], vocab_size: int) -> Tensor:
    """q of deterministic drafts: each row puts all mass on its token."""
    q = torch.zeros(len(tokens), vocab_size)
    q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return q
