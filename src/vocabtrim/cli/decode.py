"""`generate` and `serve`: the options that say which engine decodes, and the commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import click

from .. import catalog
from ..assembly import Built, Parts, EngineSettings, Spec, check_parts, parse_method
from ..drafters import SuffixDrafter
from ..engine import Stop
from ..errors import VocabtrimError
from ..loading import Options, build, online_adapter
from ..policies import MAX_DRAFT_LEN, parse_policy
from ..prompts import encode_within, read_prompt, stop_token_ids
from ..sampling import Sampling
from ..decoder import Decoder, StoreFile
from ..serve import Service
from ..serve import serve as run_server
from ..text import Printer
from . import backend_option, dtype_option, draft_adapter_option, given, main, prompt_tokens_option, quant_option, refuse_unused, seed_option


DRAFTER_KINDS = ("model", "suffix", "hybrid")


def engine_options(f):
    """The options that say which engine decodes (generate and serve share them)."""
    options = [
        click.option("--target", default=catalog.DEFAULT_TARGET, show_default=True,
                     help="Built-in name, model directory, .gguf file or cached hub id."),
        click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True,
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


def _engine_spec(no_draft, drafter_kind, token_map, policy_spec, draft_len, ngram) -> tuple[Spec, str]:
    """The method `engine_options` describe, in the method grammar (assembly.py), and its
    policy rule; refused before any model loads where the user set options it would not
    read or it lacks a part it needs."""
    kind = "ar" if no_draft else {"model": "sd", "suffix": "suffix", "hybrid": "hybrid"}[drafter_kind]
    _refuse_unused_generate(kind, token_map is not None)
    rule = f"static:{draft_len}" if draft_len is not None else policy_spec or (
        "static:5" if kind in ("ar", "suffix") else "cost")
    priced = kind != "ar" and parse_policy(rule).priced
    spec = replace(parse_method("+".join([kind] + ["vt"] * (token_map is not None) + ["cost"] * priced)), ngram=ngram)
    check_parts(spec, drafter=spec.model, mapped=token_map is not None)
    return spec, rule


def _refuse_unused_generate(kind: str, mapped: bool) -> None:
    """generate's options that its drafter (`kind`) would not read, where the user set them."""
    if kind == "ar":
        refuse_unused("--no-draft decodes with the target alone", draft="--draft", drafter_kind="--drafter",
                       draft_quant="--draft-quant", ngram="--[no-]ngram-cache", policy_spec="--policy",
                       draft_len="--draft-len", prompt_tokens="--[no-]prompt-tokens", draft_adapter="--draft-adapter")
    elif kind == "suffix":
        refuse_unused("--drafter suffix drafts without a drafter model", draft="--draft",
                       draft_quant="--draft-quant", ngram="--[no-]ngram-cache", prompt_tokens="--[no-]prompt-tokens",
                       draft_adapter="--draft-adapter")
    elif not mapped:
        refuse_unused("--[no-]prompt-tokens says what a token map leaves out; give --token-map",
                       prompt_tokens="--[no-]prompt-tokens")


def _options(how: dict, spec: Spec, store_tokens: int = SuffixDrafter.STORE_TOKENS) -> Options:
    """What `engine_options` ask to load."""
    return Options(how["target"], how["draft"] if spec.model else None, token_map=how["token_map"],
                   backend=how["backend"], dtype=how["dtype"], adapter=how["draft_adapter"],
                   settings=EngineSettings(quant=how["draft_quant"], prompt_tokens=how["prompt_tokens"], store_tokens=store_tokens))


def _planned(how: dict, store_tokens: int = SuffixDrafter.STORE_TOKENS) -> tuple[Spec, Callable[..., Built]]:
    """From `engine_options`, in the command's click context: the method, and a click-free
    function that loads the models and builds its engine (`check=` as `load_parts` takes)."""
    spec, rule = _engine_spec(how["no_draft"], how["drafter_kind"], how["token_map"], how["policy_spec"],
                              how["draft_len"], how["ngram"])
    return spec, partial(build, _options(how, spec, store_tokens), spec, rule, given("ngram"))


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
    text = read_prompt(prompt, prompt_file)
    if "" in stop_strings:
        raise VocabtrimError("--stop needs a non-empty string (an empty one matches at once)")
    sampling = Sampling(temperature, top_k, top_p)
    spec, build = _planned(how)
    ids: list[int] = []

    def fits(parts: Parts) -> None:  # the prompt against the context, before the weights load
        t = parts.target
        try:
            ids.extend(encode_within(t.tokenizer, text, t.context, system, raw))
        except VocabtrimError as e:
            if t.context < t.trained_context:  # the backend's cap, not the model's
                raise VocabtrimError(f"{e} on the {t.backend} backend (the model was made for "
                                     f"{t.trained_context}, which --backend native holds)") from None
            raise

    built = build(check=fits)
    tgt = built.parts.target
    stop = Stop(stop_token_ids(tgt), tuple(stop_strings), tgt.tokenizer.decode)
    stream = None if as_json else Printer(tgt.tokenizer)
    new, stats = built.engine.generate(ids, max_new_tokens, built.policy, sampling, seed, stop, on_tokens=stream)
    out_text = tgt.tokenizer.decode(new, skip_special_tokens=True)
    if as_json:
        record = {"text": out_text, "token_ids": new, "prompt_tokens": len(ids),
                  "target": how["target"], "backend": tgt.backend,
                  "draft": how["draft"] if spec.model else None,
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
    spec, build = _planned(how, store_tokens)
    if store_path is not None and spec.kind in ("ar", "sd"):
        raise VocabtrimError("--store keeps the suffix drafter's store; use --drafter hybrid or suffix")
    if api_key is not None and not api_key.strip():
        raise VocabtrimError("--api-key is empty")
    if adapt_online and (not spec.model or how["draft_quant"] not in ("none", "auto")):
        raise VocabtrimError("--adapt-online adapts a drafter model's own weights: use --drafter model or hybrid, "
                             "without --draft-quant")
    if not adapt_online:
        refuse_unused("--adapt-share and --adapt-merge-every tune --adapt-online", adapt_share="--adapt-share",
                       adapt_merge_every="--adapt-merge-every")
    store = None if store_path is None else StoreFile(store_path)
    service = Service(name or how["target"], api_key, drafter=None if how["no_draft"] else how["drafter_kind"],
                      max_request_bytes=max_request_bytes)

    def load() -> Decoder:  # in the decoder's own thread
        built = build()
        tgt = built.parts.target
        service.backend = tgt.backend
        if store is not None:
            store.attach(built.engine.drafter.suffix_store(), tgt.tokenizer)
        online = online_adapter(built, how["draft"], how["draft_adapter"], adapt_share, adapt_merge_every) \
            if adapt_online else None
        return Decoder(built.engine, built.policy, tgt.tokenizer, stop_token_ids(tgt), queue_size,
                       time_limit, store, thread=False, online=online, rebuild=built.rebuild)

    run_server(service, load, host, port)
