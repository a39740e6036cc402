"""Suffix and hybrid drafters: what they propose, and that the output stays the target's."""

import pytest
import torch
from conftest import alone, model_drafter, noisy_copy, prompts, tiny_model, tiny_pair

from vocabtrim.drafters import HybridDrafter, ModelDrafter, SuffixDrafter
from vocabtrim.engine import Engine
from vocabtrim.errors import VocabtrimError
from vocabtrim.policies import Static
from vocabtrim.sampling import Sampling
from vocabtrim.target import TorchTarget

GREEDY = Sampling()


def test_suffix_continues_the_way_the_text_continued_before():
    d = SuffixDrafter()
    seq = [9, 1, 2, 3, 4, 5, 6, 9, 1, 2, 3]
    d.prefill(seq)
    # "9 1 2 3" occurred before, followed by 4 5 6 9 ...; a 4-token match drafts 4 tokens
    assert d.best(seq, room=10).tokens == [4, 5, 6, 9]


def test_suffix_draft_length_grows_with_the_match():
    d = SuffixDrafter()
    text = list(range(10, 30))
    seq = text + [7] + text[:6]  # the last 6 tokens occurred before, followed by text[6:]
    d.prefill(seq)
    best = d.best(seq, room=16)
    assert best.tokens == text[6:12]  # a 6-token match drafts 6 tokens (factor 1)
    # one occurrence: every path probability is 1, taken at its word before any verification
    assert best.score == pytest.approx(6.0, rel=5e-3)
    assert d.best(seq, room=3).tokens == text[6:9]  # and never more than the room


def test_suffix_drafts_are_scored_by_how_often_drafts_like_them_were_accepted():
    d = SuffixDrafter()
    text = list(range(10, 30))
    seq = text + [7] + text[:6]
    d.prefill(seq)
    for _ in range(30):  # drafts that claim certainty keep failing at their second token
        d.observe(d.proposal(d.best(seq, room=16)), 1)
    best = d.best(seq, room=16)
    assert best.tokens == text[6:12] and 0.9 < best.score < 1.1  # each step holds half the time: 1/2 + 1/4 + ...
    d.observe(d.propose(seq, 16, None, None, None), 6)
    assert d.best(seq, room=16).score > best.score  # and learns back


def test_suffix_follows_the_most_frequent_continuation_and_stops_below_the_floor():
    d = SuffixDrafter(min_prob=0.3)
    seq = [5, 6, 1, 5, 6, 1, 5, 6, 2, 5, 6, 3, 8, 5, 6]
    d.prefill(seq)
    best = d.best(seq, room=8)
    # after "5 6": 1 twice, 2 once, 3 once -> 1 with probability 2/4; then "5" follows both
    assert best.tokens[0] == 1 and best.score >= 0.5


def test_suffix_proposes_nothing_without_a_match():
    d = SuffixDrafter()
    d.prefill([1, 2, 3])
    p = d.propose([1, 2, 3], 5, Static(5), GREEDY, None)
    assert p.tokens == [] and p.source == "none" and p.forwards == 0


def test_store_of_earlier_outputs_skips_the_same_prompt_and_evicts_the_oldest():
    d = SuffixDrafter(store_tokens=12)
    out = [40, 41, 42, 43, 44, 45]
    d.prefill([1, 2])
    d.finish([1, 2, *out], 2)
    d.prefill([3, 4, 40, 41])  # another prompt that quotes the earlier answer's start
    assert d.best([3, 4, 40, 41], 8).tokens[:2] == [42, 43]
    d.prefill([1, 2])  # the same prompt again: the store does not replay its own answer
    assert d.best([1, 2, 40, 41], 8).tokens == []
    d.finish([1, 2, 50, 51, 52, 53, 54, 55, 56], 2)  # 6 + 7 tokens > 12: the oldest goes
    assert [o for _, o in d.docs] == [[50, 51, 52, 53, 54, 55, 56]]


@pytest.mark.parametrize("kind", ["suffix", "hybrid"])
def test_greedy_identical_to_target_alone(kind):
    target, draft = tiny_pair()
    solo = alone(target)
    # tiny random models rarely repeat: the hybrid lets the suffix win often
    drafter = SuffixDrafter() if kind == "suffix" else HybridDrafter(
        model_drafter(draft, target), SuffixDrafter(), min_score=0.5)
    eng = Engine(TorchTarget(target), drafter)
    rounds = {"suffix": 0, "model": 0}
    for p in prompts(8):
        p = p + p  # a prompt that repeats itself gives the suffix something to match
        ref, _ = solo.generate(p, 40, Static(1))
        out, s = eng.generate(p, 40, Static(4))
        assert out == ref
        assert s.new_tokens == sum(s.accepted_per_round) + s.bonus_tokens
        rounds["suffix"] += s.suffix_rounds
        rounds["model"] += len(s.draft_lengths) - s.suffix_rounds
        if kind == "suffix":
            assert s.drafter_forwards == 0 and s.draft_cost == 0 and s.mbsu == pytest.approx(s.tau)
    assert rounds["suffix"] > 0 and (rounds["model"] > 0) == (kind == "hybrid")


def test_hybrid_policy_learns_only_from_model_rounds():
    class Counting(Static):
        seen = 0

        def observe(self, r, drafted, accepted):
            Counting.seen += 1

    target, draft = tiny_pair()
    drafter = HybridDrafter(model_drafter(draft, target), SuffixDrafter(), min_score=0.5)
    p = prompts(1)[0] * 3
    _, s = Engine(TorchTarget(target), drafter).generate(p, 40, Counting(4))
    assert s.suffix_rounds > 0 and Counting.seen == len(s.draft_lengths) - s.suffix_rounds


def test_hybrid_model_reads_the_prompt_only_when_it_drafts():
    target, draft = tiny_pair()
    never = HybridDrafter(model_drafter(draft, target), SuffixDrafter(), min_score=0.0)  # suffix always
    p = prompts(1)[0]
    out, s = Engine(TorchTarget(target), never).generate(p, 20, Static(4))
    assert out == alone(target).generate(p, 20, Static(1))[0]
    assert s.drafter_forwards == 0 and s.draft_cost == 0 and never.model.lm.ids == []
    always = HybridDrafter(model_drafter(draft, target), SuffixDrafter(), min_score=1e9)  # model always
    _, s = Engine(TorchTarget(target), always).generate(p, 20, Static(4))
    body = always.model.prefill_cost / TorchTarget(target).forward_bytes
    assert body > 0 and s.draft_cost == pytest.approx(body + s.cost_ratio * s.drafter_forwards)


def test_model_drafter_refuses_another_vocabulary():
    with pytest.raises(VocabtrimError, match="vocabulary"):
        ModelDrafter(noisy_copy(tiny_model(80, seed=3), 0.1, 1), 64)


def test_model_drafter_reads_the_prompt_once():
    """prefill fills the cache the drafts then use: the first draft feeds only the tokens
    after the prompt (a prefill into the previous generation's cache read the prompt twice)."""
    target, draft = tiny_pair()
    d = model_drafter(draft, target)
    p, q = prompts(2)
    for seq in (p, q):  # the second generation too: its cache is a new one
        fed = []
        with torch.inference_mode():  # as the engine runs drafters
            d.prefill(seq)
            assert d.lm.ids == d.vocab.spell(seq)
            hidden = d.lm.hidden
            d.lm.hidden = lambda ids, last: fed.append(len(ids) - len(d.lm.ids)) or hidden(ids, last)
            d.propose(seq + [1], 1, Static(1), GREEDY, None)
        assert fed == [1]
