"""A drafter adapted to its target (OmniDraft, arXiv 2507.02659): a LoRA adapter distilled
from the target's own answers, merged into the drafter's weights when it loads.

Every verification computes the target's distribution at every drafted position; the
adapter learns from the same signal offline. For each calibration prompt the target
answers through the engine (exactly its own text), one target forward over prompt and
answer gives its distribution p at every answer position, and the drafter's q at the same
positions is pulled towards it with OmniDraft's loss: the reverse KL(q || p), plus a small
NLL term on the target's tokens. A drafter of another tokenizer reads the answer in its
own tokens, whose positions do not line up with the target's, so it learns from the NLL
term alone (sequence-level distillation). Only the drafter changes: the output stays
exactly the target's, whatever the adapter does.

The adapter file is safetensors: peft's LoRA tensors, the optimizer's moments (so that
`--resume` continues where an interrupted run stopped) and, in its metadata, what it was
made from (drafter, target, tokenizers, data, settings, the answers so far).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import kernels
from .errors import VocabtrimError
from .files import atomic_write, check_output
from .target import Target
from .vocab import tokenizer_fingerprint

FORMAT = "vocabtrim lora adapter"
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SAVE_EVERY_S = 60.0
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class Settings:
    rank: int = 16
    alpha: int = 32
    lr: float = 2e-4
    epochs: int = 1
    nll_weight: float = 0.1  # OmniDraft's small NLL term beside the reverse KL
    max_new_tokens: int = 256
    seed: int = 0


def base_fingerprint(config, tokenizer) -> str:
    """Which drafter an adapter fits: its architecture's shape (transformers' config) and
    its vocabulary."""
    c = config
    shape = [c.model_type, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size]
    return hashlib.sha256(json.dumps([shape, tokenizer_fingerprint(tokenizer)]).encode()).hexdigest()[:16]


def read_meta(path: Path) -> dict:
    """An adapter file's provenance (its tensors left on disk); a one-line error for
    anything that is not an adapter."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["vocabtrim"])
    except FileNotFoundError:
        raise VocabtrimError(f"adapter not found: {path}") from None
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise VocabtrimError(f"{path} is not an adapter written by vocabtrim adapt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VocabtrimError(f"{path} is not an adapter written by vocabtrim adapt")
    return meta


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter file's tensors and provenance."""
    meta = read_meta(path)
    try:
        return load_file(str(path)), meta
    except (OSError, SafetensorError) as e:
        raise VocabtrimError(f"{path} is not an adapter written by vocabtrim adapt ({e})") from None


def meta_for(path: Path, config, tokenizer) -> dict:
    """`read_meta`, refused in one line where the adapter was made for another drafter
    (its tensors left on disk)."""
    meta = read_meta(path)
    if meta["drafter_fingerprint"] != base_fingerprint(config, tokenizer):
        raise VocabtrimError(f"{path} adapts another drafter ({meta['drafter']}): its shape or vocabulary differ")
    return meta


def lora_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's own tensors of a file's, without the optimizer's moments."""
    return {k: v for k, v in tensors.items() if not k.startswith("adam.")}


def check_out(out: Path, resume: bool) -> tuple[dict[str, torch.Tensor], dict] | None:
    """What a run writing `out` continues (None: a new file), checked before any work: an
    existing file is replaced only by a run that continues it."""
    check_output(out)
    if not out.exists():
        if resume:
            raise VocabtrimError(f"--resume: {out} does not exist yet; drop --resume to start it")
        return None
    if not resume:
        read_meta(out)  # refuses what is not an adapter
        raise VocabtrimError(f"{out} exists; give --resume to continue it or another --out")
    return read(out)


def _lora(model: torch.nn.Module, s: Settings):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=s.rank, lora_alpha=s.alpha, target_modules=list(MODULES),
                                            lora_dropout=0.0, bias="none"))


def merge(model: torch.nn.Module, tokenizer, path: Path) -> torch.nn.Module:
    """`model` with the adapter at `path` merged into its weights (peft's merge_and_unload):
    a draft step costs what it did."""
    from peft import set_peft_model_state_dict

    meta = meta_for(path, model.config, tokenizer)
    tensors, _ = read(path)
    peft_model = _lora(model, Settings(**meta["settings"]))
    set_peft_model_state_dict(peft_model, lora_part(tensors))
    return peft_model.merge_and_unload().eval()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor | None, tokens: torch.Tensor,
                 nll_weight: float) -> torch.Tensor:
    """OmniDraft's loss over n answer positions: reverse KL(q || p) of the drafter's logits
    `student` [n, V] against the target's `teacher` [n, V'] (over the ids both have), plus
    `nll_weight` times the NLL of the target's `tokens`; the NLL alone without a teacher."""
    logq = torch.log_softmax(student.float(), -1)
    nll = torch.nn.functional.nll_loss(logq, tokens)
    if teacher is None:
        return nll
    v = min(student.shape[-1], teacher.shape[-1])
    logq_v = torch.log_softmax(student[:, :v].float(), -1)
    logp = torch.log_softmax(teacher[:, :v].detach().float(), -1)
    kl = (logq_v.exp() * (logq_v - logp)).sum(-1).mean()
    return kl + nll_weight * nll


class Trainer:
    """The drafter with a trainable adapter, its optimizer, and one step per answer."""

    def __init__(self, drafter, settings: Settings, spell: Callable[[list[int]], list[int]] | None,
                 state: dict[str, torch.Tensor] | None = None):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        self.settings, self.spell, self.state_dict = settings, spell, get_peft_model_state_dict
        torch.manual_seed(settings.seed)
        self.model = _lora(drafter.model, settings)
        self.model.train()
        if state:
            set_peft_model_state_dict(self.model, lora_part(state))
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW(self.params.values(), lr=settings.lr, weight_decay=0.0)
        if state and any(k.startswith("adam.") for k in state):
            self._restore(state)

    def step(self, prompt: list[int], answer: list[int], teacher: torch.Tensor | None) -> float:
        """One update on the target's `answer` to `prompt` (target ids); `teacher` holds the
        target's logits at the answer's positions (None: another tokenizer, NLL only)."""
        if self.spell is None:
            ids, start = prompt + answer[:-1], len(prompt) - 1
            tokens = torch.tensor(answer)
        else:  # the drafter's own tokens for the same text
            own, start = self.spell(prompt + answer), len(self.spell(prompt)) - 1
            ids, tokens = own[:-1], torch.tensor(own[start + 1:])
        logits = self.model(torch.tensor([ids])).logits[0, start:]
        loss = distill_loss(logits, teacher, tokens, self.settings.nll_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors and the optimizer's moments (`adam.<param>.<moment>`)."""
        out = {k: v.detach().contiguous() for k, v in self.state_dict(self.model).items()}
        for name, p in self.params.items():
            st = self.opt.state.get(p, {})
            for m in MOMENTS:
                if m in st:
                    out[f"adam.{name}.{m}"] = st[m].detach().contiguous()
            if "step" in st:
                out[f"adam.{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        return out

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            if f"adam.{name}.step" in state:
                self.opt.state[p] = {"step": state[f"adam.{name}.step"].reshape(()).clone(),
                                     **{m: state[f"adam.{name}.{m}"].clone() for m in MOMENTS}}


def adapt(prompts: list[list[int]], answer: Callable[[list[int]], list[int]], target: Target,
          drafter, cross: Callable[[list[int]], list[int]] | None, out: Path, meta: dict,
          settings: Settings, resumed: tuple[dict, dict] | None = None) -> dict:
    """Distil an adapter for `drafter` (models.Loaded, float32 torch weights) from the
    target's answers to `prompts` (`answer` writes one through the engine; `cross` spells
    target ids in the drafter's tokens for a drafter of another tokenizer) into `out`, saved
    atomically every minute and at the end with `meta` (provenance). `resumed` (tensors,
    meta) continues an interrupted run."""
    state, prev = resumed or (None, {})
    if prev and (prev.get("settings") != asdict(settings) or prev.get("data") != meta["data"]):
        raise VocabtrimError(f"--resume: {out} was made with other settings or data; give another --out")
    answers: list[list[int]] = list(prev.get("answers", []))
    done = int(prev.get("steps", 0))
    trainer = Trainer(drafter, settings, cross, state)
    total = settings.epochs * len(prompts)
    record = {**meta, "format": FORMAT, "settings": asdict(settings),
              "drafter_fingerprint": base_fingerprint(drafter.model.config, drafter.tokenizer)}
    losses: list[float] = list(prev.get("losses", []))
    saved = time.monotonic()

    def save() -> None:
        body = {**record, "answers": answers, "steps": done, "losses": losses, "complete": done == total}
        tensors = trainer.tensors()
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata={"vocabtrim": json.dumps(body)}))

    bar = tqdm(total=total, initial=done, desc="adapt", unit="answer")
    try:
        while done < total:
            i = done % len(prompts)
            while len(answers) <= i:
                answers.append(answer(prompts[len(answers)]))
            a = answers[i]
            if len(a) >= 2:
                with torch.no_grad():
                    teacher = None if cross else target.logits(prompts[i] + a[:-1], len(a))
                losses.append(round(trainer.step(prompts[i], a, teacher), 4))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            done += 1
            bar.update()
            if time.monotonic() - saved > SAVE_EVERY_S:
                save()
                saved = time.monotonic()
    finally:  # interrupted too: what is learnt so far, for --resume
        bar.close()
        if done:
            save()
    return {"steps": done, "answers": len(answers), "losses": losses}


class Online:
    """Adaptation inside the server: the answers it wrote train a float32 copy of the drafter
    (`base`, without any adapter; `state` continues one) while no request waits, within
    `share` of the decoder's wall-clock time; every `merge_every` steps the adapted weights
    are due to replace the serving drafter's (`merged`, in the serving `dtype`). Memory: the
    copy (4 bytes a weight, another transiently while merging) and the latest `keep`
    answers, each trained on once."""

    def __init__(self, base, settings: Settings, spell: Callable[[list[int]], list[int]] | None = None,
                 state: dict[str, torch.Tensor] | None = None, share: float = 0.25, merge_every: int = 8,
                 keep: int = 64, dtype: str = "bfloat16"):
        self.trainer = Trainer(base, settings, spell, state)
        self.answers: deque[tuple[list[int], list[int]]] = deque(maxlen=keep)
        self.share, self.merge_every, self.dtype, self.limit = share, merge_every, dtype, settings.max_new_tokens
        self.spent, self.born, self.steps = 0.0, time.monotonic(), 0

    def observe(self, prompt: list[int], answer: list[int]) -> None:
        if len(answer) >= 2:
            self.answers.append((prompt, answer[:self.limit]))

    def ready(self) -> bool:
        """Whether an answer waits and the time share allows a step now."""
        return bool(self.answers) and self.spent <= self.share * (time.monotonic() - self.born)

    def step(self, target: Target) -> bool:
        """One update on the oldest answer waiting; True when a merge is due."""
        began = time.monotonic()
        prompt, answer = self.answers.popleft()
        with torch.no_grad():
            teacher = None if self.trainer.spell else target.logits(prompt + answer[:-1], len(answer))
        self.trainer.step(prompt, answer, teacher)
        self.steps += 1
        self.spent += time.monotonic() - began
        return self.steps % self.merge_every == 0

    def merged(self) -> torch.nn.Module:
        """The drafter with the adapter as it stands merged in, ready to serve."""
        model = copy.deepcopy(self.trainer.model).merge_and_unload().eval()
        model.requires_grad_(False)
        return kernels.in_dtype(model, self.dtype)
