"""Cross-vocabulary drafting: the bridge between two tokenizers, the n-gram cache of merged
tokens, greedy identity and the target's distribution under sampling (chi-square)."""

import copy
import itertools
import json

import pytest
import torch
from conftest import cli, quantized_gguf, tiny_model, write_gguf
from scipy.stats import chisquare
from tokenizers import Tokenizer, decoders
from tokenizers import models as tk_models
from transformers import PreTrainedTokenizerFast

from vocabtrim.drafters import Bridge, CrossVocab, ModelDrafter
from vocabtrim.drafters import cross as cross_mod
from vocabtrim.drafters.model import Take
from vocabtrim.engine import Engine
from vocabtrim.policies import Static, parse_policy
from vocabtrim.sampling import Sampling
from vocabtrim.target import TorchTarget
from vocabtrim.vocab import Counts

SPECIALS = ["<s>", "<|end|>"]


def bpe(pieces: list[str], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """A character BPE tokenizer over `pieces` (after the special tokens)."""
    tok = Tokenizer(tk_models.BPE({p: i for i, p in enumerate(SPECIALS + pieces)}, merges))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>")


# The target writes "ab" and "ca" as one token each; the drafter has neither (it spells
# them a+b and c+a) but has "bc", which the target lacks.
TARGET_TOK = bpe(["a", "b", "c", "ab", "ca"], [("a", "b"), ("c", "a")])
DRAFT_TOK = bpe(["a", "b", "c", "bc"], [("b", "c")])
TV, DV = len(TARGET_TOK), len(DRAFT_TOK)
AB, CA = TARGET_TOK.convert_tokens_to_ids(["ab", "ca"])
TARGET = tiny_model(TV, seed=21, layers=1)
DRAFT = tiny_model(DV, seed=22, layers=1)
PROMPT = TARGET_TOK("<s>abcab", add_special_tokens=False)["input_ids"]  # holds ab and ca: merges are learnt


def bridge() -> Bridge:
    return Bridge(TARGET_TOK, DRAFT_TOK, DV)


def cross_drafter(kept_ids=None, prompt_tokens: bool = True, merges: bool = True, model=DRAFT) -> ModelDrafter:
    """The drafter of its own tokenizer drafting target tokens through the bridge."""
    return ModelDrafter(model, TV, kept_ids, prompt_tokens, vocab=CrossVocab(bridge(), DV, TV, merges))


@pytest.fixture(scope="module", params=["torch", "native", "native-q4_1"])
def draft_model(request, tmp_path_factory):
    """DRAFT as torch runs it, and as the native engine runs its GGUF file: in fp32, and in
    Q4_1 (the format of the built-in cross-vocabulary drafter's file)."""
    if request.param == "torch":
        return DRAFT
    import gguf

    from vocabtrim.native_target import NativeModel

    path = tmp_path_factory.mktemp("cross") / "draft.gguf"
    if request.param == "native":
        return NativeModel(write_gguf(DRAFT, path), context=256)
    with pytest.MonkeyPatch.context() as mp:
        quantized_gguf(copy.deepcopy(DRAFT), path, gguf.GGMLQuantizationType.Q4_1, mp)
    return NativeModel(path, context=256)


def engine(drafter=None) -> Engine:
    return Engine(TorchTarget(TARGET), drafter)


def test_bridge_pairs_twins_and_spells_the_rest():
    b = bridge()
    d = DRAFT_TOK.convert_tokens_to_ids
    t = TARGET_TOK.convert_tokens_to_ids
    assert [int(b.twin[d(p)]) for p in ["<s>", "<|end|>", "a", "b", "c"]] == [t(p) for p in
                                                                              ["<s>", "<|end|>", "a", "b", "c"]]
    assert int(b.twin[d("bc")]) == -1 and b.shared == 5
    assert b.spelling(AB) == (d("a"), d("b")) and b.spelling(CA) == (d("c"), d("a"))
    assert b.spelling(t("a")) is None  # it has a twin: drafted directly
    assert DRAFT_TOK.decode(b.own_ids(PROMPT)) == "<s>abcab"


def test_merges_learn_from_the_target_text_once():
    b = bridge()
    m = cross_mod.Merges(b, DV)
    assert not m.learn([TARGET_TOK.convert_tokens_to_ids("a")])  # a twin: nothing to spell
    assert m.learn([AB, AB]) and not m.learn([AB])
    a = DRAFT_TOK.convert_tokens_to_ids("a")
    assert m.spell == {(a, DRAFT_TOK.convert_tokens_to_ids("b")): AB} and bool(m.starts[a])


def proposed(engine: Engine) -> list[int]:
    """Every token the engine's drafter proposes from now on."""
    seen: list[int] = []
    drafter, propose = engine.drafter, engine.drafter.propose

    def spy(*args, **kwargs):
        p = propose(*args, **kwargs)
        seen.extend(p.tokens)
        return p

    drafter.propose = spy
    return seen


@pytest.mark.parametrize("merges", [False, True])
def test_greedy_identical_to_target_alone(merges, draft_model):
    alone = engine()
    eng = engine(cross_drafter(merges=merges, model=draft_model))
    seen = proposed(eng)
    for seed in range(6):
        tail = torch.randint(2, TV, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref, _ = alone.generate(PROMPT + tail, 24, Static(1))
        out, stats = eng.generate(PROMPT + tail, 24, Static(4))
        assert out == ref
        assert stats.new_tokens == sum(stats.accepted_per_round) + stats.bonus_tokens
    merged = {AB, CA} & set(seen)
    assert merged if merges else not merged  # only the n-gram cache can propose them


def test_a_token_map_in_the_drafters_vocabulary_composes_with_the_intersection():
    kept = torch.tensor([0, 1, 2, 3, 5])  # <s>, <|end|>, a, b, bc: no c
    eng = engine(cross_drafter(kept, prompt_tokens=False))
    seen = proposed(eng)
    ref, _ = engine().generate(PROMPT, 24, Static(1))
    assert eng.generate(PROMPT, 24, Static(4))[0] == ref
    assert eng.drafter.head_rows == 5 and TARGET_TOK.convert_tokens_to_ids("c") not in seen


# --- losslessness under sampling ---------------------------------------------------------

SAMPLING = Sampling(temperature=0.9)
RUNS = 3000


@torch.inference_mode()
def exact_joint(n: int) -> dict[tuple[int, ...], float]:
    out = {}
    for toks in itertools.product(range(TV), repeat=n):
        p = 1.0
        for i in range(n):
            p *= float(SAMPLING.probs(TARGET(torch.tensor([PROMPT + list(toks[:i])])).logits[0, -1])[toks[i]])
        out[toks] = p
    return out


def chi2_pvalue(eng: Engine, policy: str, n: int = 3) -> float:
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(RUNS):
        out, _ = eng.generate(PROMPT, n, parse_policy(policy).make(), SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    exact = exact_joint(n)
    keys = [k for k, p in exact.items() if p * RUNS >= 1]
    obs = [counts.get(k, 0) for k in keys] + [RUNS - sum(counts.get(k, 0) for k in keys)]
    exp = [exact[k] * RUNS for k in keys] + [RUNS * (1 - sum(exact[k] for k in keys))]
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("merges", [False, True])
def test_sampling_follows_the_target_distribution(merges, draft_model):
    eng = engine(cross_drafter(merges=merges, model=draft_model))
    seen = proposed(eng)
    p = chi2_pvalue(eng, "static:3")
    assert p > 1e-3, f"cross drafter (merges {merges}): chi-square p={p:.2g}"
    assert ({AB, CA} & set(seen)) if merges else True


def test_chi_square_catches_a_merged_draft_verified_against_the_drafters_distribution(monkeypatch):
    """The tempting wrong rule: a merged token counted as drawn from the drafter's scattered
    distribution (where it has no mass, so it is always accepted) instead of one-hot."""
    def wrong(self, first, ids, logits, sampling, gen):
        took = merge(self, first, ids, logits, sampling, gen)
        if took is None or sampling.greedy:
            return took
        return Take(took.token, took.pieces, torch.full((self.target_vocab,), 1e-6), took.forwards)

    merge = CrossVocab._merge
    monkeypatch.setattr(CrossVocab, "_merge", wrong)
    p = chi2_pvalue(engine(cross_drafter()), "static:3")
    assert p < 1e-3, f"the test did not notice a wrong merge rule (p={p:.2g})"


def test_generate_drafts_with_a_drafter_of_another_tokenizer(tiny_dirs):
    """`--draft` takes a model of another vocabulary (80 words vs the target's 64)."""
    base = ["generate", "--target", tiny_dirs["target"], "--prompt", "w1 w2 w3", "--max-new-tokens", 12,
            "--json", "--dtype", "float32"]
    alone = json.loads(cli(*base, "--no-draft").output.splitlines()[-1])
    for flag in ("--ngram-cache", "--no-ngram-cache"):
        r = cli(*base, "--draft", tiny_dirs["other_vocab"], "--drafter", "model", "--policy", "static:3", flag)
        assert r.exit_code == 0, r.output
        record = json.loads(r.output.splitlines()[-1])
        assert record["token_ids"] == alone["token_ids"] and record["drafter_forwards"] > 0


def test_calibrate_trim_generate_with_a_token_map_in_the_drafters_vocabulary(tmp_path, tiny_dirs):
    """The target's answers are counted in the drafter's own tokens, so its map trims its head."""
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 3}"}) + "\n" for i in range(6, 12)))
    other = tiny_dirs["other_vocab"]
    r = cli("calibrate", "--source", "target", "--data", data, "--out", tmp_path / "c.safetensors",
            "--max-new-tokens", 8, "--target", tiny_dirs["target"], "--draft", other)
    assert r.exit_code == 0, r.stderr
    assert len(Counts.load(tmp_path / "c.safetensors").counts) == 80  # the drafter's vocabulary, not the target's 64
    assert cli("trim", "--counts", tmp_path / "c.safetensors", "--keep", 30, "--draft", other,
               "--out", tmp_path / "tm").exit_code == 0
    base = ["generate", "--target", tiny_dirs["target"], "--prompt", "w1 w2 w3", "--max-new-tokens", 12, "--json"]
    alone = json.loads(cli(*base, "--no-draft").output.splitlines()[-1])
    r = cli(*base, "--draft", other, "--drafter", "model", "--policy", "static:3", "--token-map", tmp_path / "tm")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["token_ids"] == alone["token_ids"]
