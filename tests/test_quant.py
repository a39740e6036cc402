"""Quantized drafters: int8/int4 layers against their float reference, trimmed heads of a
quantized drafter, greedy identity with the target alone, the CLI flag."""

import pytest
import torch
from conftest import cli, noisy_copy, spec_engine, tiny_model

from vocabtrim import kernels
from vocabtrim.engine import Engine
from vocabtrim.heads import Head
from vocabtrim.policies import Policy

BOUND = {"int8": 0.01, "int4": 0.15}  # relative error of a product with random weights


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(64, 32), (100, 96), (5, 64)])  # 100, 5: int4 pads to 16 rows
def test_quantized_layer_matches_float_reference(scheme, shape):
    torch.manual_seed(0)
    w, b, x = torch.randn(*shape) * 0.05, torch.randn(shape[0]), torch.randn(7, shape[1])
    q = kernels.QuantLinear.quantize(w, b, scheme)
    ref = x @ w.T + b
    assert float((q(x) - ref).norm() / (ref - b).norm()) < BOUND[scheme]
    # weight16 is what the layer multiplies by: a trimmed head gathers its rows
    torch.testing.assert_close(x @ q.weight16.float().T + b, q(x), atol=2e-3, rtol=1e-3)
    assert q(x.reshape(7, 1, -1)).shape == (7, 1, shape[0])


def test_int4_needs_whole_groups():
    with pytest.raises(kernels.VocabtrimError, match="divisible by 32"):
        kernels.QuantLinear.quantize(torch.randn(16, 40), None, "int4")
    with pytest.raises(kernels.VocabtrimError, match="unknown quantization"):
        kernels.quantized(tiny_model(64), "int3")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_copy_leaves_the_original_and_trims_its_head(scheme):
    model = tiny_model(64, seed=5)
    before = model.get_output_embeddings().weight.clone()
    q = kernels.quantized(model, scheme)
    assert all(isinstance(m, kernels.QuantLinear) for m in q.modules() if "Linear" in type(m).__name__)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the original is untouched
    torch.testing.assert_close(model.get_output_embeddings().weight, before)
    kept = torch.tensor([7, 3, 60, 1, 22])
    full, trimmed = Head.of(q), Head.of(q, kept)
    assert isinstance(trimmed.proj, kernels.QuantLinear) and trimmed.rows == 5
    h = torch.randn(4, 32)
    torch.testing.assert_close(trimmed(h), full(h)[:, kept], atol=2e-3, rtol=1e-3)
    assert kernels.weight_count(q) == kernels.weight_count(model)


TARGET = tiny_model(64, seed=1)
DRAFT = noisy_copy(TARGET, 0.3, seed=2)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("kept", [None, torch.arange(40)])
def test_greedy_identical_with_a_quantized_drafter(scheme, kept):
    alone, spec = Engine(TARGET), spec_engine(TARGET, kernels.quantized(DRAFT, scheme), kept)
    accepted = 0
    for seed in range(8):
        prompt = torch.randint(5, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref, _ = alone.generate(prompt, 30, Policy(1))
        out, s = spec.generate(prompt, 30, Policy(4))
        assert out == ref
        accepted += sum(s.accepted_per_round)
    assert accepted > 0


def test_generate_with_a_quantized_drafter(tiny_dirs):
    r = cli("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--draft-quant", "int4", "--prompt", "w1 w2", "--max-new-tokens", 8, "--json")
    assert r.exit_code == 0, r.output
    r = cli("generate", "--prompt", "hi", "--draft-quant", "int3")
    assert r.exit_code == 1 and r.output.startswith("error:") and "int3" in r.output
