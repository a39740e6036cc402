import itertools

import pytest
import torch
from conftest import noisy_copy, spec_engine, tiny_model
from scipy.stats import chisquare

from vocabtrim import engine as engine_mod
from vocabtrim import kernels
from vocabtrim.cache import CachedLM
from vocabtrim.drafters import HybridDrafter, ModelDrafter, SuffixDrafter
from vocabtrim.engine import Engine, Stop
from vocabtrim.policies import Cost, Policy, parse_policy
from vocabtrim.profile import Profile
from vocabtrim.sampling import Sampling, verify

TARGET = tiny_model(64, seed=1)
DRAFT = noisy_copy(TARGET, 0.3, seed=2)


def prompts(n: int, vocab: int = 64) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(5, vocab, (int(torch.randint(1, 12, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_greedy_identical_to_target_alone(k):
    alone, spec = Engine(TARGET), spec_engine(TARGET, DRAFT)
    accepted = 0
    for p in prompts(12):
        ref, _ = alone.generate(p, 40, Policy(k))
        out, stats = spec.generate(p, 40, Policy(k))
        assert out == ref
        accepted += sum(stats.accepted_per_round)
        assert max(stats.draft_lengths) <= k
    assert accepted > 0  # the drafter agreed sometimes: the comparison exercised acceptance


def test_stop_token_inside_a_draft_and_max_new_tokens_mid_round():
    alone, spec = Engine(TARGET), spec_engine(TARGET, noisy_copy(TARGET, 0.05, seed=3))
    hits = 0
    for p in prompts(20):
        ref, _ = alone.generate(p, 60, Policy(8))
        stop_tok = ref[len(ref) // 2]  # a token the target will produce mid-way
        stop = Stop(frozenset({stop_tok}))
        a, _ = alone.generate(p, 60, Policy(8), stop=stop)
        b, stats = spec.generate(p, 60, Policy(8), stop=stop)
        assert a == b and a[-1] == stop_tok and stop_tok not in a[:-1]
        hits += any(d > 1 for d in stats.draft_lengths)
        for m in (1, 2, 7, 13):  # lengths that end inside a round of 8
            c, s = spec.generate(p, m, Policy(8))
            assert c == ref[:m] and s.new_tokens == m
    assert hits


def test_stats_are_consistent():
    _, s = spec_engine(TARGET, DRAFT).generate(prompts(1)[0], 50, Policy(4))
    assert s.new_tokens == sum(s.accepted_per_round) + s.bonus_tokens == 50
    assert 0 not in s.draft_lengths and s.target_forwards >= len(s.draft_lengths) + 1
    assert s.drafter_forwards == sum(s.draft_lengths)  # static: no discarded forwards
    assert s.cost_ratio == pytest.approx(1.0)  # drafter and target have the same size here
    prefill = s.draft_cost - s.cost_ratio * s.drafter_forwards
    assert 0.5 < prefill < 1  # the drafter's prefill reads its body, not its head
    assert s.tau == pytest.approx(50 / s.target_forwards)
    assert s.mbsu == pytest.approx(50 / (s.draft_cost + s.target_forwards))


def test_a_round_without_room_for_drafts_is_a_plain_target_step():
    _, s = spec_engine(TARGET, DRAFT).generate(prompts(1)[0], 2, Policy(4))  # prefill + one step
    assert s.target_forwards == 2 and s.draft_lengths == [] and s.mean_draft_length is None
    assert s.drafter_forwards == 0


def test_target_alone_counts_one_forward_per_token():
    _, s = Engine(TARGET).generate([5, 6, 7], 20, Policy(5))
    assert s.target_forwards == 20 and s.drafter_forwards == 0 and s.mbsu == pytest.approx(1)


@torch.inference_mode()
def test_cache_crop_matches_fresh_forward():
    lm = CachedLM(TARGET)
    seq = list(range(5, 30))
    lm.hidden(seq, 1)
    branch = seq[:17] + [40, 41, 42]  # drop 8 cached tokens, add 3 new ones
    got = lm.hidden(branch, 3)
    assert lm.cache.get_seq_length() == len(branch)
    fresh = TARGET.model(input_ids=torch.tensor([branch])).last_hidden_state[0, -3:]
    torch.testing.assert_close(got, fresh, rtol=1e-4, atol=1e-4)
    again = lm.hidden(branch + [43], 1)  # and it keeps extending correctly
    fresh = TARGET.model(input_ids=torch.tensor([branch + [43]])).last_hidden_state[0, -1:]
    torch.testing.assert_close(again, fresh, rtol=1e-4, atol=1e-4)


# --- losslessness under sampling -------------------------------------------------------

V = 5
SMALL_T = tiny_model(V, seed=11, layers=1)
SMALL_D = tiny_model(V, seed=12, layers=1)  # a different model: q differs a lot from p
PROMPT = [2, 3]
SAMPLING = Sampling(temperature=0.9, top_k=4)


@torch.inference_mode()
def exact_joint(n: int, prompt: tuple[int, ...] = tuple(PROMPT)) -> dict[tuple[int, ...], float]:
    """The target's own probability of every n-token continuation, by enumeration."""
    out = {}
    for toks in itertools.product(range(V), repeat=n):
        p = 1.0
        for i in range(n):
            logits = SMALL_T(torch.tensor([list(prompt) + list(toks[:i])])).logits[0, -1]
            p *= float(SAMPLING.probs(logits)[toks[i]])
        out[toks] = p
    return out


# verification dear enough that a round may draft nothing (cost's probe=1 then alternates
# plain steps and drafting rounds) and a first draft below a ~0.2 chance is dropped
MARGINAL = Profile({}, {"200": [100.0 + 30 * n for n in range(8)]}, {"1": 40.0, "2": 40.0}, 1.0)


def make_policy(spec: str) -> Policy:
    policy = parse_policy(spec)
    return policy.bind(MARGINAL, V) if isinstance(policy, Cost) else policy


def sample_joint(runs: int, n: int = 3, engine: Engine | None = None, policy: str = "static:2",
                 prompt: tuple[int, ...] = tuple(PROMPT)) -> dict[tuple[int, ...], int]:
    eng = engine or spec_engine(SMALL_T, SMALL_D)
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(runs):
        out, _ = eng.generate(list(prompt), n, make_policy(policy), SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    return counts


def chi2_pvalue(counts, exact, runs) -> float:
    keys = [k for k, p in exact.items() if p * runs >= 1]
    obs = [counts.get(k, 0) for k in keys] + [runs - sum(counts.get(k, 0) for k in keys)]
    exp = [exact[k] * runs for k in keys] + [runs * (1 - sum(exact[k] for k in keys))]
    return chisquare(obs, exp).pvalue


RUNS = 3000


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
    eng = spec_engine(SMALL_T, SMALL_T if drafter == "same" else SMALL_D)
    p = chi2_pvalue(sample_joint(RUNS, engine=eng, policy=rule), exact_joint(3), RUNS)
    assert p > 1e-3, f"{rule} with the {drafter} drafter: chi-square p={p:.2g}"


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_sampling_follows_target_with_a_quantized_drafter(scheme):
    """q must be the distribution the quantized drafter actually sampled from."""
    eng = spec_engine(SMALL_T, kernels.quantized(SMALL_D, scheme))
    p = chi2_pvalue(sample_joint(RUNS, engine=eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"{scheme} drafter: chi-square p={p:.2g}"


REPEATING = (2, 3, 4, 2, 3)  # a prompt whose suffix recurs: suffix drafts get proposed


@pytest.mark.parametrize("rule", ["static:2", "cost:max=3,probe=1"])  # cost also cuts suffix drafts
@pytest.mark.parametrize("kind", ["suffix", "hybrid"])
def test_sampling_follows_target_with_every_drafter(kind, rule):
    suffix = SuffixDrafter(V)
    drafter = suffix if kind == "suffix" else HybridDrafter(ModelDrafter(SMALL_D, SMALL_T), suffix, min_score=0.5)
    eng = Engine(SMALL_T, drafter)
    sources = {s for seed in range(20) for s in ("suffix", "model") if _rounds_of(eng, seed, s)}
    assert sources == ({"suffix"} if kind == "suffix" else {"suffix", "model"})
    p = chi2_pvalue(sample_joint(RUNS, 4, eng, rule, REPEATING), exact_joint(4, REPEATING), RUNS)
    assert p > 1e-3, f"{kind} drafter with {rule}: chi-square p={p:.2g}"


def _rounds_of(eng: Engine, seed: int, source: str) -> int:
    _, s = eng.generate(list(REPEATING), 4, Policy(2), SAMPLING, seed=seed)
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


def test_greedy_verify_rule():
    logits = torch.tensor([[0, 5.0, 1], [9, 0, 1], [0, 0, 3]])
    assert verify([1, 0], None, logits, Sampling(), None) == (2, 2)
    assert verify([1, 2], None, logits, Sampling(), None) == (1, 0)
    assert verify([], None, logits[:1], Sampling(), None) == (0, 1)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = Sampling(temperature=1, top_p=0.7).probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])))
    assert (probs > 0).tolist() == [True, True, False, False]
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
