"""Model-free drafts: continue the recent text the way it continued before.

Answers copy: code restates its prompt's signature and reuses its own identifiers and
lines, summaries and RAG answers quote their sources, later turns repeat earlier ones. A
draft found by matching the sequence's suffix against text already seen costs no model
forward at all.

The scoring follows SuffixDecoding (arXiv 2411.04975): every earlier place where the
current suffix occurs, matched for m tokens, is a candidate. For each match length m, the
candidates matching at least m tokens vote on the next token; the draft follows the most
frequent continuation, multiplying a path probability by its share of the votes, and stops
when that falls below `min_prob` or the draft reaches `min(max_len, m * factor)` tokens.
A draft's score is the sum of its path probabilities: the number of its tokens the text
seen so far expects to be accepted. The best-scoring draft over all m, over the current
sequence and the store of earlier outputs, wins.

The vote shares are the text's own estimate; how often a draft token of each share was
accepted once the tokens before it were is learnt from verification (per bin of the share,
from a prior that takes the share at its word, forgetting slowly, as the cost rule
calibrates model drafts), and drafts are scored and cut by the path of calibrated shares: on prose a lone earlier
match claims certainty and is accepted a third of the time, on code far more often.

Under sampling the draft is deterministic (no q): verification accepts x with probability
p(x) and on rejection samples from p without x, which is exact; the calibration reads only
earlier rounds' outcomes.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

from ..costs import Costs, Rates
from .base import Drafter, Proposal

SEP = -1  # between documents in the store of earlier outputs: never matched, never drafted


@dataclass
class Draft:
    tokens: list[int]
    path: list[float]  # each token's path probability: the chance it and all before it hold
    bins: list[int] = field(default_factory=list)  # the calibration bins its path was read from

    @property
    def score(self) -> float:
        """Expected accepted tokens, as the matched text estimates it."""
        return sum(self.path)


class TokenText:
    """A token sequence with the positions where each token occurs, grown in place."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.where: dict[int, list[int]] = {}

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            if t != SEP:
                self.where.setdefault(t, []).append(len(self.tokens))
            self.tokens.append(t)

    def candidates(self, suffix: list[int], depth: int, recent: int, end: int | None = None
                   ) -> list[tuple[int, int]]:
        """(position after the match, match length) for the latest `recent` earlier
        occurrences of the suffix's last token, each matched backwards up to `depth` tokens.
        `end` excludes occurrences that are the suffix itself (the sequence's own end)."""
        out = []
        for i in reversed(self.where.get(suffix[-1], ())):
            if end is not None and i + 1 >= end:
                continue
            m = 1
            while m < depth and i - m >= 0 and m < len(suffix) and self.tokens[i - m] == suffix[-1 - m]:
                m += 1
            out.append((i + 1, m))
            if len(out) == recent:
                break
        return out

    def walk(self, starts: list[int], budget: int, min_prob: float) -> Draft:
        """Follow the most frequent continuation of `starts` while its path probability
        stays at or above `min_prob` (ties: the most recent occurrence wins)."""
        tokens: list[int] = []
        path: list[float] = []
        prob = 1.0
        while len(tokens) < budget:
            votes = Counter(self.tokens[j] for j in starts if j < len(self.tokens) and self.tokens[j] != SEP)
            if not votes:
                break
            tok, count = votes.most_common(1)[0]
            prob *= count / sum(votes.values())
            if prob < min_prob:
                break
            tokens.append(tok)
            path.append(prob)
            starts = [j + 1 for j in starts if j < len(self.tokens) and self.tokens[j] == tok]
        return Draft(tokens, path)


class SuffixDrafter(Drafter):
    """Drafts from the prompt, the output so far and (optionally) earlier outputs.

    max_len: longest draft; factor: a match of m tokens may draft m * factor; depth: the
    longest match considered; min_prob: the path-probability floor; recent: candidates per
    text; store_tokens: the store of earlier outputs holds at most this many tokens, oldest
    evicted (0: no store); costs: this machine's prices, to verify only as much of a draft as
    pays (none: all of it). The store never proposes from an earlier answer to the very same
    prompt, so a benchmark that repeats a prompt measures matching, not replay."""

    STORE_TOKENS = 1 << 16

    def __init__(self, max_len: int = 16, factor: float = 1.0, depth: int = 24, min_prob: float = 0.1,
                 recent: int = 64, store_tokens: int = STORE_TOKENS, costs: Costs | None = None):
        self.max_len, self.factor, self.depth, self.costs = max_len, factor, depth, costs
        self.min_prob, self.recent, self.store_tokens = min_prob, recent, store_tokens
        self.text = TokenText()
        self.docs: deque[tuple[str, list[int]]] = deque()  # (prompt key, output), oldest first
        self.store = self._index([])
        self.prompt_key = ""
        self.rates = Rates(self.EDGES)  # how often tokens of each step's vote share were accepted
        self.pending: list[int] = []  # the bins of the last proposal's tokens

    EDGES = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999)  # bins of a step's vote share

    def suffix_store(self) -> SuffixDrafter:
        return self

    def _calibrated(self, d: Draft) -> Draft:
        """`d` with its path remade from how often tokens of each step's share were
        accepted (and the bins of those shares)."""
        shares = [p / q for p, q in zip(d.path, [1.0, *d.path])]
        bins = [self.rates.bin(s) for s in shares]
        return Draft(d.tokens, list(itertools.accumulate((self.rates.rate(b) for b in bins), lambda a, b: a * b)),
                     bins)

    def observe(self, proposal: Proposal, accepted: int) -> None:
        """Token i of the last proposal held iff i < accepted; its bin learns that, for the
        tokens verification judged (up to the first rejected)."""
        for i, b in enumerate(self.pending[:min(len(proposal.tokens), accepted + 1)]):
            self.rates.observe(b, i < accepted)
        self.pending = []

    def prefill(self, seq: list[int]) -> None:
        self.text = TokenText()
        self.text.extend(seq)
        self.prompt_key = _key(seq)
        self.store = self._index([d for d in self.docs if d[0] != self.prompt_key])

    def best(self, seq: list[int], room: int) -> Draft:
        """The best-scoring draft for what follows `seq` (empty when nothing matches)."""
        self.text.extend(seq[len(self.text.tokens):])
        best = Draft([], [])
        for text, end in ((self.text, len(seq)), (self.store, None)):
            found = text.candidates(seq, self.depth, self.recent, end)
            for m in sorted({m for _, m in found}, reverse=True):
                budget = min(room, self.max_len, int(m * self.factor))
                d = self._calibrated(text.walk([j for j, mj in found if mj >= m], budget, self.min_prob))
                if d.score > best.score:
                    best = d
        return best

    def propose(self, seq, room, policy, sampling, gen) -> Proposal:
        return self.proposal(self.best(seq, room))

    def proposal(self, draft: Draft) -> Proposal:
        """The draft as far as it is worth verifying: all of it, unless this machine's costs
        say verifying more tokens costs more than they are expected to bring."""
        tokens = draft.tokens[:self.costs.cut(draft.path)] if self.costs else draft.tokens
        self.pending = draft.bins[:len(tokens)]
        return Proposal(tokens, [None] * len(tokens), 0, "suffix" if tokens else "none")

    def finish(self, seq: list[int], prompt_len: int) -> None:
        self.remember([(self.prompt_key, seq[prompt_len:])])

    def remember(self, docs: list[tuple[str, list[int]]]) -> None:
        """Add (prompt key, output) pairs to the store, oldest first, evicting the oldest
        beyond its bound (`docs` lists them as a saved store holds them)."""
        if not self.store_tokens:
            return
        self.docs.extend((key, list(out)) for key, out in docs)
        while sum(len(d) for _, d in self.docs) > self.store_tokens:
            self.docs.popleft()

    @staticmethod
    def _index(docs) -> TokenText:
        text = TokenText()
        for _, out in docs:
            text.extend([*out, SEP])
        return text


def _key(prompt: list[int]) -> str:
    return hashlib.sha256(str(prompt).encode()).hexdigest()[:16]
