"""The method matrix: target alone, speculative variants, and transformers as the peer.

`hf` is transformers' assisted generation with its default settings; `pld` its prompt
lookup decoding (`prompt_lookup_num_tokens=10`, its default matching, no drafter model).
The `x` methods draft with a second drafter of another tokenizer (`cross`): `x` through
the shared tokens alone, `x+ngram` also proposing the target tokens it spells in pieces;
`hf+x` is transformers' generation across tokenizers with it (`assistant_tokenizer=`).
"""

from __future__ import annotations

import copy
import functools
import time

import torch

from .. import kernels
from ..drafters import Bridge, Drafter, HybridDrafter, SuffixDrafter, make_drafter
from ..engine import Engine, Stop
from ..errors import VocabtrimError
from ..heads import Head
from ..metrics import GenerationStats, bytes_per_forward
from ..policies import Cost, Policy, parse_policy
from ..profile import Profile, with_drafter
from ..sampling import Sampling
from .run import Method

METHODS = ("ar", "sd", "sd+vt", "sd+adaedl", "sd+vt+adaedl", "sd+cost", "sd+vt+cost", "sd+vt+q8", "sd+vt+q4",
           "suffix", "suffix+cost", "hybrid", "hybrid+vt", "hybrid+vt+cost", "hybrid+vt+q4+cost", "hf", "pld",
           "x", "x+ngram", "x+ngram+cost", "hf+x")
NEEDS_MAP = ("sd+vt", "sd+vt+adaedl", "sd+vt+cost", "sd+vt+q8", "sd+vt+q4", "hybrid+vt", "hybrid+vt+cost",
             "hybrid+vt+q4+cost")
NEEDS_PROFILE = ("sd+cost", "sd+vt+cost", "suffix+cost", "hybrid+vt+cost", "hybrid+vt+q4+cost")
NEEDS_CROSS = ("x", "x+ngram", "x+ngram+cost", "hf+x")


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise VocabtrimError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def build(names: list[str], target, drafter, kept_ids: torch.Tensor | None, sampling: Sampling,
          seed: int, stop: Stop, draft_len: int = 5, adaedl: str = "adaedl",
          prompt_tokens: bool = True, costs: Profile | None = None, bridge: Bridge | None = None,
          cross: tuple[torch.nn.Module, Bridge, Profile | None] | None = None) -> list[Method]:
    """One Method per name, sharing the loaded models. Each suffix and hybrid method keeps
    its own store of earlier outputs across the run's questions; the cost methods draft by
    `costs`, this machine's profile of the pair. `bridge` pairs the tokenizers of a drafter
    of another vocabulary; `cross` is the x methods' drafter, its bridge and its profile."""
    vocab = target.get_output_embeddings().out_features
    drafting = functools.partial(make_drafter, "model", target, bridge=bridge)
    full = Engine(target, drafting(drafter))
    trimmed = None if kept_ids is None else Engine(target, drafting(drafter, kept_ids, prompt_tokens))

    @functools.cache
    def quantized(scheme: str) -> Drafter:  # a quantized copy of the drafter, built only when asked for
        return drafting(kernels.quantized(drafter, scheme), kept_ids, prompt_tokens)

    if cross is None and set(names) & set(NEEDS_CROSS):
        raise VocabtrimError("the x methods need a drafter with another tokenizer")

    def crossing(merges: bool) -> Drafter:
        return make_drafter("model", target, cross[0], bridge=cross[1], merges=merges)

    def quantized_cost(scheme: str) -> Cost:  # the pair's target costs, the quantized drafter's steps
        return _cost(costs and with_drafter(costs, quantized(scheme).model), quantized(scheme))

    engines = {
        "ar": lambda: (Engine(target), Policy(1)),
        "sd": lambda: (full, Policy(draft_len)),
        "sd+vt": lambda: (trimmed, Policy(draft_len)),
        "sd+adaedl": lambda: (full, parse_policy(adaedl)),
        "sd+vt+adaedl": lambda: (trimmed, parse_policy(adaedl)),
        "sd+vt+q8": lambda: (Engine(target, quantized("int8")), Policy(draft_len)),
        "sd+vt+q4": lambda: (Engine(target, quantized("int4")), Policy(draft_len)),
        "sd+cost": lambda: (full, _cost(costs, full.drafter)),
        "sd+vt+cost": lambda: (trimmed, _cost(costs, trimmed.drafter)),
        "suffix": lambda: (Engine(target, SuffixDrafter(vocab)), Policy(draft_len)),
        "suffix+cost": lambda: (Engine(target, SuffixDrafter(vocab)), _cost(costs, SuffixDrafter(vocab))),
        "hybrid": lambda: (Engine(target, HybridDrafter(full.drafter, SuffixDrafter(vocab))), Policy(draft_len)),
        "hybrid+vt": lambda: (Engine(target, HybridDrafter(trimmed.drafter, SuffixDrafter(vocab))),
                              Policy(draft_len)),
        "hybrid+vt+cost": lambda: (Engine(target, HybridDrafter(trimmed.drafter, SuffixDrafter(vocab))),
                                   _cost(costs, trimmed.drafter)),
        "hybrid+vt+q4+cost": lambda: (Engine(target, HybridDrafter(quantized("int4"), SuffixDrafter(vocab))),
                                      quantized_cost("int4")),
        "x": lambda: (Engine(target, crossing(False)), Policy(draft_len)),
        "x+ngram": lambda: (Engine(target, crossing(True)), Policy(draft_len)),
        "x+ngram+cost": lambda: (Engine(target, d := crossing(True)), _cost(cross[2], d)),
    }
    out = []
    for n in names:
        if n == "hf":
            tokenizers = {} if bridge is None else {"tokenizer": bridge.target_tok,
                                                    "assistant_tokenizer": bridge.drafter_tok}
            out.append(Method(n, HFGenerate(target, sampling, seed, stop, assistant=_own(drafter, bridge),
                                            **tokenizers)))
        elif n == "hf+x":
            model, xb, _ = cross
            out.append(Method(n, HFGenerate(target, sampling, seed, stop, assistant=_own(model, xb),
                                            tokenizer=xb.target_tok, assistant_tokenizer=xb.drafter_tok)))
        elif n == "pld":
            out.append(Method(n, HFGenerate(target, sampling, seed, stop, prompt_lookup_num_tokens=10)))
        else:
            engine, policy = engines[n]()
            out.append(Method(n, lambda ids, m, e=engine, p=policy: e.generate(ids, m, p, sampling, seed, stop)))
    return out


def _own(model: torch.nn.Module, bridge: Bridge | None) -> torch.nn.Module:
    """The drafter transformers may use: across tokenizers its sampling prunes the model's
    head in place, so it gets a copy of its own."""
    return model if bridge is None else copy.deepcopy(model)


def _cost(costs: Profile | None, drafter: Drafter) -> Cost:
    if costs is None:
        raise VocabtrimError("the cost methods need this machine's profile")
    return Cost().bind(costs, drafter.head_rows)


def _full_forward_bytes(model) -> int:
    """Bytes a forward of `model` reads with its whole head (transformers computes every row)."""
    return bytes_per_forward(model, Head.of(model).nbytes)


class HFGenerate:
    """transformers' `generate` (assisted by `assistant`, or with other speculative
    `generate_kwargs` such as prompt lookup), counted like our engine: forward hooks count
    target and drafter forwards."""

    def __init__(self, target, sampling: Sampling, seed: int, stop: Stop, assistant=None, **generate_kwargs):
        self.target, self.drafter, self.sampling, self.seed = target, assistant, sampling, seed
        self.eos, self.kwargs = sorted(stop.token_ids), generate_kwargs
        self.cost = 0.0 if assistant is None else _full_forward_bytes(assistant) / _full_forward_bytes(target)

    def __call__(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], GenerationStats]:
        torch.manual_seed(self.seed)
        inp = torch.tensor([ids])
        s = self.sampling
        kwargs = {"do_sample": False} if s.greedy else {
            "do_sample": True, "temperature": s.temperature, "top_k": s.top_k or None, "top_p": s.top_p}
        calls = {m: 0 for m in (self.target, self.drafter) if m is not None}
        hooks = [m.register_forward_hook(lambda mod, *_: calls.__setitem__(mod, calls[mod] + 1))
                 for m in calls]
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.target.generate(inp, attention_mask=torch.ones_like(inp),
                                           assistant_model=self.drafter, max_new_tokens=max_new_tokens,
                                           eos_token_id=self.eos, **kwargs, **self.kwargs)
        finally:
            for h in hooks:
                h.remove()
        new = out[0, len(ids):].tolist()
        forwards = calls.get(self.drafter, 0)
        stats = GenerationStats(new_tokens=len(new), target_forwards=calls[self.target],
                                drafter_forwards=forwards, cost_ratio=self.cost, draft_cost=self.cost * forwards,
                                seconds=time.perf_counter() - t0)
        return new, stats
