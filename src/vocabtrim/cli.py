"""Command line: argument parsing and one-line error messages, nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click
import torch
from click.core import ParameterSource

from . import backend, ggml, kernels, models, profile, tokenmap
from .adapt import Online, Settings, adapt, check_out, read_meta
from .adapt import read as read_adapter
from .assembly import Assembler, Parts, Spec, parse_method
from .bench import methods as bm
from .bench.common import identity_check, warm_up
from .bench.report import check_out_dir, markdown, summarize, write_reports
from .bench.run import check_fit, run_matrix
from .calibrate import (
    SOURCES,
    calibrated_map,
    check_counts_out,
    count_tokens,
    generate_fn,
    in_drafter_tokens,
    load_items,
    parse_calibration,
    tokenize_fn,
)
from .data import load_questions, select
from .drafters import Bridge, SuffixDrafter
from .engine import Engine, Stop
from .errors import VocabtrimError
from .metrics import timed
from .paths import cache_root
from .policies import MAX_DRAFT_LEN, Policy, parse_policy
from .sampling import Sampling
from .serve import Decoder, Service, StoreFile, suffix_store
from .serve import serve as run_server
from .text import TextStream
from .tokenmap import FORMATS, TokenMap, check_replaceable, check_size_rule
from .vocab import Counts, tokenizer_fingerprint

DRAFTER_KINDS = ("model", "suffix", "hybrid")
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
    for name in names or (models.DEFAULT_DRAFT, models.DEFAULT_TARGET):
        click.echo(f"{name}: {models.fetch(name)}")


@models_cmd.command("list")
def models_list() -> None:
    """Show built-in names and what is in the cache."""
    cached = {m["name"]: m for m in models.list_cached()}
    click.echo(f"cache: {cache_root()}")
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
        except UnicodeDecodeError:
            raise VocabtrimError(f"cannot read prompt file {prompt_file}: it is not UTF-8 text") from None
    if not prompt.strip():
        raise VocabtrimError("the prompt is empty")
    return prompt


def _given(name: str) -> bool:
    """Whether the user set the current command's option `name` (not left it at its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _refuse_unused(why: str, **options: str) -> None:
    """Refuse the options the user set (parameter name -> flag) that `why` makes meaningless:
    asked for, they would otherwise be silently ignored."""
    given = [flag for name, flag in options.items() if _given(name)]
    if given:
        raise VocabtrimError(f"{why}: {', '.join(given)} would be ignored; drop {'them' if len(given) > 1 else 'it'}")


prompt_tokens_option = click.option(
    "--prompt-tokens/--no-prompt-tokens", default=True, show_default=True,
    help="With a token map, let the drafter also propose the prompt's own tokens the map "
         "lacks (a few extra head rows per generation); off: the map alone, as in the paper.")
quant_option = click.option(
    "--draft-quant", default="none", show_default=True, type=click.Choice(list(kernels.QUANT)),
    help="The drafter's linear layers and head as int8 (per row) or int4 (groups of 32) weights: "
         "cheaper draft steps; the output stays the target's.")
draft_adapter_option = click.option(
    "--draft-adapter", type=click.Path(path_type=Path),
    help="A LoRA adapter from `vocabtrim adapt`, merged into the drafter's weights at load time "
         "(the draft step costs the same; the output stays the target's).")
seed_option = click.option(  # the range torch.Generator.manual_seed takes
    "--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1), help="Sampling seed, 0 to 2^64-1.")
backend_option = click.option(
    "--backend", default="auto", show_default=True, type=click.Choice(backend.BACKENDS),
    help="What runs the target. ggml: its GGUF file at its stored precision on llama.cpp's kernels "
         "(needs vocabtrim[ggml]); native: its GGUF file on vocabtrim's own batch-invariant kernels "
         "(Llama/Qwen2 files; bit-identical at any batch size); torch: a 16-bit copy in transformers' modules; auto: whichever "
         "decodes this model faster on this machine (timed once, then cached).")
dtype_option = click.option(
    "--dtype", default="auto", show_default=True, type=click.Choice(list(kernels.DTYPES)),
    help="How both models multiply. auto: whichever of bfloat16 and packed-fp16 (fbgemm fp16 "
         "weights, fp32 math) measured faster on this machine (timed once, then cached).")


def engine_options(f):
    """The options that say which engine decodes (generate and serve share them)."""
    options = [
        click.option("--target", default=models.DEFAULT_TARGET, show_default=True,
                     help="Built-in name, model directory, .gguf file or cached hub id."),
        click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True,
                     help="Drafter, same forms; one with another tokenizer (e.g. smollm2-135m) drafts the "
                          "tokens both vocabularies share."),
        click.option("--no-draft", is_flag=True, help="Decode with the target alone."),
        click.option("--ngram-cache/--no-ngram-cache", "ngram", default=True, show_default=True,
                     help="With a drafter of another tokenizer: learn which of its token sequences spell one "
                          "target token and propose that token (off: the shared tokens alone)."),
        click.option("--drafter", "drafter_kind", default="hybrid", show_default=True,
                     type=click.Choice(DRAFTER_KINDS),
                     help="model: the drafter LM; suffix: drafts matched in the prompt, the output and earlier "
                          "outputs, no model; hybrid: each round the suffix draft or the model's, whichever "
                          "the policy expects to pay more."),
        click.option("--policy", "policy_spec",
                     help="Draft-length rule: static:K, adaedl[:lambda=..,gamma=..,max=..], "
                          "confidence:T, heuristic, svip, cost (drafts while this machine's measured "
                          "costs say it pays; see `vocabtrim profile`). Default: cost with a drafter "
                          "model (model, hybrid), static:5 otherwise."),
        click.option("--draft-len", type=click.IntRange(1, MAX_DRAFT_LEN), help="Shorthand for --policy static:K."),
        click.option("--token-map", type=click.Path(path_type=Path),
                     help="Draft with the LM head trimmed to this token map (from `vocabtrim trim`)."),
        prompt_tokens_option, backend_option, dtype_option, quant_option, draft_adapter_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@dataclass
class Built:
    """An engine as `engine_options` describe it, with what it was built from."""

    parts: Parts
    engine: Engine
    policy: Policy
    spec: Spec  # its kind: ar, sd, suffix or hybrid
    rule: str  # the policy's spec

    def rebuild(self, drafter: torch.nn.Module) -> tuple[Engine, Policy]:
        """The same engine over other drafter weights (online adaptation's merged ones)."""
        parts = replace(self.parts, drafter=replace(self.parts.drafter, weights=drafter))
        return Assembler(parts).build(self.spec, self.rule)


def _refuse_unused_engine(no_draft, drafter_kind, token_map, policy_spec, draft_len) -> tuple[str, str]:
    """The engine's kind and policy spec, refusing (before any model loads) options it would not read."""
    kind = "ar" if no_draft else {"model": "sd", "suffix": "suffix", "hybrid": "hybrid"}[drafter_kind]
    _refuse_unused_generate(kind, token_map is not None)
    if kind == "suffix" and token_map is not None:
        raise VocabtrimError("--token-map trims a drafter model's head; the suffix drafter has none")
    rule = f"static:{draft_len}" if draft_len is not None else policy_spec or (
        "static:5" if kind in ("ar", "suffix") else "cost")
    if parse_policy(rule).priced and kind in ("ar", "suffix"):
        raise VocabtrimError("--policy cost reads the profile of a target and drafter pair; "
                             "use it with --drafter model or hybrid")
    return kind, rule


def _refuse_unused_generate(kind: str, mapped: bool) -> None:
    """generate's options that its drafter (`kind`) would not read, where the user set them."""
    if kind == "ar":
        _refuse_unused("--no-draft decodes with the target alone", draft="--draft", drafter_kind="--drafter",
                       draft_quant="--draft-quant", ngram="--[no-]ngram-cache", policy_spec="--policy",
                       draft_len="--draft-len", prompt_tokens="--[no-]prompt-tokens", draft_adapter="--draft-adapter")
    elif kind == "suffix":
        _refuse_unused("--drafter suffix drafts without a drafter model", draft="--draft",
                       draft_quant="--draft-quant", ngram="--[no-]ngram-cache", prompt_tokens="--[no-]prompt-tokens",
                       draft_adapter="--draft-adapter")
    elif not mapped:
        _refuse_unused("--[no-]prompt-tokens says what a token map leaves out; give --token-map",
                       prompt_tokens="--[no-]prompt-tokens")


def _build(target, draft, no_draft, ngram, drafter_kind, policy_spec, draft_len, token_map, prompt_tokens,
           backend, dtype, draft_quant, draft_adapter, store_tokens: int = SuffixDrafter.STORE_TOKENS) -> Built:
    """Load the models and build the engine `engine_options` describe."""
    kind, rule = _refuse_unused_engine(no_draft, drafter_kind, token_map, policy_spec, draft_len)
    parts = _load(target, None if kind in ("ar", "suffix") else draft, token_map, dtype, backend, draft_adapter)
    parts.quant, parts.prompt_tokens, parts.store_tokens = draft_quant, prompt_tokens, store_tokens
    assembler = Assembler(parts)
    if _given("ngram") and parts.drafter is not None and assembler.bridge(False) is None:
        raise VocabtrimError(f"--[no-]ngram-cache is for a drafter of another tokenizer; {draft} shares the "
                             "target's (drop it)")
    spec = Spec(kind, kind, token_map is not None, ngram=ngram)
    engine, policy = assembler.build(spec, rule)
    return Built(parts, engine, policy, spec, rule)


@main.command()
@click.option("--prompt", help="The user prompt.")
@click.option("--prompt-file", type=click.Path(path_type=Path), help="Read the prompt from a file.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--top-k", default=0, show_default=True, help="0 means off.")
@seed_option
@click.option("--system", help="A system prompt (none is added otherwise).")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, no chat template.")
@click.option("--stop", "stop_strings", multiple=True, help="Stop after this string (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@engine_options
def generate(prompt, prompt_file, max_new_tokens, temperature, top_p, top_k, seed, system, raw, stop_strings,
             as_json, **how) -> None:
    """Generate a reply, streaming text as the target accepts it."""
    text = _read_prompt(prompt, prompt_file)
    if "" in stop_strings:
        raise VocabtrimError("--stop needs a non-empty string (an empty one matches at once)")
    sampling = Sampling(temperature, top_k, top_p)
    built = _build(**how)
    tgt = built.parts.target
    ids = models.encode_prompt(tgt.tokenizer, text, system, raw)
    stop = Stop(models.stop_token_ids(tgt), tuple(stop_strings), tgt.tokenizer.decode)
    stream = None if as_json else _Streamer(tgt.tokenizer)
    new, stats = built.engine.generate(ids, max_new_tokens, built.policy, sampling, seed, stop, on_tokens=stream)
    out_text = tgt.tokenizer.decode(new, skip_special_tokens=True)
    if as_json:
        record = {"text": out_text, "token_ids": new, "prompt_tokens": len(ids),
                  "target": how["target"], "backend": tgt.backend,
                  "draft": None if built.spec.kind in ("ar", "suffix") else how["draft"],
                  "drafter": None if how["no_draft"] else how["drafter_kind"],
                  "policy": None if how["no_draft"] else built.policy.spec(), **stats.to_dict()}
        click.echo(json.dumps(record))
    else:
        stream.finish()
        click.echo(f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.2f} tok/s, "
                   f"tau {stats.tau:.2f}, acceptance {stats.acceptance_rate:.2f}, "
                   f"MBSU {stats.mbsu:.2f}]", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: loopback only, unless you say otherwise (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="VOCABTRIM_API_KEY",
              help="Answer only requests that carry it (Authorization: Bearer KEY); also $VOCABTRIM_API_KEY.")
@click.option("--name", help="The model's name in the API (default: --target).")
@click.option("--queue", "queue_size", default=16, show_default=True, type=click.IntRange(1, 1 << 16),
              help="Requests that may wait while one decodes; beyond that, 429 with Retry-After.")
@click.option("--time-limit", default=600.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds one generation may run; then it ends at the next round (finish_reason length).")
@click.option("--max-request-bytes", type=click.IntRange(1),
              help="Largest request body read; a larger one gets 413 before it is read whole "
                   "[default: 64 bytes a token of the context].")
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Keep the suffix drafter's store of earlier answers in this file across restarts "
                   "(read at start, written atomically after every answer).")
@click.option("--store-tokens", default=SuffixDrafter.STORE_TOKENS, show_default=True, type=click.IntRange(0),
              help="Tokens of earlier answers the suffix drafter keeps, shared by all requests "
                   "(oldest evicted; 0: every request starts with none).")
@click.option("--adapt-online", is_flag=True,
              help="Adapt the drafter to the target between requests, from the answers served (an "
                   "adapter as `vocabtrim adapt` trains, from --draft-adapter if given), merging it "
                   "into the serving drafter every --adapt-merge-every steps.")
@click.option("--adapt-share", default=0.25, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="At most this share of the server's time goes to adaptation (only while no request waits).")
@click.option("--adapt-merge-every", default=8, show_default=True, type=click.IntRange(min=1))
@engine_options
def serve(host, port, api_key, name, queue_size, time_limit, max_request_bytes, store_path, store_tokens, adapt_online, adapt_share,
          adapt_merge_every, **how) -> None:
    """An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models,
    /health) decoding every request with this engine, one at a time."""
    kind, _ = _refuse_unused_engine(how["no_draft"], how["drafter_kind"], how["token_map"], how["policy_spec"],
                                    how["draft_len"])
    if store_path is not None and kind in ("ar", "sd"):
        raise VocabtrimError("--store keeps the suffix drafter's store; use --drafter hybrid or suffix")
    if api_key is not None and not api_key.strip():
        raise VocabtrimError("--api-key is empty")
    if adapt_online and (kind not in ("sd", "hybrid") or how["draft_quant"] != "none"):
        raise VocabtrimError("--adapt-online adapts a drafter model's own weights: use --drafter model or hybrid, "
                             "without --draft-quant")
    if not adapt_online:
        _refuse_unused("--adapt-share and --adapt-merge-every tune --adapt-online", adapt_share="--adapt-share",
                       adapt_merge_every="--adapt-merge-every")
    store = None if store_path is None else StoreFile(store_path)
    service = Service(name or how["target"], api_key, drafter=None if how["no_draft"] else how["drafter_kind"],
                      max_request_bytes=max_request_bytes)

    ctx = click.get_current_context()

    def load() -> Decoder:  # in the decoder's own thread, under this command's options
        with ctx:
            built = _build(**how, store_tokens=store_tokens)
        tgt = built.parts.target
        service.backend = tgt.backend
        if store is not None:
            store.attach(suffix_store(built.engine.drafter), tgt.tokenizer)
        online = _online(built, how, adapt_share, adapt_merge_every) if adapt_online else None
        return Decoder(built.engine, built.policy, tgt.tokenizer, models.stop_token_ids(tgt), queue_size,
                       time_limit, store, thread=False, online=online, rebuild=built.rebuild)

    run_server(service, load, host, port)


def _online(built: Built, how: dict, share: float, merge_every: int) -> Online:
    """Online adaptation for a server's drafter: a float32 copy of it (its adapter, if any,
    continued), learning from the answers served."""
    base = models.load(how["draft"], "float32")
    state, settings = None, Settings()
    if how["draft_adapter"] is not None:
        state, meta = read_adapter(how["draft_adapter"])
        settings = Settings(**meta["settings"])
    bridge = Bridge.between(built.parts.target, base)
    return Online(base, settings, None if bridge is None else bridge.own_ids, state, share, merge_every,
                  dtype=built.parts.drafter.dtype)


def _load(target: str, draft: str | None, token_map: Path | None, dtype: str = "auto",
          target_backend: str = "torch", draft_adapter: Path | None = None) -> Parts:
    """Load the target (on `target_backend`, or the faster one with auto), the drafter (with
    its adapter merged) and the token map; check they belong together."""
    if token_map is not None and draft is None:
        raise VocabtrimError("--token-map needs a drafter (drop --no-draft)")
    tm = None if token_map is None else TokenMap.load(token_map)
    if draft_adapter is not None:
        read_meta(draft_adapter)  # a bad file is refused before any model loads
    tgt = models.load(target, dtype, backend.choose(target, target_backend, dtype))
    drf = None if draft is None else models.load(draft, dtype, adapter=draft_adapter)
    if tm is not None:
        tm.check_drafter(drf.model.config.vocab_size, tokenizer_fingerprint(drf.tokenizer))
    return Parts(tgt, drf, None if tm is None else tm.kept_ids)


@main.command()
@click.option("--source", type=click.Choice(SOURCES), required=True,
              help="Count text the target generates, the drafter generates, or the data itself.")
@click.option("--data", required=True, help="humaneval, stdlib, a JSONL/text file or a directory.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Counts file to write.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N items.")
@click.option("--skip", default=0, show_default=True, type=click.IntRange(min=0),
              help="Skip the first N items (keep evaluation prompts out).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True)
@seed_option
@click.option("--target", default=models.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings.")
@backend_option
@dtype_option
@quant_option
def calibrate(source, data, out, limit, skip, max_new_tokens, temperature, seed, target, draft,
              resume, backend, dtype, draft_quant) -> None:
    """Count token frequencies on a calibration set (only generated tokens count)."""
    sampling = Sampling(temperature)
    if source == "raw":
        _refuse_unused("--source raw counts the data's own tokens, generating nothing", target="--target",
                       max_new_tokens="--max-new-tokens", temperature="--temperature", seed="--seed",
                       backend="--backend", dtype="--dtype", draft_quant="--draft-quant")
    elif source == "draft":
        _refuse_unused("--source draft counts what the drafter generates alone", target="--target",
                       draft_quant="--draft-quant")
    check_counts_out(out, resume)
    items = load_items(data, answers=source == "raw")[skip:][:limit]
    if not items:
        raise VocabtrimError(f"no calibration items in {data} (after --skip/--limit)")
    meta = {"source": source, "data": data, "skip": skip, "limit": limit, "items": len(items)}
    if source == "raw":
        lm = models.load(draft, "bfloat16")  # only its tokenizer is used
        per_item = tokenize_fn(lm.tokenizer)
        meta.update(model=draft)
    else:
        # the target's text comes out of the speculative engine: lossless, and faster
        gen_model = target if source == "target" else draft
        parts = _load(gen_model, draft if source == "target" else None, None, dtype,
                      backend if source == "target" else "torch")
        parts.quant = draft_quant
        engine, policy = Assembler(parts).build(parse_method("sd" if parts.drafter else "ar"))
        lm = parts.target
        meta.update(model=gen_model, backend=lm.backend, dtype=lm.dtype, max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=seed)
        per_item = generate_fn(engine, policy, lm, max_new_tokens, sampling, seed)
        if parts.drafter is not None:  # the target's text, counted in the drafter's tokens for its map
            per_item, lm = in_drafter_tokens(per_item, lm, parts.drafter), parts.drafter
    meta["tokenizer"] = tokenizer_fingerprint(lm.tokenizer)
    counts = count_tokens(items, out, meta, lm.model.config.vocab_size, per_item, resume)
    click.echo(f"counted {counts.meta['tokens']} tokens from {counts.meta['items_done']} items, "
               f"{int((counts.counts > 0).sum())} distinct -> {out}")


@main.command()
@click.option("--counts", type=click.Path(path_type=Path), required=True)
@click.option("--keep", type=int, help="K: how many tokens the drafter head keeps.")
@click.option("--coverage", type=float, help="Keep the fewest tokens covering this fraction of counts.")
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True,
              help="The drafter the map is for (its tokenizer must match the counts).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Token map directory.")
def trim(counts, keep, coverage, draft, out) -> None:
    """Choose the K most frequent tokens: the trimmed drafter head's vocabulary."""
    check_size_rule(keep, coverage)
    check_replaceable(out)
    c = Counts.load(counts)
    drf = models.load(draft, "bfloat16")  # only its tokenizer and vocabulary are used
    fp = tokenizer_fingerprint(drf.tokenizer)
    if c.meta.get("tokenizer") != fp or c.counts.numel() != drf.model.config.vocab_size:
        raise VocabtrimError(
            f"{counts} was counted with another tokenizer (vocabulary {c.counts.numel()}, "
            f"fingerprint {c.meta.get('tokenizer')}); {draft} has {drf.model.config.vocab_size}, {fp}")
    tm = tokenmap.trim(c, keep, coverage, sorted(models.stop_token_ids(drf)))
    tm.meta["drafter"] = draft
    tm.save(out)
    click.echo(f"kept {tm.k} of {tm.meta['vocab_size']} tokens, covering "
               f"{tm.meta['coverage']:.2%} of the calibration tokens -> {out}")


@main.command()
@click.option("--token-map", type=click.Path(path_type=Path), required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def export(token_map, fmt, out) -> None:
    """Write a token map in a format serving engines read."""
    tokenmap.export(TokenMap.load(token_map), fmt, out)
    click.echo(f"wrote {fmt} export -> {out}")


DEFAULT_BENCH_PROMPTS = 4  # the no-argument run fits ~10 min on a 2-core AVX2 machine (README: Results)


@main.command()
@click.option("--data", default="humaneval", show_default=True,
              help="humaneval, a Spec-Bench question file, or a JSONL with 'prompt' (+ 'category').")
@click.option("--per-category", type=click.IntRange(min=1), help="First N questions of each category.")
@click.option("--limit", type=click.IntRange(min=1),
              help=f"First N questions (humaneval default: {DEFAULT_BENCH_PROMPTS}).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True)
@seed_option
@click.option("--methods", default="ar,llamacpp,sd+vt,suffix,hybrid+vt+cost,hf,pld", show_default=True)
@click.option("--draft-len", default=5, show_default=True, type=click.IntRange(1, MAX_DRAFT_LEN),
              help="K of the static methods.")
@click.option("--adaedl", default="adaedl", show_default=True, help="Policy spec of the adaedl methods.")
@click.option("--token-map", type=click.Path(path_type=Path), help="Token map for the +vt methods.")
@click.option("--calibrate", "calib", default="humaneval:n=16,k=16384,tokens=128", show_default=True,
              help="Without --token-map: build one from target answers to DATA prompts "
                   "outside the evaluation set, cached for reuse.")
@click.option("--target", default=models.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True)
@click.option("--cross-draft", default=models.CROSS_DRAFT, show_default=True,
              help="The x methods' drafter, one with another tokenizer than the target's.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/bench"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--repeats", default=1, show_default=True,
              help="Runs of each prompt per method, order alternating; the fastest is kept (noisy machines).")
@prompt_tokens_option
@backend_option
@dtype_option
@quant_option
@draft_adapter_option
def bench(data, per_category, limit, max_new_tokens, temperature, seed, methods, draft_len, adaedl,
          token_map, calib, target, draft, cross_draft, out, resume, repeats, prompt_tokens, backend, dtype,
          draft_quant, draft_adapter) -> None:
    """Spec-Bench-style evaluation: every method on every prompt, with tables and plots."""
    specs = bm.parse_methods(methods)
    sampling = Sampling(temperature)
    _refuse_unused_bench(specs, adaedl, token_map)
    if repeats < 1:
        raise VocabtrimError(f"--repeats must be >= 1, got {repeats}")
    if data == "humaneval" and per_category is None and limit is None:
        limit = DEFAULT_BENCH_PROMPTS
    questions = select(load_questions(data), per_category, limit)
    check_out_dir(out, resume)
    calib_spec = None if token_map else parse_calibration(calib)
    spent: dict[str, float] = {}  # wall-clock seconds per phase of this run, reported with the tables
    with timed(spent, "loading"):
        parts = _load(target, draft, token_map, dtype, backend, draft_adapter)
        parts.cross = models.load(cross_draft, dtype) if any(s.cross for s in specs) else None
    parts.quant, parts.draft_len, parts.adaedl, parts.prompt_tokens = draft_quant, draft_len, adaedl, prompt_tokens
    specs = _without_llamacpp(specs, parts.target) if not _given("methods") else specs
    assembler = Assembler(parts)
    if parts.cross is not None and assembler.bridge(True) is None:
        raise VocabtrimError(f"--cross-draft {cross_draft} shares the target's tokenizer; the x methods "
                             "need a drafter with another one")
    check_fit(questions, parts.target.tokenizer,
              min(m.context for m in (parts.target, parts.drafter, parts.cross) if m is not None))
    if parts.kept is None and any(s.trimmed for s in specs):
        exclude = {t for q in questions for t in q.turns}
        with timed(spent, "calibration"):
            parts.kept = calibrated_map(calib_spec, exclude, parts.target, parts.drafter)
    tok = parts.target.tokenizer
    with timed(spent, "setup"):  # profiles and quantized drafters, where methods need them
        matrix = bm.build(specs, assembler, sampling, seed, Stop(models.stop_token_ids(parts.target)))
    with timed(spent, "warm-up"):
        warm_up(matrix, tok)
    with timed(spent, "generations"):
        records = run_matrix(questions, matrix, tok, max_new_tokens, out / "results.jsonl", resume, repeats)
    with timed(spent, "identity check"):
        summary = summarize(records, "ar", sampling.greedy, identity_check(assembler.target))
    summary["time_s"] = spent
    summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux counts KiB
    summary["settings"] = {"data": data, "questions": len(questions), "max_new_tokens": max_new_tokens,
                           "repeats": repeats, "temperature": temperature, "seed": seed, "draft_len": draft_len,
                           "adaedl": adaedl, "token_map_k": None if parts.kept is None else len(parts.kept),
                           "prompt_tokens": prompt_tokens, "backend": parts.target.backend,
                           "dtype": parts.target.dtype, "draft_quant": draft_quant,
                           "draft_adapter": None if draft_adapter is None else str(draft_adapter),
                           "target": target, "draft": draft, "cross_draft": cross_draft if parts.cross else None}
    write_reports(summary, out)
    click.echo(markdown(summary))
    click.echo(f"results, summary.md and plots in {out}")


def _without_llamacpp(specs: list[Spec], target: models.Loaded) -> list[Spec]:
    """The default methods less `llamacpp` where it cannot run (said on stderr): a target
    without a GGUF file, or no llama-cpp-python."""
    why = (f"the target {target.name} has no GGUF file" if models.gguf_path(target.name) is None else
           None if ggml.available() else f"it needs llama-cpp-python: {ggml.INSTALL_HINT}")
    if why is None:
        return specs
    click.echo(f"note: method llamacpp left out: {why}", err=True)
    return [s for s in specs if s.kind != "llamacpp"]


def _refuse_unused_bench(specs: list[Spec], adaedl: str, token_map: Path | None) -> None:
    """bench's options that none of its methods would read, where the user set them."""
    if parse_policy(adaedl).name != "adaedl":
        raise VocabtrimError(f"--adaedl takes an adaedl policy (adaedl[:lambda=..,gamma=..,max=..]), got {adaedl!r}")
    if not any(s.policy == "adaedl" for s in specs):
        _refuse_unused("no method in --methods is an adaedl one", adaedl="--adaedl")
    if not any(s.trimmed for s in specs):
        _refuse_unused("no method in --methods uses a token map (+vt)", token_map="--token-map",
                       calib="--calibrate", prompt_tokens="--[no-]prompt-tokens")
    elif token_map is not None:
        _refuse_unused("--token-map is the +vt methods' map: nothing is calibrated", calib="--calibrate")
    if not any(s.cross for s in specs):
        _refuse_unused("no method in --methods is an x one", cross_draft="--cross-draft")


@main.command("adapt")
@click.option("--data", default="humaneval", show_default=True,
              help="Prompts for the target to answer: humaneval, a JSONL or text file or a directory, as "
                   "`calibrate` reads them.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The adapter file to write (.safetensors).")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N prompts (after --skip).")
@click.option("--skip", default=0, show_default=True, type=click.IntRange(min=0),
              help="Skip the first N prompts (keep evaluation prompts out).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--target", default=models.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True,
              help="The drafter to adapt; one of another tokenizer learns from the target's text alone.")
@click.option("--rank", default=16, show_default=True, type=click.IntRange(1, 1024), help="LoRA rank.")
@click.option("--alpha", default=32, show_default=True, type=click.IntRange(min=1), help="LoRA alpha.")
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option("--nll-weight", default=0.1, show_default=True, type=click.FloatRange(0, 100),
              help="Weight of the NLL of the target's tokens beside the reverse KL.")
@seed_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings into --out.")
@backend_option
def adapt_cmd(data, out, limit, skip, max_new_tokens, target, draft, rank, alpha, lr, epochs, nll_weight, seed,
              resume, backend) -> None:
    """Distil a LoRA adapter for the drafter from the target's own answers (OmniDraft's
    reverse KL to the target's distributions, plus NLL); use it with --draft-adapter."""
    settings = Settings(rank, alpha, lr, epochs, nll_weight, max_new_tokens, seed)
    resumed = check_out(out, resume)
    items = load_items(data)[skip:None if limit is None else skip + limit]
    if not items:
        raise VocabtrimError(f"no prompts in {data} after --skip {skip}")
    parts = _load(target, None, None, "auto", backend)
    drafter = models.load(draft, "float32")
    engine, policy = Assembler(parts).build(parse_method("suffix"), "static:5")  # the target's own text, faster
    tok, stop = parts.target.tokenizer, Stop(models.stop_token_ids(parts.target))
    prompts = [models.encode_prompt(tok, t) for t in items]
    bridge = Bridge.between(parts.target, drafter)
    meta = {"drafter": draft, "target": target, "target_tokenizer": tokenizer_fingerprint(tok),
            "data": {"data": data, "skip": skip, "items": len(items),
                     "sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]}}
    result = adapt(prompts, lambda ids: engine.generate(ids, max_new_tokens, policy, seed=seed, stop=stop)[0],
                   engine.target, drafter, None if bridge is None else bridge.own_ids, out, meta, settings, resumed)
    losses = result["losses"]
    tail = min(len(losses) // 2, 16)
    click.echo(f"adapter in {out}: {result['steps']} steps on {result['answers']} answers"
               + (f", loss {sum(losses[:tail]) / tail:.3f} (first {tail}) -> {sum(losses[-tail:]) / tail:.3f} "
                  f"(last {tail})" if tail else ""))


@main.command("profile")
@click.option("--target", default=models.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True)
@backend_option
@dtype_option
@quant_option
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON instead of a table.")
def profile_cmd(target, draft, backend, dtype, draft_quant, as_json) -> None:
    """Time this machine: the target scoring 1..32 tokens at a short and a long context,
    drafter steps (quantized with --draft-quant: one profile per scheme), prefill. Cached
    for generate and bench (the cost policy), with a plot."""
    parts = _load(target, draft, None, dtype, backend)
    parts.quant = draft_quant
    p = profile.measure(parts.target, Assembler(parts).drafter_model(parse_method("sd")))
    path = profile.save(p)
    p.plot(path.with_suffix(".png"))
    click.echo(json.dumps(asdict(p)) if as_json else p.table())
    click.echo(f"profile cached in {path}, plot in {path.with_suffix('.png')}", err=True)


class _Streamer:
    """Prints the text of accepted tokens as it grows (as a `TextStream` releases it)."""

    def __init__(self, tokenizer):
        self.text = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    def __call__(self, tokens: list[int]) -> None:
        click.echo(self.text.push(tokens), nl=False)
        sys.stdout.flush()

    def finish(self) -> None:
        """Print what is still held back (text may really end in U+FFFD), then a newline."""
        click.echo(self.text.finish())


if __name__ == "__main__":
    main()
