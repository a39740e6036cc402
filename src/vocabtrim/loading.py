"""The one home for loading what a command runs: every command, the server and the
benchmark scripts describe the models they want as `Options` and call `load_parts`.
Nothing here knows the command line.

`load_parts` refuses what it can before any weights load: files that are not what they
claim (a token map, an adapter, a GGUF cut short), a token map made for another
tokenizer, and whatever the caller's `check` finds once the tokenizers and the target's
context are known (a prompt longer than the context). Then the backend is chosen (`auto`
times the registered backends that can run the target, once per machine and file) and
the weights load.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import backend, catalog, gguf_copy, models
from .adapt import Online, Settings, merge, read_meta
from .adapt import read as read_adapter
from .assembly import Assembler, Built, EngineSettings, Parts, Spec
from .drafters import Bridge
from .errors import VocabtrimError
from .files import atomic_write, version
from .gguf_header import check_gguf
from .isolate import Crashed, run_isolated
from .kernels import cpu, resolve
from .paths import cache_file
from .profile import forward_ms
from .tokenmap import TokenMap
from .vocab import tokenizer_fingerprint

# auto's probe: after TIMING_CONTEXT cached tokens, a one-token step and a TIMING_VERIFY-token
# verification, each the least of TIMING_ROUNDS medians of TIMING_REPEATS (a busy moment
# slows a round, never speeds one)
TIMING_CONTEXT, TIMING_VERIFY, TIMING_REPEATS, TIMING_ROUNDS = 128, 8, 8, 3


@dataclass(frozen=True)
class Options:
    """Which models to load, on what, and the settings every engine over them shares."""

    target: str = catalog.DEFAULT_TARGET
    draft: str | None = catalog.DEFAULT_DRAFT  # None: no drafter model
    cross: str | None = None  # the x methods' drafter of another tokenizer
    token_map: Path | None = None  # the trimmed head's map, in the drafter's tokens
    backend: str = "auto"  # a name in backend.NAMES
    dtype: str = "auto"
    adapter: Path | None = None  # a LoRA adapter of `vocabtrim adapt`, merged into the drafter
    settings: EngineSettings = EngineSettings()  # what every engine over these models shares


def load_parts(o: Options, check: Callable[[Parts], None] | None = None) -> Parts:
    """The target (on the chosen backend), the drafters (the adapter merged in) and the
    token map of `o`, refusing what it can before weights load (see the module doc);
    `check(parts)` sees the tokenizers, configs and contexts before the weights load."""
    if o.token_map is not None and o.draft is None:
        raise VocabtrimError("--token-map needs a drafter (drop --no-draft)")
    tm = None if o.token_map is None else TokenMap.load(o.token_map)
    if o.adapter is not None:
        read_meta(o.adapter)
    for spec in (o.target, o.draft, o.cross):  # a user's GGUF file (a built-in's is verified by its digest)
        gguf = None if spec is None or spec in catalog.BUILTINS else catalog.gguf_path(spec)
        if gguf is not None and gguf.is_file():  # a missing one: models.resolve says so
            check_gguf(gguf)
    drafter = None if o.draft is None else load_drafter(o.draft, o.dtype, o.adapter, lazy=True)
    cross = None if o.cross is None else load_drafter(o.cross, o.dtype, lazy=True)
    if tm is not None:
        tm.check_drafter(drafter.config.vocab_size, tokenizer_fingerprint(drafter.tokenizer))
    target = models.load(o.target, o.dtype, choose(o.target, o.backend, o.dtype))
    if backend.get(target.backend).drafts:  # one runtime: drafters join the target
        if drafter is not None:
            drafter = _drafts_on(drafter, target.backend, o.adapter)
        if cross is not None:
            cross = _drafts_on(cross, target.backend)
    parts = Parts(target, drafter, None if tm is None else tm.kept_ids, cross, o.settings)
    if check is not None:
        check(parts)
    for m in (target, drafter, cross):
        if m is not None and not backend.get(m.backend).runs_gguf:
            m.model  # noqa: B018 - its weights load now, after every check passed
    return parts


def _drafts_on(loaded: models.Loaded, on: str, adapter: Path | None = None) -> models.Loaded:
    """The drafter `loaded` on the target's backend `on`, where its file is a GGUF that `on`
    runs (its header read now; `adapter` merged into a copy of the file, made once:
    gguf_copy); else on torch as it was, said in one line."""
    file = catalog.gguf_path(loaded.name)
    if file is None:
        return loaded
    try:
        moved = models.on_gguf(loaded, on)
        moved.drafting  # noqa: B018 - reads the header: refuses what the backend cannot run
    except VocabtrimError as e:
        print(f"note: the drafter {loaded.name} drafts on torch: {e}", file=sys.stderr)
        return loaded
    if adapter is None:
        return moved
    return models.on_gguf(loaded, on, gguf_copy.merged(file, adapter, loaded.config, loaded.tokenizer))


def load_drafter(spec: str, dtype: str = "auto", adapter: Path | None = None, lazy: bool = False) -> models.Loaded:
    """A model on torch (a drafter, one to adapt, or a tokenizer to count with), with
    `adapter` merged into its weights; `lazy`: the weights load when first asked for."""
    merged = None if adapter is None else models.Merge(adapter, lambda model, tok: merge(model, tok, adapter))
    loaded = models.load(spec, dtype, merge=merged)
    if not lazy:
        loaded.model  # noqa: B018
    return loaded


def choose(spec: str, name: str, dtype: str = "auto") -> str:
    """The backend for the target `spec`: `name` itself (refused in one line where it is not
    installed), or with `auto` whichever registered backend decodes this model file faster
    on this machine: the least sum of a single-token step (what plain decoding repeats) and
    an 8-token verification (a speculative round's), each after a short cached context.
    Both, because backends differ most in the second (llama.cpp's 8 tokens cost 4-8 of its
    steps, the native engine's 1.3-2), while at one token both are bound by memory and a
    host's changing bandwidth can swap them. Timed once and cached per CPU, threads, model
    file, dtype, candidates, their builds and probe. Each is timed in a child process: one whose native
    library dies there is reported in one line and not chosen; one that cannot run the file
    (the native engine refuses an architecture or tensor type) is left out."""
    if name != "auto":
        backend.get(name).check()
        return name
    gguf = catalog.gguf_path(spec)
    names = [b.name for b in backend.candidates(gguf is not None)]
    if len(names) == 1:
        return names[0]
    dtype = resolve(dtype)
    path = cache_file("profiles", {"backend_choice": cpu(), "gguf": version(gguf), "dtype": dtype,
                                   "candidates": names, "builds": [backend.get(n).build() for n in names],
                                   "probe": [TIMING_CONTEXT, TIMING_VERIFY, TIMING_REPEATS, TIMING_ROUNDS]},
                      ".json")
    choice = _read_choice(path)
    if choice is None:
        print(f"timing {spec} on {', '.join(names)} (once on this machine)", file=sys.stderr)
        ms, failed = {}, {}
        for n in names:
            try:
                ms[n] = run_isolated(_probe_ms, n, spec, dtype)
            except Crashed as e:
                failed[n] = str(e)
                print(f"the {n} backend crashed while timing {spec} ({e}): not chosen", file=sys.stderr)
            except VocabtrimError as e:  # it cannot run this file: not a candidate
                failed[n] = str(e)
        if not ms:
            raise VocabtrimError(f"every backend crashed while timing {spec}: {failed}")
        choice = {"backend": min(ms, key=ms.get), "ms": ms, "crashed": failed}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(choice)))
    return choice["backend"]


def _read_choice(path: Path) -> dict | None:
    try:
        choice = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return choice if isinstance(choice, dict) and choice.get("backend") in backend.REGISTRY else None


@torch.inference_mode()
def _probe_ms(name: str, spec: str, dtype: str) -> float:
    """ms of a single-token step plus a TIMING_VERIFY-token verification of backend `name`
    after TIMING_CONTEXT cached tokens, each the least of TIMING_ROUNDS medians."""
    target = models.load(spec, dtype, name).as_target()
    ids = [(500 + i) % target.vocab_size for i in range(TIMING_CONTEXT)]
    return sum(min(forward_ms(target.logits, target.vocab_size, ids, n, TIMING_REPEATS) for _ in range(TIMING_ROUNDS))
               for n in (1, TIMING_VERIFY))


def build(options: Options, spec: Spec, rule: str | None = None, ngram_given: bool = False,
          check: Callable[[Parts], None] | None = None) -> Built:
    """Load the models of `options` and build the engine of `spec` (its policy overridden by
    `rule`); `ngram_given`: the user set --[no-]ngram-cache, which needs a drafter of
    another tokenizer."""
    parts = load_parts(options, check)
    if ngram_given and parts.drafter is not None and Assembler(parts).bridge(False) is None:
        raise VocabtrimError(f"--[no-]ngram-cache is for a drafter of another tokenizer; {options.draft} shares the "
                             "target's (drop it)")
    return Built.of(parts, spec, rule)


def online_adapter(built: Built, draft: str, adapter: Path | None, share: float, merge_every: int) -> Online:
    """Online adaptation for a server's drafter: a float32 copy of it (`adapter`, if any,
    continued), learning from the answers served."""
    base = load_drafter(draft, "float32")
    state, settings = None, Settings()
    if adapter is not None:
        state, meta = read_adapter(adapter)
        settings = Settings(**meta["settings"])
    bridge = Bridge.between(built.parts.target, base)
    return Online(base, settings, None if bridge is None else bridge.own_ids, state, share, merge_every,
                  dtype=built.parts.drafter.dtype)
