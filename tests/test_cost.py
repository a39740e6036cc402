"""Cost-aware drafting: the machine's costs (costs.py) and the cost rule's decisions on
synthetic profiles, the hybrid's choice and the suffix drafter's cut, losslessness on tiny
models. The profile they are read from: test_profile.py."""

import pytest
import torch
from conftest import alone, greedy_step, spec_engine, tiny_pair

from vocabtrim import profile
from vocabtrim.costs import Costs, Rates
from vocabtrim.drafters import Drafter, HybridDrafter, Proposal, SuffixDrafter
from vocabtrim.drafters.suffix import Draft
from vocabtrim.errors import VocabtrimError
from vocabtrim.policies import Cost, CostRound, Static, Step, parse_policy
from vocabtrim.sampling import Sampling

V = 64


def synthetic(draft_ms: float, verify, n: int = 40) -> profile.Profile:
    """A profile whose target scores n tokens in verify(n) ms, any drafter step draft_ms."""
    return profile.Profile({}, {"200": [float(verify(i)) for i in range(1, n + 1)]},
                           {"100": draft_ms, "200": draft_ms}, 1000.0, 1e9)


FLAT = synthetic(10, lambda n: 100)  # verification free in n, a cheap drafter
STEEP = synthetic(10, lambda n: 100 + 80 * (n - 1))  # every scored token costs 0.8 of a step
EXPENSIVE = synthetic(150, lambda n: 100)  # a drafter step dearer than a target step


def costs(p: profile.Profile, max_len: int = 32) -> Costs:
    """The prices `p` gives a drafter head of 100 rows, for rounds of up to `max_len` drafts."""
    return Costs.of(p, 100, max_len)


def cost(p: profile.Profile, max_len: int = 32, probe: int = 8) -> Cost:
    return Cost(costs(p, max_len), probe)


def sure(p: float) -> torch.Tensor:
    """A drafter distribution over V tokens whose top probability is p."""
    probs = torch.full((V,), (1 - p) / (V - 1))
    probs[0] = p
    return probs


def play(policy: Cost, probs: torch.Tensor) -> tuple[CostRound, int]:
    """One round of a greedy drafter that is always this sure: the round and its drafts."""
    r, s, drafted = policy.start(), greedy_step(probs), 0
    for step in range(r.budget):
        if not policy.draft(r, step, s):
            break
        drafted += 1
        if not policy.go_on(r, s, 0):
            break
    return r, drafted


def round_length(policy: Cost, probs: torch.Tensor) -> int:
    """How many drafts the policy lets a drafter that is always this sure make in a round."""
    return play(policy, probs)[1]


def test_flat_verification_drafts_long_steep_drafts_short_expensive_drafts_nothing():
    assert round_length(cost(FLAT), sure(0.9)) >= 6
    assert round_length(cost(STEEP), sure(0.9)) <= 2
    assert round_length(cost(EXPENSIVE), sure(0.9)) == 0
    assert round_length(cost(FLAT), sure(0.95)) > round_length(cost(FLAT), sure(0.5))


def test_cap_is_the_longest_draft_that_verification_can_absorb():
    knee = synthetic(10, lambda n: 100 if n <= 6 else 100 + 200 * (n - 6))
    assert costs(knee).cap == 5
    assert costs(FLAT, max_len=4).cap == 4
    assert costs(EXPENSIVE).cap == 0


def test_calibration_learns_from_verification():
    """A drafter that says 0.9 but is always rejected stops being believed."""
    policy = cost(FLAT)
    before = round_length(policy, sure(0.9))
    for _ in range(40):
        r, n = play(policy, sure(0.9))
        policy.observe(r, n, 0)
    assert round_length(policy, sure(0.9)) < before
    assert policy.state()["first_acceptance"] < 0.2


def test_sampled_drafts_are_judged_by_the_kept_token_and_the_whole_distribution():
    """Under sampling a long-shot token, once kept, ends the round (the token stays
    drafted, so looking at it is lossless); before drawing, a flat distribution with the
    same top probability is trusted less than when its top token is the draft (greedy)."""
    probs = sure(0.9)
    likely, long_shot = cost(FLAT), cost(FLAT)
    r, s = likely.start(), Step(probs)
    assert likely.draft(r, 0, s) and likely.go_on(r, s, 0)
    r, s = long_shot.start(), Step(probs)
    assert long_shot.draft(r, 0, s) and not long_shot.go_on(r, s, 5)
    flat = torch.full((V,), 0.5 / (V - 1))
    flat[0] = 0.5
    greedy, sampled = cost(FLAT), cost(FLAT)
    rg, rs = greedy.start(), sampled.start()
    greedy.draft(rg, 0, greedy_step(flat)), sampled.draft(rs, 0, Step(flat))
    assert rs.accept < rg.accept


def test_rounds_without_drafts_probe_again():
    policy = cost(synthetic(60, lambda n: 100), probe=3)
    for _ in range(30):  # every first draft rejected: drafting stops paying
        r, n = play(policy, sure(0.99))
        policy.observe(r, n, 0)
    policy.reset()
    budgets = [policy.start().budget for _ in range(8)]
    cap = policy.costs.cap
    assert budgets == [0, 0, 0, cap, 0, 0, 0, cap]


class _Suffix(SuffixDrafter):
    """A suffix drafter whose every draft has these path probabilities."""

    def __init__(self, path: list[float]):
        super().__init__()
        self.path = path

    def best(self, seq, room):
        return Draft(list(range(10, 10 + len(self.path))), self.path)


class _Model(Drafter):
    has_read = False  # the prompt, into its cache

    def start(self, seq):
        return seq

    def propose(self, seq, room, policy, sampling, gen):
        return Proposal([7], [None], 1, "model", policy.start())


def hybrid_takes_the_suffix_draft(path: list[float], min_score: float) -> bool:
    """Whether the hybrid without costs proposes the free draft of `path`."""
    hybrid = HybridDrafter(_Model(), _Suffix(path), min_score=min_score)
    return hybrid.propose([5, 6], 20, Static(5), Sampling(), None).source == "suffix"


def test_hybrid_takes_the_suffix_draft_when_it_brings_more_tokens_per_ms():
    c = costs(FLAT)  # a cheap drafter: model rounds pay at the prior acceptance
    assert c.prefers_free([0.9, 0.8])  # 2.7 tokens for one verification
    assert not c.prefers_free([0.3])  # 1.3 tokens: a model round brings more per ms
    assert not c.prefers_free([])  # nothing to verify: the model's budget decides
    assert costs(EXPENSIVE).prefers_free([0.3])  # model rounds never pay
    # no costs: the expected tokens alone decide
    assert hybrid_takes_the_suffix_draft([0.9, 0.9, 0.5], 2.0) and not hybrid_takes_the_suffix_draft([0.9, 0.5], 2.0)


def test_model_rounds_start_only_where_they_pay_for_the_drafters_prefill():
    c = Costs(1.0, [100.0] * 40, prefill_ms=10.0)  # a 50-token prompt: 500 ms of the drafter's reading
    assert 45 < c.time(0) - 1 / c.model_rate() < 47  # ms a model round saves a token (prior acceptance)
    assert not c.prefill_pays(50, 10) and c.prefill_pays(50, 11) and not c.prefill_pays(500, 100)
    hybrid, prompt = HybridDrafter(_Model(), _Suffix([]), c), list(range(50))
    hybrid.prefill(prompt)
    after = lambda n: hybrid.propose(prompt + [1] * n, 100, Static(5), Sampling(), None).source
    assert after(2) == "none" and after(11) == "model"  # a plain step, then the model once it pays
    assert hybrid.propose(prompt + [1] * 11, 3, Static(5), Sampling(), None).source == "none"  # 3 to go: not worth it
    hybrid.model.has_read = True
    assert after(1) == "model"  # paid already


def test_a_cost_policy_without_costs_is_a_one_line_error():
    with pytest.raises(VocabtrimError, match="costs"):
        parse_policy("cost").make()
    rule = parse_policy("cost:max=8,probe=2")
    assert rule.priced and not parse_policy("static:3").priced
    assert rule.make(costs(FLAT, rule.max_len)).spec() == "cost:max=8,probe=2"
    with pytest.raises(VocabtrimError, match="probe"):
        parse_policy("cost:probe=0")


@pytest.mark.parametrize("prices", [FLAT, STEEP, EXPENSIVE])
def test_greedy_identical_with_cost_policy(prices):
    target, draft = tiny_pair()
    solo, spec = alone(target), spec_engine(target, draft)
    policy = Cost(Costs.of(prices, V, 32))
    for seed in range(8):
        prompt = torch.randint(5, V, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref, _ = solo.generate(prompt, 30, parse_policy("static:1").make())
        out, stats = spec.generate(prompt, 30, policy)
        assert out == ref
        # rounds without drafts are plain steps: no zero-length draft is recorded
        assert 0 not in stats.draft_lengths
        assert len(stats.draft_lengths) <= stats.target_forwards
    if prices is EXPENSIVE:
        assert stats.drafter_forwards == 0


def test_free_drafts_are_cut_where_verifying_more_stops_paying():
    path = [0.95, 0.9, 0.85, 0.5, 0.3, 0.2, 0.15, 0.1]
    assert costs(FLAT).cut(path) == len(path)  # verification free: all of it
    assert costs(STEEP).cut(path) == 2
    assert costs(synthetic(10, lambda n: 100 + 20 * (n - 1))).cut(path) == 4
    assert costs(STEEP).cut([0.1]) == 0
    draft = Draft(list(range(10, 10 + len(path))), path)
    assert len(SuffixDrafter().proposal(draft).tokens) == len(path)  # no costs: all of it


def test_suffix_drafter_proposes_what_the_cost_policy_keeps():
    seq = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 5, 6, 7, 8, 9]  # a 5-token match drafts 5
    drafter = SuffixDrafter()
    drafter.prefill(seq)
    assert drafter.propose(seq, 20, parse_policy("static:3").make(), Sampling(), None).tokens == [10, 11, 12, 13, 14]
    knee = costs(synthetic(10, lambda n: 100 if n <= 3 else 1000))
    drafter = SuffixDrafter(costs=knee)
    drafter.prefill(seq)
    assert drafter.propose(seq, 20, Cost(knee), Sampling(), None).tokens == [10, 11]


def test_rates_start_at_the_prior_and_forget_slowly():
    r = Rates((0.5,))
    assert (r.hits, r.seen, len(r)) == ([0.5, 1.5], [2.0, 2.0], 2)
    assert (r.bin(0.49), r.bin(0.5)) == (0, 1)
    r.observe(1, True)
    r.observe(1, False)
    assert r.rate(1) == (0.98 * (0.98 * 1.5 + 1)) / (0.98 * (0.98 * 2.0 + 1) + 1) and r.rate(0) == 0.25
    assert Rates().rate() == 0.5  # one bin: the first-draft rate of Costs
