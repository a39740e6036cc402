"""The speculative decoding loop: greedy identity with the target alone, stops and limits
mid-round, consistent stats, and the target's distribution under sampling (chi-square)
with every policy and every drafter."""

import pytest
import torch
from conftest import (
    RUNS,
    SMALL_PROMPT,
    SMALL_SAMPLING,
    SMALL_V,
    alone,
    chi2_pvalue,
    exact_joint,
    noisy_copy,
    prompts,
    small_pair,
    spec_engine,
    tiny_pair,
)

from vocabtrim import engine as engine_mod
from vocabtrim import kernels
from vocabtrim.costs import Costs
from vocabtrim.drafters import HybridDrafter, ModelDrafter, SuffixDrafter
from vocabtrim.engine import Engine, Stop
from vocabtrim.policies import Policy, Static, parse_policy
from vocabtrim.profile import Profile
from vocabtrim.sampling import verify
from vocabtrim.target import TorchTarget

V, PROMPT, SAMPLING = SMALL_V, SMALL_PROMPT, SMALL_SAMPLING


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_greedy_identical_to_target_alone(k):
    target, draft = tiny_pair()
    solo, spec = alone(target), spec_engine(target, draft)
    accepted = 0
    for p in prompts(12):
        ref, _ = solo.generate(p, 40, Static(k))
        out, stats = spec.generate(p, 40, Static(k))
        assert out == ref
        accepted += sum(stats.accepted_per_round)
        assert max(stats.draft_lengths) <= k
    assert accepted > 0  # the drafter agreed sometimes: the comparison exercised acceptance


def test_stop_token_inside_a_draft_and_max_new_tokens_mid_round():
    target, _ = tiny_pair()
    solo, spec = alone(target), spec_engine(target, noisy_copy(target, 0.05, seed=3))
    hits = 0
    for p in prompts(20):
        ref, _ = solo.generate(p, 60, Static(8))
        stop_tok = ref[len(ref) // 2]  # a token the target will produce mid-way
        stop = Stop(frozenset({stop_tok}))
        a, _ = solo.generate(p, 60, Static(8), stop=stop)
        b, stats = spec.generate(p, 60, Static(8), stop=stop)
        assert a == b and a[-1] == stop_tok and stop_tok not in a[:-1]
        hits += any(d > 1 for d in stats.draft_lengths)
        for m in (1, 2, 7, 13):  # lengths that end inside a round of 8
            c, s = spec.generate(p, m, Static(8))
            assert c == ref[:m] and s.new_tokens == m
    assert hits


def test_stats_are_consistent():
    _, s = spec_engine(*tiny_pair()).generate(prompts(1)[0], 50, Static(4))
    assert s.new_tokens == sum(s.accepted_per_round) + s.bonus_tokens == 50
    assert 0 not in s.draft_lengths and s.target_forwards >= len(s.draft_lengths) + 1
    assert s.drafter_forwards == sum(s.draft_lengths)  # static: no discarded forwards
    assert s.cost_ratio == pytest.approx(1.0)  # drafter and target have the same size here
    prefill = s.draft_cost - s.cost_ratio * s.drafter_forwards
    assert 0.5 < prefill < 1  # the drafter's prefill reads its body, not its head
    assert s.tau == pytest.approx(50 / s.target_forwards)
    assert s.mbsu == pytest.approx(50 / (s.draft_cost + s.target_forwards))


def test_a_round_without_room_for_drafts_is_a_plain_target_step():
    _, s = spec_engine(*tiny_pair()).generate(prompts(1)[0], 2, Static(4))  # prefill + one step
    assert s.target_forwards == 2 and s.draft_lengths == [] and s.mean_draft_length is None
    assert s.drafter_forwards == 0


def test_target_alone_counts_one_forward_per_token():
    _, s = alone(tiny_pair()[0]).generate([5, 6, 7], 20, Static(5))
    assert s.target_forwards == 20 and s.drafter_forwards == 0 and s.mbsu == pytest.approx(1)


# --- losslessness under sampling -------------------------------------------------------

# verification dear enough that a round may draft nothing (cost's probe=1 then alternates
# plain steps and drafting rounds) and a first draft below a ~0.2 chance is dropped
MARGINAL = Profile({}, {"200": [100.0 + 30 * n for n in range(8)]}, {"1": 40.0, "2": 40.0}, 1.0, 1e9)


def make_policy(spec: str) -> tuple[Policy, Costs | None]:
    """A fresh policy of `spec` and, for the cost rule, the costs it drafts by (MARGINAL's)."""
    rule = parse_policy(spec)
    costs = Costs.of(MARGINAL, V, rule.max_len) if rule.priced else None
    return rule.make(costs), costs


def sample_joint(runs: int, n: int = 3, engine=None, policy: str = "static:2",
                 prompt: tuple[int, ...] = tuple(PROMPT)) -> dict[tuple[int, ...], int]:
    """How often each continuation came out over `runs` seeds, a fresh policy each.
    `engine`: an Engine, or a function that builds one for a generation's costs (None for
    a rule without): drafters that read costs share the cost rule's, as assembly builds them."""
    plain = None if callable(engine) else engine or spec_engine(*small_pair())
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(runs):
        rule, costs = make_policy(policy)
        if costs is not None and callable(engine):
            eng = engine(costs)
        else:
            eng = plain = plain or engine(None)
        out, _ = eng.generate(list(prompt), n, rule, SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    return counts


def test_sampling_follows_target_distribution():
    p = chi2_pvalue(sample_joint(RUNS), exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations do not follow the target (chi-square p={p:.2g})"


# A drafter identical to the target makes a rule that peeks at the sampled token and then
# discards it show (confidence:0.3 used to give chi-square 104 here); a different drafter
# makes verification reject often.
@pytest.mark.parametrize("rule", ["static:2", "confidence:0.3,max=2", "adaedl:max=3", "svip:h=0.4,max=3",
                                  "heuristic:start=1,max=3", "cost:max=3,probe=1"])
@pytest.mark.parametrize("drafter", ["same", "other"])
def test_sampling_follows_target_with_every_policy(rule, drafter):
    small_t, small_d = small_pair()
    eng = spec_engine(small_t, small_t if drafter == "same" else small_d)
    p = chi2_pvalue(sample_joint(RUNS, engine=eng, policy=rule), exact_joint(3), RUNS)
    assert p > 1e-3, f"{rule} with the {drafter} drafter: chi-square p={p:.2g}"


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_sampling_follows_target_with_a_quantized_drafter(scheme):
    """q must be the distribution the quantized drafter actually sampled from."""
    small_t, small_d = small_pair()
    eng = spec_engine(small_t, kernels.quantized(small_d, scheme))
    p = chi2_pvalue(sample_joint(RUNS, engine=eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"{scheme} drafter: chi-square p={p:.2g}"


REPEATING = (2, 3, 4, 2, 3)  # a prompt whose suffix recurs: suffix drafts get proposed


def drafter_engine(kind: str, costs: Costs | None = None) -> Engine:
    """The suffix drafter, or the hybrid of the small drafter and it (a suffix draft wins
    from a score of 0.5 where no costs decide), verifying deterministic drafts (no q)."""
    small_t, small_d = small_pair()
    suffix = SuffixDrafter(costs=costs)
    drafter = suffix if kind == "suffix" else HybridDrafter(ModelDrafter(small_d, V), suffix, costs, min_score=0.5)
    return Engine(TorchTarget(small_t), drafter)


@pytest.mark.parametrize("rule", ["static:2", "cost:max=3,probe=1"])  # cost also cuts suffix drafts
@pytest.mark.parametrize("kind", ["suffix", "hybrid"])
def test_sampling_follows_target_with_every_drafter(kind, rule):
    eng = drafter_engine(kind)
    sources = {s for seed in range(20) for s in ("suffix", "model") if _rounds_of(eng, seed, s)}
    assert sources == ({"suffix"} if kind == "suffix" else {"suffix", "model"})
    build = lambda costs: drafter_engine(kind, costs)
    p = chi2_pvalue(sample_joint(RUNS, 4, build, rule, REPEATING), exact_joint(4, REPEATING), RUNS)
    assert p > 1e-3, f"{kind} drafter with {rule}: chi-square p={p:.2g}"


def _rounds_of(eng: Engine, seed: int, source: str) -> int:
    _, s = eng.generate(list(REPEATING), 4, Static(2), SAMPLING, seed=seed)
    model_rounds = len(s.draft_lengths) - s.suffix_rounds
    return s.suffix_rounds if source == "suffix" else model_rounds


def _accept_always(drafts, q, logits, sampling, gen):
    n = len(drafts)
    return n, int(torch.multinomial(sampling.probs(logits[n]), 1, generator=gen))


def _resample_from_p(drafts, q, logits, sampling, gen):
    """A classic bug: on rejection, draw from p instead of the residual max(0, p - q)."""
    n, tok = verify(drafts, q, logits, sampling, gen)
    if n < len(drafts):
        tok = int(torch.multinomial(sampling.probs(logits[n]), 1, generator=gen))
    return n, tok


@pytest.mark.parametrize("wrong", [_accept_always, _resample_from_p])
def test_statistical_test_catches_a_wrong_verifier(monkeypatch, wrong):
    monkeypatch.setattr(engine_mod, "verify", wrong)
    p = chi2_pvalue(sample_joint(RUNS), exact_joint(3), RUNS)
    assert p < 1e-3, f"the test did not notice a wrong verifier (p={p:.2g})"
