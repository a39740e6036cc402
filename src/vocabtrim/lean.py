"""A lean forward for drafters: a Llama-architecture decoder (Llama, Qwen2) run as a short
chain of torch ops over its own weights, with a KV cache of preallocated tensors.

Why: on an AVX512-BF16 EPYC an int4 draft step of the 0.5B drafter took 16 ms through
transformers, of which its 168 matrix products were 8 ms; the rest was per-layer modules,
mask and cache bookkeeping and CPU flash attention for a single query. Here a layer is
about twenty ops: a residual stream and KV cache in fp32 (bf16 costs conversions, and CPU
bf16 batched matmuls at these sizes were 5x slower), fused RMSNorm, one product for q, k
and v and one for gate and up (`kernels.stacked`, each in its layer's own dtype), rotary
embeddings from the model's own rotary module, attention as two small matmuls around a
softmax. For drafters only: their numerics decide how many drafts are accepted, never what
is output.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import CachedLM, common_prefix, context_length
from .kernels import compute_dtype, stacked

ARCHITECTURES = ("llama", "qwen2")
MIN_CAPACITY = 256  # cache positions allocated at first; doubled when a sequence outgrows them


def supports(model: nn.Module) -> bool:
    """Whether `model` is a decoder whose math this module reproduces (up to rounding):
    full attention only, SiLU-gated MLPs; rotary variants come from the model's own module."""
    c = model.config
    return (c.model_type in ARCHITECTURES and c.hidden_act == "silu"
            and not getattr(c, "use_sliding_window", False)
            and set(getattr(c, "layer_types", None) or ["full_attention"]) == {"full_attention"})


_BODIES: weakref.WeakKeyDictionary[nn.Module, LeanBody] = weakref.WeakKeyDictionary()


def lm_factory(model: nn.Module) -> Callable[[], CachedLM | LeanLM]:
    """Fresh KV caches over `model`: lean where `supports` allows, transformers' otherwise.
    The lean weights are arranged once per model (seconds, and a copy of the stacked
    layers), however many drafters, heads and profiles share it."""
    if not supports(model):
        return lambda: CachedLM(model)
    if model not in _BODIES:
        _BODIES[model] = LeanBody(model)
    body = _BODIES[model]
    return lambda: LeanLM(body)


class Norm:
    """An RMSNorm as one fused op over the fp32 residual stream."""

    def __init__(self, norm: nn.Module):
        self.weight, self.eps = norm.weight.detach().float(), norm.variance_epsilon

    def __call__(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def product(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """`layer` fed from the fp32 stream: packed and quantized layers cast their input
    themselves, a plain layer of another dtype gets it cast."""
    dtype = layer.weight.dtype if type(layer) is nn.Linear else torch.float32
    return layer if dtype == torch.float32 else lambda x: layer(x.to(dtype))


@dataclass
class Layer:
    norm1: Norm
    qkv: Callable[[Tensor], Tensor]  # q, k and v projections stacked into one
    o: Callable[[Tensor], Tensor]
    norm2: Norm
    gate_up: Callable[[Tensor], Tensor]  # gate and up projections stacked into one
    down: Callable[[Tensor], Tensor]


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class LeanBody:
    """A decoder's weights arranged for lean forwards (stacked layers share nothing with
    the model's own, which stay untouched)."""

    def __init__(self, model: nn.Module):
        body, c = model.get_decoder(), model.config
        self.embed, self.norm, self.rotary = body.embed_tokens, Norm(body.norm), body.rotary_emb
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.scaling = body.layers[0].self_attn.scaling
        self.context = context_length(model)
        self.dtype = compute_dtype(model)  # what the hidden states come out in, as from transformers
        self.layers = [Layer(Norm(b.input_layernorm),
                             product(stacked([b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj])),
                             product(b.self_attn.o_proj), Norm(b.post_attention_layernorm),
                             product(stacked([b.mlp.gate_proj, b.mlp.up_proj])), product(b.mlp.down_proj))
                       for b in body.layers]

    def forward(self, ids: Tensor, start: int, keys: Tensor, values: Tensor) -> Tensor:
        """Final hidden states [n, H] of tokens `ids` at positions start.., writing their keys
        and values into the caches [layers, kv heads, capacity, head dim]."""
        n, end, hd, g = len(ids), start + len(ids), self.head_dim, self.heads // self.kv_heads
        x = self.embed(ids).float()  # the residual stream; each product takes its layer's dtype
        cos, sin = (t[0, :, None] for t in self.rotary(x, torch.arange(start, end)[None]))
        mask = None
        if n > 1:  # causal within the new tokens; query head-group rows repeat the positions
            mask = torch.arange(end)[None] > torch.arange(start, end)[:, None]
            mask = mask.repeat(g, 1)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.norm1(x)).float().view(n, -1, hd)
            qk = rotate(qkv[:, :self.heads + self.kv_heads], cos, sin)
            keys[i, :, start:end] = qk[:, self.heads:].transpose(0, 1)
            values[i, :, start:end] = qkv[:, self.heads + self.kv_heads:].transpose(0, 1)
            # query head j reads kv head j // g: [kv, g * n, hd] against [kv, end, hd]
            q = qk[:, :self.heads].reshape(n, self.kv_heads, g, hd).permute(1, 2, 0, 3)
            q = q.reshape(self.kv_heads, g * n, hd)
            scores = (q @ keys[i, :, :end].transpose(1, 2)) * self.scaling
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            att = scores.softmax(-1) @ values[i, :, :end]
            att = att.view(self.kv_heads, g, n, hd).permute(2, 0, 1, 3).reshape(n, -1)
            x = x + layer.o(att)
            gate, up = layer.gate_up(layer.norm2(x)).chunk(2, -1)
            x = x + layer.down(F.silu(gate) * up)
        return self.norm(x).to(self.dtype)


class LeanLM:
    """CachedLM's interface (`hidden`, `ids`) over a LeanBody, with a cache of its own."""

    def __init__(self, body: LeanBody):
        self.body, self.ids = body, []
        self.keys = self.values = torch.empty(0)

    def hidden(self, seq: list[int], last: int) -> Tensor:
        """Final hidden states [last, H] of the last `last` positions of `seq`, feeding only
        what the cache does not already hold (a shorter common prefix just moves the end)."""
        keep = common_prefix(self.ids, seq, min(len(seq) - last, len(self.ids)))
        self._reserve(len(seq))
        h = self.body.forward(torch.tensor(seq[keep:]), keep, self.keys, self.values)
        self.ids = list(seq)
        return h[-last:]

    def _reserve(self, length: int) -> None:
        have = self.keys.shape[2] if self.keys.dim() == 4 else 0
        if length <= have:
            return
        b = self.body
        size = min(max(length, 2 * have, MIN_CAPACITY), max(length, b.context))
        shape = (len(b.layers), b.kv_heads, size, b.head_dim)
        keys, values = torch.empty(shape), torch.empty(shape)  # fp32: CPU bf16 bmm is slow at these sizes
        if have:
            keys[:, :, :have], values[:, :, :have] = self.keys, self.values
        self.keys, self.values = keys, values
