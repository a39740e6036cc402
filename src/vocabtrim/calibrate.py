"""Counting token frequencies on a calibration set (raw text, drafter- or target-generated):
the orchestration above the engine that `calibrate` and bench's token maps run.

The paper's best source is text the *target* generated: that is what the drafter must
predict at decode time. Only generated tokens are counted, never prompt tokens. Counts are
saved atomically every few items, with the number of items done, so `--resume` continues
without counting anything twice.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import backend
from .assembly import Assembler, Parts, parse_method
from .data import humaneval, record_text
from .drafters import Bridge
from .engine import Engine, Stop
from .errors import VocabtrimError
from .files import check_output
from .models import Loaded
from .prompts import encode_prompt, stop_token_ids
from .paths import cache_file
from .policies import Policy
from .sampling import Sampling
from .tokenmap import trim
from .vocab import Counts, tokenizer_fingerprint

SOURCES = ("target", "draft", "raw")
BUILTIN_DATA = ("humaneval", "stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".jsonl", ".json", ".rst")


def stdlib_files() -> list[Path]:
    """The standard library's own source files: no tests, no installed third-party packages
    (site-packages lives inside the stdlib directory)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def load_items(data: str, answers: bool = False) -> list[str]:
    """Calibration texts: prompts to answer or, with `answers` (raw mode), text to count.

    DATA is `humaneval`, `stdlib`, a JSONL (`data.record_text`: Spec-Bench turns, prompt /
    response, text, chat messages), a plain text file, or a directory of such files.
    """
    if data == "humaneval":
        return [q.turns[0] for q in humaneval()]
    if data == "stdlib":
        return [p.read_text(errors="replace") for p in stdlib_files()]
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise VocabtrimError(f"{data} holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return [t for p in files for t in _file_items(p, answers)]
    if path.is_file():
        return _file_items(path, answers)
    raise VocabtrimError(f"no calibration data at {data!r}: give a file, a directory, "
                         f"or one of {', '.join(BUILTIN_DATA)}")


def _file_items(path: Path, answers: bool) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise VocabtrimError(f"cannot read {path}: {e}") from None
    if path.suffix != ".jsonl":
        return [text] if text.strip() else []
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(record_text(json.loads(line), answers))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise VocabtrimError(f"{path}:{n}: {e}; expected a JSON object with 'turns' (a list of "
                                 "non-empty strings), 'prompt' (+ 'response'), 'text' or 'messages'") from None
    return items


def tokenize_fn(tokenizer) -> Callable[[str], list[int]]:
    """Raw mode: the text's own tokens."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_fn(engine: Engine, policy: Policy, lm: Loaded, max_new_tokens: int, sampling: Sampling,
                seed: int) -> Callable[[str], list[int]]:
    """Generated mode: the tokens `engine` answers a prompt with (prompt tokens excluded).
    With a drafter in the engine this is still exactly the target's text, only faster."""
    stop = Stop(stop_token_ids(lm))
    return lambda text: engine.generate(encode_prompt(lm.tokenizer, text), max_new_tokens,
                                        policy, sampling, seed, stop)[0]


def count_tokens(items: list[str], out: Path, meta: dict, vocab_size: int, per_item,
                 resume: bool = False, save_every_s: float = 30.0) -> Counts:
    """Run `per_item(text) -> list[int]` over items, counting ids, saving as it goes.

    With resume, an existing file with the same provenance continues from the first item
    it has not counted."""
    counts = Counts(torch.zeros(vocab_size, dtype=torch.int64), {**meta, "items_done": 0, "tokens": 0})
    prev = check_counts_out(out, resume)
    if prev is not None:
        same = {k: prev.meta.get(k) for k in meta} == meta
        if not same or prev.counts.numel() != vocab_size:
            raise VocabtrimError(f"{out} was made with other settings; cannot resume it "
                                 "(remove it or drop --resume)")
        if not all(_is_count(prev.meta.get(k)) for k in ("items_done", "tokens")) \
                or prev.meta["items_done"] > len(items):
            raise VocabtrimError(f"{out} is damaged: its items_done and tokens are not counts of "
                                 f"these {len(items)} items (remove it or drop --resume)")
        counts = prev
    done = counts.meta["items_done"]
    last_save = time.monotonic()
    with tqdm(total=len(items), initial=done, desc="calibrate", unit="item") as bar:
        for i in range(done, len(items)):
            ids = per_item(items[i])
            if ids:
                counts.counts += torch.bincount(torch.tensor(ids), minlength=vocab_size)[:vocab_size]
            counts.meta["items_done"] = i + 1
            counts.meta["tokens"] += len(ids)
            bar.update(1)
            bar.set_postfix(tokens=counts.meta["tokens"])
            if time.monotonic() - last_save > save_every_s:
                counts.save(out)
                last_save = time.monotonic()
    counts.save(out)
    return counts


def check_counts_out(out: Path, resume: bool) -> Counts | None:
    """The counts a run to `out` continues (None: a new file), refusing before any work a
    path that cannot be written, or an existing file without `resume` (never replaced)."""
    check_output(out)
    if not Path(out).exists():
        return None
    if not resume:
        raise VocabtrimError(f"{out} exists; pass --resume to continue it or choose another --out")
    return Counts.load(out)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_calibration(spec: str) -> dict:
    """`DATA[:n=16,k=16384,tokens=128]` -> settings for a target-generated token map
    (each a count >= 1: n=0 would take `[-0:]`, every prompt)."""
    data, _, rest = spec.partition(":")
    out = {"data": data, "n": 16, "k": 16384, "tokens": 128}
    try:
        for part in filter(None, rest.split(",")):
            key, _, value = part.partition("=")
            if key not in ("n", "k", "tokens") or int(value) < 1:
                raise ValueError
            out[key] = int(value)
    except ValueError:
        raise VocabtrimError(f"bad --calibrate {spec!r}; form: DATA[:n=16,k=16384,tokens=128], "
                             "each an integer >= 1") from None
    return out


def calibration_prompts(spec: dict, exclude: set[str]) -> list[str]:
    """The last `n` prompts of the calibration data that are not evaluation prompts."""
    items = [t for t in load_items(spec["data"]) if t not in exclude][-spec["n"]:]
    if not items:
        raise VocabtrimError(f"no calibration prompts in {spec['data']} outside the evaluation set")
    return items


def target_counts(spec: dict, exclude: set[str], target, drafter):
    """Token counts of the target's greedy answers to the last `n` calibration prompts that
    are not evaluation prompts; cached under the vocabtrim cache, keyed by the settings, the
    models and the prompts, so later runs (any K, or an interrupted run) reuse them."""
    items = calibration_prompts(spec, exclude)
    meta = {"source": "target", "data": spec["data"], "items": len(items), "max_new_tokens": spec["tokens"],
            "model": target.name, "drafter": drafter.name, "dtype": target.dtype,
            **backend.key(target.backend),
            "tokenizer": tokenizer_fingerprint(drafter.tokenizer),
            "prompts_sha": hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]}
    # suffix drafts: the target's own answers, lossless, and on HumanEval faster than the
    # model drafter (6.6 vs 4.4 tok/s with K=5 on a 2-core AVX2 EPYC)
    engine, policy = Assembler(Parts(target)).build(parse_method("suffix"))
    fn = generate_fn(engine, policy, target, spec["tokens"], Sampling(), 0)
    return count_tokens(items, cache_file("calibration", meta, ".safetensors"), meta,
                        drafter.config.vocab_size, in_drafter_tokens(fn, target, drafter), resume=True)


def in_drafter_tokens(per_item: Callable[[str], list[int]], target, drafter) -> Callable[[str], list[int]]:
    """`per_item`'s target ids as the drafter's own tokens (models.Loaded target and
    drafter): a drafter's token map counts in its vocabulary, whatever its tokenizer."""
    bridge = Bridge.between(target, drafter)
    return per_item if bridge is None else lambda text: bridge.own_ids(per_item(text))


def calibrated_map(spec: dict, exclude: set[str], target, drafter) -> torch.Tensor:
    """Kept ids of the top-`k` token map over `target_counts` (EOS and end-of-turn always kept)."""
    vocab = drafter.config.vocab_size
    if spec["k"] > vocab:  # found now, not after the calibration's generations
        raise VocabtrimError(f"bad --calibrate: k={spec['k']} is more than the drafter's {vocab} tokens")
    counts = target_counts(spec, exclude, target, drafter)
    return trim(counts, keep=spec["k"], always=sorted(stop_token_ids(drafter))).kept_ids
