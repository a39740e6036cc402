import json

import pytest
import torch
from click.testing import CliRunner
from conftest import noisy_copy, tiny_model
from test_engine import (
    PROMPT,
    RUNS,
    SAMPLING,
    SMALL_D,
    SMALL_T,
    chi2_pvalue,
    exact_joint,
    prompts,
)

from vocabtrim import kernels
from vocabtrim.calibrate import Counts, count_tokens, load_items, stdlib_files
from vocabtrim.cli import main
from vocabtrim.engine import Engine
from vocabtrim.heads import Head
from vocabtrim.hf import trimmed_assistant
from vocabtrim.policies import Policy
from vocabtrim.tokenmap import TokenMap, export, trim


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
    alone = Engine(target)
    ref = {tuple(p): alone.generate(p, 30, Policy(4))[0] for p in prompts(8)}
    # some misses; EOS (1) once, a duplicate id is refused
    kept = torch.tensor(list(dict.fromkeys(sorted({t for out in ref.values() for t in out})[:-3] + [1])))
    spec = Engine(target, draft, kept, prompt_tokens)
    assert spec.drafter.head.rows == len(kept)
    assert spec.cost_ratio < Engine(target, draft).cost_ratio
    accepted, grew = 0, False
    for p, out in ref.items():
        got, stats = spec.generate(list(p), 30, Policy(4))
        assert got == out
        accepted += sum(stats.accepted_per_round)
        grew |= spec.drafter.head.rows > len(kept)
        assert stats.cost_ratio == spec.cost_ratio  # c counts this generation's rows
    assert accepted > 0 and grew == prompt_tokens


# [0, 2, 3] holds the prompt's tokens; [0, 1] lacks them, so the head gains rows 2 and 3
KEPT = {"map": [0, 2, 3], "map+prompt": [0, 1]}


def sample_trimmed(runs: int, kept: list[int]) -> dict:
    eng = Engine(SMALL_T, SMALL_D, torch.tensor(kept))
    counts: dict = {}
    for seed in range(runs):
        out, _ = eng.generate(PROMPT, 3, Policy(2), SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    assert eng.drafter.head.ids.tolist() == sorted(set(kept) | set(PROMPT))
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


def counts_of(values: list[int], tokenizer="fp") -> Counts:
    return Counts(torch.tensor(values, dtype=torch.int64), {"tokenizer": tokenizer})


def test_top_k_is_deterministic_and_forces_special_tokens():
    c = counts_of([5, 9, 9, 0, 3, 9, 1, 0])
    assert trim(c, keep=3).kept_ids.tolist() == [1, 2, 5]  # ties: lower id first
    assert trim(c, keep=3, always=[7]).kept_ids.tolist() == [1, 2, 7]
    assert trim(c, keep=3, always=[2]).kept_ids.tolist() == [1, 2, 5]
    tm = trim(c, coverage=0.75)  # 27 of 36 counted tokens need ids 1, 2, 5
    assert tm.kept_ids.tolist() == [1, 2, 5] and tm.meta["coverage"] == pytest.approx(27 / 36)
    assert trim(c, coverage=0.76).k == 4
    for bad in ({"keep": 0}, {"keep": 9}, {"coverage": 1.5}, {}):
        with pytest.raises(Exception, match="K must|coverage|exactly one"):
            trim(c, **bad)


def test_count_resume_counts_each_item_once(tmp_path):
    items = [f"item{i}" for i in range(7)]
    seen = []

    def per_item(text, fail_at=None):
        if fail_at is not None and text == fail_at:
            raise KeyboardInterrupt
        seen.append(text)
        return [int(text[-1]), 9]

    out = tmp_path / "c.safetensors"
    with pytest.raises(KeyboardInterrupt):
        count_tokens(items, out, {"source": "raw"}, 12, lambda t: per_item(t, "item4"), save_every_s=0)
    assert Counts.load(out).meta["items_done"] == 4
    with pytest.raises(Exception, match="exists"):
        count_tokens(items, out, {"source": "raw"}, 12, per_item)
    with pytest.raises(Exception, match="other settings"):
        count_tokens(items, out, {"source": "target"}, 12, per_item, resume=True)
    c = count_tokens(items, out, {"source": "raw"}, 12, per_item, resume=True)
    assert seen == items
    assert c.counts.tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 7, 0, 0] and c.meta["tokens"] == 14


def test_load_items_formats(tmp_path):
    (tmp_path / "sb.jsonl").write_text('{"question_id": 1, "category": "qa", "turns": ["a?", "b?"]}\n'
                                       '{"prompt": "c"}\n\n{"text": "d"}\n')
    assert load_items(str(tmp_path / "sb.jsonl")) == ["a?", "c", "d"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    with pytest.raises(Exception, match="bad.jsonl:2"):
        load_items(str(tmp_path / "bad.jsonl"))
    assert len(load_items("humaneval")) == 164
    assert len(load_items("stdlib")) == len(stdlib_files()) > 100
    names = {f.name for f in stdlib_files()}
    assert "os.py" in names and not any("site-packages" in f.parts for f in stdlib_files())
    with pytest.raises(Exception, match="no calibration data"):
        load_items(str(tmp_path / "missing"))


def test_exports_round_trip(tmp_path):
    from safetensors import safe_open

    tm = TokenMap(torch.tensor([40, 3, 17, 1]), {"k": 4, "vocab_size": 64})
    export(tm, "sglang", tmp_path / "hot.pt")
    hot = torch.load(tmp_path / "hot.pt", weights_only=True)
    assert hot.dtype == torch.int64 and hot.tolist() == [40, 3, 17, 1]
    export(tm, "eagle3", tmp_path / "e3.safetensors")
    with safe_open(tmp_path / "e3.safetensors", "pt") as f:
        d2t, t2d, meta = f.get_tensor("d2t"), f.get_tensor("t2d"), f.metadata()
    assert d2t.dtype == torch.int64 and t2d.dtype == torch.bool and t2d.numel() == 64
    assert (torch.arange(4) + d2t).tolist() == [1, 3, 17, 40]
    assert t2d.nonzero().flatten().tolist() == [1, 3, 17, 40] and meta["draft_vocab_size"] == "4"


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.skipif(
    not kernels.packed_available(), reason="needs torch's fbgemm (x86)"))])
def test_transformers_drop_in_greedy_equals_target_alone(packed):
    target = tiny_model(64, seed=1)
    draft = noisy_copy(target, 0.2, seed=2)
    if packed:  # fbgemm fp16 layers, the `auto` choice on AVX2 CPUs
        target, draft = kernels.pack(target), kernels.pack(draft)
    kept = torch.arange(5, 64)
    assistant = trimmed_assistant(draft, kept)
    assert draft.get_output_embeddings().out_features == 64  # the original is untouched
    for p in prompts(4):
        ids = torch.tensor([p])
        ref = target.generate(ids, max_new_tokens=20, do_sample=False)
        got = target.generate(ids, max_new_tokens=20, do_sample=False, assistant_model=assistant,
                              num_assistant_tokens=4)
        assert got.tolist() == ref.tolist()
    logits = assistant(torch.tensor([[5, 6]])).logits[0, -1]
    assert torch.isinf(logits[:5]).all() and torch.isfinite(logits[5:]).all()


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_calibrate_trim_generate_export(tmp_path, tiny_dirs):
    data = tmp_path / "cal.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) for i in range(6)))
    counts = tmp_path / "counts.safetensors"
    r = cli("calibrate", "--source", "target", "--data", data, "--out", counts, "--max-new-tokens", 8,
            "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"])
    assert r.exit_code == 0, r.stderr
    c = Counts.load(counts)
    assert c.meta["source"] == "target" and c.meta["items_done"] == 6 and c.counts.sum() == c.meta["tokens"] > 0
    r = cli("trim", "--counts", counts, "--keep", 20, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 0, r.stderr
    tm = TokenMap.load(tmp_path / "tm")
    assert tm.k == 20 and 1 in tm.kept_ids.tolist()  # the EOS of the tiny tokenizer is forced in
    args = ("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"],
            "--prompt", "w7 w9 w3", "--max-new-tokens", 10, "--json")
    full, trimmed = cli(*args), cli(*args, "--token-map", tmp_path / "tm")
    map_only = cli(*args, "--token-map", tmp_path / "tm", "--no-prompt-tokens")
    for r in (full, trimmed, map_only):
        assert r.exit_code == 0, r.stderr
    full, trimmed, map_only = (json.loads(r.stdout) for r in (full, trimmed, map_only))
    assert trimmed["token_ids"] == map_only["token_ids"] == full["token_ids"]
    # the map lacks some of w7 w9 w3 (and the template's tokens): their rows cost a little
    assert map_only["cost_ratio"] < trimmed["cost_ratio"] < full["cost_ratio"]
    r = cli("export", "--token-map", tmp_path / "tm", "--format", "sglang", "--out", tmp_path / "hot.pt")
    assert r.exit_code == 0 and torch.load(tmp_path / "hot.pt", weights_only=True).numel() == 20


def test_cli_trim_rejects_counts_of_another_tokenizer(tmp_path, tiny_dirs):
    counts = tmp_path / "c.safetensors"
    (tmp_path / "t.txt").write_text("w1 w2 w3")
    assert cli("calibrate", "--source", "raw", "--data", tmp_path / "t.txt", "--out", counts,
               "--draft", tiny_dirs["other_vocab"]).exit_code == 0
    r = cli("trim", "--counts", counts, "--keep", 5, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and "another tokenizer" in r.stderr
    assert not (tmp_path / "tm").exists()


@pytest.mark.parametrize("args, words", [
    (["trim", "--counts", "missing.safetensors", "--keep", "4", "--out", "x"], "not found"),
    (["export", "--token-map", "nowhere", "--format", "sglang", "--out", "x.pt"], "no token map"),
])
def test_cli_bad_files(tmp_path, args, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(*args)
    assert r.exit_code == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_counts_file(tmp_path, tiny_dirs):
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"garbage")
    r = cli("trim", "--counts", bad, "--keep", 4, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 1 and "not a vocabtrim counts file" in r.stderr
