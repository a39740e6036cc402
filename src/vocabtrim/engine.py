"""The speculative decoding loop.

One round: the drafter proposes up to `room` tokens, the target scores the committed
sequence plus all drafts in one forward, `verify` keeps a prefix and adds one token of the
target's own. Both models keep their KV caches across rounds. The target alone is the same
loop with no drafter, so timings compare fairly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .drafters.base import Drafter, Proposal
from .errors import VocabtrimError
from .metrics import GenerationStats
from .policies import Policy
from .sampling import Sampling, verify
from .target import Target

GREEDY = Sampling()


@dataclass
class Stop:
    """When generation ends besides max_new_tokens: a stop token, a stop string, or `halt`
    saying so (a client gone, a time limit: checked as tokens are committed, so a
    generation halts at a round boundary with its stats whole)."""

    token_ids: frozenset[int]
    strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None
    halt: Callable[[], bool] | None = None

    def hit(self, new: list[int]) -> bool:
        if new[-1] in self.token_ids or (self.halt is not None and self.halt()):
            return True
        if self.strings and self.decode:
            tail = self.decode(new[-max(len(s) for s in self.strings) - 8:])
            return any(s in tail for s in self.strings)
        return False


class Output:
    """The committed sequence of one generation and when it is complete."""

    def __init__(self, prompt: list[int], limit: int, stop: Stop | None,
                 on_tokens: Callable[[list[int]], None] | None):
        self.seq, self.prompt_len, self.limit = list(prompt), len(prompt), limit
        self.stop, self.on_tokens, self.done = stop, on_tokens, False

    @property
    def new(self) -> list[int]:
        return self.seq[self.prompt_len:]

    def room(self) -> int:
        """Drafts that still fit: one place stays for the target's own token."""
        return self.limit - (len(self.seq) - self.prompt_len) - 1

    def commit(self, tokens: list[int]) -> int:
        """Append tokens until a stop; returns how many were appended."""
        start = len(self.seq)
        for t in tokens:
            self.seq.append(t)
            n = len(self.seq) - self.prompt_len
            if n >= self.limit or (self.stop and self.stop.hit(self.seq[self.prompt_len:])):
                self.done = True
                break
        if self.on_tokens:
            self.on_tokens(self.seq[start:])
        return len(self.seq) - start


class Engine:
    """A target, an optional drafter, and the loop that makes them one lossless decoder."""

    def __init__(self, target: Target, drafter: Drafter | None = None):
        self.target, self.drafter = target, drafter
        self.context = min(target.context, drafter.context if drafter else 1 << 30)

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, policy: Policy,
                 sampling: Sampling = GREEDY, seed: int = 0, stop: Stop | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None,
                 ) -> tuple[list[int], GenerationStats]:
        """Generate up to `max_new_tokens` after `prompt`; returns (new ids, stats)."""
        out = Output(prompt, self._limit(prompt, max_new_tokens), stop, on_tokens)
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        policy.reset()
        target, drafter, stats = self.target, self.drafter or Drafter(), GenerationStats()
        target.reset()
        with stats.timing("prefill_s"):
            # the target's prefill already yields the first token
            _, first = verify([], [], target.logits(out.seq, 1), sampling, gen)
            drafter.prefill(out.seq)
        stats.cost_ratio = drafter.cost_per_forward / target.forward_bytes
        stats.record_round(0, 0, "none", 0, out.commit([first]))
        while not out.done:
            with stats.timing("draft_s"):
                room = out.room()
                p = drafter.propose(out.seq, room, policy, sampling, gen) if room > 0 else Proposal()
            with stats.timing("verify_s"):
                logits = target.logits(out.seq + p.tokens, len(p.tokens) + 1)
                n, nxt = verify(p.tokens, p.q, logits, sampling, gen)
            if p.round is not None:  # the policy decided these drafts: it learns from them
                policy.observe(p.round, len(p.tokens), n)
            drafter.observe(p, n)
            stats.record_round(len(p.tokens), p.forwards, p.source, n, out.commit(p.tokens[:n] + [nxt]))
        drafter.finish(out.seq, out.prompt_len)
        stats.draft_cost += drafter.prefill_cost / target.forward_bytes  # known now: a drafter may read lazily
        stats.new_tokens, stats.policy_state = len(out.new), policy.state()
        stats.seconds = time.perf_counter() - start
        return out.new, stats

    def _limit(self, prompt: list[int], max_new_tokens: int) -> int:
        """How many tokens this generation may add; one-line errors for impossible requests."""
        if not prompt:
            raise VocabtrimError("the prompt is empty")
        if max_new_tokens < 1:
            raise VocabtrimError(f"max-new-tokens must be >= 1, got {max_new_tokens}")
        if len(prompt) >= self.context:
            raise VocabtrimError(f"the prompt has {len(prompt)} tokens; the context holds {self.context}")
        return min(max_new_tokens, self.context - len(prompt))
