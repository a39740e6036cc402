"""Is a greedy output identical to the target alone's? Where two outputs first differ, and
whether that is a numerical tie or a bug.

Kernels for 1-token and many-token forwards round differently and may resolve near-exact
ties between the target's two best logits differently, so "identical" on real models
means identical, or the first divergence sits at a tie.
"""

from __future__ import annotations

import torch

from ..kernels import compute_dtype

# How far apart (in logits) the target's two best tokens may be for a divergence between
# a 1-token and a many-token forward to count as a numerical tie, per compute dtype: two
# bf16 steps at the magnitude (16-32) of a confident top logit; fp32 accumulation-order
# noise is far below 0.01.
TIE_TOLERANCE = {torch.bfloat16: 0.25, torch.float16: 0.05, torch.float32: 0.01}


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest shared prefix of `a` and `b`."""
    n = 0
    for x, y in zip(a, b, strict=False):  # stops at the shorter
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def divergence(target: torch.nn.Module, prompt: list[int], a: list[int], b: list[int]) -> dict | None:
    """Where two greedy outputs of the same target first differ, and by how much the target
    itself prefers one token over the other there (re-scored in one plain forward).

    None when they are identical. A divergence with margin within the tolerance of the
    target's compute dtype is a numerical tie, anything larger is a bug."""
    n = _common_prefix(a, b)
    if n == len(a) == len(b):
        return None
    logits = target(torch.tensor([prompt + a[:n]])).logits[0, -1].float()
    ta = a[n] if n < len(a) else None
    tb = b[n] if n < len(b) else None
    margin = None if ta is None or tb is None else abs(float(logits[ta] - logits[tb]))
    tolerance = TIE_TOLERANCE[compute_dtype(target)]
    return {"position": n, "token_a": ta, "token_b": tb, "margin": margin, "tolerance": tolerance,
            "tie": margin is not None and margin <= tolerance}
