"""NativeTarget (csrc/model.c): a tiny GGUF's logits against the torch target's, and
batch invariance: every position's logits the same bits scored alone, in batches, after a
crop, on 1 and 2 threads, on every instruction-set path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    RUNS,
    assert_greedy_identical_with_a_drafter,
    chi2_pvalue,
    exact_joint,
    model_drafter,
    noisy_copy,
    quantized_gguf,
    small_counts,
    small_pair,
    tiny_model,
    write_gguf,
)
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from vocabtrim import ggml, models, native, native_target
from vocabtrim.engine import Engine
from vocabtrim.ggml import GgmlTarget
from vocabtrim.errors import VocabtrimError
from vocabtrim.target import TorchTarget

try:
    native.lib()
except VocabtrimError as e:  # pragma: no cover - a build without a C compiler
    pytest.skip(str(e), allow_module_level=True)

from vocabtrim.native_target import NativeTarget  # noqa: E402

SEQ = [int(t) for t in np.random.default_rng(0).integers(2, 64, 40)]


def tiny_qwen2(tie: bool = False, hidden: int = 32) -> Qwen2ForCausalLM:
    """Qwen2's shape: q/k/v biases (random, so they count), no output bias. From 256 wide
    its matmuls are big enough for the pool to split them over threads."""
    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie, eos_token_id=1, bos_token_id=0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
        model.get_output_embeddings().weight.mul_(8)
    return model


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    return write_gguf(tiny_qwen2(hidden=256), tmp_path_factory.mktemp("native") / "qwen2.gguf")


def quantized_qwen2(tmp_path_factory, qtype: str):
    """A 256-wide tiny Qwen2 in a GGUF of `qtype` matrices, and the model it computes."""
    model = tiny_qwen2(hidden=256)
    path = quantized_gguf(model, tmp_path_factory.mktemp("native") / f"{qtype}.gguf", native_type(qtype),
                          pytest.MonkeyPatch())
    return path, model


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory):
    return quantized_qwen2(tmp_path_factory, "Q8_0")


@pytest.fixture(scope="module")
def q5_gguf(tmp_path_factory):
    """Q5_0, what the default drafter's 896-wide matrices are stored in."""
    return quantized_qwen2(tmp_path_factory, "Q5_0")


@pytest.fixture(scope="module")
def q41_gguf(tmp_path_factory):
    """Q4_1, what the cross-vocabulary drafter's file is stored in (a minimum per block)."""
    return quantized_qwen2(tmp_path_factory, "Q4_1")


@pytest.fixture(scope="module", params=["Q4_K", "Q5_K", "Q6_K"])
def k_gguf(request, tmp_path_factory):
    """A K-quant file (what the default target's Q4_K_M holds: Q4_K and Q6_K), its head tied
    for Q5_K: the SIMD paths read these packed (native.pack), the embedding by rows raw."""
    model = tiny_qwen2(hidden=256, tie=request.param == "Q5_K")
    path = quantized_gguf(model, tmp_path_factory.mktemp("native") / f"{request.param}.gguf",
                          native_type(request.param), pytest.MonkeyPatch())
    return path, model


def test_k_quant_logits_close_to_torch_and_batch_invariant(k_gguf):
    path, model = k_gguf
    target = NativeTarget(path, threads=2)
    got = target.logits(SEQ, len(SEQ))
    with torch.inference_mode():
        want = TorchTarget(model).logits(SEQ, len(SEQ)).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # 8-bit activations: close, not equal
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    alone = one_at_a_time(target)
    assert same_bits(alone, got)
    target.reset()
    assert same_bits(target.logits(SEQ[:8], 8), alone[:8])


def native_type(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


@pytest.mark.parametrize("make", [lambda: tiny_qwen2(), lambda: tiny_qwen2(tie=True), lambda: tiny_model(64, seed=1)],
                         ids=["qwen2", "qwen2-tied", "llama-shaped"])
def test_logits_match_the_torch_target(make, tmp_path):
    model = make()
    target = NativeTarget(write_gguf(model, tmp_path / "m.gguf"), threads=2)
    ref = TorchTarget(model)
    with torch.inference_mode():
        for seq, n in ((SEQ[:25], 25), (SEQ[:31], 3), (SEQ, 9)):  # a prefill, then steps on the cache
            got, want = target.logits(seq, n), ref.logits(seq, n).float()
            assert torch.allclose(got, want, atol=2e-5, rtol=1e-5), (got - want).abs().max()


def tiny_llama(rope_scaling: dict | None) -> LlamaForCausalLM:
    torch.manual_seed(4)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1, bos_token_id=0,
                      rope_scaling=rope_scaling)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8)
    return model


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # head dim 8: factors 1, 3.1, 8, 8


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["llama", "llama3-rope"])
def test_llama_files_are_the_models_on_every_backend(rope, tmp_path):
    """The llama architecture (q and k rows permuted in the file, rotation by pairs) and Llama
    3's rope scaling (the file's rope_freqs.weight): the native engine, the file loaded for
    torch and llama.cpp all compute the torch model's logits; left out, the factors would
    move them (checked)."""
    model = tiny_llama(rope)
    want = assert_every_backend_computes(model, write_gguf(model, tmp_path / "m.gguf", arch="llama"))
    with torch.inference_mode():
        unscaled = TorchTarget(tiny_llama(None)).logits(SEQ, len(SEQ)).float()
    assert torch.allclose(unscaled, want, atol=2e-5, rtol=1e-5) == (rope is None)


def assert_every_backend_computes(model, path: Path) -> torch.Tensor:
    """The GGUF at `path` gives `model`'s logits on the native engine, on torch from the file
    and on llama.cpp (when installed); the native ones the same bits scored one at a time.
    Returns `model`'s logits."""
    with torch.inference_mode():
        want = TorchTarget(model).logits(SEQ, len(SEQ)).float()
        from_file = models.load(str(path), "float32", "torch").as_target().logits(SEQ, len(SEQ)).float()
    target = NativeTarget(path, threads=2)
    got = target.logits(SEQ, len(SEQ))
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-5) and torch.allclose(from_file, want, atol=2e-5, rtol=1e-5)
    assert same_bits(one_at_a_time(target), got)
    if ggml.available():
        assert torch.allclose(GgmlTarget(path, threads=2).logits(SEQ, len(SEQ)), want, atol=1e-3)
    return want


def test_qwen3_files_are_the_models_on_every_backend(tmp_path):
    """Qwen3: heads wider than the hidden size over their count (16 against 8 here, as in
    its small models) and an RMSNorm of each q and k head before RoPE: the native engine,
    the file loaded for torch and llama.cpp compute the torch model's logits, the native
    ones the same bits scored alone and in a batch."""
    torch.manual_seed(5)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
                      eos_token_id=1, bos_token_id=0)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # norms that count
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5), layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
        model.get_output_embeddings().weight.mul_(8)
    assert_every_backend_computes(model, write_gguf(model, tmp_path / "qwen3.gguf", arch="qwen3"))


@pytest.mark.parametrize("which", ["q8_0", "q5_0", "q4_1"])
def test_quantized_logits_close_to_torch(which, q8_gguf, q5_gguf, q41_gguf):
    path, model = {"q8_0": q8_gguf, "q5_0": q5_gguf, "q4_1": q41_gguf}[which]
    got = NativeTarget(path, threads=2).logits(SEQ, len(SEQ))
    with torch.inference_mode():
        want = TorchTarget(model).logits(SEQ, len(SEQ)).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # 8-bit activations: close, not equal
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def one_at_a_time(target: NativeTarget) -> torch.Tensor:
    target.reset()
    return torch.cat([target.logits(SEQ[:i], 1) for i in range(1, len(SEQ) + 1)])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("which", ["f32", "q8_0", "q5_0", "q4_1"])
def test_batch_invariance(which, f32_gguf, q8_gguf, q5_gguf, q41_gguf):
    path = {"f32": f32_gguf, "q8_0": q8_gguf[0], "q5_0": q5_gguf[0], "q4_1": q41_gguf[0]}[which]
    target = NativeTarget(path, threads=2)
    alone = one_at_a_time(target)
    for n in (2, 3, 5, 8, 16, 32, len(SEQ)):
        target.reset()
        if n < len(SEQ):
            target.logits(SEQ[:len(SEQ) - n], 1)
        assert same_bits(target.logits(SEQ, n), alone[-n:]), n
    # a crop: back to 25 tokens, then other tokens, against a fresh engine one at a time
    other = SEQ[:25] + [5, 6, 7, 8]
    got = target.logits(other, 4)
    fresh = NativeTarget(path, threads=1)
    assert same_bits(got, torch.cat([fresh.logits(other[:i], 1) for i in range(26, 30)]))
    assert same_bits(one_at_a_time(NativeTarget(path, threads=1)), alone)
    # 4 threads: attention items of part of the rows (one kv head's rows split between threads)
    assert same_bits(NativeTarget(path, threads=4).logits(SEQ, len(SEQ)), alone)
    for isa in native.available_isas():
        t = NativeTarget(path, threads=2, isa=isa)
        t.logits(SEQ[:10], 1)
        assert same_bits(t.logits(SEQ, 30), alone[-30:]), isa


def test_long_sequences_go_in_chunks(f32_gguf):
    seq = [int(t) for t in np.random.default_rng(1).integers(2, 64, 150)]
    target = NativeTarget(f32_gguf, threads=2)
    whole = target.logits(seq, 100)  # 150 rows: three native calls, outputs spanning two
    target.reset()
    target.logits(seq[:120], 1)
    assert same_bits(target.logits(seq, 30), whole[-30:])


def test_an_empty_cache_is_not_resident(tmp_path):
    """The key and value caches are reserved, not written: a model's resident memory grows
    with the tokens it caches, not with its context (the real target's 4096-token key cache
    is 117 MB)."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc/self/status to read resident memory from")
    rss = lambda: int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS")))  # noqa: E731
    model = tiny_qwen2(hidden=256)
    model.config.max_position_embeddings = 1 << 20
    path = write_gguf(model, tmp_path / "long.gguf")
    before = rss()
    target = NativeTarget(path, context=1 << 20)  # 2 x 1 GB of caches
    target.logits(SEQ, 1)
    assert target.context == 1 << 20 and rss() - before < 64 << 10  # KB


def test_the_native_backend_takes_the_models_trained_context(tmp_path):
    """Its cache is reserved, not resident (above), so the native backend caps nothing: a
    32768-token model holds 32768 tokens there (ggml's eager cache stops at 8192)."""
    from vocabtrim import models

    model = tiny_qwen2(hidden=64)
    model.config.max_position_embeddings = 1 << 15
    path = write_gguf(model, tmp_path / "long.gguf")
    loaded = models.load(str(path), "float32", "native")
    assert loaded.context == 1 << 15 and loaded.as_target().context == 1 << 15
    if not ggml.available():
        return
    from conftest import cli

    (tmp_path / "p.txt").write_text("w2" * 5000)  # > 8192 tokens
    r = cli("generate", "--target", path, "--backend", "ggml", "--no-draft", "--raw", "--prompt-file",
            tmp_path / "p.txt", "--max-new-tokens", 1)
    want = "on the ggml backend (the model was made for 32768, which --backend native holds)\n"
    assert r.exit_code == 1 and r.stderr.endswith(want), r.stderr


def test_refusals(tmp_path, monkeypatch):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(VocabtrimError, match="not gemma: use the ggml backend"):
        NativeTarget(tmp_path / "g.gguf")
    path = quantized_gguf(tiny_qwen2(hidden=256), tmp_path / "tq1_0.gguf", native_type("TQ1_0"), monkeypatch)
    with pytest.raises(VocabtrimError, match="is TQ1_0, which the native engine does not read"):
        NativeTarget(path)
    q_norm = {"blk.0.attn_q_norm.weight": np.ones(8, np.float32)}  # Qwen3's, say: not read, so refused
    with pytest.raises(VocabtrimError, match="tensor blk.0.attn_q_norm.weight is not one the native engine reads"):
        NativeTarget(write_gguf(tiny_qwen2(), tmp_path / "q_norm.gguf", extra=q_norm))
    read, path = native_target.read_gguf, write_gguf(tiny_qwen2(), tmp_path / "heads.gguf")
    for key in ("attention.value_length", "rope.dimension_count"):  # not the heads' width (8)
        with monkeypatch.context() as m:
            m.setattr(native_target, "read_gguf", lambda p, key=key: ({**read(p)[0], f"qwen2.{key}": 16}, read(p)[1]))
            with pytest.raises(VocabtrimError, match=rf"qwen2.{key} is 16, not the heads' width \(8\)"):
                NativeTarget(path)
    with monkeypatch.context() as m:  # heads of 16 would need q and k of 64 rows: these have 32 and 16
        m.setattr(native_target, "read_gguf", lambda p: ({**read(p)[0], "qwen2.attention.key_length": 16}, read(p)[1]))
        with pytest.raises(VocabtrimError, match="not those of a model of its header's dimensions"):
            NativeTarget(path)
    with monkeypatch.context() as m:  # a rope scaling neither the native engine nor transformers' loader applies
        m.setattr(native_target, "read_gguf", lambda p: ({**read(p)[0], "qwen2.rope.scaling.type": "yarn"}, read(p)[1]))
        m.setattr(models, "read_gguf", native_target.read_gguf)
        with pytest.raises(VocabtrimError, match="the native engine has no rope scaling: use the ggml backend"):
            NativeTarget(path)
        with pytest.raises(VocabtrimError, match=r"leaves out its rope scaling \(yarn\), so it runs on the ggml backend only"):
            models.load(str(path), "float32", "torch").model
    for bad in (np.zeros(4, np.float32), np.ones(3, np.float32), np.ones(4, np.float16)):
        with pytest.raises(VocabtrimError, match="rope_freqs.weight is not 4 positive F32 factors"):
            NativeTarget(write_gguf(tiny_qwen2(), tmp_path / "rope.gguf", extra={"rope_freqs.weight": bad}))
    target = NativeTarget(write_gguf(tiny_qwen2(), tmp_path / "ok.gguf"), context=16)
    with pytest.raises(VocabtrimError, match="context of 16"):
        target.logits(list(range(2, 20)), 1)
    with pytest.raises(VocabtrimError, match="token ids"):
        target.logits([2, 3, 999], 1)
    assert target.logits([2, 3, 4], 1).shape == (1, 64)  # still usable after a refusal


def test_read_gguf_agrees_with_gguf(f32_gguf, tmp_path):
    from gguf import GGUFReader

    from vocabtrim.gguf_header import read_gguf

    meta, tensors = read_gguf(f32_gguf)
    reader = GGUFReader(f32_gguf)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and not isinstance(field.contents(), list):
            assert meta[key] == pytest.approx(field.contents()), key
    base = reader.data.ctypes.data
    assert {t.name: (base + t.offset) for t in tensors.values()} == {
        t.name: t.data.ctypes.data for t in reader.tensors}
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all, not at all")
    with pytest.raises(VocabtrimError, match="not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")


def test_greedy_identical_with_a_drafter(tmp_path):
    model = tiny_model(64, seed=1)
    assert_greedy_identical_with_a_drafter(NativeTarget(write_gguf(model, tmp_path / "t.gguf"), threads=1), model)


def test_sampling_follows_the_target(tmp_path):
    small_t, small_d = small_pair()
    eng = Engine(NativeTarget(write_gguf(small_t, tmp_path / "s.gguf"), threads=1, context=64),
                 model_drafter(small_d, small_t))
    p = chi2_pvalue(small_counts(eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations on the native engine do not follow the target (chi-square p={p:.2g})"


def test_a_trimmed_native_head_is_the_full_heads_rows(q8_gguf):
    """VocabTrim on the native engine: the kept rows gathered at their stored format (Q8_0
    here) give each kept token the same bits as the full head; a prompt's extra rows too."""
    trimmed_head_is_the_full_heads_rows(q8_gguf[0])


def test_a_trimmed_k_quant_head_is_the_full_heads_rows(k_gguf):
    """The same for a K-quant head, which the model packed at load (the full head reuses
    that copy; gathered rows are packed on first use)."""
    trimmed_head_is_the_full_heads_rows(k_gguf[0])
    from vocabtrim.native_target import NativeModel

    head = NativeModel(k_gguf[0], context=64).get_output_embeddings()
    assert (head.packed is not None) == native.packs(head.wtype)


def trimmed_head_is_the_full_heads_rows(path):
    from vocabtrim.heads import Head
    from vocabtrim.native_target import NativeModel

    model = NativeModel(path, context=64)
    hidden = model.new_lm().hidden(SEQ, 3)
    kept = torch.tensor([1, 5, 9, 33, 60])
    full, trimmed = Head.of(model), Head.of(model, kept)
    assert trimmed.rows == 5 and trimmed.nbytes * 64 == full.nbytes * 5
    assert same_bits(trimmed(hidden), full(hidden)[:, kept])
    prompt = trimmed.for_prompt([7, 9, 40])  # 9 is kept already: 7 and 40 are added
    assert prompt.rows == 7 and same_bits(prompt(hidden), full(hidden)[:, [1, 5, 9, 33, 60, 7, 40]])
    target = NativeTarget(model)  # a target over the same model: its head is the full one's
    assert same_bits(target.logits(SEQ, 3), full(hidden))


def test_greedy_identical_with_a_native_drafter(tmp_path):
    """Target and drafter both on the native engine (the drafter's head trimmed, the prompt's
    tokens added): greedy output the target's alone, bit for bit, drafts accepted."""
    from vocabtrim.native_target import NativeModel

    model = tiny_model(64, seed=1)
    target = NativeTarget(write_gguf(model, tmp_path / "t.gguf"), threads=1)
    drafter = NativeModel(write_gguf(noisy_copy(model, 0.3, seed=2), tmp_path / "d.gguf"), context=256)
    for kept in (None, torch.arange(2, 50)):
        assert_greedy_identical_with_a_drafter(target, model, model_drafter(drafter, model, kept))


def test_sampling_follows_the_target_with_a_native_drafter(tmp_path):
    from vocabtrim.native_target import NativeModel

    small_t, small_d = small_pair()
    drafter = NativeModel(write_gguf(small_d, tmp_path / "d.gguf"), context=64)
    eng = Engine(NativeTarget(write_gguf(small_t, tmp_path / "s.gguf"), threads=1, context=64),
                 model_drafter(drafter, small_t))
    p = chi2_pvalue(small_counts(eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations with a native drafter do not follow the target (chi-square p={p:.2g})"


def test_benchmark_scripts_run(f32_gguf, monkeypatch, capsys):
    """benchmarks/{matmul_cost,verify_cost,native_check,multiply_floor}.py wired up, on the tiny GGUF."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    def script(name: str):
        path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    mm = script("matmul_cost")
    monkeypatch.setattr(mm, "SHAPES", [("q 64x256", "x", 64, 256, native.Q4_K),
                                       ("v 32x256", "y", 32, 256, native.Q6_K)])
    monkeypatch.setattr(sys, "argv", ["matmul_cost.py", "--rows", "1,2", "--repeats", "1", "--gguf", "/nonexistent"])
    mm.main()
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["weights"] == "random" and set(out["shapes"]["q 64x256"]["native"]) == {"1", "2"}
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "verify_cost.py"), "--target",
                        str(f32_gguf), "--backends", "native,ggml", "--rows", "1,2", "--context", "8", "--prefill", "16",
                        "--repeats", "1"], capture_output=True, text=True, timeout=300)  # its backends in child processes
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert set(out["backends"]["native"]) == {"1", "2", "prefill_16"}
    both = "native,native-avx2" if "avx2" in native.available_isas() else "native"
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "verify_cost.py"), "--target",
                        str(f32_gguf), "--backends", both, "--rows", "1,2", "--context", "8", "--repeats", "1",
                        "--alternate", "0.01", "--probe-mib", "8"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])["states"]["all"]  # no --split: one state
    assert out["lines"] >= 1 and set(out["backends"]) == set(both.split(","))
    assert all(set(ms) == {"1", "2"} for ms in out["backends"].values())
    monkeypatch.setitem(sys.modules, "vocabtrim.ggml", None)  # no llama.cpp comparison here
    monkeypatch.setattr(sys, "argv", ["native_check.py", "--gguf", str(f32_gguf), "--tokens", "17", "--prefix", "5"])
    script("native_check").main()
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert all(out["bit_identical"].values())
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "multiply_floor.py"), "--target",
                        str(f32_gguf), "--rows", "1,16"], capture_output=True, text=True, timeout=120)
    if "avx512vnni" in native.available_isas():  # the probe's instructions
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.splitlines()[-1])
        assert set(out["floor_ms"]) == {"1", "16"} and out["vpdpbusd_per_ns"]["alone"] > 0
    else:
        assert r.returncode == 1 and r.stderr.startswith("error:"), r.stderr


def test_the_native_backend_loads_runs_generate_and_is_timed_by_auto(f32_gguf, tmp_path, monkeypatch):
    """--backend native: a GGUF target on the native engine through the command line, its
    speculative output identical to its own target alone; auto times it beside the others."""
    import json

    from conftest import cli

    from vocabtrim import loading, models

    loaded = models.load(str(f32_gguf), "float32", "native")
    assert loaded.backend == "native" and isinstance(loaded.as_target(), NativeTarget)
    runs = [cli("generate", "--target", f32_gguf, "--backend", "native", *how, "--raw", "--prompt", "w2w2",
                "--max-new-tokens", 8, "--json") for how in (["--no-draft"], ["--drafter", "suffix"])]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    alone, spec = (json.loads(r.output) for r in runs)
    assert alone["backend"] == spec["backend"] == "native" and alone["token_ids"] == spec["token_ids"]
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    assert loading.choose(str(f32_gguf), "auto", "float32") in ("torch", "ggml", "native")
    timed = json.loads(next((tmp_path / "profiles").glob("*.json")).read_text())
    assert set(timed["ms"]) >= {"torch", "native"}


def test_drafters_join_a_native_target(f32_gguf, tmp_path, monkeypatch, capsys):
    """One runtime: with the target on the native engine the drafter runs there too, from
    its own GGUF file, on the same thread pool; where the engine cannot read the drafter's
    file it drafts on torch, said in one line; with another target backend it stays torch."""
    from vocabtrim import loading, models
    from vocabtrim.loading import Options
    from vocabtrim.native_target import NativeModel

    draft = write_gguf(tiny_model(64, seed=4), tmp_path / "d.gguf")
    o = Options(str(f32_gguf), str(draft), backend="native", dtype="float32")
    parts = loading.load_parts(o)
    model = parts.drafter.drafting
    assert parts.drafter.backend == "native" and isinstance(model, NativeModel)
    assert model.pool is parts.target.drafting.pool is native.default_pool()
    assert isinstance(loading.load_parts(Options(str(f32_gguf), str(draft), backend="torch",
                                                 dtype="float32")).drafter.drafting, torch.nn.Module)

    def refuse(loaded, on):
        raise VocabtrimError("tensor x is IQ2_XS, which the native engine does not read")

    monkeypatch.setattr(models, "on_gguf", refuse)
    capsys.readouterr()
    parts = loading.load_parts(o)
    assert isinstance(parts.drafter.drafting, torch.nn.Module)
    assert "drafts on torch: tensor x is IQ2_XS" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.parametrize("drafter", ["hybrid", "suffix", "model"])
def test_the_real_pair_on_the_native_engine_is_bit_identical_to_its_target_alone(no_real_pair, drafter):
    """The default target on the native engine, the drafter model on it too (its Q5_0 GGUF):
    speculative greedy output token for token the target alone's, with no tie tolerance
    (its logits do not depend on the batch)."""
    import json

    from conftest import cli

    prompt = "Write a Python function that returns the n-th Fibonacci number."
    runs = [cli("generate", "--backend", "native", *how, "--prompt", prompt, "--max-new-tokens", 48, "--json")
            for how in (["--drafter", drafter, "--policy", "static:6"], ["--no-draft"])]
    assert all(r.exit_code == 0 for r in runs), [r.output[-500:] for r in runs]
    spec, alone = (json.loads(r.stdout) for r in runs)
    assert spec["backend"] == "native" and spec["token_ids"] == alone["token_ids"]
