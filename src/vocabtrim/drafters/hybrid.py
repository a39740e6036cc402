"""The suffix draft when the text says it will be accepted, the model's otherwise."""

from __future__ import annotations

from .base import Drafter, Proposal
from .model import ModelDrafter
from .suffix import SuffixDrafter


class HybridDrafter(Drafter):
    """Each round the policy chooses between the suffix draft, which costs no forward, and
    a model round (`Policy.prefers_free`: the cost policy compares expected tokens per ms on
    this machine's profile; other policies take a suffix draft expected to bring
    `min_score` tokens). The suffix draft is proposed as far as the policy finds it worth
    verifying. The model's cache catches up on the skipped tokens in its next forward, and
    the policy learns only from the rounds the model drafted."""

    def __init__(self, model: ModelDrafter, suffix: SuffixDrafter, min_score: float = 2.0):
        self.model, self.suffix, self.min_score = model, suffix, min_score
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
        if policy.prefers_free(draft.path, self.min_score):
            return self.suffix.proposal(draft, policy, sampling)
        return self.model.propose(seq, room, policy, sampling, gen)

    def finish(self, seq, prompt_len):
        self.suffix.finish(seq, prompt_len)
