"""Trimmed LM heads: the kept rows' logits, a prompt's extra rows, and a trimmed drafter
that stays lossless greedy and sampling."""

import pytest
import torch
from conftest import (
    RUNS,
    SMALL_PROMPT,
    alone,
    chi2_pvalue,
    exact_joint,
    noisy_copy,
    prompts,
    small_counts,
    small_pair,
    spec_engine,
    tiny_model,
)

from vocabtrim import kernels
from vocabtrim.heads import Head
from vocabtrim.policies import Static


@pytest.mark.parametrize("tie", [False, True])
def test_trimmed_logits_equal_full_logits_at_kept_ids(tie):
    model = tiny_model(64, seed=5, tie=tie)
    kept = torch.tensor([7, 3, 60, 1, 22])
    full, trimmed = Head.of(model), Head.of(model, kept)
    assert trimmed.rows == 5 and trimmed.proj.weight.data_ptr() != full.proj.weight.data_ptr()
    h = torch.randn(4, 32)
    torch.testing.assert_close(trimmed(h), full(h)[:, kept])
    fl = trimmed.full_logits(h)
    torch.testing.assert_close(fl[:, kept], full(h)[:, kept])
    outside = torch.ones(64, dtype=torch.bool)
    outside[kept] = False
    assert torch.isinf(fl[:, outside]).all()
    assert [trimmed.token(i) for i in range(5)] == kept.tolist()


def test_prompt_tokens_extend_a_trimmed_head():
    model = tiny_model(64, seed=5)
    kept = torch.tensor([7, 3, 60, 1, 22])
    base = Head.of(model, kept)
    head = base.for_prompt([3, 40, 9, 9, 7])
    assert head.ids.tolist() == [7, 3, 60, 1, 22, 9, 40] and head.rows == 7
    assert [head.token(i) for i in (5, 6)] == [9, 40] and base.rows == 5  # base untouched
    h = torch.randn(4, 32)
    torch.testing.assert_close(head(h), Head.of(model)(h)[:, head.ids])
    assert base.for_prompt([3, 7, 1]) is base  # nothing missing: the same head
    assert Head.of(model).for_prompt([3, 40]).rows == 64  # a full head needs nothing
    lin = torch.nn.Linear(32, 64)  # a head with a bias: extra rows carry theirs
    biased = Head(kernels.rows(lin, kept), kept, 64, lin).for_prompt([40, 3])
    torch.testing.assert_close(biased(h), lin(h)[:, [7, 3, 60, 1, 22, 40]])


@pytest.mark.parametrize("prompt_tokens", [True, False])
@pytest.mark.parametrize("tie", [False, True])
def test_greedy_with_trimmed_drafter_identical(tie, prompt_tokens):
    target = tiny_model(64, seed=1, tie=tie)
    draft = noisy_copy(target, 0.2, seed=2)
    solo = alone(target)
    ref = {tuple(p): solo.generate(p, 30, Static(4))[0] for p in prompts(8)}
    # some misses; EOS (1) once, a duplicate id is refused
    kept = torch.tensor(list(dict.fromkeys(sorted({t for out in ref.values() for t in out})[:-3] + [1])))
    spec = spec_engine(target, draft, kept, prompt_tokens)
    assert spec.drafter.head.rows == len(kept)
    assert spec.drafter.cost_per_forward < spec_engine(target, draft).drafter.cost_per_forward
    accepted, grew = 0, False
    for p, out in ref.items():
        got, stats = spec.generate(list(p), 30, Static(4))
        assert got == out
        accepted += sum(stats.accepted_per_round)
        grew |= spec.drafter.head.rows > len(kept)
        assert stats.cost_ratio == spec.drafter.cost_per_forward / spec.target.forward_bytes  # this generation's rows
    assert accepted > 0 and grew == prompt_tokens


# [0, 2, 3] holds the prompt's tokens; [0, 1] lacks them, so the head gains rows 2 and 3
KEPT = {"map": [0, 2, 3], "map+prompt": [0, 1]}


def sample_trimmed(runs: int, kept: list[int]) -> dict:
    eng = spec_engine(*small_pair(), torch.tensor(kept))
    counts = small_counts(eng, runs)
    assert eng.drafter.head.ids.tolist() == sorted(set(kept) | set(SMALL_PROMPT))
    return counts


@pytest.mark.parametrize("kept", KEPT.values(), ids=KEPT.keys())
def test_sampling_with_trimmed_drafter_follows_target(kept):
    p = chi2_pvalue(sample_trimmed(RUNS, kept), exact_joint(3), RUNS)
    assert p > 1e-3, f"p={p:.2g}"


@pytest.mark.parametrize("kept", KEPT.values(), ids=KEPT.keys())
def test_statistical_test_catches_unnormalized_q(monkeypatch, kept):
    """q restricted to the kept set but not renormalized (as if mass outside were lost)."""
    right = Head.to_vocab
    monkeypatch.setattr(Head, "to_vocab", lambda self, d: right(self, d) * 0.6)
    p = chi2_pvalue(sample_trimmed(RUNS, kept), exact_joint(3), RUNS)
    assert p < 1e-3, f"p={p:.2g}"
