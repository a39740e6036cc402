"""The backend registry: what can run a target, in one place.

A backend is one module that makes a `Target` from a loaded model and one entry here.
Its entry owns its name, whether it is installed here (and a one-line error where it is
not), what it runs (the model's GGUF file, or transformers' modules), its KV cache's cap,
what it adds to cache keys, and how it makes the target. Nothing outside this module
compares a backend's name; `loading.choose` times the registered backends that can run a
model (`auto`). Adding a backend: a module with an entry like `ggml.BACKEND`, listed in
`REGISTRY`.
"""

from __future__ import annotations

from typing import Protocol

from . import ggml, native_target, target
from .errors import VocabtrimError
from .target import Target


class Backend(Protocol):
    name: str
    runs_gguf: bool  # runs the model's GGUF file at its stored precision (else transformers' modules)
    max_context: int | None  # its KV cache holds at most this many tokens (None: the model's trained length)
    drafts: bool  # drafters run on it too, from their GGUF files, when the target does (one runtime)

    def available(self) -> bool:
        """Whether it is installed here."""

    def check(self) -> None:
        """A one-line `VocabtrimError` saying how to install it, where it is not."""

    def build(self) -> str:
        """Its compiled code's identity ('' where vocabtrim's own code is all): what is
        measured on it (profiles, auto's timing, calibration counts) is keyed by it, so a
        rebuilt or upgraded engine is measured again."""

    def target(self, loaded) -> Target:
        """`loaded` (a models.Loaded) as a target with a fresh cache."""

    def draft_model(self, loaded):
        """What a drafter loaded on it drafts with (`drafting.DraftModel`): its own model of
        the GGUF file, or the torch weights where it has no drafting forward of its own."""


TORCH = target.BACKEND.name  # where drafters run that no other backend runs (adapters, quantized weights)
REGISTRY: dict[str, Backend] = {b.name: b for b in (target.BACKEND, ggml.BACKEND, native_target.BACKEND)}
NAMES = ("auto", *REGISTRY)  # what --backend takes


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise VocabtrimError(f"unknown backend {name!r}: one of {', '.join(NAMES)}")
    return REGISTRY[name]


def candidates(has_gguf: bool) -> list[Backend]:
    """The installed backends that can run a model (with a GGUF file or not)."""
    return [b for b in REGISTRY.values() if b.available() and (has_gguf or not b.runs_gguf)]


def label(target: str, drafter: str | None = None) -> str:
    """What runs a method, as its report row names it: the target's backend, and the
    drafter's where it runs on another (`native+torch drafter`)."""
    return target if drafter in (None, target) else f"{target}+{drafter} drafter"


def key(name: str) -> dict:
    """What a target's backend adds to the keys of what is measured on it (profiles,
    calibration counts): its name and build; nothing for torch, whose keys predate the
    other backends."""
    b = get(name)
    if not b.runs_gguf:
        return {}
    build = b.build()
    return {"backend": name, **({"build": build} if build else {})}
