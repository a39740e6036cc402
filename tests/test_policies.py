import math

import pytest
import torch
from conftest import noisy_copy, spec_engine, tiny_model
from test_engine import DRAFT, TARGET, prompts

from vocabtrim.engine import Engine
from vocabtrim.policies import (
    AdaEDL,
    Confidence,
    Cost,
    Heuristic,
    Policy,
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


def test_entropy_in_nats():
    assert entropy(FLAT) == pytest.approx(math.log(8))
    assert entropy(torch.tensor([1.0, 0.0])) == 0


def test_adaedl_threshold():
    a = AdaEDL()  # lambda 0.5, gamma 0.2: go on while H <= (1 - 0.5)^2 / 0.2 = 1.25 nats
    assert a.draft(1, PEAKED) and not a.draft(1, FLAT)
    assert a.draft(1, with_entropy(1.24)) and not a.draft(1, with_entropy(1.26))
    assert a.draft(0, FLAT)  # the first draft of a round is always kept
    strict = AdaEDL(lam=0.9)  # H <= 0.05
    assert strict.draft(1, with_entropy(0.04)) and not strict.draft(1, with_entropy(0.06))


def test_confidence_and_svip_thresholds():
    c = Confidence(0.4)  # drafts every token, stops after one it is unsure of
    assert c.draft(1, torch.tensor([0.39, 0.61]))
    assert c.go_on(torch.tensor([0.41, 0.59]), 0) and not c.go_on(torch.tensor([0.39, 0.61]), 0)
    s = Svip()  # go on while sqrt(0.15 H) <= 0.3, i.e. H <= 0.6
    assert s.draft(1, with_entropy(0.59)) and not s.draft(1, with_entropy(0.61))
    assert Policy(3).draft(5, FLAT) and Policy(3).go_on(FLAT, 0)


def test_adaedl_lambda_follows_acceptance():
    a = AdaEDL()
    for _ in range(30):
        a.observe(4, 0)  # low acceptance: be more cautious
    assert a.state()["lambda"] > 0.5 + 0.01
    b = AdaEDL()
    for _ in range(30):
        b.observe(4, 4)  # everything accepted, rounds shorter than max: draft more
    assert b.state()["lambda"] < 0.5 - 0.01
    c = AdaEDL(adapt=False)
    c.observe(4, 0)
    assert c.state()["lambda"] == 0.5
    b.reset()
    assert b.state()["lambda"] == 0.5
    p = AdaEDL(persist=True)
    p.observe(4, 0)
    p.reset()
    assert p.state()["lambda"] > 0.5


def test_heuristic_schedule():
    h = Heuristic(start=5, max_len=8)
    h.observe(5, 5)
    assert h.budget() == 7
    h.observe(7, 7)
    assert h.budget() == 8  # capped
    for _ in range(10):
        h.observe(3, 1)
    assert h.budget() == 1


@pytest.mark.parametrize("spec, cls, attrs", [
    ("static:3", Policy, {"max_len": 3}),
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
    p = parse_policy(spec)
    assert type(p) is cls and all(getattr(p, k) == v for k, v in attrs.items())
    assert type(parse_policy(p.spec())) is cls  # spec() round-trips


@pytest.mark.parametrize("bad", ["static", "static:x", "adaedl:foo=1", "magic", "confidence:0.4,0.5"])
def test_bad_policy_lists_valid_forms(bad):
    with pytest.raises(Exception, match="valid forms: static:K; adaedl"):
        parse_policy(bad)


@pytest.mark.parametrize("rule", ["static:3", "adaedl", "confidence:0.4", "heuristic", "svip",
                                  "adaedl:lambda=0.2,max=6"])
def test_greedy_identical_with_every_policy(rule):
    alone, spec = Engine(TARGET), spec_engine(TARGET, DRAFT)
    for p in prompts(6):
        ref, _ = alone.generate(p, 30, Policy(1))
        out, s = spec.generate(p, 30, parse_policy(rule))
        assert out == ref
        assert s.drafter_forwards >= sum(s.draft_lengths)
        assert max(s.draft_lengths) <= parse_policy(rule).max_len


def test_adaedl_draft_lengths_follow_entropy_and_count_discarded_forwards():
    target = tiny_model(64, seed=1)
    with torch.no_grad():  # entropies spread over 0-2 nats, around AdaEDL's 1.25 threshold
        target.get_output_embeddings().weight.mul_(6)
    eng = spec_engine(target, noisy_copy(target, 0.3, seed=2))
    lengths, stopped = set(), 0
    for p in prompts(6):
        ref, _ = Engine(target).generate(p, 40, Policy(1))
        out, s = eng.generate(p, 40, AdaEDL())
        assert out == ref
        lengths |= set(s.draft_lengths)
        # every round the rule ended early paid one extra drafter forward
        stopped += s.drafter_forwards - sum(s.draft_lengths)
    assert len(lengths) > 5 and stopped > 10
