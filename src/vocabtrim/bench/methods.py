"""The method matrix: target alone, speculative variants (built by `assembly`), and the
peers: llama.cpp and transformers.

`llamacpp` is llama.cpp decoding the target's GGUF file alone at its default settings (see
ggml.LlamaCppAlone), whatever backend our own methods run on.
`hf` is transformers' assisted generation with its default settings; `pld` its prompt
lookup decoding (`prompt_lookup_num_tokens=10`, its default matching, no drafter model).
The `x` methods draft with a second drafter of another tokenizer (`cross`): `x` through
the shared tokens alone, `x+ngram` also proposing the target tokens it spells in pieces;
`hf+x` is transformers' generation across tokenizers with it (`assistant_tokenizer=`).
"""

from __future__ import annotations

import copy
import time

import torch

from .. import catalog, models
from ..assembly import PEERS, Assembler, Spec, parse_method
from ..cache import context_length
from ..drafters import Bridge
from ..engine import Stop
from ..errors import VocabtrimError
from ..ggml import LlamaCppAlone
from ..heads import Head
from ..metrics import GenerationStats, bytes_per_forward
from ..sampling import Sampling
from .common import engine_method
from .run import Method

METHODS = ("ar", "sd", "sd+vt", "sd+adaedl", "sd+vt+adaedl", "sd+cost", "sd+vt+cost", "sd+vt+q8", "sd+vt+q4",
           "suffix", "suffix+cost", "hybrid", "hybrid+vt", "hybrid+vt+cost", "hybrid+vt+q4+cost", "hf", "pld",
           "x", "x+ngram", "x+ngram+cost", "hf+x", "llamacpp")  # the documented ones: any name of the grammar runs


def parse_methods(text: str) -> list[Spec]:
    """Comma-separated method names -> their specs (duplicates dropped, order kept)."""
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise VocabtrimError(f"no method given; for example {', '.join(METHODS)}")
    return [parse_method(n) for n in names]


def build(specs: list[Spec], assembler: Assembler, sampling: Sampling, seed: int, stop: Stop) -> list[Method]:
    """One Method per spec over the assembler's models: our engines, and transformers'
    generation beside them. Each suffix and hybrid method keeps its own store of earlier
    outputs across the run's questions."""
    out, on = [], assembler.parts.target.backend
    for spec in specs:
        if spec.kind == "llamacpp":
            out.append(Method(spec.name, _llamacpp(assembler.parts.target, sampling, seed, stop), "ggml"))
        elif spec.kind in PEERS:
            out.append(Method(spec.name, _peer(spec, assembler, sampling, seed, stop)))
        else:
            drafts_on = assembler.drafter_model(spec).backend if spec.model else None
            out.append(engine_method(spec.name, *assembler.build(spec), sampling, seed, stop, on, drafts_on))
    return out


def _llamacpp(target: models.Loaded, sampling: Sampling, seed: int, stop: Stop) -> LlamaCppAlone:
    path = catalog.gguf_path(target.name)
    if path is None:
        raise VocabtrimError(f"llamacpp runs the target's GGUF file; {target.name} is not one "
                             "(leave llamacpp out of --methods)")
    return LlamaCppAlone(path, target.context, sampling, seed, stop.token_ids)


def _peer(spec: Spec, assembler: Assembler, sampling: Sampling, seed: int, stop: Stop) -> HFGenerate:
    """`hf` (assisted by the drafter, across tokenizers with `x`) or `pld` (prompt lookup),
    on the torch weights of the target (loaded now if the target runs on ggml)."""
    target = assembler.parts.target
    if spec.kind == "pld":
        return HFGenerate(target.model, sampling, seed, stop, prompt_lookup_num_tokens=10)
    drafter, bridge = assembler.drafter_model(spec), assembler.bridge(spec.cross)
    tokenizers = {} if bridge is None else {"tokenizer": bridge.target_tok, "assistant_tokenizer": bridge.drafter_tok}
    return HFGenerate(target.model, sampling, seed, stop, assistant=_own(drafter.model, bridge), **tokenizers)


def _own(model: torch.nn.Module, bridge: Bridge | None) -> torch.nn.Module:
    """The drafter transformers may use: across tokenizers its sampling prunes the model's
    head in place, so it gets a copy of its own."""
    return model if bridge is None else copy.deepcopy(model)


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
        # as our engine does: stop where the shorter context ends, not in an indexing error
        room = min(context_length(m) for m in (self.target, self.drafter) if m is not None) - len(ids)
        max_new_tokens = min(max_new_tokens, room)
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
