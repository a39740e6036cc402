"""Tiny random-weight models (seconds to build), the real default pair (fetched once) and
the in-process CLI runner every test uses.

Tiny models are Llama-shaped on purpose: the engine must not depend on the architecture,
and transformers maps a plain tokenizers tokenizer onto Llama models unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tk_models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vocabtrim.cli import main
from vocabtrim.drafters import ModelDrafter
from vocabtrim.engine import Engine

TINY_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_model(vocab: int = 64, seed: int = 0, tie: bool = False, layers: int = 2,
               context: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, tie_word_embeddings=tie,
                      eos_token_id=1, bos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the default init, so drafts get accepted
        model.get_output_embeddings().weight.mul_(8)
    return model


def spec_engine(target, draft=None, kept_ids=None, prompt_tokens: bool = True) -> Engine:
    """An Engine with a model drafter (the target alone when `draft` is None)."""
    return Engine(target, None if draft is None else ModelDrafter(draft, target, kept_ids, prompt_tokens))


def noisy_copy(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """A drafter that mostly agrees with `model`: the same weights plus Gaussian noise."""
    torch.manual_seed(seed)
    other = LlamaForCausalLM(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale * p.std().clamp_min(1e-3))
    return other


def tiny_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    specials = ["<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = specials + [f"w{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>",
                                   additional_special_tokens=specials[2:])
    fast.chat_template = TINY_TEMPLATE
    return fast


def save_tiny(path: Path, vocab: int = 64, seed: int = 0, tie: bool = False, context: int = 256,
              model: LlamaForCausalLM | None = None) -> Path:
    model = model or tiny_model(vocab, seed, tie, context=context)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    target = tiny_model(64, seed=1)
    return {
        "target": save_tiny(root / "target", model=target),
        "draft": save_tiny(root / "draft", model=noisy_copy(target, 0.3, seed=2)),
        "other_vocab": save_tiny(root / "other", vocab=80, seed=3),
        "short": save_tiny(root / "short", seed=4, context=16),
    }


@pytest.fixture(scope="session")
def real_pair():
    """The built-in default pair in the auto dtype, fetched and converted into the cache on first use."""
    from vocabtrim import models

    target = models.load(models.DEFAULT_TARGET)
    draft = models.load(models.DEFAULT_DRAFT)
    return target, draft


def cli(*args, env: dict[str, str] | None = None) -> Result:
    """Run the `vocabtrim` command in-process; arguments may be paths or numbers."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)
