"""A small causal LM of the target's vocabulary, drafting with a full or trimmed head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cache import context_length
from ..errors import VocabtrimError
from ..heads import Head
from ..lean import lm_factory
from ..metrics import bytes_per_forward
from .base import Drafter, Proposal


class ModelDrafter(Drafter):
    """Drafts token by token with `model`, asking the policy after every forward.

    With `kept_ids` the head is trimmed to a token map (VocabTrim); `prompt_tokens` adds
    the prompt's own tokens the map lacks as extra rows for each generation."""

    def __init__(self, model: torch.nn.Module, target: torch.nn.Module, kept_ids: Tensor | None = None,
                 prompt_tokens: bool = True):
        self.target_vocab = target.get_output_embeddings().out_features
        self._check_vocabulary(model.get_output_embeddings().out_features)
        self.model, self.prompt_tokens = model, prompt_tokens
        self.base_head = self.head = Head.of(model, kept_ids)
        self.new_lm = lm_factory(model)  # the lean forward where the architecture allows it
        self.lm = self.new_lm()
        self._body = bytes_per_forward(model, 0)
        self.context = context_length(model)

    def _check_vocabulary(self, vocab: int) -> None:
        if vocab != self.target_vocab:
            raise VocabtrimError(f"drafter vocabulary ({vocab}) differs from target vocabulary "
                                 f"({self.target_vocab}); draft across vocabularies with CrossDrafter")

    @property
    def head_rows(self) -> int:
        return self.base_head.rows

    @property
    def cost_per_forward(self) -> int:
        return self._body + self.head.nbytes

    @property
    def prefill_cost(self) -> int:
        """Bytes this generation's prompt reading took: the body, once read (a prefill
        computes no head); nothing while the drafter has not read it."""
        return self._body if self.lm.ids else 0

    def prefill(self, seq: list[int]) -> None:
        """A fresh cache holding `seq` (no head: the first draft comes after the target's
        first token)."""
        self.lm.hidden(self.start(seq), 1)

    def start(self, seq: list[int]) -> list[int]:
        """A new generation after the prompt `seq`, read later by the first draft's forward
        (which feeds whatever the cache lacks), and a trimmed head that can also propose the
        prompt's tokens. Returns the prompt in the drafter's own ids."""
        self.head = self.base_head.for_prompt(seq) if self.prompt_tokens else self.base_head
        self.lm = self.new_lm()
        return seq

    def propose(self, seq, room, policy, sampling, gen) -> Proposal:
        ids = self.own_ids(seq)
        tokens: list[int] = []
        rows: list[Tensor] = []
        forwards = 0
        for step in range(min(room, policy.budget())):
            logits = self.logits(ids)
            forwards += 1
            index, dist = sampling.choose(logits, gen)
            probs = dist if dist is not None or not policy.reads_probs else logits.float().softmax(-1)
            if not policy.draft(step, probs, dist is not None):  # from the distribution alone
                break
            took = self.take(index, dist, ids, sampling, gen)
            if took is None:
                break
            tokens.append(took.token)
            ids = ids + took.pieces
            forwards += took.forwards
            if took.q is not None:
                rows.append(took.q)
            if not policy.go_on(probs, index):  # may look at the token: it stays drafted
                break
        return Proposal(tokens, torch.stack(rows) if rows else None, forwards, "model")

    def own_ids(self, seq: list[int]) -> list[int]:
        """The drafter's own ids for the committed target sequence `seq`."""
        return seq

    def logits(self, ids: list[int]) -> Tensor:
        """The next token's logits over the head's rows after `ids`."""
        return self.head(self.lm.hidden(ids, 1))[0]

    def take(self, index: int, dist: Tensor | None, ids: list[int], sampling, gen) -> Take | None:
        """The draft that head row `index` (drawn from `dist`; None when greedy) makes."""
        token = self.head.token(index)
        return Take(token, [token], None if dist is None else self.head.to_vocab(dist))


@dataclass
class Take:
    """One draft: its target id, the drafter ids it adds to the drafter's sequence, the
    distribution over the target's vocabulary it counts as drawn from (None when greedy)
    and the extra drafter forwards it took."""

    token: int
    pieces: list[int]
    q: Tensor | None
    forwards: int = 0
