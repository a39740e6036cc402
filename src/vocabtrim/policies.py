"""Draft-length rules: how many tokens the drafter proposes before the target verifies.

The engine asks a policy three things: how many drafts at most this round (`budget`),
after each drafter forward whether to keep its token and go on (`keep`), and after
verification how it went (`observe`). A forward whose token `keep` rejects is still a
drafter forward that was paid for, and the engine counts it.
"""

from __future__ import annotations

from torch import Tensor

from .errors import VocabtrimError


class Policy:
    """Base rule: draft up to `max_len` tokens every round, never stop early."""

    name = "static"

    def __init__(self, max_len: int):
        if max_len < 1:
            raise VocabtrimError(f"draft length must be >= 1, got {max_len}")
        self.max_len = max_len

    def budget(self) -> int:
        return self.max_len

    def keep(self, step: int, probs: Tensor, index: int) -> bool:
        """step: 0-based position in the round; probs: the drafter's distribution the token
        was drawn from (plain softmax when greedy); index: the chosen entry of probs."""
        return True

    def observe(self, drafted: int, accepted: int) -> None:
        """Learn from one verified round."""

    def state(self) -> dict:
        return {}

    def spec(self) -> str:
        return f"static:{self.max_len}"


def parse_policy(spec: str) -> Policy:
    """`static:K` -> a Policy. One-line error on anything else."""
    name, _, arg = spec.partition(":")
    if name == "static":
        try:
            return Policy(int(arg))
        except ValueError:
            pass
    raise VocabtrimError(f"bad policy {spec!r}; valid forms: static:K")
