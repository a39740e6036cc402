"""Command line: argument parsing and one-line error messages, nothing else. Each command's
module parses its options and calls the library; click is imported only in this package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .. import backend, catalog, kernels
from ..errors import VocabtrimError
from ..paths import cache_root


DEBUG_ENV = "VOCABTRIM_DEBUG"  # set to 1: failures raise with their traceback instead of one line


class Main(click.Group):
    """Turns every failure into `error: ...` on one line and exit status 1: ours, click's own
    usage errors (click alone prints a usage block and exits with 2), a file system's refusal
    and anything unforeseen; with VOCABTRIM_DEBUG=1 the exception propagates, traceback and all."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare group: its help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            if os.environ.get(DEBUG_ENV) == "1" and not isinstance(e, click.UsageError):
                raise
            click.echo(f"error: {' '.join(_message(e).split())}", err=True)
            sys.exit(1)


def _message(e: Exception) -> str:
    """What went wrong, in the words of the exception where it explains itself."""
    if isinstance(e, click.ClickException):
        return e.format_message()
    if isinstance(e, VocabtrimError):
        return str(e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return f"{type(e).__name__}: {e} (unexpected; {DEBUG_ENV}=1 shows where it came from)"


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
    for name in names or (catalog.DEFAULT_DRAFT, catalog.DEFAULT_TARGET):
        click.echo(f"{name}: {catalog.fetch(name)}")


@models_cmd.command("list")
def models_list() -> None:
    """Show built-in names and what is in the cache."""
    cached = {m["name"]: m for m in catalog.list_cached()}
    click.echo(f"cache: {cache_root()}")
    for name, b in catalog.BUILTINS.items():
        state = f"cached, {cached[name]['bytes'] / 1e9:.2f} GB" if name in cached else "not fetched"
        click.echo(f"  {name:22} {b.description:42} {state}")


def given(name: str) -> bool:
    """Whether the user set the current command's option `name` (not left it at its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def refuse_unused(why: str, **options: str) -> None:
    """Refuse the options the user set (parameter name -> flag) that `why` makes meaningless:
    asked for, they would otherwise be silently ignored."""
    named = [flag for name, flag in options.items() if given(name)]
    if named:
        raise VocabtrimError(f"{why}: {', '.join(named)} would be ignored; drop {'them' if len(named) > 1 else 'it'}")


prompt_tokens_option = click.option(
    "--prompt-tokens/--no-prompt-tokens", default=True, show_default=True,
    help="With a token map, let the drafter also propose the prompt's own tokens the map "
         "lacks (a few extra head rows per generation); off: the map alone, as in the paper.")
quant_option = click.option(
    "--draft-quant", default="auto", show_default=True, type=click.Choice(["auto", *kernels.QUANT]),
    help="The drafter's linear layers and head as int8 (per row) or int4 (groups of 32) weights "
         "(a drafter on the native engine: a cached copy of its GGUF file at Q8_0/Q4_0): "
         "cheaper draft steps; the output stays the target's. auto: int4 for a drafter on the "
         "native engine, none on torch.")
draft_adapter_option = click.option(
    "--draft-adapter", type=click.Path(path_type=Path),
    help="A LoRA adapter from `vocabtrim adapt`, merged into the drafter's weights at load time "
         "(the draft step costs the same; the output stays the target's).")
seed_option = click.option(  # the range torch.Generator.manual_seed takes
    "--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1), help="Sampling seed, 0 to 2^64-1.")
backend_option = click.option(
    "--backend", default="auto", show_default=True, type=click.Choice(backend.NAMES),
    help="What runs the target. ggml: its GGUF file at its stored precision on llama.cpp's kernels "
         "(needs vocabtrim[ggml]); native: its GGUF file on vocabtrim's own batch-invariant kernels "
         "(Llama/Qwen2 files; bit-identical at any batch size); torch: a 16-bit copy in transformers' modules; auto: whichever "
         "decodes this model faster on this machine (timed once, then cached).")
dtype_option = click.option(
    "--dtype", default="auto", show_default=True, type=click.Choice(list(kernels.DTYPES)),
    help="How both models multiply. auto: whichever of bfloat16 and packed-fp16 (fbgemm fp16 "
         "weights, fp32 math) measured faster on this machine (timed once, then cached).")


from . import decode, measure, tokens  # noqa: E402 - registers their commands with `main`

__all__ = ["decode", "main", "measure", "tokens"]
