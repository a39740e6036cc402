"""What the engine needs from any drafter, and what a drafter hands back each round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..policies import Policy, Round
from ..sampling import Sampling

if TYPE_CHECKING:
    from .suffix import SuffixDrafter


@dataclass
class Proposal:
    """One round's drafts.

    q holds, per draft, the processed distribution it was drawn from (over the target's
    vocabulary), or None for a draft that was not drawn: greedy, or deterministic (a suffix
    match, a merged token). Verification accepts a deterministic draft x with probability
    p(x) and on rejection samples from p with x removed, which is exactly the target's
    distribution; no one-hot row is built for it."""

    tokens: list[int] = field(default_factory=list)  # target-vocabulary ids
    q: list[Tensor | None] = field(default_factory=list)
    forwards: int = 0  # drafter forwards computed, a discarded last one included
    source: str = "none"  # which proposer drafted: "model", "suffix" or "none"
    round: Round | None = None  # the policy's round, when the policy decided the drafts


class Drafter:
    """Base class: a drafter that proposes nothing. Subclasses override what they need.

    The engine calls `prefill` once per generation, `propose` once per round with the
    committed sequence, `observe` with how many of its drafts the target accepted, and
    `finish` with the whole sequence when the generation ends."""

    cost_per_forward: int = 0  # bytes one drafting forward reads (metrics.bytes_per_forward)
    prefill_cost: int = 0  # bytes reading the prompt took this generation (read when it ends)
    context: int = 1 << 30  # longest sequence the drafter can take

    def prefill(self, seq: list[int]) -> None:
        """Start a new generation whose prompt is `seq`."""

    def propose(self, seq: list[int], room: int, policy: Policy, sampling: Sampling,
                gen: torch.Generator | None) -> Proposal:
        """Up to `room` drafts to follow `seq`."""
        return Proposal()

    def observe(self, proposal: Proposal, accepted: int) -> None:
        """Verification kept the first `accepted` tokens of `proposal` (this round's)."""

    def finish(self, seq: list[int], prompt_len: int) -> None:
        """The generation is over: `seq[prompt_len:]` is what the target wrote."""

    def suffix_store(self) -> SuffixDrafter | None:
        """The suffix drafter whose store of earlier outputs this drafter drafts from, if any
        (the server keeps it in a file and carries it into a rebuilt drafter)."""
        return None

    def adopt_store(self, store: SuffixDrafter) -> None:
        """Draft from `store` (another drafter's, carried over) instead of this one's own; a
        drafter without a store has nothing to replace."""
