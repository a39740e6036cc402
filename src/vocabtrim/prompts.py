"""Prompts as token ids: the chat template, and the ids that end a reply."""

from __future__ import annotations

from pathlib import Path

from .errors import VocabtrimError

CHARS_A_TOKEN = 16  # more than any tokenizer's average: a prefix this long holds the context's worth


def encode_prompt(tokenizer, prompt: str, system: str | None = None, raw: bool = False) -> list[int]:
    """Token ids of a user prompt, through the tokenizer's own chat template unless raw."""
    if not prompt.strip():
        raise VocabtrimError("the prompt is empty")
    if raw or tokenizer.chat_template is None:
        if system:
            prompt = f"{system}\n\n{prompt}"
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    return chat_ids(tokenizer, messages)


def encode_within(tokenizer, prompt: str, context: int, system: str | None = None, raw: bool = False) -> list[int]:
    """`encode_prompt`, refusing a prompt of `context` tokens or more; a long one is refused
    from a prefix of CHARS_A_TOKEN characters a token of the context, whose tokens already
    outnumber it (tokenizing megabytes takes minutes), with a margin for the cut word."""
    head = CHARS_A_TOKEN * context
    if len(prompt) > head:
        n = len(tokenizer(prompt[:head], add_special_tokens=False)["input_ids"])
        if n > context + 16:
            raise VocabtrimError(f"the prompt has more than {context} tokens ({n} in its first {head:,} characters); "
                                 f"the context holds {context}")
    ids = encode_prompt(tokenizer, prompt, system, raw)
    if len(ids) >= context:
        raise VocabtrimError(f"the prompt has {len(ids)} tokens; the context holds {context}")
    return ids


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation, ready for the assistant's next turn."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def stop_token_ids(loaded) -> frozenset[int]:
    """EOS ids of tokenizer and generation config, plus the chat template's end-of-turn
    token (found by rendering a one-turn exchange and reading what follows the reply)."""
    ids = {loaded.tokenizer.eos_token_id}
    eos = getattr(loaded.generation, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    tok = loaded.tokenizer
    if tok.chat_template is not None:
        marker = "vocabtrim-reply"
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False)
        after = tok(text[text.rindex(marker) + len(marker):], add_special_tokens=False)["input_ids"]
        if after and after[0] in tok.all_special_ids + list(tok.added_tokens_decoder):
            ids.add(after[0])
    ids.discard(None)
    return frozenset(ids)


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt given inline or in a UTF-8 file (exactly one of them), not empty."""
    if (prompt is None) == (prompt_file is None):
        raise VocabtrimError("give exactly one of --prompt and --prompt-file")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text()
        except OSError as e:
            raise VocabtrimError(f"cannot read prompt file {prompt_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise VocabtrimError(f"cannot read prompt file {prompt_file}: it is not UTF-8 text") from None
    if not prompt.strip():
        raise VocabtrimError("the prompt is empty")
    return prompt
