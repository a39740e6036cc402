"""What the benchmark scripts share on top of the runner: the default pair with its stop
set, a Method per engine configuration, a warm-up before timing and the identity check."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import NamedTuple

import torch

from .. import catalog, models, prompts
from ..engine import Engine, Stop
from ..loading import Options, load_parts
from ..policies import Policy
from ..sampling import Sampling
from ..target import Target
from .identity import divergence
from .report import CheckFn
from .run import Method


class Pair(NamedTuple):
    target: models.Loaded
    drafter: models.Loaded
    stop: Stop  # the target's EOS and end-of-turn ids


def load_pair(dtype: str = "auto", backend: str = "auto") -> Pair:
    """The built-in default pair in `dtype`, the target on `backend` (auto: the faster here)."""
    parts = load_parts(Options(catalog.DEFAULT_TARGET, catalog.DEFAULT_DRAFT, backend=backend, dtype=dtype))
    return Pair(parts.target, parts.drafter, Stop(prompts.stop_token_ids(parts.target)))


def engine_method(name: str, engine: Engine, policy: Policy, sampling: Sampling, seed: int,
                  stop: Stop, backend: str = "torch", drafts_on: str | None = None) -> Method:
    """A Method that runs `engine` with fixed settings (its target on `backend`, its drafter
    model, if any, on `drafts_on`)."""
    return Method(name, lambda ids, n: engine.generate(ids, n, policy, sampling, seed, stop), backend, drafts_on)


def warm_up(methods: Iterable[Method], tokenizer) -> None:
    """One short untimed generation per method: first calls allocate caches and buffers,
    which would otherwise be charged to whichever method meets the first question."""
    ids = prompts.encode_prompt(tokenizer, "Say hello.")
    with torch.inference_mode():
        for m in methods:
            m.generate(ids, 8)


def identity_check(target: Target) -> CheckFn:
    """`summarize`'s check: the divergence of two greedy outputs of `target`."""
    return partial(divergence, target)
