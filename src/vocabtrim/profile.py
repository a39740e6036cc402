"""What this machine charges for a forward: the measured costs that cost-aware drafting and
`--dtype auto` decide from.

Speculative decoding pays only where the target scores n tokens for little more than one
and a draft step is cheap next to a target step. Both depend on the CPU, the thread count,
torch's kernels and the dtype, so they are measured here, not assumed: the target's forward
time for n = 1..32 new tokens at a short and a long cache, the drafter's step time for two
head sizes (step time is linear in head rows: any token map's step is interpolated) and
the target's prefill throughput. A full profile (`vocabtrim profile`, under 3 minutes on
the default pair) takes medians over repeats; a quick one (a few seconds, taken when no
profile is cached) times fewer points. Both are cached by what changes them.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import backend
from .drafting import DraftModel, caches, forward_kind
from .drafting import context as draft_context
from .files import atomic_write
from .heads import Head
from .kernels import cpu, weight_count
from .paths import cache_file
from .target import Target

FULL_N = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32)  # target tokens timed
QUICK_N = (1, 2, 4, 8, 12)
CONTEXTS = (200, 1000)  # cached tokens the target's forwards are timed after
QUICK_CONTEXT = 64
TRIMMED_ROWS = 16384  # the second head size timed (the default token map's K)


@dataclass
class Profile:
    key: dict  # what the figures depend on (machine, torch, models, dtype)
    target_ms: dict[str, list[float]]  # context -> ms to score n = 1..len new tokens
    draft_ms: dict[str, float]  # head rows -> ms of one draft step (body + head)
    prefill_tokens_per_s: float  # the target's prefill throughput
    draft_prefill_tokens_per_s: float  # the drafter's (the hybrid pays it once model rounds start)
    quick: bool = False

    def verify_ms(self, n: int, context: int = CONTEXTS[0]) -> float:
        """ms for the target to score `n` tokens after `context` cached ones (linear in
        between the measured contexts and beyond the longest measured n)."""
        curves = sorted((int(c), ms) for c, ms in self.target_ms.items())
        at = [_extend(ms, n) for _, ms in curves]
        if len(curves) == 1:
            return at[0]
        (c0, _), (c1, _) = curves[0], curves[-1]
        return at[0] + (at[-1] - at[0]) * (context - c0) / (c1 - c0)

    def draft_step_ms(self, rows: int) -> float:
        """ms of one draft step with a head of `rows` rows (linear in rows)."""
        (r0, t0), (r1, t1) = sorted((int(r), ms) for r, ms in self.draft_ms.items())
        return t0 + (t1 - t0) * (rows - r0) / (r1 - r0)

    def table(self) -> str:
        ctxs = sorted(self.target_ms, key=int)
        lines = [f"{'n':>3} " + " ".join(f"{'target @' + c:>12}" for c in ctxs)]
        for n in range(1, len(self.target_ms[ctxs[0]]) + 1):
            lines.append(f"{n:>3} " + " ".join(f"{self.verify_ms(n, int(c)):10.1f}ms" for c in ctxs))
        lines += [f"drafter step, {int(r)} head rows: {ms:.1f} ms" for r, ms in sorted(
                      self.draft_ms.items(), key=lambda x: int(x[0]))]
        lines.append(f"prefill: target {self.prefill_tokens_per_s:.0f} tokens/s, "
                     f"drafter {self.draft_prefill_tokens_per_s:.0f} tokens/s")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """ms against tokens scored, one line per context, drafter steps as levels."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in sorted(self.target_ms, key=int):
            ms = self.target_ms[c]
            ax.plot(range(1, len(ms) + 1), ms, marker=".", label=f"target, {c} cached tokens")
        for r, ms in sorted(self.draft_ms.items(), key=lambda x: int(x[0])):
            ax.axhline(ms, linestyle="--", color="gray", linewidth=1)
            ax.annotate(f"drafter step, {int(r)} head rows", (1, ms), fontsize=8, va="bottom")
        ax.set(xlabel="tokens scored in one forward", ylabel="ms", ylim=(0, None),
               title=f"{self.key['target']} / {self.key['drafter']}, {self.key['dtype']}, "
                     f"{self.key['threads']} threads")
        ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)


def _extend(ms: list[float], n: int) -> float:
    """ms[n-1], extrapolated linearly past the end, never downwards (scoring more tokens
    does not cost less; noise in the last two timings of a tiny model made it negative)."""
    if n <= len(ms):
        return ms[max(n, 1) - 1]
    slope = max(ms[-1] - ms[-2], 0.0) if len(ms) > 1 else 0.0
    return ms[-1] + slope * (n - len(ms))


def key(target, drafter, dtype: str) -> dict:
    """What a profile of `target` and `drafter` (models.Loaded) depends on."""
    on_gguf = backend.get(target.backend).runs_gguf  # its torch weights are not loaded: its file names it
    drafts_gguf = backend.get(drafter.backend).runs_gguf
    return {**cpu(), "target": target.name, "drafter": drafter.name, "dtype": dtype,
            **({**backend.key(target.backend), "target_file": target.source} if on_gguf else {}),
            **({"drafter_file": drafter.source} if drafts_gguf else {}),
            "weights": [0 if on_gguf else weight_count(target.model), 0 if drafts_gguf else weight_count(drafter.model)],
            "drafter_forward": forward_kind(drafter.drafting)}


def path_for(k: dict) -> Path:
    return cache_file("profiles", k, ".json")


def load(k: dict) -> Profile | None:
    """The cached profile for key `k`, or None: none cached, or one that is damaged (said on
    stderr; it is measured again and replaced)."""
    path = path_for(k)
    if not path.exists():
        return None
    try:
        p = Profile(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        p = None
    if p is None or not _whole(p):
        print(f"warning: {path} is not a whole profile; measuring again", file=sys.stderr)
        return None
    return p if p.key == k else None


def _whole(p: Profile) -> bool:
    """Every figure a profile's users read is there and a finite time (distinct contexts and
    head sizes: both are interpolated between)."""
    def ms(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    def sizes(d: object, n: int | None = None) -> bool:
        return (isinstance(d, dict) and bool(d) and all(isinstance(k, str) and k.isdigit() for k in d)
                and len({int(k) for k in d}) == len(d) and (n is None or len(d) == n))

    return (isinstance(p.key, dict) and sizes(p.target_ms)
            and all(isinstance(v, list) and v and all(map(ms, v)) for v in p.target_ms.values())
            and sizes(p.draft_ms, 2) and all(map(ms, p.draft_ms.values()))
            and ms(p.prefill_tokens_per_s) and ms(p.draft_prefill_tokens_per_s) and isinstance(p.quick, bool))


def save(p: Profile) -> Path:
    path = path_for(p.key)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(p), indent=1)))
    return path


def forward_ms(score: Callable[[list[int], int], Tensor], vocab: int, context: list[int], n: int,
               repeats: int) -> float:
    """Median ms for `score(seq, n)` (the logits of the last n positions of seq) to score `n`
    new tokens after a cached `context`; each repeat scores other tokens, so the cache is
    cropped back and nothing is reused."""
    score(context, 1)
    times = []
    for r in range(repeats):
        seq = context + [(1000 + r + i) % vocab for i in range(n)]
        t0 = time.perf_counter()
        score(seq, n)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def prefill_s(target: Target, context: list[int]) -> float:
    """Seconds for `target` to read `context` into an empty cache."""
    target.reset()
    return _seconds(lambda: target.logits(context, 1))


def _seconds(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(target, drafter, quick: bool = False, progress: bool = True) -> Profile:
    """Time `target` and `drafter` (models.Loaded) on this machine; see the module doc."""
    ns, contexts, repeats = (QUICK_N, (QUICK_CONTEXT,), 2) if quick else (FULL_N, CONTEXTS, 3)
    seam = target.as_target()
    model = drafter.drafting
    vocab = min(seam.vocab_size, model.get_output_embeddings().out_features)  # ids both read
    room = min(seam.context, draft_context(model)) - max(ns) - repeats
    contexts = sorted({min(c, room) for c in contexts})  # tiny test models hold less
    ids = [(500 + i) % vocab for i in range(max(contexts))]
    steps = len(contexts) * (len(ns) + 1) + 2  # the drafter's two heads
    bar = tqdm(total=steps, desc="profile", unit="step", disable=not progress or quick)
    forward_ms(seam.logits, seam.vocab_size, ids[:32], 4, 2)  # warm-up: first calls allocate
    target_ms, prefill = {}, 0.0
    for c in contexts:
        seconds = prefill_s(seam, ids[:c])
        prefill = max(prefill, c / seconds)
        bar.update()
        measured = {}
        for n in ns:
            measured[n] = forward_ms(seam.logits, seam.vocab_size, ids[:c], n, repeats)
            bar.update()
        target_ms[str(c)] = [interpolate(measured, n) for n in range(1, max(ns) + 1)]
    draft_ms = drafter_ms(model, ids[:contexts[0]], 3 * repeats, bar.update)
    lm = caches(model)
    draft_prefill = max(contexts[-1] / _seconds(lambda: lm().hidden(ids[:contexts[-1]], 1)) for _ in range(2))
    bar.close()
    return Profile(key(target, drafter, target.dtype), target_ms, draft_ms, prefill, draft_prefill, quick)


def drafter_ms(model: DraftModel, context: list[int], repeats: int,
               done: Callable[[], object] = lambda: None) -> dict[str, float]:
    """Median ms of one draft step of `model` after `context`, with its full head and with a
    TRIMMED_ROWS-row one (Profile.draft_ms); `done` is called after each."""
    vocab = model.get_output_embeddings().out_features
    rows = min(TRIMMED_ROWS, vocab // 2)
    heads = {vocab: Head.of(model), rows: Head.of(model, torch.arange(rows))}
    lm, out = caches(model)(), {}  # as ModelDrafter drafts
    for n, head in heads.items():
        out[str(n)] = forward_ms(lambda seq, last, h=head: h(lm.hidden(seq, last)), vocab, context, 1, repeats)
        done()
    return out


def interpolate(measured: dict[int, float], n: int) -> float:
    """The ms at `n` from those `measured` at some n: linear between the nearest two."""
    lo = max(k for k in measured if k <= n)
    hi = min((k for k in measured if k >= n), default=lo)
    if hi == lo:
        return measured[lo]
    return measured[lo] + (measured[hi] - measured[lo]) * (n - lo) / (hi - lo)


def for_pair(target, drafter) -> Profile:
    """The cached profile of this pair on this machine, else a quick one (measured now,
    a few seconds, and cached until `vocabtrim profile` replaces it)."""
    p = load(key(target, drafter, target.dtype))
    if p is None:
        p = measure(target, drafter, quick=True)
        save(p)
    return p
