import math

import pytest
import torch
from conftest import (
    alone,
    greedy_step,
    noisy_copy,
    prompts,
    spec_engine,
    tiny_model,
    tiny_pair,
)

from vocabtrim.costs import Costs
from vocabtrim.policies import (
    AdaEDL,
    Confidence,
    Cost,
    Heuristic,
    Static,
    Svip,
    entropy,
    parse_policy,
)

PEAKED = torch.tensor([0.97, 0.01, 0.01, 0.01])
FLAT = torch.full((8,), 1 / 8)


def with_entropy(h: float, n: int = 50) -> torch.Tensor:
    """A distribution over n tokens (one big, the rest equal) with entropy h nats."""
    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(100):
        mid = (lo + hi) / 2
        p = torch.tensor([1 - mid] + [mid / (n - 1)] * (n - 1), dtype=torch.float64)
        lo, hi = (mid, hi) if entropy(p) < h else (lo, mid)
    return p


def drafts(policy, step: int, probs: torch.Tensor) -> bool:
    """Whether `policy` drafts from a greedy forward of distribution `probs` at `step`."""
    return policy.draft(policy.start(), step, greedy_step(probs))


def goes_on(policy, probs: torch.Tensor, index: int) -> bool:
    return policy.go_on(policy.start(), greedy_step(probs), index)


def make(rule):
    """A fresh policy of a parsed rule; the cost rule on costs of flat verification."""
    return rule.make(Costs(10.0, [100.0] * (rule.max_len + 1)) if rule.priced else None)


def test_entropy_in_nats():
    assert entropy(FLAT) == pytest.approx(math.log(8))
    assert entropy(torch.tensor([1.0, 0.0])) == 0


def test_adaedl_threshold():
    a = AdaEDL()  # lambda 0.5, gamma 0.2: go on while H <= (1 - 0.5)^2 / 0.2 = 1.25 nats
    assert drafts(a, 1, PEAKED) and not drafts(a, 1, FLAT)
    assert drafts(a, 1, with_entropy(1.24)) and not drafts(a, 1, with_entropy(1.26))
    assert drafts(a, 0, FLAT)  # the first draft of a round is always kept
    strict = AdaEDL(lam=0.9)  # H <= 0.05
    assert drafts(strict, 1, with_entropy(0.04)) and not drafts(strict, 1, with_entropy(0.06))


def test_confidence_and_svip_thresholds():
    c = Confidence(0.4)  # drafts every token, stops after one it is unsure of
    assert drafts(c, 1, torch.tensor([0.39, 0.61]))
    assert goes_on(c, torch.tensor([0.41, 0.59]), 0) and not goes_on(c, torch.tensor([0.39, 0.61]), 0)
    s = Svip()  # go on while sqrt(0.15 H) <= 0.3, i.e. H <= 0.6
    assert drafts(s, 1, with_entropy(0.59)) and not drafts(s, 1, with_entropy(0.61))
    assert drafts(Static(3), 5, FLAT) and goes_on(Static(3), FLAT, 0)


def test_adaedl_lambda_follows_acceptance():
    a = AdaEDL()
    for _ in range(30):
        a.observe(a.start(), 4, 0)  # low acceptance: be more cautious
    assert a.state()["lambda"] > 0.5 + 0.01
    b = AdaEDL()
    for _ in range(30):
        b.observe(b.start(), 4, 4)  # everything accepted, rounds shorter than max: draft more
    assert b.state()["lambda"] < 0.5 - 0.01
    c = AdaEDL(adapt=False)
    c.observe(c.start(), 4, 0)
    assert c.state()["lambda"] == 0.5
    b.reset()
    assert b.state()["lambda"] == 0.5
    p = AdaEDL(persist=True)
    p.observe(p.start(), 4, 0)
    p.reset()
    assert p.state()["lambda"] > 0.5


def test_heuristic_schedule():
    h = Heuristic(start=5, max_len=8)
    h.observe(h.start(), 5, 5)
    assert h.start().budget == 7
    h.observe(h.start(), 7, 7)
    assert h.start().budget == 8  # capped
    for _ in range(10):
        h.observe(h.start(), 3, 1)
    assert h.start().budget == 1


@pytest.mark.parametrize("spec, cls, attrs", [
    ("static:3", Static, {"max_len": 3}),
    ("adaedl", AdaEDL, {"lam": 0.5, "gamma": 0.2, "max_len": 16, "adapt": True}),
    ("adaedl:lambda=0.7,gamma=0.1,max=8,adapt=off", AdaEDL, {"lam": 0.7, "gamma": 0.1, "max_len": 8, "adapt": False}),
    ("confidence:0.4", Confidence, {"threshold": 0.4}),
    ("heuristic", Heuristic, {"k": 5}),
    ("svip", Svip, {"h": 0.3, "max_len": 40}),
    ("svip:h=0.5,max=10", Svip, {"h": 0.5, "max_len": 10}),
    ("cost", Cost, {"max_len": 32, "probe": 8}),
    ("cost:max=8,probe=2", Cost, {"max_len": 8, "probe": 2}),
])
def test_parse_policy(spec, cls, attrs):
    p = make(parse_policy(spec))
    assert type(p) is cls and all(getattr(p, k) == v for k, v in attrs.items())
    assert type(make(parse_policy(p.spec()))) is cls  # spec() round-trips


@pytest.mark.parametrize("bad", ["static", "static:x", "adaedl:foo=1", "magic", "confidence:0.4,0.5"])
def test_bad_policy_lists_valid_forms(bad):
    with pytest.raises(Exception, match="valid forms: static:K; adaedl"):
        parse_policy(bad)


@pytest.mark.parametrize("rule", ["static:3", "adaedl", "confidence:0.4", "heuristic", "svip",
                                  "adaedl:lambda=0.2,max=6"])
def test_greedy_identical_with_every_policy(rule):
    target, draft = tiny_pair()
    solo, spec = alone(target), spec_engine(target, draft)
    for p in prompts(6):
        ref, _ = solo.generate(p, 30, Static(1))
        policy = parse_policy(rule).make()
        out, s = spec.generate(p, 30, policy)
        assert out == ref
        assert s.drafter_forwards >= sum(s.draft_lengths)
        assert max(s.draft_lengths) <= policy.max_len


def test_adaedl_draft_lengths_follow_entropy_and_count_discarded_forwards():
    target = tiny_model(64, seed=1)
    with torch.no_grad():  # entropies spread over 0-2 nats, around AdaEDL's 1.25 threshold
        target.get_output_embeddings().weight.mul_(6)
    eng = spec_engine(target, noisy_copy(target, 0.3, seed=2))
    lengths, stopped = set(), 0
    for p in prompts(6):
        ref, _ = alone(target).generate(p, 40, Static(1))
        out, s = eng.generate(p, 40, AdaEDL())
        assert out == ref
        lengths |= set(s.draft_lengths)
        # every round the rule ended early paid one extra drafter forward
        stopped += s.drafter_forwards - sum(s.draft_lengths)
    assert len(lengths) > 5 and stopped > 10
