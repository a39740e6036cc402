"""Processed distributions and the two verification rules."""

import pytest
import torch

from vocabtrim.sampling import MIN_TEMPERATURE, Sampling, verify


def test_greedy_verify_rule():
    logits = torch.tensor([[0, 5.0, 1], [9, 0, 1], [0, 0, 3]])
    assert verify([1, 0], [None, None], logits, Sampling(), None) == (2, 2)
    assert verify([1, 2], [None, None], logits, Sampling(), None) == (1, 0)
    assert verify([], [], logits[:1], Sampling(), None) == (0, 1)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = Sampling(temperature=1, top_p=0.7).probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])))
    assert (probs > 0).tolist() == [True, True, False, False]
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


def test_a_deterministic_draft_is_accepted_with_p_and_otherwise_replaced_from_p_without_it():
    """A draft with no q (None: a suffix match, a merged token) counts as one-hot: it is
    accepted with the target's p(x), and a rejection draws from p with x removed, so every
    token comes out with probability p(y)."""
    sampling = Sampling(temperature=1)
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = p.log().expand(2, 3)
    gen = torch.Generator().manual_seed(0)
    runs, counts = 6000, torch.zeros(3)
    for _ in range(runs):
        n, nxt = verify([1], [None], logits, sampling, gen)
        if n == 1:
            counts[1] += 1
        else:
            assert n == 0 and nxt != 1  # the residual holds no mass on the draft
            counts[nxt] += 1
    torch.testing.assert_close(counts / runs, p, atol=0.02, rtol=0)
    sure = torch.tensor([[0.0, 30.0, 0.0], [0.0, 0.0, 0.0]])  # p(x) ~ 1: always accepted
    assert all(verify([1], [None], sure, sampling, gen)[0] == 1 for _ in range(50))


def test_no_row_decides_as_a_one_hot_row_would():
    """None stands for the one-hot q of a deterministic draft: the same decisions, draw for draw."""
    sampling = Sampling(temperature=1)
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(3, 3)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 0]), 3).float()
    for seed in range(200):
        a = verify([1, 0], [None, None], logits, sampling, torch.Generator().manual_seed(seed))
        b = verify([1, 0], list(one_hot), logits, sampling, torch.Generator().manual_seed(seed))
        assert a == b


def test_the_smallest_temperature_gives_a_finite_distribution():
    probs = Sampling(MIN_TEMPERATURE, top_p=0.9).probs(torch.tensor([300.0, 299.99, -300.0]))
    assert torch.isfinite(probs).all() and float(probs.sum()) == pytest.approx(1.0)
