"""Packed fp16 layers (fbgemm): same weights, fp32 math, and everything else unchanged; the
machine's dtype choice (`auto`) and the matrix products it times."""

import copy
import json
import types

import pytest
import torch
from conftest import alone, noisy_copy, prompts, spec_engine, tiny_model

from vocabtrim import kernels, profile
from vocabtrim.bench.identity import divergence
from vocabtrim.errors import VocabtrimError
from vocabtrim.heads import Head
from vocabtrim.policies import Static, parse_policy
from vocabtrim.target import TorchTarget

needs_fbgemm = pytest.mark.skipif(not kernels.packed_available(), reason="needs torch's fbgemm (x86)")


def packed(model):
    return kernels.pack(noisy_copy(model, 0.0, seed=0))  # a packed copy; the original stays


@needs_fbgemm
def test_packed_linear_is_fp32_math_on_fp16_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    p = kernels.PackedLinear(lin.weight, lin.bias)
    x = torch.randn(3, 5, 48)
    ref = torch.nn.functional.linear(x, lin.weight.half().float(), lin.bias)
    torch.testing.assert_close(p(x), ref, rtol=1e-5, atol=1e-5)
    assert p(x).dtype == torch.float32 and p(x).shape == (3, 5, 24)
    torch.testing.assert_close(p.weight, lin.weight.detach().half().float())  # unpacks what it holds
    bf16 = lin.weight.detach().bfloat16()
    assert torch.equal(kernels.PackedLinear(bf16).weight, bf16.float())  # bf16 weights are exact


@needs_fbgemm
def test_wide_products_multiply_a_bf16_copy_and_decode_steps_the_fp16_one():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    wide, narrow = kernels.PackedLinear(lin.weight, lin.bias, wide=True), kernels.PackedLinear(lin.weight, lin.bias)
    for rows in (1, 6, kernels.WIDE_ROWS - 1):  # drafts and their verification: fbgemm, exactly as without
        x = torch.randn(rows, 48)
        assert torch.equal(wide(x), narrow(x))
    x = torch.randn(2, kernels.WIDE_ROWS, 48)  # a prompt: bf16 activations and weights, fp32 out
    ref = torch.nn.functional.linear(x.bfloat16(), lin.weight.bfloat16()).float() + lin.bias
    torch.testing.assert_close(wide(x), ref)
    assert wide(x).dtype == torch.float32 and not torch.equal(wide(x), narrow(x))
    assert kernels.rows(wide, torch.tensor([3, 1])).wide is not None  # its trimmed rows stay wide
    model = kernels.pack(tiny_model(64), wide=True)
    assert model.float().get_output_embeddings().wide.dtype == torch.bfloat16  # .float() leaves the copy


@needs_fbgemm
@pytest.mark.parametrize("tie", [False, True])
def test_pack_keeps_a_bf16_embedding_and_casts_its_rows(tie):
    """The embedding stays as loaded (no fp32 copy of the table): the same logits as with
    every parameter made fp32, hidden states in fp32, and a quantized copy computes in bf16."""
    base = tiny_model(64, seed=3, tie=tie).bfloat16()
    kept, upcast = kernels.pack(copy.deepcopy(base)), kernels.pack(copy.deepcopy(base))
    upcast.get_input_embeddings().float()  # what pack made of it before
    assert kept.get_input_embeddings().weight.dtype == torch.bfloat16
    assert kernels.compute_dtype(kept) == torch.float32
    ids = torch.tensor([[5, 6, 7, 8]])
    out = kept(ids, output_hidden_states=True)
    assert out.hidden_states[0].dtype == torch.float32
    assert torch.equal(out.logits, upcast(ids).logits)
    q = kernels.quantized(kept, "int8")
    assert kernels.compute_dtype(q) == kernels.QUANT_ACT and q(ids).logits.dtype == kernels.QUANT_ACT


@needs_fbgemm
def test_pack_replaces_linears_keeps_weights_and_greedy_output():
    target = tiny_model(64, seed=1)
    draft = noisy_copy(target, 0.3, seed=2)
    pt, pd = packed(target), packed(draft)
    assert not any(isinstance(m, torch.nn.Linear) for m in pt.modules())
    assert kernels.compute_dtype(pt) == torch.float32
    assert kernels.weight_count(pt) == kernels.weight_count(target)
    solo, spec = alone(pt), spec_engine(pt, pd)
    accepted = 0
    for p in prompts(10):
        ref, _ = solo.generate(p, 30, Static(1))
        for policy in ("static:4", "adaedl"):
            out, s = spec.generate(p, 30, parse_policy(policy).make())
            assert out == ref
            accepted += sum(s.accepted_per_round)
    assert accepted > 0
    logits_plain = target(torch.tensor([[5, 6, 7]])).logits
    logits_packed = pt(torch.tensor([[5, 6, 7]])).logits
    torch.testing.assert_close(logits_packed, logits_plain, rtol=2e-3, atol=2e-3)  # fp16 weights


@needs_fbgemm
def test_trimmed_head_of_packed_model_is_packed_and_equal_at_kept_ids():
    model = packed(tiny_model(64, seed=5, tie=True))
    kept = torch.tensor([7, 3, 60, 1, 22])
    full, trimmed = Head.of(model), Head.of(model, kept)
    assert isinstance(trimmed.proj, kernels.PackedLinear) and trimmed.rows == 5
    h = torch.randn(4, 32)
    torch.testing.assert_close(trimmed(h), full(h)[:, kept])


@needs_fbgemm
def test_resolve_names_and_refusals(monkeypatch):  # `auto` by measurement: below
    assert kernels.resolve("float32") == "float32"
    monkeypatch.setattr(kernels, "packed_available", lambda: False)
    with pytest.raises(VocabtrimError, match="fbgemm"):
        kernels.resolve(kernels.PACKED)
    with pytest.raises(VocabtrimError, match="unknown dtype"):
        kernels.resolve("int3")


@pytest.mark.parametrize("kind, dtype, tolerance", [
    pytest.param("packed-fp16", torch.float32, 0.01, marks=needs_fbgemm), ("bfloat16", torch.bfloat16, 0.25)])
def test_tie_tolerance_follows_the_targets_compute_dtype(kind, dtype, tolerance):
    """A torch target's logits are computed in its weights' compute dtype (fp32 for packed
    fp16 weights), and a divergence on it is judged with that dtype's tolerance."""
    model = packed(tiny_model(64)) if kind == "packed-fp16" else tiny_model(64).bfloat16()
    target = TorchTarget(model)
    assert kernels.compute_dtype(model) == dtype
    d = divergence(target, [5, 6], [7], [8])
    assert d["tolerance"] == tolerance and d["tie"] == (d["margin"] <= tolerance)


# --- the machine's dtype choice -------------------------------------------------------


@needs_fbgemm
def test_auto_dtype_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    # decode rows (1, 6): packed-fp16 faster; a prompt's 150 rows: bf16 faster
    timed = lambda d, rows: {"bfloat16": 2.0, kernels.PACKED: 1.0}[d] * (1 if rows == (1, 6) else -1)
    monkeypatch.setattr(kernels, "_matmul_ms", timed)
    assert kernels.resolve("auto") == kernels.PACKED and kernels.wide_in_bf16()
    monkeypatch.setattr(kernels, "_matmul_ms", lambda d, rows: pytest.fail("timed twice"))
    assert kernels.resolve("auto") == kernels.PACKED and kernels.wide_in_bf16()
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(kernels, "_matmul_ms", lambda d, rows: {"bfloat16": 1.0, kernels.PACKED: 2.0}[d])
    assert kernels.resolve("auto") == "bfloat16" and kernels.wide_in_bf16()
    monkeypatch.setattr(kernels, "packed_available", lambda: False)
    assert kernels.resolve("auto") == "bfloat16" and not kernels.wide_in_bf16()


def test_auto_dtype_is_bfloat16_without_fbgemm(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "packed_available", lambda: False)
    monkeypatch.setattr(kernels, "_matmul_ms", lambda d, rows: pytest.fail("nothing to choose between"))
    assert kernels.resolve("auto") == "bfloat16" and not kernels.wide_in_bf16()


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param(kernels.PACKED, marks=needs_fbgemm)])
def test_matmul_timing_is_the_median_ms_of_the_rounds_after_a_warm_up(monkeypatch, dtype):
    """Both dtypes' products run; the warm-up round (a second here) is not counted, and
    the rounds after it (1, 2 and 6 ms) give their median, not their mean."""
    ticks = iter([0.0, 1.0, 10.0, 10.001, 20.0, 20.002, 30.0, 30.006])
    monkeypatch.setattr(kernels, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert kernels._matmul_ms(dtype, (1, 70), hidden=32, inner=64, repeats=3) == pytest.approx(2.0)


def test_a_damaged_dtype_choice_is_timed_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    path = profile.path_for({"dtype_choice": kernels.cpu()})
    path.parent.mkdir()
    path.write_text(json.dumps({"dtype": "float8", "wide": True}))
    assert kernels.machine_choice()["dtype"] in ("bfloat16", kernels.PACKED)
    assert "is not a whole dtype choice" in capsys.readouterr().err
    assert json.loads(path.read_text())["dtype"] in ("bfloat16", kernels.PACKED)
