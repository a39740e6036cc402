"""A drafter whose tokenizer is not the target's (cross-vocabulary drafting).

Two vocabularies share most of their tokens: the same bytes under other ids. `Bridge`
pairs them (the intersection of transformers' TLI, arXiv 2502.05202) and re-tokenizes the
committed text for the drafter, which drafts with its head restricted to tokens that have
a target twin. A target token with no twin is one the drafter writes in pieces: `Merges`
learns online, from the target's own text, which drafter sequences spell one target token
(OmniDraft's n-gram cache, arXiv 2507.02659), and when the drafter starts such a sequence
it goes on writing it and proposes the merged target token.

Lossless under sampling, by how each draft is verified. The drafter draws a first piece d
from its distribution q restricted to twins and merge starts. If d starts no merge, the
draft is d's twin and it counts as drawn from q restricted to the twins that start no
merge, renormalized: exactly the distribution of the draft given that branch, so
rejection sampling with it is the usual exact rule. If d starts a merge, the drafter
writes on (the merge's pieces, as far as it follows them) and proposes the longest merged
token it spelled, else d's twin; that draft counts as deterministic (no q), which
is exact whatever process chose it: accepted with the target's p(x), otherwise the token
is drawn from p without x, so every token y comes out with probability p(y). A start with
neither ends the round, which only means the target writes that token itself.
"""

from __future__ import annotations

import torch

from ..heads import Head
from ..vocab import token_bytes, tokenizer_fingerprint
from .model import Take

MAX_PIECES = 4  # the longest drafter spelling of one target token the cache keeps


class Bridge:
    """The target's and the drafter's tokenizers side by side: which drafter token is which
    target token (`twin`), the drafter's ids for a target sequence, and how the drafter
    spells a target token it has no twin for."""

    def __init__(self, target_tok, drafter_tok, drafter_vocab: int):
        self.target_tok, self.drafter_tok = target_tok, drafter_tok
        self.target_bytes = token_bytes(target_tok)
        self.drafter_bytes = token_bytes(drafter_tok)
        by_bytes: dict[bytes, int] = {}
        for t, b in enumerate(self.target_bytes):
            if b:
                by_bytes.setdefault(b, t)
        self.twin = torch.full((drafter_vocab,), -1, dtype=torch.long)  # drafter id -> target id or -1
        for d, b in enumerate(self.drafter_bytes[:drafter_vocab]):
            if b and b in by_bytes:
                self.twin[d] = by_bytes[b]
        self.has_twin = set(self.twin[self.twin >= 0].tolist())  # target ids with a drafter twin
        self.bos = drafter_tok("", add_special_tokens=True)["input_ids"]  # what the drafter starts with

    @classmethod
    def between(cls, target, drafter) -> Bridge | None:
        """The bridge between two loaded models (models.Loaded); None when they share a
        tokenizer (nothing to bridge)."""
        if tokenizer_fingerprint(target.tokenizer) == tokenizer_fingerprint(drafter.tokenizer):
            return None
        return cls(target.tokenizer, drafter.tokenizer, drafter.model.get_output_embeddings().out_features)

    @property
    def shared(self) -> int:
        return int((self.twin >= 0).sum())

    def own_ids(self, seq: list[int]) -> list[int]:
        """The drafter's tokenization of the text the target ids `seq` spell."""
        text = self.target_tok.decode(seq, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return self.bos + self.drafter_tok(text, add_special_tokens=False)["input_ids"]

    def spelling(self, token: int) -> tuple[int, ...] | None:
        """The drafter ids that spell target `token` (2 to MAX_PIECES of them), if it has no twin."""
        b = self.target_bytes[token] if token < len(self.target_bytes) else None
        if not b or token in self.has_twin:
            return None
        try:
            text = b.decode()
        except UnicodeDecodeError:  # part of a character: no drafter text spells it alone
            return None
        pieces = tuple(self.drafter_tok(text, add_special_tokens=False)["input_ids"])
        spelled = b"".join(self.drafter_bytes[p] or b"?" for p in pieces)
        return pieces if 2 <= len(pieces) <= MAX_PIECES and spelled == b else None


class Merges:
    """Drafter sequences known to spell one target token, learnt from the target's text:
    a target token is looked up once, the first time the target writes it (or a prompt
    holds it), and kept for the drafter's lifetime."""

    def __init__(self, bridge: Bridge, drafter_vocab: int):
        self.bridge = bridge
        self.spell: dict[tuple[int, ...], int] = {}  # pieces -> target token
        self.prefixes: set[tuple[int, ...]] = set()  # proper prefixes of known spellings
        self.starts = torch.zeros(drafter_vocab, dtype=torch.bool)
        self.seen: set[int] = set()

    def learn(self, tokens: list[int]) -> bool:
        """Look up the target tokens not seen before; whether a spelling was added."""
        added = False
        for t in set(tokens) - self.seen:
            self.seen.add(t)
            pieces = self.bridge.spelling(t)
            if pieces and pieces not in self.spell:
                self.spell[pieces] = t
                self.prefixes.update(pieces[:i] for i in range(1, len(pieces)))
                self.starts[pieces[0]] = True
                added = True
        return added


class CrossVocab:
    """The vocabulary adapter of a small LM with its own tokenizer drafting target tokens:
    twins directly, target tokens it spells in pieces through `Merges` (off: the
    intersection alone). A token map in the drafter's vocabulary composes: the head keeps
    the map's rows and drafts only their twins."""

    def __init__(self, bridge: Bridge, drafter_vocab: int, target_vocab: int, merges: bool = True):
        self.bridge, self.target_vocab = bridge, target_vocab
        self.merges = Merges(bridge, drafter_vocab) if merges else None
        self.learnt = 0  # target tokens of this generation the merges have seen
        self.head: Head | None = None

    def _masks(self) -> None:
        """Per head row: its target twin (or -1), and which rows may be drawn at all
        (twins and merge starts) and which make a draft directly (twins starting none)."""
        ids = self.head.ids if self.head.ids is not None else torch.arange(self.head.rows)
        self.row_twin = self.bridge.twin[ids]
        starts = self.merges.starts[ids] if self.merges else torch.zeros_like(ids, dtype=torch.bool)
        self.direct = (self.row_twin >= 0) & ~starts
        self.blocked = ~(self.direct | starts)

    def spell(self, seq):
        return self.bridge.own_ids(seq)

    def start(self, seq, head):
        self.head, self.learnt = head, 0
        self._learn(seq)
        self._masks()

    def _learn(self, seq: list[int]) -> None:
        if self.merges and self.merges.learn(seq[self.learnt:]):
            self._masks()
        self.learnt = len(seq)

    def own_ids(self, seq):
        self._learn(seq)
        return self.bridge.own_ids(seq)

    def mask(self, logits):
        return logits.masked_fill(self.blocked, float("-inf"))

    def take(self, index, dist, ids, logits, sampling, gen):
        piece = self.head.token(index)
        if self.direct[index]:
            q = None
            if dist is not None:  # the draft's distribution given that it starts no merge
                q = dist.masked_fill(~self.direct, 0)
                q = q.new_zeros(self.target_vocab).index_add_(0, self.row_twin.clamp_min(0), q / q.sum())
            return Take(int(self.row_twin[index]), [piece], q)
        if self.blocked[index]:  # every row was blocked (a drafter with next to no twins)
            return None
        return self._merge(piece, ids, logits, sampling, gen)

    def _merge(self, first: int, ids: list[int], logits, sampling, gen) -> Take | None:
        """Write on after a merge's first piece while the pieces follow a known spelling;
        the longest target token spelled (else the first piece's twin), deterministic."""
        pieces, twin = (first,), int(self.bridge.twin[first])
        best = (twin, 1) if twin >= 0 else None
        forwards = 0
        while pieces in self.merges.prefixes:
            index, _ = sampling.choose(logits(ids + list(pieces)), gen)
            forwards += 1
            pieces += (self.head.token(index),)
            if pieces in self.merges.spell:
                best = (self.merges.spell[pieces], len(pieces))
        if best is None:
            return None
        token, n = best
        return Take(token, list(pieces[:n]), None, forwards)
