"""One record of a generation's statistics, and how the cost ratio c and MBSU are computed.

Convention (stated in every JSON output as `cost_convention`): a forward reads every
decoder weight (layers and norms), one row of the input embedding per token, and the LM
head rows it actually uses (K rows when trimmed). c = drafter reads / target reads.
MBSU = new_tokens / (c * drafter_forwards + target_forwards), counting every forward
computed, including drafts a stopping rule discarded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from .kernels import weight_count

COST_CONVENTION = ("weights read per forward: decoder layers + norms + 1 embedding row + "
                   "LM head rows used; MBSU = tokens / (c*drafter_forwards + target_forwards)")


def weights_per_forward(model: torch.nn.Module, head_rows: int) -> int:
    """Weights one single-token forward of `model` reads with a head of `head_rows` rows."""
    emb = model.get_input_embeddings().weight
    body = weight_count(model.get_decoder()) - emb.numel()
    hidden = emb.shape[1]
    return body + hidden + head_rows * model.get_output_embeddings().in_features


@dataclass
class GenerationStats:
    """What one generation did and how long each phase took."""

    new_tokens: int = 0
    target_forwards: int = 0
    drafter_forwards: int = 0
    draft_lengths: list[int] = field(default_factory=list)  # per verification round
    accepted_per_round: list[int] = field(default_factory=list)  # drafts committed per round
    bonus_tokens: int = 0  # tokens the target produced itself (one per target forward, at most)
    cost_ratio: float = 0.0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    seconds: float = 0.0
    policy_state: dict = field(default_factory=dict)  # e.g. AdaEDL's final lambda

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(self.draft_lengths)
        return sum(self.accepted_per_round) / drafted if drafted else 0.0

    @property
    def tau(self) -> float:
        """Tokens per target forward."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mbsu(self) -> float:
        cost = self.cost_ratio * self.drafter_forwards + self.target_forwards
        return self.new_tokens / cost if cost else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def add(self, other: GenerationStats) -> None:
        """Accumulate another generation of the same pair (e.g. the next turn) into this one."""
        forwards = self.drafter_forwards + other.drafter_forwards
        if forwards:  # c may differ per turn (a trimmed head adds each prompt's tokens)
            self.cost_ratio = (self.cost_ratio * self.drafter_forwards
                               + other.cost_ratio * other.drafter_forwards) / forwards
        for f in fields(self):
            if f.name == "policy_state":  # the rule's state after the latest turn
                self.policy_state = other.policy_state
            elif f.name != "cost_ratio":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(acceptance_rate=self.acceptance_rate, tau=self.tau, mbsu=self.mbsu,
                   tokens_per_second=self.tokens_per_second, cost_convention=COST_CONVENTION)
        return out
