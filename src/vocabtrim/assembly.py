"""The one place where engines are put together: a method's name parsed into a `Spec`, and
an engine with its policy built from a spec and the loaded models.

A method is a drafter kind and parts joined by `+`:

    ar | sd | suffix | hybrid | x | hf | pld   then any of   vt, q8 | q4, x, ngram, adaedl | cost

`ar` is the target alone; `sd` the drafter model; `suffix` drafts matched in the text seen,
no model; `hybrid` each round the suffix draft or the model's; `x` (a kind, or a part of
sd, hybrid and hf) drafts with the run's drafter of another tokenizer, `ngram` with its
n-gram cache of merged tokens. `vt` trims the drafter's head to the token map, `q8`/`q4`
quantize its weights, `adaedl`/`cost` choose the policy (default: static K). `hf` and
`pld` are transformers' assisted generation and prompt lookup, which bench runs beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import backend, gguf_copy, models, profile
from .costs import Costs
from .drafters import (
    Bridge,
    CrossVocab,
    Drafter,
    HybridDrafter,
    ModelDrafter,
    SuffixDrafter,
)
from .engine import Engine
from .errors import VocabtrimError
from .policies import Policy, parse_policy

KINDS = ("ar", "sd", "suffix", "hybrid", "x", "hf", "pld", "llamacpp")
PARTS = ("vt", "q8", "q4", "x", "ngram", "adaedl", "cost")
PEERS = ("hf", "pld", "llamacpp")  # transformers' and llama.cpp's generation: bench builds them beside our engines
SCHEMES = {"q8": "int8", "q4": "int4"}
# what each kind may be combined with: the rest would be ignored, so it is refused
ALLOWED = {"ar": set(), "pld": set(), "llamacpp": set(), "hf": {"x"}, "suffix": {"cost"},
           "sd": set(PARTS), "hybrid": set(PARTS), "x": set(PARTS) - {"x"}}
WHY = {"ar": "the target alone drafts nothing", "suffix": "it drafts without a model: no head, no weights",
       "pld": "transformers' prompt lookup", "llamacpp": "llama.cpp's own loop", "hf": "transformers' own drafter"}


@dataclass(frozen=True)
class Spec:
    """A method: which drafter (kind `ar`: none), whose head, which weights, which policy."""

    name: str
    kind: str  # ar, sd, suffix, hybrid, hf, pld or llamacpp (x is sd with `cross`)
    trimmed: bool = False  # the drafter's head trimmed to the token map
    weights: str | None = None  # int8 or int4; None: as loaded
    policy: str = "static"  # static, adaedl or cost
    cross: bool = False  # drafts with the drafter of another tokenizer
    ngram: bool = False  # ... with the n-gram cache of merged tokens

    @property
    def model(self) -> bool:
        """Whether a drafter model drafts (sd, hybrid)."""
        return self.kind in ("sd", "hybrid")


def parse_method(name: str) -> Spec:
    """`hybrid+vt+q4+cost` -> Spec; a one-line error for unknown or incompatible parts."""
    kind, *parts = name.strip().split("+")
    if kind not in KINDS or any(p not in PARTS for p in parts) or len(set(parts)) < len(parts):
        raise VocabtrimError(f"unknown method {name!r}: a kind ({', '.join(KINDS)}) and parts "
                             f"({', '.join(PARTS)}) joined by '+'")
    refused = set(parts) - ALLOWED[kind]
    cross = kind == "x" or "x" in parts
    if refused or ("ngram" in parts and not cross) or ("vt" in parts and cross):
        why = (f"{kind} takes no {', '.join(sorted(refused))}" + (f" ({WHY[kind]})" if kind in WHY else "")
               if refused else
               "ngram needs x (a drafter of another tokenizer)" if not cross else
               "the token map is in the target's tokens, not the x drafter's")
        raise VocabtrimError(f"method {name!r}: {why}")
    schemes = [SCHEMES[p] for p in parts if p in SCHEMES]
    policies = [p for p in parts if p in ("adaedl", "cost")]
    if len(schemes) > 1 or len(policies) > 1:
        raise VocabtrimError(f"method {name!r}: one of q8/q4 and one of adaedl/cost at most")
    return Spec(name, "sd" if kind == "x" else kind, "vt" in parts, schemes[0] if schemes else None,
                policies[0] if policies else "static", cross, "ngram" in parts)


def check_parts(spec: Spec, drafter: bool, cross: bool = False, mapped: bool = False) -> None:
    """Refuse `spec` in one line where a part it needs is missing: a drafter model (of
    another tokenizer for x), a token map, a drafter for the cost policy's profile. The
    commands ask before loading, from what they will load; `Assembler` asks again."""
    has_drafter = cross if spec.cross else drafter
    if spec.model and not has_drafter:
        raise VocabtrimError(f"{spec.name} needs a drafter model" + (" of another tokenizer" if spec.cross else ""))
    if spec.trimmed and not mapped:
        raise VocabtrimError(f"{spec.name} needs a token map")
    if spec.policy == "cost" and not has_drafter:
        raise VocabtrimError("the cost policy (+cost, --policy cost) reads the profile of a target and drafter "
                             "pair; give it a drafter model (generate and serve: --drafter model or hybrid)")


@dataclass(frozen=True)
class EngineSettings:
    """What every engine over one set of models shares (the command line's options)."""

    quant: str = "auto"  # the drafter's weights where a method names no q8/q4 (auto: drafter_model)
    draft_len: int = 5  # K of static methods
    adaedl: str = "adaedl"  # the adaedl methods' policy spec
    prompt_tokens: bool = True  # trimmed heads also propose the prompt's own tokens
    store_tokens: int = SuffixDrafter.STORE_TOKENS  # each suffix drafter's store of earlier outputs


@dataclass
class Parts:
    """What engines are built from: the loaded target and drafters, the token map (kept
    ids in the drafter's vocabulary) and the settings every method shares."""

    target: models.Loaded
    drafter: models.Loaded | None = None  # the drafter model (another tokenizer drafts across)
    kept: torch.Tensor | None = None
    cross: models.Loaded | None = None  # the x methods' drafter of another tokenizer
    settings: EngineSettings = EngineSettings()


class Assembler:
    """Builds (engine, policy) pairs over one set of loaded models. Every engine shares the
    target; each gets drafters of its own (a suffix store per method), while quantized
    drafters and bridges are made once."""

    def __init__(self, parts: Parts):
        self.parts, self.target = parts, parts.target.as_target()
        # made once for the assembler's life (a cache on the methods would keep every
        # assembler, and its models, alive for the process's)
        self.made: dict[tuple, object] = {}

    def _once(self, key: tuple, make):
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def build(self, spec: Spec, policy: str | None = None) -> tuple[Engine, Policy]:
        """The engine and a fresh policy of `spec` (`policy`: a spec that overrides the
        method's own, as `generate --policy` does)."""
        if spec.kind in PEERS:
            raise VocabtrimError(f"{spec.name} is a peer's generation, not an engine of ours")
        p = self.parts.settings
        rule = parse_policy(policy or {"static": f"static:{p.draft_len}", "adaedl": p.adaedl,
                                       "cost": "cost"}[spec.policy])
        if spec.kind == "ar":
            if rule.priced:
                raise VocabtrimError("the cost policy prices drafts; the target alone drafts none")
            return Engine(self.target), rule.make()
        self._check(replace(spec, policy="cost") if rule.priced else spec)
        model = self._model_drafter(spec) if spec.model else None
        costs = self._costs(spec, rule.max_len, model) if rule.priced else None
        if spec.kind == "suffix":
            drafter: Drafter = SuffixDrafter(store_tokens=p.store_tokens, costs=costs)
        elif spec.kind == "hybrid":
            drafter = HybridDrafter(model, SuffixDrafter(store_tokens=p.store_tokens, costs=costs), costs)
        else:
            drafter = model
        return Engine(self.target, drafter), rule.make(costs)

    def drafter_model(self, spec: Spec) -> models.Loaded:
        """The loaded drafter `spec` drafts with, in its weights: quantized on torch, or, one
        drafting from its GGUF file, from a copy of the file at fewer bits (gguf_copy)."""
        self._check(spec)
        loaded = self.parts.cross if spec.cross else self.parts.drafter
        gguf = backend.get(loaded.backend).runs_gguf
        scheme = spec.weights or self.parts.settings.quant
        if scheme == "auto":  # a GGUF drafter on the engine: its Q4_0 copy (docs/native.md); torch's as loaded
            scheme = "int4" if gguf else "none"
        if scheme == "none":
            return loaded

        def quantized() -> models.Loaded:
            if not gguf:
                return models.quantize(loaded, scheme)
            copy = models.on_gguf(loaded, loaded.backend, gguf_copy.requantized(loaded.gguf, scheme))
            return replace(copy, name=f"{loaded.name}@{scheme}")

        return self._once(("quantized", scheme, spec.cross), quantized)

    def _check(self, spec: Spec) -> None:
        p = self.parts
        check_parts(spec, p.drafter is not None, p.cross is not None, p.kept is not None)

    def bridge(self, cross: bool) -> Bridge | None:
        """The bridge to the drafter of another tokenizer (None: the target's own); made once,
        since building one tokenizes both vocabularies."""
        drafter = self.parts.cross if cross else self.parts.drafter
        return self._once(("bridge", cross), lambda: Bridge.between(self.parts.target, drafter))

    def _model_drafter(self, spec: Spec) -> ModelDrafter:
        """A drafter of the target's vocabulary is shared by the methods that draft alike
        (its state lasts one generation); one of another tokenizer is each method's own,
        since its n-gram cache learns for the drafter's lifetime."""
        loaded, kept = self.drafter_model(spec), self.parts.kept if spec.trimmed else None
        if self.bridge(spec.cross) is None:
            return self._once(("drafter", spec.trimmed, spec.weights or self.parts.settings.quant), lambda: ModelDrafter(
                loaded.drafting, self.target.vocab_size, kept, self.parts.settings.prompt_tokens))
        vocab = CrossVocab(self.bridge(spec.cross), loaded.drafting.get_output_embeddings().out_features,
                           self.target.vocab_size, spec.ngram)
        return ModelDrafter(loaded.drafting, self.target.vocab_size, kept, self.parts.settings.prompt_tokens, vocab)

    def _costs(self, spec: Spec, max_len: int, model: ModelDrafter | None) -> Costs:
        """This machine's prices for the pair as it drafts (the cached profile, else a quick
        one) with the drafter's head; suffix drafts read no head."""
        pair = profile.for_pair(self.parts.target, self.drafter_model(spec))
        return Costs.of(pair, model.head_rows if model else 0, max_len)


@dataclass
class Built:
    """An engine and its policy, with what they were built from: `rebuild` makes them again
    over other drafter weights (online adaptation's merged ones)."""

    parts: Parts
    engine: Engine
    policy: Policy
    spec: Spec
    rule: str | None = None  # a policy spec that overrides the method's own

    @classmethod
    def of(cls, parts: Parts, spec: Spec, rule: str | None = None) -> Built:
        return cls(parts, *Assembler(parts).build(spec, rule), spec, rule)

    def rebuild(self, drafter: torch.nn.Module) -> tuple[Engine, Policy]:
        parts = replace(self.parts, drafter=replace(self.parts.drafter, weights=drafter, backend=backend.TORCH))
        return Assembler(parts).build(self.spec, self.rule)
