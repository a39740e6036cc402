"""A small causal LM drafting token by token with a full or trimmed head, in the target's
vocabulary or, through a vocabulary adapter, in its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from ..errors import VocabtrimError
from ..heads import Head
from ..drafting import DraftModel, body_bytes, caches, context
from ..policies import Step
from .base import Drafter, Proposal


@dataclass
class Take:
    """One draft: its target id, the drafter ids it adds to the drafter's sequence, the
    distribution over the target's vocabulary it counts as drawn from (None when greedy or
    deterministic) and the extra drafter forwards it took."""

    token: int
    pieces: list[int]
    q: Tensor | None
    forwards: int = 0


class Vocabulary(Protocol):
    """How a drafter's own tokens become target tokens: the identity for a drafter of the
    target's vocabulary, the bridge between two tokenizers otherwise (drafters.cross)."""

    def spell(self, seq: list[int]) -> list[int]:
        """The drafter's ids for the target ids `seq`."""

    def start(self, seq: list[int], head: Head) -> None:
        """A new generation after the prompt `seq`, drafted with `head`."""

    def own_ids(self, seq: list[int]) -> list[int]:
        """`spell(seq)` in a round: what the committed text teaches may be learnt first."""

    def mask(self, logits: Tensor) -> Tensor:
        """The head's logits with rows that make no target draft at -inf."""

    def take(self, index: int, dist: Tensor | None, ids: list[int], logits: Callable[[list[int]], Tensor],
             sampling, gen) -> Take | None:
        """The draft head row `index` (drawn from `dist`, None when greedy) makes after the
        drafter's `ids`; `logits` gives the head's logits after any ids (None: no draft)."""


class SameVocab:
    """The drafter writes target tokens: head rows are target ids."""

    def __init__(self, drafter_vocab: int, target_vocab: int):
        if drafter_vocab != target_vocab:
            raise VocabtrimError(f"drafter vocabulary ({drafter_vocab}) differs from target vocabulary "
                                 f"({target_vocab}); draft across vocabularies through a Bridge")
        self.head: Head | None = None

    def spell(self, seq):
        return seq

    def start(self, seq, head):
        self.head = head

    def own_ids(self, seq):
        return seq

    def mask(self, logits):
        return logits

    def take(self, index, dist, ids, logits, sampling, gen):
        token = self.head.token(index)
        return Take(token, [token], None if dist is None else self.head.to_vocab(dist))


class ModelDrafter(Drafter):
    """Drafts token by token with `model`, asking the policy after every forward.

    With `kept_ids` the head is trimmed to a token map (VocabTrim); `prompt_tokens` adds
    the prompt's own tokens the map lacks as extra rows for each generation. `vocab` maps
    the drafter's tokens to the target's (default: the same vocabulary, checked)."""

    def __init__(self, model: DraftModel, target_vocab: int, kept_ids: Tensor | None = None,
                 prompt_tokens: bool = True, vocab: Vocabulary | None = None):
        self.vocab = vocab or SameVocab(model.get_output_embeddings().out_features, target_vocab)
        self.model, self.prompt_tokens = model, prompt_tokens
        self.base_head = self.head = Head.of(model, kept_ids)
        self.new_lm = caches(model)
        self.lm = self.new_lm()
        self._body = body_bytes(model)
        self.context = context(model)

    @property
    def head_rows(self) -> int:
        """Rows of the LM head a drafting forward reads (what the machine's costs price)."""
        return self.base_head.rows

    @property
    def cost_per_forward(self) -> int:
        return self._body + self.head.nbytes

    @property
    def prefill_cost(self) -> int:
        """Bytes this generation's prompt reading took: the body, once read (a prefill
        computes no head); nothing while the drafter has not read it."""
        return self._body if self.has_read else 0

    @property
    def has_read(self) -> bool:
        """Whether this generation's prompt is in the drafter's cache."""
        return bool(self.lm.ids)

    def prefill(self, seq: list[int]) -> None:
        """A fresh cache holding `seq` (no head: the first draft comes after the target's
        first token)."""
        ids = self.start(seq)  # first: it makes the cache that reads the prompt
        self.lm.hidden(ids, 1)

    def start(self, seq: list[int]) -> list[int]:
        """A new generation after the prompt `seq`, read later by the first draft's forward
        (which feeds whatever the cache lacks), and a trimmed head that can also propose the
        prompt's tokens. Returns the prompt in the drafter's own ids."""
        ids = self.vocab.spell(seq)
        self.head = self.base_head.for_prompt(ids) if self.prompt_tokens else self.base_head
        self.lm = self.new_lm()
        self.vocab.start(seq, self.head)
        return ids

    def propose(self, seq, room, policy, sampling, gen) -> Proposal:
        r = policy.start()
        ids = self.vocab.own_ids(seq)
        tokens: list[int] = []
        q: list[Tensor | None] = []
        forwards = 0
        for step in range(min(room, r.budget)):
            logits = self.vocab.mask(self.logits(ids))
            forwards += 1
            index, dist = sampling.choose(logits, gen)
            s = Step(dist, logits)
            if not policy.draft(r, step, s):  # from the distribution alone
                break
            took = self.vocab.take(index, dist, ids, self.logits, sampling, gen)
            if took is None:
                break
            tokens.append(took.token)
            q.append(took.q)
            ids = ids + took.pieces
            forwards += took.forwards
            if not policy.go_on(r, s, index):  # may look at the token: it stays drafted
                break
        return Proposal(tokens, q, forwards, "model", r)

    def logits(self, ids: list[int]) -> Tensor:
        """The next token's logits over the head's rows after `ids`."""
        return self.head(self.lm.hidden(ids, 1))[0]
