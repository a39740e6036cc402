"""What a model drafter drafts with: a torch module (the lean forward where its
architecture allows, else transformers') or a GGUF file on the native engine
(`native_target.NativeModel`), seen the same way by `ModelDrafter` and the profile."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cache import context_length
from .lean import lm_factory, supports
from .metrics import bytes_per_forward
from .native_target import NativeModel

DraftModel = nn.Module | NativeModel


def caches(model: DraftModel) -> Callable[[], object]:
    """Fresh KV caches over `model`, each with `ids` and `hidden(seq, last)`."""
    return model.new_lm if isinstance(model, NativeModel) else lm_factory(model)


def body_bytes(model: DraftModel) -> int:
    """Bytes one forward reads without the head (its embedding by rows)."""
    return model.body_bytes if isinstance(model, NativeModel) else bytes_per_forward(model, 0)


def context(model: DraftModel) -> int:
    """The longest sequence it takes."""
    return model.context if isinstance(model, NativeModel) else context_length(model)


def forward_kind(model: DraftModel) -> str:
    """Which forward drafts (a profile's key: each prices its own steps)."""
    return "native" if isinstance(model, NativeModel) else "lean" if supports(model) else "transformers"
