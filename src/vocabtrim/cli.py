"""Command line: argument parsing and one-line error messages, nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import models
from .errors import VocabtrimError


class Main(click.Group):
    """Turns every expected failure into `error: ...` on one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VocabtrimError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """vocabtrim: lossless speculative decoding with a vocabulary-trimmed drafter."""


@main.group("models")
def models_cmd() -> None:
    """Fetch and list cached models."""


@models_cmd.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download, verify and convert built-in models (default: the default pair)."""
    for name in names or (models.DEFAULT_DRAFT, models.DEFAULT_TARGET):
        click.echo(f"{name}: {models.fetch(name)}")


@models_cmd.command("list")
def models_list() -> None:
    """Show built-in names and what is in the cache."""
    cached = {m["name"]: m for m in models.list_cached()}
    click.echo(f"cache: {models.cache_root()}")
    for name, b in models.BUILTINS.items():
        state = f"cached, {cached[name]['bytes'] / 1e9:.2f} GB" if name in cached else "not fetched"
        click.echo(f"  {name:22} {b.description:42} {state}")


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if (prompt is None) == (prompt_file is None):
        raise VocabtrimError("give exactly one of --prompt and --prompt-file")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text()
        except OSError as e:
            raise VocabtrimError(f"cannot read prompt file {prompt_file}: {e.strerror}") from None
    if not prompt.strip():
        raise VocabtrimError("the prompt is empty")
    return prompt


@main.command()
@click.option("--target", default=models.DEFAULT_TARGET, show_default=True,
              help="Built-in name, model directory, .gguf file or cached hub id.")
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True, help="Drafter, same forms.")
@click.option("--no-draft", is_flag=True, help="Decode with the target alone.")
@click.option("--prompt", help="The user prompt.")
@click.option("--prompt-file", type=click.Path(path_type=Path), help="Read the prompt from a file.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--top-k", default=0, show_default=True, help="0 means off.")
@click.option("--seed", default=0, show_default=True)
@click.option("--draft-len", default=5, show_default=True, help="Static draft length K.")
@click.option("--system", help="A system prompt (none is added otherwise).")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, no chat template.")
@click.option("--stop", "stop_strings", multiple=True, help="Stop after this string (repeatable).")
@click.option("--dtype", default="bfloat16", show_default=True,
              type=click.Choice(list(models.DTYPES)))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def generate(target, draft, no_draft, prompt, prompt_file, max_new_tokens, temperature, top_p,
             top_k, seed, draft_len, system, raw, stop_strings, dtype, as_json) -> None:
    """Generate a reply, streaming text as the target accepts it."""
    from .engine import Engine, Stop
    from .policies import Policy
    from .sampling import Sampling

    text = _read_prompt(prompt, prompt_file)
    sampling = Sampling(temperature, top_k, top_p)
    policy = Policy(draft_len)
    if max_new_tokens < 1:
        raise VocabtrimError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    tgt = models.load(target, dtype)
    ids = models.encode_prompt(tgt.tokenizer, text, system, raw)
    drf = None if no_draft else models.load(draft, dtype)
    engine = Engine(tgt.model, drf.model if drf else None)
    stop = Stop(models.stop_token_ids(tgt), tuple(stop_strings), tgt.tokenizer.decode)
    stream = None if as_json else _Streamer(tgt.tokenizer)
    new, stats = engine.generate(ids, max_new_tokens, policy, sampling, seed, stop,
                                 on_tokens=stream)
    out_text = tgt.tokenizer.decode(new, skip_special_tokens=True)
    if as_json:
        record = {"text": out_text, "token_ids": new, "prompt_tokens": len(ids),
                  "target": target, "draft": None if no_draft else draft,
                  "policy": None if no_draft else policy.spec(), **stats.to_dict()}
        click.echo(json.dumps(record))
    else:
        stream.finish()
        click.echo(f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.2f} tok/s, "
                   f"tau {stats.tau:.2f}, acceptance {stats.acceptance_rate:.2f}, "
                   f"MBSU {stats.mbsu:.2f}]", err=True)


class _Streamer:
    """Prints the text of accepted tokens as it grows, holding back split UTF-8 characters."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def __call__(self, tokens: list[int]) -> None:
        self.ids += tokens
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            click.echo(text[self.shown:], nl=False)
            sys.stdout.flush()
            self.shown = len(text)

    def finish(self) -> None:
        click.echo()


if __name__ == "__main__":
    main()
