"""A causal LM body whose KV cache follows a token sequence that grows and shrinks.

Caches are never rebuilt: asked about a sequence, `CachedLM` finds the prefix its cache
shares with it, crops the rest (`DynamicCache.crop`) and feeds only the new tokens, so a
rejected draft costs no recomputation.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import DynamicCache


class CachedLM:
    def __init__(self, model: torch.nn.Module):
        self.body = model.get_decoder()
        self.cache = DynamicCache()
        self.ids: list[int] = []
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name goes in 5.40)
        params = inspect.signature(self.body.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def hidden(self, seq: list[int], last: int) -> Tensor:
        """Final hidden states [last, H] of the last `last` positions of `seq`, feeding the
        model only what its cache does not already hold."""
        keep = common_prefix(self.ids, seq, min(len(seq) - last, len(self.ids)))
        if keep < len(self.ids):
            self.cache.crop(keep - len(self.ids))
        new = torch.tensor([seq[keep:]])
        out = self.body(input_ids=new, use_cache=True, **{self.cache_kw: self.cache})
        self.ids = list(seq)
        return out.last_hidden_state[0, -last:]


def context_length(model: torch.nn.Module) -> int:
    """The longest sequence `model` takes (its position embeddings)."""
    return int(getattr(model.config, "max_position_embeddings", 1 << 30))


def common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    """Length of the longest common prefix of `a` and `b`, at most `limit`."""
    limit = min(len(a), len(b)) if limit is None else limit
    if a[:limit] == b[:limit]:  # the usual case, at C speed
        return limit
    n = 0
    while a[n] == b[n]:
        n += 1
    return n
