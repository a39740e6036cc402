"""Is a greedy output the target's own? Where two outputs first differ, and whether that is
a numerical tie of the target's or a bug."""

from __future__ import annotations

import torch

from ..cache import common_prefix
from ..target import Target


@torch.inference_mode()
def divergence(target: Target, prompt: list[int], a: list[int], b: list[int]) -> dict | None:
    """Where two greedy outputs of the same target first differ, and by how much the target
    itself prefers one token over the other there (re-scored in one plain forward).

    None when they are identical. Kernels for 1-token and many-token forwards round
    differently and may resolve near-exact ties differently, so a divergence with margin
    within the tolerance of the target's compute dtype is a numerical tie, anything larger
    is a bug (the target's `tie_tolerance`)."""
    n = common_prefix(a, b)
    if n == len(a) == len(b):
        return None
    target.reset()
    logits = target.logits(prompt + a[:n], 1)[-1].float()
    ta = a[n] if n < len(a) else None
    tb = b[n] if n < len(b) else None
    margin = None if ta is None or tb is None else abs(float(logits[ta] - logits[tb]))
    tolerance = target.tie_tolerance
    return {"position": n, "token_a": ta, "token_b": tb, "margin": margin, "tolerance": tolerance,
            "tie": margin is not None and margin <= tolerance}
