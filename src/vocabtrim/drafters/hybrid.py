"""The suffix draft when the text says it will be accepted, the model's otherwise."""

from __future__ import annotations

from ..costs import Costs
from .base import Drafter, Proposal
from .model import ModelDrafter
from .suffix import SuffixDrafter


class HybridDrafter(Drafter):
    """Each round the hybrid chooses between the suffix draft, which costs no forward, and
    a model round: with this machine's `costs` it compares their expected tokens per ms
    (`Costs.prefers_free`), without them it takes a suffix draft expected to bring
    `min_score` tokens. The suffix draft is proposed as far as its drafter finds it worth
    verifying. The model's cache catches up on the skipped tokens in its next forward, and
    the policy learns only from the rounds the model drafted."""

    def __init__(self, model: ModelDrafter, suffix: SuffixDrafter, costs: Costs | None = None,
                 min_score: float = 2.0):
        self.model, self.suffix, self.costs, self.min_score = model, suffix, costs, min_score
        self.context = model.context

    @property
    def head_rows(self) -> int:
        return self.model.head_rows

    @property
    def cost_per_forward(self) -> int:
        return self.model.cost_per_forward

    @property
    def prefill_cost(self) -> int:
        return self.model.prefill_cost

    def prefill(self, seq):
        """The model reads the prompt in its first draft's forward: a generation the suffix
        drafts alone (or where model rounds do not pay) never pays for it."""
        self.model.start(seq)
        self.suffix.prefill(seq)

    def propose(self, seq, room, policy, sampling, gen) -> Proposal:
        draft = self.suffix.best(seq, room)
        free = self.costs.prefers_free(draft.path) if self.costs else draft.score >= self.min_score
        if free:
            return self.suffix.proposal(draft)
        return self.model.propose(seq, room, policy, sampling, gen)

    def finish(self, seq, prompt_len):
        self.suffix.finish(seq, prompt_len)
