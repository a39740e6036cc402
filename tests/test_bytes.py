"""The cost ratio c counts bytes, each weight at the size it is stored in: tiny models
checked against figures worked out by hand, and the default pair's figures the README
states, from config-only models on the meta device (no weights in memory)."""

import pytest
import torch
from conftest import spec_engine, tiny_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from vocabtrim import kernels
from vocabtrim.heads import Head
from vocabtrim.metrics import bytes_per_forward
from vocabtrim.policies import Static

# The tiny model (conftest) has 2 layers of hidden 32: q, o 32x32, k, v 16x32, gate, up
# 64x32 and down 32x64 make 9216 linear weights a layer; 2 x 64 layer norms, a final norm
# of 32 and one embedding row of 32 make 192 other weights; the head is 64 x 32 = 2048.
# So a forward reads 18432 + 2048 = 20480 linear weights and 192 others.
TINY = {  # kind: (bytes of a full-head forward, of the full head, of a 5-row head)
    "float32": (4 * 20672, 4 * 2048, 4 * 160),
    "bfloat16": (2 * 20672, 2 * 2048, 2 * 160),
    # fbgemm holds fp16 weights; norms and the embedding row stay fp32
    "packed-fp16": (2 * 20480 + 4 * 192, 2 * 2048, 2 * 160),
    # quantized drafters compute in bf16, whatever the model's dtype: norms and the embedding
    # row become bf16. int8: 1 byte a weight and one bf16 scale per output row (512 rows in
    # the layers, 64 in the head)
    "int8": (20480 + 2 * (512 + 64) + 2 * 192, 2048 + 2 * 64, 160 + 2 * 5),
    # half a byte a weight and a bf16 (scale, zero) per group of 32 weights: 0.625 bytes a
    # weight; 5 rows are padded to the kernel's 16
    "int4": (20480 * 5 // 8 + 2 * 192, 2048 * 5 // 8, 16 * 32 * 5 // 8),
    "int4-bf16": (20480 * 5 // 8 + 2 * 192, 2048 * 5 // 8, 16 * 32 * 5 // 8),  # from a bf16 model: the same
}
KEPT = torch.tensor([7, 3, 60, 1, 22])


def tiny(kind: str) -> torch.nn.Module:
    model = tiny_model(64, seed=2)
    if kind == "packed-fp16":
        if not kernels.packed_available():
            pytest.skip("needs torch's fbgemm (x86)")
        return kernels.pack(model)
    if kind.endswith("bf16") or kind == "bfloat16":
        model = model.bfloat16()
    return model if kind in kernels.TORCH_DTYPES else kernels.quantized(model, kind.split("-")[0])


@pytest.mark.parametrize("kind", TINY)
def test_forward_bytes_count_each_weight_at_its_stored_size(kind):
    model = tiny(kind)
    forward, head, trimmed = TINY[kind]
    assert Head.of(model).nbytes == head and Head.of(model, KEPT).nbytes == trimmed
    assert bytes_per_forward(model, head) == forward
    assert bytes_per_forward(model, 0) == forward - head  # a prefill computes no head
    # a prompt's tokens outside the map add rows of a plain fp32 layer: 4 x 32 bytes each
    assert Head.of(model, KEPT).for_prompt([7, 8, 9]).nbytes == trimmed + 2 * 128


@pytest.mark.parametrize("kind", ["bfloat16", "int8", "int4"])
@pytest.mark.parametrize("kept", [None, KEPT])
def test_cost_ratio_is_drafter_bytes_over_target_bytes(kind, kept):
    target = tiny_model(64, seed=1)  # float32: 82688 bytes a forward
    engine = spec_engine(target, tiny(kind), kept, prompt_tokens=False)
    forward, head, trimmed = TINY[kind]
    drafter = forward - head + (head if kept is None else trimmed)
    assert (engine.target.forward_bytes, engine.drafter.cost_per_forward) == (4 * 20672, drafter)
    _, stats = engine.generate([5, 6, 7], 8, Static(3))
    assert stats.cost_ratio == pytest.approx(drafter / (4 * 20672))
    assert stats.draft_cost == pytest.approx((forward - head + stats.drafter_forwards * drafter) / (4 * 20672))


def qwen2(hidden: int, layers: int, intermediate: int, heads: int, dtype: torch.dtype) -> torch.nn.Module:
    """A Qwen2.5 model of these shapes (untied head, 151,936 tokens, 2 KV heads) without weights."""
    cfg = Qwen2Config(vocab_size=151936, hidden_size=hidden, num_hidden_layers=layers,
                      intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=2,
                      tie_word_embeddings=False)
    with torch.device("meta"):
        return Qwen2ForCausalLM(cfg).to(dtype)


def test_default_pair_cost_ratios_as_the_readme_states():
    """The 1.5B target at 16 bits, the 0.5B drafter at 16 bits or quantized; full head and
    K = 16,384 (the map alone). A packed-fp16 model differs from a bf16 one only in its fp32
    norms, biases and embedding row (under 0.01% of its bytes); quantizing any of them gives
    bf16 scales."""
    target = qwen2(1536, 28, 8960, 12, torch.bfloat16)
    target_bytes = bytes_per_forward(target, Head.of(target).nbytes)
    drafters = {"16-bit": qwen2(896, 24, 4864, 14, torch.bfloat16)}
    for dtype, name in ((torch.float32, "from fp32"), (torch.bfloat16, "from bf16")):
        for scheme in ("int8", "int4"):
            drafters[f"{scheme}, {name}"] = kernels.quantized(qwen2(896, 24, 4864, 14, dtype), scheme)
    c = {name: [round(bytes_per_forward(d, Head.of(d, kept).nbytes) / target_bytes, 3)
                for kept in (None, torch.arange(16384))] for name, d in drafters.items()}
    assert c == {"16-bit": [0.320, 0.241], "int8, from fp32": [0.160, 0.121],
                 "int4, from fp32": [0.100, 0.075], "int8, from bf16": [0.160, 0.121],
                 "int4, from bf16": [0.100, 0.075]}
