"""A trimmed drafter that transformers' `generate(assistant_model=...)` accepts as is.

    from vocabtrim.hf import trimmed_assistant
    assistant = trimmed_assistant(drafter, TokenMap.load("tm").kept_ids)
    target.generate(ids, assistant_model=assistant, do_sample=False)

The assistant shares all weights with `drafter` except its LM head, a K x hidden copy of
the kept rows. It returns full-vocabulary logits with -inf outside the kept set, so
transformers drafts only kept tokens and its own verification stays lossless.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from .heads import Head


class TrimmedLMHead(nn.Module):
    """nn.Module face of a trimmed `Head`: K-row matmul, scattered into the full vocabulary."""

    def __init__(self, head: Head):
        super().__init__()
        self.head = head
        self.proj = head.proj  # registered, so .to() / .float() reach the K rows

    def forward(self, hidden: Tensor) -> Tensor:
        return self.head.full_logits(hidden)


def trimmed_assistant(drafter: nn.Module, kept_ids: Tensor) -> nn.Module:
    """A shallow copy of `drafter` (weights shared, the original untouched) drafting with
    only `kept_ids` (target-vocabulary token ids)."""
    assistant = copy.copy(drafter)
    assistant._modules = dict(drafter._modules)  # so replacing the head leaves drafter alone
    assistant.set_output_embeddings(TrimmedLMHead(Head.of(drafter, kept_ids)))
    return assistant
