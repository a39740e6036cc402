"""One record of a generation's statistics, and how the cost ratio c and MBSU are computed.

Convention (stated in every JSON output as `cost_convention`): c counts bytes, since a
memory-bound forward costs what it reads. A forward reads every decoder weight (layers and
norms), one row of the input embedding per token, and the LM head rows it actually uses (K
rows when trimmed, plus a prompt's extra rows), each at the bytes it is stored in: fp32 4,
bf16 and fp16 2, packed-fp16 2 (fbgemm holds fp16), int8 1 plus a scale per row, int4 half
a byte plus a scale and a zero per group. c = drafter bytes / target bytes. MBSU =
new_tokens / (draft_cost + target_forwards), where draft_cost is what the drafter read in
units of one target forward: c per drafting forward (every forward computed, including one
whose token a stopping rule discarded) plus its prefill, which reads the body but no head.
A model-free drafter (suffix matching) reads nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch

from .kernels import weight_bytes


@contextmanager
def timed(spent: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to `spent[phase]`."""
    t0 = time.perf_counter()
    yield
    spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - t0


COST_CONVENTION = ("bytes read per forward, each weight at its stored size (fp32 4, bf16/fp16/packed-fp16 2, "
                   "int8 1 + row scales, int4 0.5 + group scales and zeros): decoder layers + norms + "
                   "1 embedding row + LM head rows used; c = drafter bytes / target bytes; "
                   "MBSU = tokens / (draft_cost + target_forwards), draft_cost = "
                   "c*drafter_forwards + the drafter prefill's body share")


def bytes_per_forward(model: torch.nn.Module, head_bytes: int) -> int:
    """Bytes one single-token forward of `model` reads with a head storing `head_bytes`
    (0 for a prefill, which computes no head)."""
    emb = model.get_input_embeddings().weight
    return weight_bytes(model.get_decoder()) - emb.nbytes + emb[0].nbytes + head_bytes


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_FIELD_CHECKS = {  # by GenerationStats' annotations
    "int": _is_count,
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
    "list[int]": lambda v: isinstance(v, list) and all(map(_is_count, v)),
    "dict": lambda v: isinstance(v, dict),
}


@dataclass
class GenerationStats:
    """What one generation did and how long each phase took."""

    new_tokens: int = 0
    target_forwards: int = 0
    drafter_forwards: int = 0
    draft_lengths: list[int] = field(default_factory=list)  # per verification round with drafts
    accepted_per_round: list[int] = field(default_factory=list)  # drafts committed per such round
    suffix_rounds: int = 0  # rounds drafted by suffix matching (no drafter forward)
    bonus_tokens: int = 0  # tokens the target produced itself (one per target forward, at most)
    cost_ratio: float = 0.0  # c of one drafting forward
    draft_cost: float = 0.0  # bytes the drafter read, in target-forward units
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    seconds: float = 0.0
    policy_state: dict = field(default_factory=dict)  # e.g. AdaEDL's final lambda

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(self.draft_lengths)
        return sum(self.accepted_per_round) / drafted if drafted else 0.0

    @property
    def mean_draft_length(self) -> float | None:
        """Drafts per round that had any (None when no round did)."""
        return sum(self.draft_lengths) / len(self.draft_lengths) if self.draft_lengths else None

    @property
    def tau(self) -> float:
        """Tokens per target forward."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mbsu(self) -> float:
        cost = self.draft_cost + self.target_forwards
        return self.new_tokens / cost if cost else 0.0

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        """Add the wall-clock time of the block to `phase` (prefill_s, draft_s, verify_s)."""
        t0 = time.perf_counter()
        yield
        setattr(self, phase, getattr(self, phase) + time.perf_counter() - t0)

    def record_round(self, drafted: int, forwards: int, source: str, accepted: int, added: int) -> None:
        """One target forward that verified `drafted` drafts (made with `forwards` drafter
        forwards) and committed `added` tokens, `accepted` of them drafts. A round without
        drafts is a plain target step, not a round whose drafts were all rejected."""
        self.target_forwards += 1
        self.drafter_forwards += forwards
        self.draft_cost += forwards * self.cost_ratio
        if drafted:
            self.draft_lengths.append(drafted)
            self.accepted_per_round.append(min(accepted, added))
            self.suffix_rounds += source == "suffix"
        self.bonus_tokens += int(added > accepted)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def add(self, other: GenerationStats) -> None:
        """Accumulate another generation of the same pair (e.g. the next turn) into this one."""
        forwards = self.drafter_forwards + other.drafter_forwards
        if forwards:  # c may differ per turn (a trimmed head adds each prompt's tokens)
            self.cost_ratio = (self.cost_ratio * self.drafter_forwards
                               + other.cost_ratio * other.drafter_forwards) / forwards
        for f in fields(self):
            if f.name == "policy_state":  # the rule's state after the latest turn
                self.policy_state = other.policy_state
            elif f.name != "cost_ratio":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_dict(cls, record: dict) -> GenerationStats:
        """The stats a `to_dict` record (e.g. a results.jsonl line) holds; fields it lacks
        keep their defaults."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    @classmethod
    def holds(cls, record: dict) -> bool:
        """Whether `record` has every field, each a value of its type (a results line read
        back is used whole: one lacking a field would fail deep in the report)."""
        return all(f.name in record and _FIELD_CHECKS[f.type](record[f.name]) for f in fields(cls))

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(acceptance_rate=self.acceptance_rate, tau=self.tau, mbsu=self.mbsu,
                   mean_draft_length=self.mean_draft_length,
                   tokens_per_second=self.tokens_per_second, cost_convention=COST_CONVENTION)
        return out
