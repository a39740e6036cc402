"""The speculative decoding loop and its KV-cache bookkeeping.

One round: the drafter proposes up to `policy.budget()` tokens, the target scores the
committed sequence plus all drafts in one forward, `verify` keeps a prefix and adds one
token of the target's own. Both models keep their caches across rounds; `CachedLM` crops
a cache back to the longest prefix it shares with the sequence it is asked about, so a
rejection costs no recomputation. The target alone is the same loop with no drafter.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from transformers import DynamicCache

from .errors import VocabtrimError
from .heads import Head
from .kernels import compute_dtype
from .metrics import GenerationStats, weights_per_forward
from .policies import Policy
from .sampling import Sampling, verify

GREEDY = Sampling()


class CachedLM:
    """A causal LM body whose KV cache follows a token sequence that grows and shrinks."""

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
        keep = min(len(seq) - last, len(self.ids))  # at least `last` positions are fed
        if self.ids[:keep] != seq[:keep]:
            keep = _common_prefix(self.ids, seq, keep)
        if keep < len(self.ids):
            self.cache.crop(keep - len(self.ids))
        new = torch.tensor([seq[keep:]])
        out = self.body(input_ids=new, use_cache=True, **{self.cache_kw: self.cache})
        self.ids = list(seq)
        return out.last_hidden_state[0, -last:]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@dataclass
class Proposal:
    tokens: list[int]  # target-vocabulary ids
    q: Tensor | None  # [len(tokens), V] processed distributions; None when greedy
    forwards: int  # drafter forwards computed, including a discarded last one


class Drafter(Protocol):
    """What the engine needs from any drafter."""

    cost_per_forward: int  # weights read per forward in the current generation

    def prefill(self, seq: list[int]) -> None: ...

    def propose(self, seq: list[int], n_max: int, policy: Policy, sampling: Sampling,
                gen: torch.Generator | None) -> Proposal: ...


class ModelDrafter:
    """A small causal LM of the target's vocabulary, drafting with a full or trimmed head."""

    def __init__(self, model: torch.nn.Module, head: Head, prompt_tokens: bool = True):
        self.model, self.base_head, self.head = model, head, head
        self.prompt_tokens = prompt_tokens
        self.lm = CachedLM(model)
        self._body_cost = weights_per_forward(model, 0)
        self._hidden = model.get_output_embeddings().in_features

    @property
    def cost_per_forward(self) -> int:
        return self._body_cost + self.head.rows * self._hidden

    def prefill(self, seq: list[int]) -> None:
        """Start a new generation: a fresh cache holding `seq`, and a trimmed head that can
        also propose the prompt's own tokens (unless prompt_tokens is off)."""
        self.head = self.base_head.for_prompt(seq) if self.prompt_tokens else self.base_head
        self.lm = CachedLM(self.model)
        self.lm.hidden(seq, 1)

    def propose(self, seq, n_max, policy, sampling, gen) -> Proposal:
        tokens: list[int] = []
        dists: list[Tensor] = []
        forwards = 0
        for step in range(n_max):
            logits = self.head(self.lm.hidden(seq + tokens, 1))[0]
            forwards += 1
            index, dist = sampling.choose(logits, gen)
            probs = dist if dist is not None else logits.float().softmax(-1)
            if not policy.keep(step, probs, index):
                break
            tokens.append(self.head.token(index))
            if dist is not None:
                dists.append(dist)
        q = self.head.to_vocab(torch.stack(dists)) if dists else None
        return Proposal(tokens, q, forwards)


@dataclass
class Stop:
    """When generation ends besides max_new_tokens: a stop token or a stop string."""

    token_ids: frozenset[int]
    strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None

    def hit(self, new: list[int]) -> bool:
        if new[-1] in self.token_ids:
            return True
        if self.strings and self.decode:
            tail = self.decode(new[-max(len(s) for s in self.strings) - 8:])
            return any(s in tail for s in self.strings)
        return False


class Engine:
    """A target, an optional drafter, and the loop that makes them one lossless decoder."""

    def __init__(self, target: torch.nn.Module, drafter: torch.nn.Module | None = None,
                 kept_ids: Tensor | None = None, prompt_tokens: bool = True):
        self.target = target
        self.target_head = Head.of(target)
        if drafter is not None:
            tv = target.get_output_embeddings().out_features
            dv = drafter.get_output_embeddings().out_features
            if tv != dv:
                raise VocabtrimError(
                    f"drafter vocabulary ({dv}) differs from target vocabulary ({tv}); "
                    "cross-vocabulary drafting is not supported yet")
        self.drafter = None if drafter is None else ModelDrafter(
            drafter, Head.of(drafter, kept_ids), prompt_tokens)
        self.context = min(_context(m) for m in (target, drafter) if m is not None)
        self.target_cost = weights_per_forward(target, self.target_head.rows)

    @property
    def cost_ratio(self) -> float:
        """c of the latest generation (a trimmed head's rows can grow with the prompt)."""
        return self.drafter.cost_per_forward / self.target_cost if self.drafter else 0.0

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, policy: Policy,
                 sampling: Sampling = GREEDY, seed: int = 0, stop: Stop | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None,
                 ) -> tuple[list[int], GenerationStats]:
        """Generate up to `max_new_tokens` after `prompt`; returns (new ids, stats)."""
        if not prompt:
            raise VocabtrimError("the prompt is empty")
        if max_new_tokens < 1:
            raise VocabtrimError(f"max-new-tokens must be >= 1, got {max_new_tokens}")
        if len(prompt) >= self.context:
            raise VocabtrimError(f"the prompt has {len(prompt)} tokens; the context holds {self.context}")
        max_new_tokens = min(max_new_tokens, self.context - len(prompt))
        gen = torch.Generator().manual_seed(seed)
        policy.reset()
        target = CachedLM(self.target)
        drafter = self.drafter
        stats = GenerationStats()
        seq, new = list(prompt), []
        start = time.perf_counter()

        def commit(tokens: list[int]) -> bool:
            """Append tokens until a stop; True when generation is over."""
            for t in tokens:
                seq.append(t)
                new.append(t)
                if len(new) >= max_new_tokens or (stop and stop.hit(new)):
                    return True
            return False

        # Prefill: the target's first forward already yields the first token.
        _, first = verify([], None, self.target_head(target.hidden(seq, 1)), sampling, gen)
        stats.target_forwards = stats.bonus_tokens = 1
        if drafter:
            drafter.prefill(seq)
            stats.drafter_forwards = 1
            stats.cost_ratio = self.cost_ratio
        stats.prefill_s = time.perf_counter() - start
        done = commit([first])
        if on_tokens:
            on_tokens([first])
        while not done:
            t0 = time.perf_counter()
            room = min(policy.budget(), max_new_tokens - len(new) - 1)
            if drafter and room > 0:
                p = drafter.propose(seq, room, policy, sampling, gen)
            else:
                p = Proposal([], None, 0)
            t1 = time.perf_counter()
            logits = self.target_head(target.hidden(seq + p.tokens, len(p.tokens) + 1))
            n, nxt = verify(p.tokens, p.q, logits, sampling, gen)
            stats.verify_s += time.perf_counter() - t1
            stats.draft_s += t1 - t0
            if drafter:
                policy.observe(len(p.tokens), n)
            before = len(new)
            done = commit(p.tokens[:n] + [nxt])
            added = len(new) - before
            stats.target_forwards += 1
            stats.drafter_forwards += p.forwards
            if drafter:
                stats.draft_lengths.append(len(p.tokens))
                stats.accepted_per_round.append(min(n, added))
            stats.bonus_tokens += int(added > n)
            if on_tokens:
                on_tokens(new[before:])
        stats.new_tokens = len(new)
        stats.policy_state = policy.state()
        stats.seconds = time.perf_counter() - start
        return new, stats


def _context(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "max_position_embeddings", 1 << 30))


# How far apart (in logits) the target's two best tokens may be for a divergence between
# a 1-token and a many-token forward to count as a numerical tie, per compute dtype: two
# bf16 steps at the magnitude (16-32) of a confident top logit; fp32 accumulation-order
# noise is far below 0.01.
TIE_TOLERANCE = {torch.bfloat16: 0.25, torch.float16: 0.05, torch.float32: 0.01}


@torch.inference_mode()
def divergence(target: torch.nn.Module, prompt: list[int], a: list[int], b: list[int]) -> dict | None:
    """Where two greedy outputs of the same target first differ, and by how much the target
    itself prefers one token over the other there (re-scored in one plain forward).

    None when they are identical. Kernels for 1-token and many-token forwards round
    differently and may resolve near-exact ties differently, so a divergence with margin
    within the tolerance of the target's compute dtype is a numerical tie, anything larger
    is a bug."""
    n = _common_prefix(a, b, min(len(a), len(b)))
    if n == len(a) == len(b):
        return None
    logits = target(torch.tensor([prompt + a[:n]])).logits[0, -1].float()
    ta = a[n] if n < len(a) else None
    tb = b[n] if n < len(b) else None
    margin = None if ta is None or tb is None else abs(float(logits[ta] - logits[tb]))
    tolerance = TIE_TOLERANCE[compute_dtype(target)]
    return {"position": n, "token_a": ta, "token_b": tb, "margin": margin, "tolerance": tolerance,
            "tie": margin is not None and margin <= tolerance}
