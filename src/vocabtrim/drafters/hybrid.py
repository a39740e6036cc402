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
    the policy learns only from the rounds the model drafted. With `costs` the first model
    round also has to pay for the drafter's reading of the prompt (`Costs.prefill_pays`);
    until it does, rounds are the suffix draft or plain steps."""

    def __init__(self, model: ModelDrafter, suffix: SuffixDrafter, costs: Costs | None = None,
                 min_score: float = 2.0):
        self.model, self.suffix, self.costs, self.min_score = model, suffix, costs, min_score
        self.context, self.prompt_len = model.context, 0

    def suffix_store(self) -> SuffixDrafter:
        return self.suffix

    def adopt_store(self, store: SuffixDrafter) -> None:
        self.suffix = store

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
        self.prompt_len = len(seq)

    def propose(self, seq, room, policy, sampling, gen) -> Proposal:
        draft = self.suffix.best(seq, room)
        if self.costs is None:
            free = draft.score >= self.min_score
        else:
            free = self.costs.prefers_free(draft.path) or not self._model_pays(seq, room)
        if free:
            return self.suffix.proposal(draft)
        return self.model.propose(seq, room, policy, sampling, gen)

    def _model_pays(self, seq: list[int], room: int) -> bool:
        """Whether a model round may start: the drafter has read the prompt, or reading it
        now pays back over the rest of this answer."""
        return self.model.has_read or self.costs.prefill_pays(self.prompt_len, min(room, len(seq) - self.prompt_len))

    def observe(self, proposal, accepted):
        if proposal.source == "suffix":
            self.suffix.observe(proposal, accepted)

    def finish(self, seq, prompt_len):
        self.suffix.finish(seq, prompt_len)
