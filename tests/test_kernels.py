"""Packed fp16 layers (fbgemm): same weights, fp32 math, and everything else unchanged."""

import pytest
import torch
from conftest import noisy_copy, spec_engine, tiny_model
from test_engine import prompts

from vocabtrim import kernels
from vocabtrim.bench.identity import TIE_TOLERANCE
from vocabtrim.engine import Engine
from vocabtrim.errors import VocabtrimError
from vocabtrim.heads import Head
from vocabtrim.policies import Policy, parse_policy

pytestmark = pytest.mark.skipif(not kernels.packed_available(), reason="needs torch's fbgemm (x86)")


def packed(model):
    return kernels.pack(noisy_copy(model, 0.0, seed=0))  # a packed copy; the original stays


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


def test_pack_replaces_linears_keeps_weights_and_greedy_output():
    target = tiny_model(64, seed=1)
    draft = noisy_copy(target, 0.3, seed=2)
    pt, pd = packed(target), packed(draft)
    assert not any(isinstance(m, torch.nn.Linear) for m in pt.modules())
    assert kernels.compute_dtype(pt) == torch.float32
    assert kernels.weight_count(pt) == kernels.weight_count(target)
    alone, spec = Engine(pt), spec_engine(pt, pd)
    accepted = 0
    for p in prompts(10):
        ref, _ = alone.generate(p, 30, Policy(1))
        for policy in ("static:4", "adaedl"):
            out, s = spec.generate(p, 30, parse_policy(policy))
            assert out == ref
            accepted += sum(s.accepted_per_round)
    assert accepted > 0
    logits_plain = target(torch.tensor([[5, 6, 7]])).logits
    logits_packed = pt(torch.tensor([[5, 6, 7]])).logits
    torch.testing.assert_close(logits_packed, logits_plain, rtol=2e-3, atol=2e-3)  # fp16 weights


def test_trimmed_head_of_packed_model_is_packed_and_equal_at_kept_ids():
    model = packed(tiny_model(64, seed=5, tie=True))
    kept = torch.tensor([7, 3, 60, 1, 22])
    full, trimmed = Head.of(model), Head.of(model, kept)
    assert isinstance(trimmed.proj, kernels.PackedLinear) and trimmed.rows == 5
    h = torch.randn(4, 32)
    torch.testing.assert_close(trimmed(h), full(h)[:, kept])


def test_resolve_names_and_refusals(monkeypatch):  # `auto` by measurement: test_cost.py
    assert kernels.resolve("float32") == "float32"
    monkeypatch.setattr(kernels, "packed_available", lambda: False)
    with pytest.raises(VocabtrimError, match="fbgemm"):
        kernels.resolve(kernels.PACKED)
    with pytest.raises(VocabtrimError, match="unknown dtype"):
        kernels.resolve("int3")


def test_tie_tolerance_follows_compute_dtype():
    assert TIE_TOLERANCE[kernels.compute_dtype(packed(tiny_model(64)))] == 0.01
    assert TIE_TOLERANCE[kernels.compute_dtype(tiny_model(64).bfloat16())] == 0.25
