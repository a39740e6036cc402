"""What a round costs and brings on this machine: the prices the cost rule drafts by and
the hybrid drafter chooses between a free suffix draft and a model round with.

A round of K drafts takes T(K) = K t_draft + t_verify(K+1) ms, from the machine's profile
(profile.py). A model round's first draft is accepted at a rate learnt online from the
rounds the model drafted (shared with the cost rule, which observes them); later drafts are
expected to survive at the same rate each, which is what a model round is worth to the
hybrid. Before its first model round the hybrid's drafter has not read the prompt: that
reading (`prefill_ms` a token) is paid once, and pays back only over enough tokens.
"""

from __future__ import annotations

import bisect
import itertools


class Rates:
    """Acceptance rates learnt per bin of a score in [0, 1] (bins split at `edges`): a
    decayed count of hits over trials, starting from a prior (the bin's middle, worth PRIOR
    trials) and forgetting DECAY of the past each trial, so a drafter's changing luck shows
    within tens of rounds. The cost policy, the suffix drafter and the first-draft rate of
    `Costs` each keep one."""

    PRIOR, DECAY = 2.0, 0.98

    def __init__(self, edges: tuple[float, ...] = ()):
        bounds = (0.0, *edges, 1.0)
        self.edges = edges
        self.hits = [self.PRIOR * (lo + hi) / 2 for lo, hi in itertools.pairwise(bounds)]
        self.seen = [self.PRIOR] * len(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def bin(self, score: float) -> int:
        return bisect.bisect_right(self.edges, score)

    def rate(self, b: int = 0) -> float:
        return self.hits[b] / self.seen[b]

    def observe(self, b: int, accepted: bool) -> None:
        self.hits[b] = self.DECAY * self.hits[b] + accepted
        self.seen[b] = self.DECAY * self.seen[b] + 1


class Costs:
    """Measured ms of a draft step (`t_draft`) and of verifying 1..max_len+1 tokens, with
    the first-draft acceptance seen so far (a prior of one hit in two, forgetting slowly)."""

    def __init__(self, t_draft: float, t_verify: list[float], prefill_ms: float = 0.0):
        self.t_draft, self.t_verify, self.max_len = t_draft, t_verify, len(t_verify) - 1
        self.prefill_ms = prefill_ms  # the drafter's reading of one prompt token
        self.first = Rates()  # how often a round's first draft is accepted
        # the longest round that pays even if every draft were accepted
        self.cap = max(range(self.max_len + 1), key=lambda k: (k + 1) / self.time(k))

    @classmethod
    def of(cls, profile, head_rows: int, max_len: int) -> Costs:
        """The prices `profile` (profile.Profile) gives a drafter head of `head_rows` rows."""
        return cls(profile.draft_step_ms(head_rows), [profile.verify_ms(n) for n in range(1, max_len + 2)],
                   1000 / profile.draft_prefill_tokens_per_s)

    def time(self, k: int) -> float:
        """ms of a round with k drafts."""
        return k * self.t_draft + self.t_verify[k]

    @property
    def first_rate(self) -> float:
        return self.first.rate()

    def cut(self, path: list[float]) -> int:
        """How much of a free, deterministic draft to verify (each token's chance that it
        and all before it are accepted): the length with the most expected tokens per ms
        when drafting costs nothing and only verification does."""
        path = path[:self.max_len]
        expected = [1.0]
        for s in path:
            expected.append(expected[-1] + s)
        return max(range(len(path) + 1), key=lambda k: expected[k] / self.t_verify[k])

    def model_rate(self) -> float:
        """Expected tokens per ms of the best model round, each draft surviving with the
        first-draft acceptance (no drafts: a plain step)."""
        a = self.first_rate
        expected, survive, best = 1.0, 1.0, 1 / self.time(0)
        for k in range(1, self.cap + 1):
            survive *= a
            expected += survive
            best = max(best, expected / self.time(k))
        return best

    def prefill_pays(self, prompt: int, rest: int) -> bool:
        """Whether model rounds over `rest` more tokens save more than the drafter's reading
        of a `prompt`-token prompt costs. The hybrid passes as `rest` the tokens written so
        far (an answer that has run n tokens is expected to run about n more; capped by
        its budget): a short answer then never pays for the drafter's prefill, a long one
        starts model rounds once it has lost about that prefill's time to plain steps, so
        no answer runs much below the target alone (the ski-rental rule)."""
        saved = rest * (self.time(0) - 1 / self.model_rate())
        return saved > prompt * self.prefill_ms

    def prefers_free(self, path: list[float]) -> bool:
        """Whether a free draft should take the round: its best cut is expected to bring more
        tokens per ms than a model round. One with nothing worth verifying leaves the round
        to the model, whose rule then makes it a plain step or, every few rounds, a probe:
        so the model is re-tried where it stopped paying."""
        k = self.cut(path)
        return k > 0 and (1 + sum(path[:k])) / self.t_verify[k] >= self.model_rate()
