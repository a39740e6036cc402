"""Cost-aware drafting and the machine profile it reads: decisions on synthetic profiles,
losslessness on tiny models, the profile's measurement, cache and the `auto` dtype."""

import json

import pytest
import torch
from conftest import cli, noisy_copy, spec_engine, tiny_model, tiny_tokenizer

from vocabtrim import kernels, profile
from vocabtrim.engine import Engine
from vocabtrim.errors import VocabtrimError
from vocabtrim.models import Loaded
from vocabtrim.policies import Cost, parse_policy

V = 64


def synthetic(draft_ms: float, verify, n: int = 40) -> profile.Profile:
    """A profile whose target scores n tokens in verify(n) ms, any drafter step draft_ms."""
    return profile.Profile({}, {"200": [float(verify(i)) for i in range(1, n + 1)]},
                           {"100": draft_ms, "200": draft_ms}, 1000.0)


FLAT = synthetic(10, lambda n: 100)  # verification free in n, a cheap drafter
STEEP = synthetic(10, lambda n: 100 + 80 * (n - 1))  # every scored token costs 0.8 of a step
EXPENSIVE = synthetic(150, lambda n: 100)  # a drafter step dearer than a target step


def sure(p: float) -> torch.Tensor:
    """A drafter distribution over V tokens whose top probability is p."""
    probs = torch.full((V,), (1 - p) / (V - 1))
    probs[0] = p
    return probs


def round_length(policy: Cost, probs: torch.Tensor) -> int:
    """How many drafts the policy lets a drafter that is always this sure make in a round."""
    drafted = 0
    for step in range(policy.budget()):
        if not policy.draft(step, probs):
            break
        drafted += 1
        if not policy.go_on(probs, 0):
            break
    return drafted


def test_flat_verification_drafts_long_steep_drafts_short_expensive_drafts_nothing():
    assert round_length(Cost().bind(FLAT, 100), sure(0.9)) >= 6
    assert round_length(Cost().bind(STEEP, 100), sure(0.9)) <= 2
    assert round_length(Cost().bind(EXPENSIVE, 100), sure(0.9)) == 0
    assert round_length(Cost().bind(FLAT, 100), sure(0.95)) > round_length(Cost().bind(FLAT, 100), sure(0.5))


def test_cap_is_the_longest_draft_that_verification_can_absorb():
    knee = synthetic(10, lambda n: 100 if n <= 6 else 100 + 200 * (n - 6))
    assert Cost().bind(knee, 100).cap == 5
    assert Cost(max_len=4).bind(FLAT, 100).cap == 4
    assert Cost().bind(EXPENSIVE, 100).cap == 0


def test_calibration_learns_from_verification():
    """A drafter that says 0.9 but is always rejected stops being believed."""
    policy = Cost().bind(FLAT, 100)
    before = round_length(policy, sure(0.9))
    for _ in range(40):
        n = round_length(policy, sure(0.9))
        policy.observe(n, 0)
    assert round_length(policy, sure(0.9)) < before
    assert policy.state()["first_acceptance"] < 0.2


def test_sampled_drafts_are_judged_by_the_kept_token_and_the_whole_distribution():
    """Under sampling a long-shot token, once kept, ends the round (the token stays
    drafted, so looking at it is lossless); before drawing, a flat distribution with the
    same top probability is trusted less than when its top token is the draft (greedy)."""
    probs = sure(0.9)
    likely, long_shot = Cost().bind(FLAT, 100), Cost().bind(FLAT, 100)
    assert likely.draft(0, probs, sampled=True) and likely.go_on(probs, 0)
    assert long_shot.draft(0, probs, sampled=True) and not long_shot.go_on(probs, 5)
    flat = torch.full((V,), 0.5 / (V - 1))
    flat[0] = 0.5
    greedy, sampled = Cost().bind(FLAT, 100), Cost().bind(FLAT, 100)
    greedy.draft(0, flat), sampled.draft(0, flat, sampled=True)
    assert sampled.accept < greedy.accept


def test_rounds_without_drafts_probe_again():
    policy = Cost(probe=3).bind(synthetic(60, lambda n: 100), 100)
    for _ in range(30):  # every first draft rejected: drafting stops paying
        policy.observe(round_length(policy, sure(0.99)), 0)
    policy.reset()
    budgets = [policy.budget() for _ in range(8)]
    assert budgets == [0, 0, 0, policy.cap, 0, 0, 0, policy.cap]


def test_hybrid_takes_the_suffix_draft_when_it_brings_more_tokens_per_ms():
    policy = Cost().bind(FLAT, 100)  # a cheap drafter: model rounds pay at the prior acceptance
    assert policy.prefers_free([0.9, 0.8], 2.0)  # 2.7 tokens for one verification
    assert not policy.prefers_free([0.3], 2.0)  # 1.3 tokens: a model round brings more per ms
    assert not policy.prefers_free([], 2.0)  # nothing to verify: the model's budget decides
    assert Cost().bind(EXPENSIVE, 100).prefers_free([0.3], 2.0)  # model rounds never pay
    static = parse_policy("static:5")  # no costs: the expected tokens alone decide
    assert static.prefers_free([0.9, 0.9, 0.5], 2.0) and not static.prefers_free([0.9, 0.5], 2.0)


def test_unbound_cost_policy_is_a_one_line_error():
    with pytest.raises(VocabtrimError, match="costs"):
        parse_policy("cost").budget()
    assert parse_policy("cost:max=8,probe=2").spec() == "cost:max=8,probe=2"
    with pytest.raises(VocabtrimError, match="probe"):
        parse_policy("cost:probe=0")


TARGET = tiny_model(V, seed=1)
DRAFT = noisy_copy(TARGET, 0.3, seed=2)


@pytest.mark.parametrize("costs", [FLAT, STEEP, EXPENSIVE])
def test_greedy_identical_with_cost_policy(costs):
    alone, spec = Engine(TARGET), spec_engine(TARGET, DRAFT)
    policy = Cost().bind(costs, V)
    for seed in range(8):
        prompt = torch.randint(5, V, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref, _ = alone.generate(prompt, 30, parse_policy("static:1"))
        out, stats = spec.generate(prompt, 30, policy)
        assert out == ref
        # rounds without drafts are plain steps: no zero-length draft is recorded
        assert 0 not in stats.draft_lengths
        assert len(stats.draft_lengths) <= stats.target_forwards
    if costs is EXPENSIVE:
        assert stats.drafter_forwards == 0


def loaded(model, name: str) -> Loaded:
    return Loaded(name, model, tiny_tokenizer(V), "float32")


def test_quick_profile_is_measured_cached_and_plotted(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    tgt, drf = loaded(TARGET, "tiny-target"), loaded(DRAFT, "tiny-draft")
    p = profile.for_pair(tgt, drf)
    assert p.quick and len(p.target_ms[str(profile.QUICK_CONTEXT)]) == max(profile.QUICK_N)
    assert p.verify_ms(40) > 0 and p.draft_step_ms(V) > 0 and p.prefill_tokens_per_s > 0
    monkeypatch.setattr(profile, "measure", lambda *a, **k: pytest.fail("measured twice"))
    assert profile.for_pair(tgt, drf) == p  # cached by what changes it
    assert p.key["target"] == "tiny-target" and p.key["threads"] == torch.get_num_threads()
    p.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "drafter step" in p.table()


def test_full_profile_times_every_n_at_two_contexts():
    p = profile.measure(loaded(TARGET, "t"), loaded(DRAFT, "d"), progress=False)
    assert len(p.target_ms) == 2 and "200" in p.target_ms  # the long one fits the tiny context
    assert all(len(ms) == 32 for ms in p.target_ms.values())
    assert len(p.draft_ms) == 2 and not p.quick


def test_profile_interpolates_contexts_and_head_rows():
    p = profile.Profile({}, {"200": [10.0, 20.0], "1000": [30.0, 40.0]}, {"100": 5.0, "300": 9.0}, 1.0)
    assert p.verify_ms(1, 600) == 20.0 and p.verify_ms(4, 200) == 40.0
    assert p.draft_step_ms(200) == 7.0
    noisy = profile.Profile({}, {"200": [10.0, 12.0, 11.0]}, {"100": 5.0, "300": 9.0}, 1.0)
    assert noisy.verify_ms(40) == 11.0  # a last timing below the one before: extended flat


def test_a_damaged_cached_profile_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    tgt, drf = loaded(TARGET, "t"), loaded(DRAFT, "d")
    path = profile.path_for(profile.key(tgt, drf, "float32"))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert profile.load(profile.key(tgt, drf, "float32")) is None
    assert profile.for_pair(tgt, drf).quick
    assert json.loads(path.read_text())["quick"]


def test_auto_dtype_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    if not kernels.packed_available():
        assert kernels.resolve("auto") == "bfloat16" and not profile.wide_in_bf16()
        return
    # decode rows (1, 6): packed-fp16 faster; a prompt's 150 rows: bf16 faster
    timed = lambda d, rows: {"bfloat16": 2.0, kernels.PACKED: 1.0}[d] * (1 if rows == (1, 6) else -1)
    monkeypatch.setattr(profile, "_matmul_ms", timed)
    assert kernels.resolve("auto") == kernels.PACKED and profile.wide_in_bf16()
    monkeypatch.setattr(profile, "_matmul_ms", lambda d, rows: pytest.fail("timed twice"))
    assert kernels.resolve("auto") == kernels.PACKED and profile.wide_in_bf16()
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(profile, "_matmul_ms", lambda d, rows: {"bfloat16": 1.0, kernels.PACKED: 2.0}[d])
    assert kernels.resolve("auto") == "bfloat16" and profile.wide_in_bf16()
    monkeypatch.setattr(kernels, "packed_available", lambda: False)
    monkeypatch.setattr(profile, "packed_available", lambda: False)
    assert kernels.resolve("auto") == "bfloat16" and not profile.wide_in_bf16()


def test_matmul_timing_runs_for_both_dtypes():
    for d in ("bfloat16", kernels.PACKED) if kernels.packed_available() else ("bfloat16",):
        assert profile._matmul_ms(d, (1, 70), hidden=32, inner=64, repeats=1) > 0


def test_profile_command_on_tiny_models(tiny_dirs, tmp_path):
    env = {"VOCABTRIM_CACHE": str(tmp_path)}
    r = cli("profile", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            env=env)
    assert r.exit_code == 0, r.output
    assert "target @200" in r.output and "drafter step" in r.output
    assert len(list((tmp_path / "profiles").glob("*.png"))) == 1
    r = cli("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--prompt", "w1 w2", "--max-new-tokens", 8, "--policy", "cost", "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["policy"].startswith("cost")
    r = cli("profile", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--draft-quant", "int8", env=env)  # a scheme is profiled on its own
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "profiles").glob("*.png"))) == 2


def test_free_drafts_are_cut_where_verifying_more_stops_paying():
    path = [0.95, 0.9, 0.85, 0.5, 0.3, 0.2, 0.15, 0.1]
    assert Cost().bind(FLAT, 100).cut(path) == len(path)  # verification free: all of it
    assert Cost().bind(STEEP, 100).cut(path) == 2
    assert Cost().bind(synthetic(10, lambda n: 100 + 20 * (n - 1)), 100).cut(path) == 4
    assert Cost().bind(STEEP, 100).cut([0.1]) == 0
    assert parse_policy("static:3").cut(path) == len(path)


def test_suffix_drafter_proposes_what_the_cost_policy_keeps():
    from vocabtrim.drafters import SuffixDrafter
    from vocabtrim.sampling import Sampling

    seq = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 5, 6, 7, 8, 9]  # a 5-token match drafts 5
    drafter = SuffixDrafter(V)
    drafter.prefill(seq)
    assert drafter.propose(seq, 20, parse_policy("static:3"), Sampling(), None).tokens == [10, 11, 12, 13, 14]
    knee = Cost().bind(synthetic(10, lambda n: 100 if n <= 3 else 1000), 100)
    assert drafter.propose(seq, 20, knee, Sampling(), None).tokens == [10, 11]
