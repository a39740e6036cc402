"""Draft-length rules: how many tokens the drafter proposes before the target verifies.

The drafter asks a policy how many drafts at most this round (`budget`), then after each
forward whether to propose a token from that distribution at all (`draft`, decided from
the distribution alone, the sampled token is discarded on no), and after keeping a token
whether to draft another (`go_on`, which may look at the token because it stays drafted).
A rule that looked at the sampled token and then discarded it would bias the drafts away
from the q that verification divides by: under sampling the output would no longer be the
target's. After verification the policy learns how the round went (`observe`). A forward
whose token is discarded is still a forward that was paid for, and the engine counts it.
Every rule but `cost` drafts at least one token a round: a round with no draft teaches an
adaptive rule nothing (0/0 acceptance). `cost` may draft nothing (a plain target step) when
this machine's measured costs say no draft pays, and probes again after a few such rounds.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import VocabtrimError


def entropy(probs: Tensor) -> float:
    """Shannon entropy in nats (entr(0) = 0: no boolean indexing over the vocabulary)."""
    return float(torch.special.entr(probs).sum())


class Policy:
    """`static:K`: draft K tokens every round."""

    def __init__(self, max_len: int = 5):
        if not _is_length(max_len):
            raise VocabtrimError(f"draft length must be {_RANGES['max_len'][1]}, got {max_len!r}")
        self.max_len = max_len

    def budget(self) -> int:
        return self.max_len

    reads_probs = False  # whether draft/go_on read the distribution (greedy then needs a softmax)

    def draft(self, step: int, probs: Tensor | None, sampled: bool = False) -> bool:
        """Propose a token from this forward's distribution? step: 0-based position in the
        round; probs: the distribution the token is drawn from (the plain softmax when
        greedy; None when the rule does not read it); sampled: whether the token is drawn
        from probs (else it is their argmax)."""
        return step == 0 or self.sure(probs)

    def sure(self, probs: Tensor | None) -> bool:
        """Whether the drafter is sure enough to draft from `probs` (the distribution only)."""
        return True

    def go_on(self, probs: Tensor | None, index: int) -> bool:
        """After drafting entry `index` of `probs`: draft another token?"""
        return True

    def prefers_free(self, path: list[float], min_score: float) -> bool:
        """Whether a free draft (each token's path probability) should take a round the
        model would otherwise draft: without measured costs, when it is expected to bring
        `min_score` accepted tokens."""
        return sum(path) >= min_score

    def cut(self, path: list[float]) -> int:
        """How much of a free, deterministic draft (a suffix match) to verify, given each
        token's chance that it and all before it are accepted: all of it."""
        return len(path)

    def observe(self, drafted: int, accepted: int) -> None:
        """Learn from one verified round."""

    def reset(self) -> None:
        """Forget per-generation state (called when a generation starts)."""

    def state(self) -> dict:
        return {}

    def spec(self) -> str:
        return f"static:{self.max_len}"


class Confidence(Policy):
    """`confidence:T`: stop after a draft whose probability under the drafter is below T
    (the token is kept, as in transformers: dropping it would bias the drafts)."""

    reads_probs = True

    def __init__(self, threshold: float = 0.4, max_len: int = 16):
        super().__init__(max_len)
        self.threshold = threshold

    def go_on(self, probs, index):
        return float(probs[index]) >= self.threshold

    def spec(self):
        return f"confidence:{self.threshold},max={self.max_len}"


class Heuristic(Policy):
    """`heuristic`: K += 2 after a fully accepted round, else K -= 1 (transformers' schedule)."""

    def __init__(self, start: int = 5, max_len: int = 16):
        super().__init__(max_len)
        self.start = self.k = min(start, max_len)

    def budget(self):
        return self.k

    def observe(self, drafted, accepted):
        self.k = min(self.k + 2, self.max_len) if accepted == drafted else max(1, self.k - 1)

    def reset(self):
        self.k = self.start

    def state(self):
        return {"k": self.k}

    def spec(self):
        return f"heuristic:start={self.start},max={self.max_len}"


class Svip(Policy):
    """`svip`: stop when sqrt(0.15 * H) > h (SVIP, arXiv 2411.18462)."""

    reads_probs = True

    def __init__(self, h: float = 0.3, max_len: int = 40):
        super().__init__(max_len)
        self.h = h

    def sure(self, probs):
        return math.sqrt(0.15 * entropy(probs)) <= self.h

    def spec(self):
        return f"svip:h={self.h},max={self.max_len}"


class AdaEDL(Policy):
    """`adaedl`: stop when the entropy lower bound on acceptance, 1 - sqrt(gamma * H), falls
    below lambda; lambda follows the observed acceptance (AdaEDL, arXiv 2410.18351)."""

    reads_probs = True

    def __init__(self, lam: float = 0.5, gamma: float = 0.2, max_len: int = 16, adapt: bool = True,
                 eps: float = 0.01, alpha: float = 0.9, beta1: float = 0.5, beta2: float = 0.9,
                 persist: bool = False):
        super().__init__(max_len)
        self.lam0, self.gamma, self.adapt, self.persist = lam, gamma, adapt, persist
        self.eps, self.alpha, self.beta1, self.beta2 = eps, alpha, beta1, beta2
        self.lam, self.ar = lam, alpha

    def sure(self, probs):
        return 1 - math.sqrt(self.gamma * entropy(probs)) >= self.lam

    def observe(self, drafted, accepted):
        if not self.adapt or drafted == 0:
            return
        self.ar = self.beta1 * self.ar + (1 - self.beta1) * accepted / drafted
        if self.ar < self.alpha:
            target = self.lam + self.eps
        elif drafted < self.max_len:
            target = self.lam - self.eps
        else:
            target = self.lam
        self.lam = self.beta2 * self.lam + (1 - self.beta2) * target

    def reset(self):
        if not self.persist:
            self.lam, self.ar = self.lam0, self.alpha

    def state(self):
        return {"lambda": self.lam, "acceptance_ema": self.ar}

    def spec(self):
        return (f"adaedl:lambda={self.lam0},gamma={self.gamma},max={self.max_len},"
                f"adapt={'on' if self.adapt else 'off'}")


class Cost(Policy):
    """`cost`: draft while the expected tokens per second grow, on this machine's measured
    costs (profile.py; `bind` before use).

    A draft's chance of acceptance is learnt per bin of the probability the drafter gave
    the drafted token, calibrated online against what verification accepted (starting from
    a prior that takes the raw probability at its word and forgetting slowly, so the
    estimate follows the text). Before a forward's token is kept the estimate is that of
    its distribution (greedy: its top token; sampled: the table averaged over q); once
    kept, the token's own bin counts (a sampled long-shot is likely rejected). S is the
    chance that every draft so far survives, E(K) = 1 + S_1 + ... + S_K the expected
    tokens of a round with K drafts and T(K) = K t_draft + t_verify(K+1) its time; a draft is made while E(K+1)/T(K+1) beats
    E(K)/T(K), counting a forward already paid for as spent. A round drafts nothing when
    even an average first draft does not pay, and after `probe` such rounds drafts once
    to learn whether that still holds. Decisions read the distribution and past rounds,
    never the sampled token, except in `go_on` where the token is kept: lossless."""

    reads_probs = True
    # bins of the drafter's probability, finer near 1 where most drafts are and where 0.9
    # and 0.99 differ most in how often they are accepted
    EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
    PRIOR, DECAY = 2.0, 0.98

    def __init__(self, max_len: int = 32, probe: int = 8):
        super().__init__(max_len)
        self.probe, self.idle, self.cap = probe, 0, max_len
        bounds = (0.0, *self.EDGES, 1.0)
        self.hits = [self.PRIOR * (lo + hi) / 2 for lo, hi in itertools.pairwise(bounds)]
        self.seen = [self.PRIOR] * len(self.hits)
        self.edges = torch.tensor(self.EDGES)
        self.first = [self.PRIOR * 0.5, self.PRIOR]  # hits and trials of first drafts
        self.t_verify: list[float] = []
        self._round([])

    def bind(self, profile, head_rows: int) -> Cost:
        """Draft by `profile` (profile.Profile) with a drafter head of `head_rows` rows. The
        cap is the longest draft that pays even if every draft were accepted."""
        self.t_draft = profile.draft_step_ms(head_rows)
        self.t_verify = [profile.verify_ms(n) for n in range(1, self.max_len + 2)]
        self.cap = max(range(self.max_len + 1), key=lambda k: (k + 1) / self._time(k))
        return self

    def _time(self, k: int) -> float:
        return k * self.t_draft + self.t_verify[k]

    def _round(self, bins: list[int]) -> None:
        self.survive, self.expected, self.bins, self.accept = 1.0, 1.0, bins, 0.0

    def _bound(self) -> None:
        if not self.t_verify:
            raise VocabtrimError("the cost policy needs this machine's costs (Cost.bind, or a profile)")

    def budget(self):
        self._bound()
        self._round([])
        first = self.first[0] / self.first[1]
        if self.idle < self.probe and (1 + first) / self._time(1) <= 1 / self._time(0):
            self.idle += 1
            return 0
        self.idle = 0
        return self.cap

    def _bin(self, p: float) -> int:
        return bisect.bisect_right(self.EDGES, p)

    def _rate(self, b: int) -> float:
        return self.hits[b] / self.seen[b]

    def draft(self, step, probs, sampled=False):
        if sampled:  # the token is not known yet: average the table over what q may draw
            bins = torch.bucketize(probs.float(), self.edges, right=True)
            mass = torch.zeros(len(self.hits)).index_add_(0, bins, probs.float()).tolist()
            a = sum(m * self._rate(b) for b, m in enumerate(mass))
        else:
            a = self._rate(self._bin(float(probs.max())))
        paid = self._time(step) + self.t_draft  # this step's forward is spent either way
        self.accept = a
        return (self.expected + self.survive * a) / self._time(step + 1) > self.expected / paid

    def go_on(self, probs, index):
        """Count the kept token by its own probability; another forward pays if a draft as
        likely as this forward's average one would."""
        b = self._bin(float(probs[index]))
        self.survive *= self._rate(b)
        self.expected += self.survive
        self.bins.append(b)
        k, more = len(self.bins), self.expected + self.survive * self.accept
        return k < self.cap and more / self._time(k + 1) > self.expected / self._time(k)

    def cut(self, path):
        """The length with the most expected tokens per ms when drafting costs nothing
        and only verification does."""
        self._bound()
        path = path[:self.max_len]
        expected = [1.0]
        for s in path:
            expected.append(expected[-1] + s)
        return max(range(len(path) + 1), key=lambda k: expected[k] / self.t_verify[k])

    def prefers_free(self, path, min_score):
        """The free draft when its best cut is expected to bring more tokens per ms than a
        model round would at the average first-draft acceptance. A free draft with nothing
        worth verifying leaves the round to the model, whose budget then makes it a plain
        step or, every `probe` rounds, a probe: so the model is re-tried where it stopped
        paying."""
        k = self.cut(path)
        return k > 0 and (1 + sum(path[:k])) / self.t_verify[k] >= self._model_rate()

    def _model_rate(self) -> float:
        """Expected tokens per ms of the best model round, each draft surviving with the
        average first-draft acceptance (no drafts: a plain step)."""
        a = self.first[0] / self.first[1]
        expected, survive, best = 1.0, 1.0, 1 / self._time(0)
        for k in range(1, self.cap + 1):
            survive *= a
            expected += survive
            best = max(best, expected / self._time(k))
        return best

    def observe(self, drafted, accepted):
        for i, b in enumerate(self.bins[:drafted]):
            ok = i < accepted
            self.hits[b] = self.DECAY * self.hits[b] + ok
            self.seen[b] = self.DECAY * self.seen[b] + 1
            if i == 0:
                self.first = [self.DECAY * self.first[0] + ok, self.DECAY * self.first[1] + 1]
            if not ok:  # later drafts were never judged
                break

    def reset(self):
        self.idle = 0

    def state(self):
        return {"first_acceptance": self.first[0] / self.first[1], "cap": self.cap}

    def spec(self):
        return f"cost:max={self.max_len},probe={self.probe}"


FORMS = ("static:K", ("adaedl[:lambda=0.5,gamma=0.2,max=16,adapt=on,eps=0.01,alpha=0.9,"
                      "beta1=0.5,beta2=0.9,persist=off]"), "confidence:T[,max=16]", "heuristic[:start=5,max=16]",
         "svip[:h=0.3,max=40]", "cost[:max=32,probe=8]")
_KEYS = {"adaedl": {"lambda": "lam", "gamma": "gamma", "max": "max_len", "adapt": "adapt", "eps": "eps",
                    "alpha": "alpha", "beta1": "beta1", "beta2": "beta2", "persist": "persist"},
         "confidence": {"t": "threshold", "max": "max_len"},
         "heuristic": {"start": "start", "max": "max_len"},
         "svip": {"h": "h", "max": "max_len"},
         "static": {"k": "max_len"},
         "cost": {"max": "max_len", "probe": "probe"}}
_CLASSES = {"adaedl": AdaEDL, "confidence": Confidence, "heuristic": Heuristic, "svip": Svip,
            "static": Policy, "cost": Cost}
_FIRST = {"static": "k", "confidence": "t", "heuristic": "start", "svip": "h", "adaedl": "lambda", "cost": "max"}


# the longest draft a rule may ask for: each draft is a drafter step, so far longer rounds
# never pay, and `cost` tabulates verification times up to its maximum when bound
MAX_DRAFT_LEN = 256


def _is_length(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DRAFT_LEN


def _number(ok: Callable[[float], bool]) -> Callable[[object], bool]:
    """A check that a value is a finite number (not on/off) for which `ok` holds."""
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and ok(v)


# every parameter's range, by constructor argument: a value outside it crashes or misleads
# only after the models have loaded (a fractional length, gamma < 0 under a square root)
_RANGES = {
    "max_len": (_is_length, f"an integer in [1, {MAX_DRAFT_LEN}]"),
    "start": (_is_length, f"an integer in [1, {MAX_DRAFT_LEN}]"),
    "probe": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "threshold": (_number(lambda v: 0 <= v <= 1), "a number in [0, 1]"),
    "lam": (_number(lambda v: 0 <= v <= 1), "a number in [0, 1]"),
    "gamma": (_number(lambda v: v > 0), "a number > 0"),
    "h": (_number(lambda v: v >= 0), "a number >= 0"),
    "eps": (_number(lambda v: v >= 0), "a number >= 0"),
    "alpha": (_number(lambda v: 0 < v <= 1), "a number in (0, 1]"),
    "beta1": (_number(lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "beta2": (_number(lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "adapt": (lambda v: isinstance(v, bool), "on or off"),
    "persist": (lambda v: isinstance(v, bool), "on or off"),
}


def parse_policy(spec: str) -> Policy:
    """`name[:value | :key=value,...]` -> a Policy; one-line error listing the valid forms,
    or naming the parameter whose value is out of its range."""
    name, _, args = spec.strip().partition(":")
    try:
        if name not in _CLASSES or (name == "static" and not args):
            raise ValueError
        kwargs = {}
        for i, part in enumerate(a for a in args.split(",") if a):
            key, eq, value = part.partition("=")
            if not eq:  # a bare first value: static:5, confidence:0.4
                if i:
                    raise ValueError
                key, value = _FIRST[name], part
            arg, v = _KEYS[name][key.strip().lower()], _value(value.strip())
            ok, allowed = _RANGES[arg]
            if not ok(v):
                raise VocabtrimError(f"bad policy {spec!r}: {key.strip()} must be {allowed}, got {value.strip()}")
            kwargs[arg] = v
        return _CLASSES[name](**kwargs)
    except (ValueError, KeyError, TypeError):
        raise VocabtrimError(f"bad policy {spec!r}; valid forms: {'; '.join(FORMS)}") from None


def _value(text: str) -> bool | int | float:
    if text in ("on", "off"):
        return text == "on"
    return int(text) if text.lstrip("-").isdigit() else float(text)
