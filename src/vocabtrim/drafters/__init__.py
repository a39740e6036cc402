"""Drafters: who proposes the tokens the target verifies.

`ModelDrafter` runs a small LM of the target's vocabulary (full or trimmed head);
`CrossDrafter` one with its own tokenizer, through the tokens both vocabularies share and
the target tokens it spells in pieces; `SuffixDrafter` matches the recent text against the
prompt, the output so far and earlier outputs, at no model cost; `HybridDrafter` takes the
suffix draft when its score says it will be accepted, the model's otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import VocabtrimError
from .base import Drafter, Proposal
from .cross import Bridge, CrossDrafter
from .hybrid import HybridDrafter
from .model import ModelDrafter
from .suffix import SuffixDrafter

KINDS = ("model", "suffix", "hybrid")


def make_drafter(kind: str, target: torch.nn.Module, model: torch.nn.Module | None = None,
                 kept_ids: Tensor | None = None, prompt_tokens: bool = True, bridge: Bridge | None = None,
                 merges: bool = True) -> Drafter:
    """The drafter `kind` names, for `target`; `model` is the small LM (model, hybrid), of
    another tokenizer when `bridge` pairs the two (with the n-gram cache of `merges`)."""
    if kind not in KINDS:
        raise VocabtrimError(f"unknown drafter {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "suffix":
        return SuffixDrafter(target.get_output_embeddings().out_features)
    if model is None:
        raise VocabtrimError(f"the {kind} drafter needs a drafter model")
    drafter = (ModelDrafter(model, target, kept_ids, prompt_tokens) if bridge is None
               else CrossDrafter(model, target, bridge, kept_ids, prompt_tokens, merges))
    if kind == "model":
        return drafter
    return HybridDrafter(drafter, SuffixDrafter(target.get_output_embeddings().out_features))


__all__ = ["KINDS", "Bridge", "CrossDrafter", "Drafter", "HybridDrafter", "ModelDrafter", "Proposal", "SuffixDrafter",
           "make_drafter"]
