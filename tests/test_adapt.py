"""`vocabtrim adapt` and `--draft-adapter` (Issue 29) on tiny models: the adapter learns,
is saved with its provenance, resumes, merges at load time; the output stays the target's
(greedy identity, chi-square with an adapted drafter); bad files are refused."""

import json

import pytest
import torch
from conftest import (
    RUNS,
    chi2_pvalue,
    cli,
    exact_joint,
    save_tiny,
    small_pair,
    spec_engine,
)
from safetensors import safe_open
from test_engine import sample_joint

from vocabtrim import adapt, models
from vocabtrim.adapt import Settings, Trainer
from vocabtrim.errors import VocabtrimError
from vocabtrim.loading import load_drafter
from vocabtrim.target import TorchTarget


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 5} w{i + 2}"}) + "\n" for i in range(6)))
    return path


def run_adapt(dirs, prompts, out, *args):
    return cli("adapt", "--data", prompts, "--out", out, "--target", dirs["target"], "--draft", dirs["draft"],
               "--backend", "torch", "--max-new-tokens", 12, "--rank", 4, "--alpha", 8, "--lr", "0.003", *args)


def meta_of(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["vocabtrim"])


def test_adapt_learns_saves_its_provenance_and_generate_merges_it(tiny_dirs, prompts, tmp_path):
    out = tmp_path / "a.safetensors"
    r = run_adapt(tiny_dirs, prompts, out, "--epochs", 4)
    assert r.exit_code == 0, r.stderr
    meta = meta_of(out)
    assert meta["complete"] and meta["steps"] == 24 and len(meta["answers"]) == 6
    assert meta["settings"]["rank"] == 4 and meta["data"]["items"] == 6 and meta["target_tokenizer"]
    first, last = meta["losses"][:6], meta["losses"][-6:]
    assert sum(last) < 0.95 * sum(first), meta["losses"]  # the drafter moved towards the target
    args = ("generate", "--target", tiny_dirs["target"], "--prompt", "w1 w6 w3", "--max-new-tokens", 16, "--json",
            "--backend", "torch", "--dtype", "float32")
    alone = json.loads(cli(*args, "--no-draft").stdout)
    plain = json.loads(cli(*args, "--draft", tiny_dirs["draft"], "--drafter", "model", "--policy", "static:3").stdout)
    adapted = cli(*args, "--draft", tiny_dirs["draft"], "--drafter", "model", "--policy", "static:3",
                  "--draft-adapter", out)
    assert adapted.exit_code == 0, adapted.stderr
    adapted = json.loads(adapted.stdout)
    assert adapted["token_ids"] == plain["token_ids"] == alone["token_ids"]  # only the drafter changed
    assert adapted["acceptance_rate"] >= plain["acceptance_rate"]


def test_an_interrupted_adapt_resumes_where_it_stopped(tiny_dirs, prompts, tmp_path, monkeypatch):
    out = tmp_path / "a.safetensors"
    calls = []
    real = Trainer.step

    def step(self, *a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Trainer, "step", step)
    run_adapt(tiny_dirs, prompts, out)
    assert meta_of(out)["steps"] == 2 and not meta_of(out)["complete"]
    assert "exists" in run_adapt(tiny_dirs, prompts, out).stderr  # no silent restart over it
    r = run_adapt(tiny_dirs, prompts, out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert meta_of(out)["steps"] == 6 and meta_of(out)["complete"] and len(calls) == 3 + 4
    assert "other settings" in run_adapt(tiny_dirs, prompts, out, "--resume", "--rank", 8).stderr


def test_sampled_output_with_an_adapted_drafter_is_the_targets(tmp_path):
    small_t, small_d = small_pair()
    draft_dir = save_tiny(tmp_path / "d", model=small_d)
    drafter = models.load(str(draft_dir), "float32")
    trainer = Trainer(drafter, Settings(rank=2, alpha=4, lr=0.05), None)
    teacher = TorchTarget(small_t)
    for seed in range(8):
        prompt, answer = [2, 3], torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        trainer.step(prompt, answer, teacher.logits(prompt + answer[:-1], len(answer)))
    out = tmp_path / "a.safetensors"
    from safetensors.torch import save_file
    save_file(trainer.tensors(), str(out), metadata={"vocabtrim": json.dumps({
        "format": adapt.FORMAT, "settings": {**Settings(rank=2, alpha=4, lr=0.05).__dict__},
        "drafter": "small", "drafter_fingerprint": adapt.base_fingerprint(drafter.model.config, drafter.tokenizer)})})
    adapted = load_drafter(str(draft_dir), "float32", adapter=out).model
    assert not torch.equal(adapted.model.layers[0].self_attn.q_proj.weight, small_d.model.layers[0].self_attn.q_proj.weight)
    p = chi2_pvalue(sample_joint(RUNS, engine=spec_engine(small_t, adapted)), exact_joint(3), RUNS)
    assert p > 1e-3, f"adapted drafter: chi-square p={p:.2g}"


def test_bad_adapters_are_refused_before_models_load(tiny_dirs, prompts, tmp_path):
    args = ("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--prompt", "w1",
            "--backend", "torch")
    r = cli(*args, "--draft-adapter", tmp_path / "missing.safetensors")
    assert r.exit_code == 1 and "adapter not found" in r.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an adapter")
    r = cli(*args, "--draft-adapter", junk)
    assert r.exit_code == 1 and "not an adapter written by vocabtrim adapt" in r.stderr
    r = run_adapt(tiny_dirs, prompts, junk)  # refuses to replace what it did not write
    assert r.exit_code == 1 and "not an adapter" in r.stderr and junk.read_bytes() == b"not an adapter"
    out = tmp_path / "a.safetensors"
    assert run_adapt(tiny_dirs, prompts, out, "--limit", 2).exit_code == 0
    r = cli("generate", "--target", tiny_dirs["other_vocab"], "--draft", tiny_dirs["other_vocab"], "--prompt", "w1",
            "--backend", "torch", "--draft-adapter", out)
    assert r.exit_code == 1 and "adapts another drafter" in r.stderr
    r = cli("generate", "--target", tiny_dirs["target"], "--no-draft", "--prompt", "w1", "--draft-adapter", out)
    assert r.exit_code == 1 and "--draft-adapter" in r.stderr


def test_read_refuses_a_safetensors_file_of_someone_else(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(VocabtrimError, match="not an adapter"):
        adapt.read(path)
