"""The lean drafter forward: the same hidden states as transformers' forward for every
weight kind, through growing and shrinking sequences; stacked layers; what falls back."""

import pytest
import torch
from conftest import tiny_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from vocabtrim import kernels, lean
from vocabtrim.cache import CachedLM

TOLERANCE = {"float32": 1e-5, "packed-fp16": 1e-5, "bfloat16": 0.05, "int8": 0.05, "int4": 0.05}  # bf16: rounding


def tiny_qwen2(**overrides) -> Qwen2ForCausalLM:
    """A Qwen2 decoder (biases on q, k, v; grouped-query attention) with random weights."""
    torch.manual_seed(4)
    cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **overrides)
    model = Qwen2ForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model


def weights(model, kind: str):
    if kind == "packed-fp16":
        if not kernels.packed_available():
            pytest.skip("needs torch's fbgemm (x86)")
        return kernels.pack(model, wide=False)  # fp16 products at every size: the forward's own exactness
    if kind == "bfloat16":
        return model.bfloat16()
    return model if kind == "float32" else kernels.quantized(model, kind)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", TOLERANCE)
@torch.inference_mode()
def test_same_hidden_states_as_transformers(arch, kind):
    model = weights(tiny_model(64, seed=3) if arch == "llama" else tiny_qwen2(), kind)
    assert lean.supports(model)
    ref, lm = CachedLM(model), lean.lm_factory(model)()
    seq = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    # a prefill, single steps, a crop, a rejected draft replaced, and growth past MIN_CAPACITY
    for s in (seq[:10], seq[:11], seq[:15], seq[:12], seq[:16] + [3, 4], seq[:280], seq[:300]):
        a, b = ref.hidden(s, 3).float(), lm.hidden(s, 3).float()
        assert float((a - b).abs().max()) <= TOLERANCE[kind] * float(a.abs().max())
    assert lm.ids == seq[:300] and lm.keys.shape[2] >= 300


@pytest.mark.parametrize("kind", ["float32", "packed-fp16", "int8", "int4"])
@pytest.mark.parametrize("bias", [False, True])
def test_stacked_layer_is_its_parts_side_by_side(kind, bias):
    torch.manual_seed(1)
    parts = [torch.nn.Linear(64, n, bias=bias) for n in (24, 40, 8)]  # int4 pads 24 and 40 to 16s
    if kind == "packed-fp16":
        if not kernels.packed_available():
            pytest.skip("needs torch's fbgemm (x86)")
        parts = [kernels.PackedLinear(p.weight, p.bias) for p in parts]
    elif kind != "float32":
        parts = [kernels.QuantLinear.quantize(p.weight, p.bias, kind) for p in parts]
    x = torch.randn(3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.stacked(parts)(x), torch.cat([p(x) for p in parts], -1))
    with pytest.raises(kernels.VocabtrimError, match="one kind"):
        kernels.stacked([parts[0], torch.nn.Linear(32, 8)])


def test_other_architectures_keep_transformers_forward():
    sliding = tiny_qwen2(use_sliding_window=True, sliding_window=16, max_window_layers=0)
    assert not lean.supports(sliding)
    assert isinstance(lean.lm_factory(sliding)(), CachedLM)
    model = tiny_model(64)
    a, b = lean.lm_factory(model)(), lean.lm_factory(model)()
    assert isinstance(a, lean.LeanLM) and a.body is b.body  # arranged once per model
