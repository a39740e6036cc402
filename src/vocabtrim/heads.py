"""The LM head a drafter drafts with: the full one, or one trimmed to a token map.

A trimmed head is a real K x hidden weight copied out of the full head once at load time
(packed like the model's own layers), so each draft step reads K rows instead of the whole
vocabulary. Draft index i stands for target token `ids[i]`.

Answers copy from their prompt: identifiers in code, names and numbers in prose. Those
are often rare tokens that no calibration set ranks in the top K, and a drafter that
cannot propose them loses the whole rest of the round. `for_prompt` therefore adds the
prompt's own tokens that the map lacks as a few extra rows for one generation (gathered
from the full head; a prompt of 150 tokens adds at most 150 rows to K).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .kernels import rows as linear_rows
from .kernels import weight_bytes
from .native_target import NativeRows
from .tokenmap import check_ids


class Head:
    """hidden states -> logits over the head's own index space (the kept tokens)."""

    def __init__(self, proj: nn.Module, ids: Tensor | None, vocab_size: int,
                 source: nn.Module | None = None):
        self.proj = proj  # an nn.Linear, a PackedLinear, a QuantLinear or NativeRows
        self.vocab_size = vocab_size
        self.ids = ids  # None: identity (full head)
        self.source = source  # the full head, to gather a prompt's extra rows from
        self.extra: nn.Module | None = None  # a plain fp32 linear layer of the extra ids' rows
        self._ids_list = None if ids is None else ids.tolist()

    @classmethod
    def of(cls, model: nn.Module, kept_ids: Tensor | None = None) -> Head:
        """The head of `model`, trimmed to `kept_ids` (target token ids) when given."""
        lin = model.get_output_embeddings()
        vocab = lin.out_features
        if kept_ids is None:
            return cls(lin, None, vocab)
        kept_ids = kept_ids.to(torch.long)
        check_ids(kept_ids, vocab, "the token map for this drafter")
        return cls(_rows(lin, kept_ids), kept_ids, vocab, lin)

    def for_prompt(self, prompt: list[int]) -> Head:
        """This head plus rows for the prompt's tokens it lacks (itself when none)."""
        if self.ids is None or self.source is None:
            return self
        missing = torch.ones(self.vocab_size, dtype=torch.bool)
        missing[self.ids] = False
        present = torch.zeros(self.vocab_size, dtype=torch.bool)
        present[torch.tensor(prompt, dtype=torch.long)] = True
        extra_ids = (missing & present).nonzero().flatten()
        if extra_ids.numel() == 0:
            return self
        head = Head(self.proj, torch.cat([self.ids, extra_ids]), self.vocab_size)
        head.extra = _rows(self.source, extra_ids, packed=False)
        return head

    @property
    def rows(self) -> int:
        return self.proj.out_features + (0 if self.extra is None else self.extra.out_features)

    @property
    def nbytes(self) -> int:
        """Bytes one forward through this head reads: its rows as stored, extra rows included."""
        return _nbytes(self.proj) + (0 if self.extra is None else _nbytes(self.extra))

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.proj(hidden)
        if self.extra is None:
            return logits
        return torch.cat([logits, self.extra(hidden.float()).to(logits.dtype)], dim=-1)

    def token(self, index: int) -> int:
        """Target token id of head index `index`."""
        return index if self._ids_list is None else self._ids_list[index]

    def to_vocab(self, dist: Tensor) -> Tensor:
        """Scatter [..., rows] into [..., vocab_size], zero outside the kept set."""
        if self.ids is None:
            return dist
        out = dist.new_zeros(*dist.shape[:-1], self.vocab_size)
        return out.index_copy_(-1, self.ids, dist)

    def full_logits(self, hidden: Tensor) -> Tensor:
        """Logits over the whole vocabulary, -inf outside the kept set (for transformers)."""
        logits = self(hidden)
        if self.ids is None:
            return logits
        out = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.ids, logits)


def _rows(proj: nn.Module | NativeRows, ids: Tensor, packed: bool = True) -> nn.Module | NativeRows:
    """Rows `ids` of a head's projection, copied: native rows at their stored format, torch
    ones of the same kind (or, not `packed`, a plain fp32 layer: a prompt's few extra rows)."""
    if isinstance(proj, NativeRows):
        return proj.gather(ids)
    return linear_rows(proj, ids) if packed else linear_rows(proj, ids, packed=False).float()


def _nbytes(proj: nn.Module | NativeRows) -> int:
    return proj.nbytes if isinstance(proj, NativeRows) else weight_bytes(proj)
