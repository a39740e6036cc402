"""Draft-length rules: how many tokens the drafter proposes before the target verifies.

A round starts with `start`, which sets its budget (the most drafts it may make). After
each drafter forward the rule says whether to propose a token from that distribution at all
(`draft`, decided from the distribution alone: the sampled token is discarded on no), and
after keeping a token whether to draft another (`go_on`, which may look at the token
because it stays drafted). A rule that looked at the sampled token and then discarded it
would bias the drafts away from the q that verification divides by: under sampling the
output would no longer be the target's. What a rule remembers within a round lives in its
`Round`; the drafter hands that round back with its proposal and, after verification, the
rule learns how it went (`observe`). A forward whose token is discarded is still a forward
that was paid for, and the engine counts it. Every rule but `cost` drafts at least one token
a round: a round with no draft teaches an adaptive rule nothing (0/0 acceptance). `cost` may
draft nothing (a plain target step) when this machine's measured costs say no draft pays,
and probes again after a few such rounds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .costs import Costs, Rates
from .errors import VocabtrimError


def entropy(probs: Tensor) -> float:
    """Shannon entropy in nats (entr(0) = 0: no boolean indexing over the vocabulary)."""
    return float(torch.special.entr(probs).sum())


class Step:
    """One drafter forward as a rule sees it: the distribution its token comes from, drawn
    (`sampled`) or its argmax. Greedy drafting computes no distribution; `probs` is then the
    plain softmax, computed only when a rule reads it."""

    def __init__(self, dist: Tensor | None = None, logits: Tensor | None = None):
        self.sampled, self._dist, self._logits = dist is not None, dist, logits

    @functools.cached_property
    def probs(self) -> Tensor:
        return self._dist if self._dist is not None else self._logits.float().softmax(-1)


@dataclass
class Round:
    """One round of drafting, from its budget to its verification."""

    budget: int


class Policy:
    """A draft-length rule; by default every forward's token is drafted, up to `max_len`."""

    def __init__(self, max_len: int):
        if not _is_length(max_len):
            raise VocabtrimError(f"draft length must be {_RANGES['max_len'][1]}, got {max_len!r}")
        self.max_len = max_len

    def start(self) -> Round:
        """A new round and its budget."""
        return Round(self.max_len)

    def draft(self, r: Round, step: int, s: Step) -> bool:
        """Propose a token from this forward (`step`: 0-based position in the round)?"""
        return True

    def go_on(self, r: Round, s: Step, index: int) -> bool:
        """After drafting entry `index` of the forward's distribution: draft another token?"""
        return True

    def observe(self, r: Round, drafted: int, accepted: int) -> None:
        """Learn from one verified round."""

    def reset(self) -> None:
        """Forget per-generation state (called when a generation starts)."""

    def state(self) -> dict:
        return {}

    def spec(self) -> str:
        raise NotImplementedError


class Static(Policy):
    """`static:K`: draft K tokens every round."""

    def spec(self):
        return f"static:{self.max_len}"


class Confidence(Policy):
    """`confidence:T`: stop after a draft whose probability under the drafter is below T
    (the token is kept, as in transformers: dropping it would bias the drafts)."""

    def __init__(self, threshold: float = 0.4, max_len: int = 16):
        super().__init__(max_len)
        self.threshold = threshold

    def go_on(self, r, s, index):
        return float(s.probs[index]) >= self.threshold

    def spec(self):
        return f"confidence:{self.threshold},max={self.max_len}"


class Heuristic(Policy):
    """`heuristic`: K += 2 after a fully accepted round, else K -= 1 (transformers' schedule)."""

    def __init__(self, start: int = 5, max_len: int = 16):
        super().__init__(max_len)
        self.first = self.k = min(start, max_len)

    def start(self):
        return Round(self.k)

    def observe(self, r, drafted, accepted):
        self.k = min(self.k + 2, self.max_len) if accepted == drafted else max(1, self.k - 1)

    def reset(self):
        self.k = self.first

    def state(self):
        return {"k": self.k}

    def spec(self):
        return f"heuristic:start={self.first},max={self.max_len}"


class Svip(Policy):
    """`svip`: stop when sqrt(0.15 * H) > h (SVIP, arXiv 2411.18462)."""

    def __init__(self, h: float = 0.3, max_len: int = 40):
        super().__init__(max_len)
        self.h = h

    def draft(self, r, step, s):
        return step == 0 or math.sqrt(0.15 * entropy(s.probs)) <= self.h

    def spec(self):
        return f"svip:h={self.h},max={self.max_len}"


class AdaEDL(Policy):
    """`adaedl`: stop when the entropy lower bound on acceptance, 1 - sqrt(gamma * H), falls
    below lambda; lambda follows the observed acceptance (AdaEDL, arXiv 2410.18351)."""

    def __init__(self, lam: float = 0.5, gamma: float = 0.2, max_len: int = 16, adapt: bool = True,
                 eps: float = 0.01, alpha: float = 0.9, beta1: float = 0.5, beta2: float = 0.9,
                 persist: bool = False):
        super().__init__(max_len)
        self.lam0, self.gamma, self.adapt, self.persist = lam, gamma, adapt, persist
        self.eps, self.alpha, self.beta1, self.beta2 = eps, alpha, beta1, beta2
        self.lam, self.ar = lam, alpha

    def draft(self, r, step, s):
        return step == 0 or 1 - math.sqrt(self.gamma * entropy(s.probs)) >= self.lam

    def observe(self, r, drafted, accepted):
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


@dataclass
class CostRound(Round):
    """What the cost rule knows mid-round: the chance every draft so far survives, the
    expected tokens of the round, the bin of each kept draft, the estimated acceptance of
    the forward being judged."""

    survive: float = 1.0
    expected: float = 1.0
    bins: list[int] = field(default_factory=list)
    accept: float = 0.0


class Cost(Policy):
    """`cost`: draft while the expected tokens per second grow, on this machine's measured
    costs (`costs.Costs`, made from a profile: the rule is built complete).

    A draft's chance of acceptance is learnt per bin of the probability the drafter gave
    the drafted token, calibrated online against what verification accepted (starting from
    a prior that takes the raw probability at its word and forgetting slowly, so the
    estimate follows the text). Before a forward's token is kept the estimate is that of
    its distribution (greedy: its top token; sampled: the table averaged over q); once
    kept, the token's own bin counts (a sampled long-shot is likely rejected). S is the
    chance that every draft so far survives, E(K) = 1 + S_1 + ... + S_K the expected
    tokens of a round with K drafts and T(K) = K t_draft + t_verify(K+1) its time; a draft
    is made while E(K+1)/T(K+1) beats E(K)/T(K), counting a forward already paid for as
    spent. A round drafts nothing when even an average first draft does not pay, and after
    `probe` such rounds drafts once to learn whether that still holds. Decisions read the
    distribution and past rounds, never the sampled token, except in `go_on` where the
    token is kept: lossless."""

    # bins of the drafter's probability, finer near 1 where most drafts are and where 0.9
    # and 0.99 differ most in how often they are accepted
    EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)

    def __init__(self, costs: Costs, probe: int = 8):
        super().__init__(costs.max_len)
        self.costs, self.probe, self.idle = costs, probe, 0
        self.rates = Rates(self.EDGES)  # how often drafts of each probability bin were accepted
        self.edges = torch.tensor(self.EDGES)

    def start(self):
        c = self.costs
        if self.idle < self.probe and (1 + c.first_rate) / c.time(1) <= 1 / c.time(0):
            self.idle += 1
            return CostRound(0)
        self.idle = 0
        return CostRound(c.cap)

    def draft(self, r, step, s):
        probs = s.probs.float()
        if s.sampled:  # the token is not known yet: average the table over what q may draw
            bins = torch.bucketize(probs, self.edges, right=True)
            mass = torch.zeros(len(self.rates)).index_add_(0, bins, probs).tolist()
            r.accept = sum(m * self.rates.rate(b) for b, m in enumerate(mass))
        else:
            r.accept = self.rates.rate(self.rates.bin(float(probs.max())))
        paid = self.costs.time(step) + self.costs.t_draft  # this step's forward is spent either way
        return (r.expected + r.survive * r.accept) / self.costs.time(step + 1) > r.expected / paid

    def go_on(self, r, s, index):
        """Count the kept token by its own probability; another forward pays if a draft as
        likely as this forward's average one would."""
        b = self.rates.bin(float(s.probs[index]))
        r.survive *= self.rates.rate(b)
        r.expected += r.survive
        r.bins.append(b)
        k, more = len(r.bins), r.expected + r.survive * r.accept
        return k < self.costs.cap and more / self.costs.time(k + 1) > r.expected / self.costs.time(k)

    def observe(self, r, drafted, accepted):
        for i, b in enumerate(r.bins[:drafted]):
            ok = i < accepted
            self.rates.observe(b, ok)
            if i == 0:
                self.costs.first.observe(0, ok)
            if not ok:  # later drafts were never judged
                break

    def reset(self):
        self.idle = 0

    def state(self):
        return {"first_acceptance": self.costs.first_rate, "cap": self.costs.cap}

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
            "static": Static, "cost": Cost}
COST_MAX = 32  # the cost rule's longest round unless its spec says max=
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


@dataclass(frozen=True)
class Rule:
    """A parsed policy spec: a rule and its parameters, each within its range. `make` builds
    a fresh policy of it; the cost rule is built from this machine's costs for the pair
    (`priced`), which the caller measures for the rule's `max_len`."""

    name: str
    kwargs: dict

    @property
    def priced(self) -> bool:
        return self.name == "cost"

    @property
    def max_len(self) -> int:
        """The longest round of a priced rule: its costs are measured up to it."""
        return self.kwargs.get("max_len", COST_MAX)

    def make(self, costs: Costs | None = None) -> Policy:
        if not self.priced:
            return _CLASSES[self.name](**self.kwargs)
        if costs is None:
            raise VocabtrimError("the cost policy needs this machine's costs for the pair (a profile)")
        return Cost(costs, **{k: v for k, v in self.kwargs.items() if k != "max_len"})


def parse_policy(spec: str) -> Rule:
    """`name[:value | :key=value,...]` -> a Rule; one-line error listing the valid forms,
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
        return Rule(name, kwargs)
    except (ValueError, KeyError, TypeError):
        raise VocabtrimError(f"bad policy {spec!r}; valid forms: {'; '.join(FORMS)}") from None


def _value(text: str) -> bool | int | float:
    if text in ("on", "off"):
        return text == "on"
    return int(text) if text.lstrip("-").isdigit() else float(text)
