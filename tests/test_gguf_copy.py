"""A drafter's GGUF file rewritten into a cached copy (gguf_copy): with a LoRA adapter merged
in, the native engine computes what torch computes with peft's merge of the same adapter;
requantized, its matrices are Q4_0/Q8_0 and its drafts still leave the target's output as
it was."""

import json
import os

import gguf
import numpy as np
import pytest
import torch
from conftest import (
    RUNS,
    assert_greedy_identical_with_a_drafter,
    chi2_pvalue,
    cli,
    exact_joint,
    model_drafter,
    noisy_copy,
    quantized_gguf,
    save_tiny,
    small_counts,
    small_pair,
    tiny_model,
    write_gguf,
)
from safetensors.torch import save_file
from test_native_target import tiny_qwen2

from vocabtrim import adapt, gguf_copy, models
from vocabtrim.adapt import Settings, Trainer
from vocabtrim.errors import VocabtrimError
from vocabtrim.loading import load_drafter
from vocabtrim.engine import Engine
from vocabtrim.native_target import NativeModel, NativeTarget
from vocabtrim.target import TorchTarget

SEQ = [int(t) for t in np.random.default_rng(1).integers(2, 64, 24)]
T = gguf.GGMLQuantizationType


def make_adapter(draft_dir, out):
    """A few steps of `vocabtrim adapt`'s trainer towards another model, saved as it saves."""
    drafter = models.load(str(draft_dir), "float32")
    settings = Settings(rank=2, alpha=4, lr=0.05)
    trainer = Trainer(drafter, settings, None)
    teacher = TorchTarget(tiny_model(64, seed=7))
    for seed in range(3):
        prompt, answer = [2, 3], torch.randint(2, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        trainer.step(prompt, answer, teacher.logits(prompt + answer[:-1], len(answer)))
    save_file(trainer.tensors(), str(out), metadata={"vocabtrim": json.dumps({
        "format": adapt.FORMAT, "settings": settings.__dict__, "drafter": "tiny",
        "drafter_fingerprint": adapt.base_fingerprint(drafter.model.config, drafter.tokenizer)})})
    return out, drafter


@pytest.mark.parametrize("arch, qtype", [("qwen2", None), ("llama", None), ("qwen2", T.Q8_0), ("qwen2", T.Q4_K)],
                         ids=["qwen2-f32", "llama-f32", "qwen2-q8_0", "qwen2-q4_k"])
def test_the_merged_file_computes_the_adapted_drafter(arch, qtype, tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "cache"))
    model = tiny_qwen2(hidden=256) if qtype == T.Q4_K else tiny_model(64, seed=1)  # K-quants: rows of 256
    path = tmp_path / "d.gguf"
    if qtype is None:
        write_gguf(model, path, arch)
    else:
        quantized_gguf(model, path, qtype, monkeypatch, arch)  # the model's weights become the file's
    adapter, drafter = make_adapter(save_tiny(tmp_path / "d", model=model), tmp_path / "a.safetensors")
    merged = gguf_copy.merged(path, adapter, drafter.config, drafter.tokenizer)
    with torch.inference_mode():
        want = TorchTarget(load_drafter(str(tmp_path / "d"), "float32", adapter=adapter).model).logits(SEQ, len(SEQ))
    got, base = NativeTarget(merged).logits(SEQ, len(SEQ)), NativeTarget(path).logits(SEQ, len(SEQ))
    assert (base - want).abs().max() > 1e-3  # the adapter changes the drafter
    if qtype is None:
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    else:  # requantized weights, 8-bit activations: close, not equal
        assert (got - want).abs().max() < 0.05 * want.abs().max()
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(merged).tensors}
    assert kinds["blk.0.attn_q.weight"] == (T.F32 if qtype is None else T.Q8_0)  # a K-quant: Q8_0
    inode = merged.stat().st_ino
    assert gguf_copy.merged(path, adapter, drafter.config, drafter.tokenizer) == merged  # made once
    assert merged.stat().st_ino == inode  # not written again


def test_an_adapter_of_another_drafter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "cache"))
    adapter, _ = make_adapter(save_tiny(tmp_path / "d", seed=1), tmp_path / "a.safetensors")
    other = models.load(str(save_tiny(tmp_path / "o", vocab=80, seed=2)), "float32")
    with pytest.raises(VocabtrimError, match="adapts another drafter"):
        gguf_copy.merged(write_gguf(tiny_model(80, seed=2), tmp_path / "o.gguf"), adapter, other.config,
                              other.tokenizer)
    assert not (tmp_path / "cache" / "adapted").exists()


def test_a_change_of_another_shape_is_refused(tmp_path):
    deltas = {"blk.0.attn_q.weight": np.zeros((5, 32), np.float32)}
    with pytest.raises(VocabtrimError, match=r"blk.0.attn_q.weight as a \[5, 32\] matrix; m.gguf holds \[32, 32\]"):
        gguf_copy._merge(write_gguf(tiny_model(64, seed=1), tmp_path / "m.gguf"), deltas)
    deltas = {"blk.9.attn_q.weight": np.zeros((32, 32), np.float32)}
    with pytest.raises(VocabtrimError, match="m.gguf holds none"):
        gguf_copy._merge(tmp_path / "m.gguf", deltas)


def test_generate_drafts_with_the_adapter_on_the_native_engine(tmp_path):
    env = {"VOCABTRIM_CACHE": str(tmp_path / "cache")}
    target = write_gguf(tiny_model(64, seed=1), tmp_path / "t.gguf")
    draft = write_gguf(noisy_copy(tiny_model(64, seed=1), 0.3, seed=2), tmp_path / "d.gguf")
    adapter, _ = make_adapter(draft, tmp_path / "a.safetensors")
    args = ("generate", "--target", target, "--prompt", "w5 w6 w7", "--max-new-tokens", 12, "--json",
            "--backend", "native")
    alone = cli(*args, "--no-draft", env=env)
    adapted = cli(*args, "--draft", draft, "--drafter", "model", "--policy", "static:3", "--draft-adapter", adapter,
                  env=env)
    assert adapted.exit_code == 0, adapted.stderr + str(adapted.exception)
    assert "torch" not in adapted.stderr, adapted.stderr  # not "drafts on torch"
    assert json.loads(adapted.stdout)["token_ids"] == json.loads(alone.stdout)["token_ids"]
    assert len(list((tmp_path / "cache" / "adapted").glob("*.gguf"))) == 1


@pytest.mark.parametrize("scheme, qtype", [("int4", T.Q4_0), ("int8", T.Q8_0)])
def test_requantized_matrices(scheme, qtype, tmp_path, monkeypatch):
    """Every matrix but the token embedding in the scheme's format, vectors as they were,
    logits close to the file's; made once; a file at no more bits is its own copy."""
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tiny_model(64, seed=1), tmp_path / "d.gguf")
    copy = gguf_copy.requantized(path, scheme)
    kinds = {t.name: (t.tensor_type, len(t.shape)) for t in gguf.GGUFReader(copy).tensors}
    assert kinds["token_embd.weight"] == (T.F32, 2) and kinds["output.weight"] == (qtype, 2)
    assert all(kind == (qtype if name != "token_embd.weight" else T.F32)
               for name, (kind, dims) in kinds.items() if dims == 2)
    assert all(kind == T.F32 for kind, dims in kinds.values() if dims == 1)
    want, got = NativeTarget(path).logits(SEQ, len(SEQ)), NativeTarget(copy).logits(SEQ, len(SEQ))
    assert (got - want).abs().max() < (0.25 if scheme == "int4" else 0.02) * want.abs().max()
    inode = copy.stat().st_ino
    assert gguf_copy.requantized(path, scheme) == copy and copy.stat().st_ino == inode  # made once
    assert gguf_copy.requantized(copy, scheme) == copy  # nothing left to lower


def test_the_cache_keeps_the_copies_used_last(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_copy, "KEEP", 2)
    files = [write_gguf(tiny_model(64, seed=s), tmp_path / f"d{s}.gguf") for s in range(3)]
    first = gguf_copy.requantized(files[0], "int4")
    gguf_copy.requantized(files[1], "int4")
    os.utime(first, (1, 1))  # used long ago
    assert gguf_copy.requantized(files[1], "int4").is_file()  # used now
    gguf_copy.requantized(files[2], "int4")
    assert not first.exists() and len(list((tmp_path / "cache" / "requantized").glob("*.gguf"))) == 2


def test_a_requantized_native_drafter_leaves_the_output_the_targets(tmp_path, monkeypatch):
    """Greedy: token for token the target alone's; sampled: the target's distribution (the
    chi-square that fails for a wrong verifier); through the CLI, drafting on the engine."""
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "cache"))
    model = tiny_model(64, seed=1)
    target = NativeTarget(write_gguf(model, tmp_path / "t.gguf"), threads=1)
    draft = write_gguf(noisy_copy(model, 0.3, seed=2), tmp_path / "d.gguf")
    drafter = NativeModel(gguf_copy.requantized(draft, "int4"), context=256)
    assert_greedy_identical_with_a_drafter(target, model, model_drafter(drafter, model, None))
    small_t, small_d = small_pair()
    drafter = NativeModel(gguf_copy.requantized(write_gguf(small_d, tmp_path / "sd.gguf"), "int4"), context=64)
    eng = Engine(NativeTarget(write_gguf(small_t, tmp_path / "s.gguf"), threads=1, context=64),
                 model_drafter(drafter, small_t))
    p = chi2_pvalue(small_counts(eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations with a requantized drafter do not follow the target (chi-square p={p:.2g})"
    env = {"VOCABTRIM_CACHE": str(tmp_path / "cli-cache")}
    args = ("generate", "--target", tmp_path / "t.gguf", "--prompt", "w5 w6 w7", "--max-new-tokens", 12, "--json",
            "--backend", "native")
    alone = cli(*args, "--no-draft", env=env)
    quick = cli(*args, "--draft", draft, "--drafter", "model", "--policy", "static:3", "--draft-quant", "int4", env=env)
    assert quick.exit_code == 0, quick.stderr + str(quick.exception)
    assert "torch" not in quick.stderr, quick.stderr  # drafted on the engine, not quantized on torch
    assert json.loads(quick.stdout)["token_ids"] == json.loads(alone.stdout)["token_ids"]
    assert len(list((tmp_path / "cli-cache" / "requantized").glob("*.gguf"))) == 1
