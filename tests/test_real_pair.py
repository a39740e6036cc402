"""Integration on the real default pair (auto dtype). Fetches and converts it on first use."""

import pytest
from conftest import RealPair, cli, spec_engine

from vocabtrim import catalog, models, prompts
from vocabtrim.assembly import Assembler, Parts, EngineSettings, parse_method
from vocabtrim.bench.identity import divergence
from vocabtrim.drafters import Bridge, CrossVocab, ModelDrafter
from vocabtrim.engine import Engine, Stop
from vocabtrim.errors import VocabtrimError
from vocabtrim.policies import Static, parse_policy

pytestmark = pytest.mark.real

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    \"\"\"Merge two sorted lists.\"\"\"",
    "Explain in two sentences what a hash map is.",
]


def test_greedy_identical_to_target_alone_and_stats_consistent(real_pair):
    target, draft = real_pair
    alone, spec = Engine(target.as_target()), spec_engine(target.model, draft.model)
    stop = Stop(prompts.stop_token_ids(target))
    accepted = 0
    for text in PROMPTS:
        ids = prompts.encode_prompt(target.tokenizer, text)
        ref, _ = alone.generate(ids, 32, Static(5), stop=stop)
        out, s = spec.generate(ids, 32, Static(5), stop=stop)
        d = divergence(target.as_target(), ids, ref, out)
        assert d is None or d["tie"], f"greedy output differs from the target alone: {d}"
        assert s.new_tokens == len(out) == sum(s.accepted_per_round) + s.bonus_tokens
        assert 0 not in s.draft_lengths and s.target_forwards >= len(s.draft_lengths) + 1
        assert 0.2 < s.cost_ratio < 0.45  # 0.5B drafter vs 1.5B target, full heads
        accepted += sum(s.accepted_per_round)
    assert accepted > 20


@pytest.fixture(scope="module")
def target_alone() -> tuple[list[int], list[int]]:
    """(prompt ids, the target's own greedy answer) for PROMPTS[1], computed once."""
    target, _ = RealPair.get()
    ids = prompts.encode_prompt(target.tokenizer, PROMPTS[1])
    ref, _ = Engine(target.as_target()).generate(ids, 32, Static(1), stop=Stop(prompts.stop_token_ids(target)))
    return ids, ref


@pytest.mark.parametrize("spec", ["static:3", "adaedl", "confidence:0.4", "heuristic", "svip"])
def test_greedy_identical_with_every_policy(real_pair, target_alone, spec):
    target, draft = real_pair
    ids, ref = target_alone
    stop = Stop(prompts.stop_token_ids(target))
    out, s = spec_engine(target.model, draft.model).generate(ids, 32, parse_policy(spec).make(), stop=stop)
    d = divergence(target.as_target(), ids, ref, out)
    assert d is None or d["tie"], f"{spec}: greedy output differs from the target alone: {d}"
    assert s.drafter_forwards >= sum(s.draft_lengths)  # the prefill is not a drafting forward


def test_greedy_identical_with_cost_policy_on_this_machines_profile(real_pair, target_alone):
    target, draft = real_pair
    ids, ref = target_alone
    # the full-head model drafter, its costs from the pair's profile: cached, or a quick one now
    eng, policy = Assembler(Parts(target, draft)).build(parse_method("sd+cost"))
    out, s = eng.generate(ids, 32, policy, stop=Stop(prompts.stop_token_ids(target)))
    d = divergence(target.as_target(), ids, ref, out)
    assert d is None or d["tie"], f"cost: greedy output differs from the target alone: {d}"
    assert max(s.draft_lengths, default=0) <= policy.costs.cap


@pytest.mark.parametrize("kind", ["suffix", "hybrid"])
def test_greedy_identical_with_suffix_and_hybrid_drafters(real_pair, target_alone, kind):
    target, draft = real_pair
    ids, ref = target_alone
    eng, _ = Assembler(Parts(target, draft)).build(parse_method(kind))
    out, s = eng.generate(ids, 32, Static(5), stop=Stop(prompts.stop_token_ids(target)))
    d = divergence(target.as_target(), ids, ref, out)
    assert d is None or d["tie"], f"{kind}: greedy output differs from the target alone: {d}"
    if kind == "suffix":  # the answer restates the prompt's signature: suffix drafts
        assert s.suffix_rounds > 0


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_greedy_identical_with_a_quantized_drafter(real_pair, target_alone, scheme):
    """A bf16-computing int8/int4 drafter beside the target in its own dtype: the output
    stays the target's, and the drafts are still mostly accepted."""
    target, draft = real_pair
    ids, ref = target_alone
    out, s = spec_engine(target.model, models.quantize(draft, scheme).model).generate(
        ids, 32, Static(5), stop=Stop(prompts.stop_token_ids(target)))
    d = divergence(target.as_target(), ids, ref, out)
    assert d is None or d["tie"], f"{scheme}: greedy output differs from the target alone: {d}"
    assert sum(s.accepted_per_round) > 0.6 * sum(s.draft_lengths)


def test_stop_ids_include_end_of_turn(real_pair):
    target, _ = real_pair
    assert target.tokenizer.convert_tokens_to_ids("<|im_end|>") in prompts.stop_token_ids(target)


def test_the_pair_drafts_in_one_vocabulary(real_pair):
    """The sd methods draft the target's own ids: the two tokenizers are one (no bridge),
    and a model drafter of the target's vocabulary is taken, one of another refused."""
    target, draft = real_pair
    assert Bridge.between(target, draft) is None
    vocab = target.as_target().vocab_size
    assert ModelDrafter(draft.model, vocab).head_rows == vocab
    with pytest.raises(VocabtrimError, match="vocabulary"):
        ModelDrafter(draft.model, vocab - 1)


def test_calibrate_trim_generate_on_real_pair(fresh_real_pair, tmp_path):
    """Target-generated counts on two HumanEval prompts, a trimmed head, same greedy output
    (on the torch target, the one `real_pair` re-scores with). The commands load the pair
    themselves, one at a time; the shared pair's target loads after them."""
    import json

    def ok(*args) -> str:
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        return r.stdout

    counts, tm = tmp_path / "counts.safetensors", tmp_path / "tm"
    ok("calibrate", "--source", "target", "--data", "humaneval", "--skip", 100, "--limit", 2,
       "--max-new-tokens", 24, "--out", counts, "--backend", "torch")
    ok("trim", "--counts", counts, "--keep", 4096, "--out", tm)
    prompt = ("--prompt", "Write a Python function that reverses a string.", "--max-new-tokens", 24,
              "--json", "--backend", "torch")
    alone = json.loads(ok("generate", "--no-draft", *prompt))
    trimmed = json.loads(ok("generate", "--token-map", tm, *prompt))
    target, _ = fresh_real_pair
    ids = prompts.encode_prompt(target.tokenizer, prompt[1])
    d = divergence(target.as_target(), ids, alone["token_ids"], trimmed["token_ids"])
    assert d is None or d["tie"], d
    assert 0.2 < trimmed["cost_ratio"] < 0.3  # 4096 of 151,936 head rows: below the full 0.32


@pytest.mark.parametrize("merges", [False, True])
def test_greedy_identical_with_a_drafter_of_another_tokenizer(real_pair, target_alone, merges):
    """The built-in SmolLM2-135M drafts for the Qwen2.5 target across vocabularies."""
    target, _ = real_pair
    ids, ref = target_alone
    smol = models.load(catalog.CROSS_DRAFT)
    bridge = Bridge.between(target, smol)
    assert bridge is not None and bridge.shared > 35_000
    im_end = target.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in bridge.has_twin  # the end of the turn can be drafted
    vocab = target.as_target().vocab_size
    cross = CrossVocab(bridge, smol.model.get_output_embeddings().out_features, vocab, merges)
    eng = Engine(target.as_target(), ModelDrafter(smol.model, vocab, vocab=cross))
    out, s = eng.generate(ids, 32, Static(5), stop=Stop(prompts.stop_token_ids(target)))
    d = divergence(target.as_target(), ids, ref, out)
    assert d is None or d["tie"], f"cross-vocabulary drafter: greedy output differs from the target alone: {d}"
    assert sum(s.accepted_per_round) > 5 and s.cost_ratio < 0.1
    assert bool(cross.merges and cross.merges.spell) == merges  # the prompt taught it merges


def test_greedy_identical_on_ggml_with_a_hybrid_int4_drafter(fresh_real_pair):
    """The default target's own Q4_K_M file on llama.cpp's kernels: a cost-ruled hybrid with
    the int4 drafter on torch writes what that target writes alone (or diverges at a tie of
    the ggml target's tolerance), and llama.cpp's own loop agrees with ours. Of the shared
    pair only the drafter loads, beside no torch copy of the target."""
    pytest.importorskip("llama_cpp")
    from vocabtrim.ggml import LlamaCppAlone
    from vocabtrim.sampling import Sampling

    target = models.load(catalog.DEFAULT_TARGET, on="ggml")
    assembler = Assembler(Parts(target, fresh_real_pair[1], settings=EngineSettings(quant="int4")))
    stop = Stop(prompts.stop_token_ids(target))
    (alone, p0), (hybrid, p1) = (assembler.build(parse_method(m)) for m in ("ar", "hybrid+q4+cost"))
    peer = LlamaCppAlone(target.gguf, 4096, Sampling(), 0, stop.token_ids)
    for text in PROMPTS:
        ids = prompts.encode_prompt(target.tokenizer, text)
        ref, _ = alone.generate(ids, 48, p0, stop=stop)
        for out, _ in (hybrid.generate(ids, 48, p1, stop=stop), peer(ids, 48)):
            d = divergence(assembler.target, ids, ref, out)
            assert d is None or d["tie"], f"greedy output on ggml differs from its target alone: {d}"
