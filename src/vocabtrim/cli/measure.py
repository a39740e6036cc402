"""`bench`, `adapt` and `profile`: evaluation, drafter adaptation and this machine's costs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import click

from .. import catalog, profile
from ..adapt import Settings, adapt, check_out
from ..assembly import Assembler, EngineSettings, Spec, parse_method
from ..bench import methods as bm
from ..bench.evaluate import evaluate
from ..bench.report import check_out_dir, markdown
from ..calibrate import (
    load_items,
    parse_calibration,
)
from ..data import load_questions, select
from ..drafters import Bridge
from ..engine import Stop
from ..errors import VocabtrimError
from ..loading import Options, load_drafter, load_parts
from ..policies import MAX_DRAFT_LEN, parse_policy
from ..prompts import encode_prompt, stop_token_ids
from ..sampling import Sampling
from ..vocab import tokenizer_fingerprint
from . import backend_option, dtype_option, draft_adapter_option, given, main, prompt_tokens_option, quant_option, refuse_unused, seed_option


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
@click.option("--target", default=catalog.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True)
@click.option("--cross-draft", default=catalog.CROSS_DRAFT, show_default=True,
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
    options = Options(target, draft, cross_draft if any(s.cross for s in specs) else None, token_map, backend, dtype,
                      draft_adapter, EngineSettings(draft_quant, draft_len, adaedl, prompt_tokens))
    summary = evaluate(options, specs, questions, sampling, seed, max_new_tokens, out,
                       None if token_map else parse_calibration(calib), resume, repeats, given("methods"),
                       {"data": data})
    click.echo(markdown(summary))
    click.echo(f"results, summary.md and plots in {out}")


def _refuse_unused_bench(specs: list[Spec], adaedl: str, token_map: Path | None) -> None:
    """bench's options that none of its methods would read, where the user set them."""
    if parse_policy(adaedl).name != "adaedl":
        raise VocabtrimError(f"--adaedl takes an adaedl policy (adaedl[:lambda=..,gamma=..,max=..]), got {adaedl!r}")
    if not any(s.policy == "adaedl" for s in specs):
        refuse_unused("no method in --methods is an adaedl one", adaedl="--adaedl")
    if not any(s.trimmed for s in specs):
        refuse_unused("no method in --methods uses a token map (+vt)", token_map="--token-map",
                       calib="--calibrate", prompt_tokens="--[no-]prompt-tokens")
    elif token_map is not None:
        refuse_unused("--token-map is the +vt methods' map: nothing is calibrated", calib="--calibrate")
    if not any(s.cross for s in specs):
        refuse_unused("no method in --methods is an x one", cross_draft="--cross-draft")


@main.command("adapt")
@click.option("--data", default="humaneval", show_default=True,
              help="Prompts for the target to answer: humaneval, a JSONL or text file or a directory, as "
                   "`calibrate` reads them.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The adapter file to write (.safetensors).")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N prompts (after --skip).")
@click.option("--skip", default=0, show_default=True, type=click.IntRange(min=0),
              help="Skip the first N prompts (keep evaluation prompts out).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--target", default=catalog.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True,
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
    parts = load_parts(Options(target, None, backend=backend))
    drafter = load_drafter(draft, "float32")
    engine, policy = Assembler(parts).build(parse_method("suffix"), "static:5")  # the target's own text, faster
    tok, stop = parts.target.tokenizer, Stop(stop_token_ids(parts.target))
    prompts = [encode_prompt(tok, t) for t in items]
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
@click.option("--target", default=catalog.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True)
@backend_option
@dtype_option
@quant_option
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON instead of a table.")
def profile_cmd(target, draft, backend, dtype, draft_quant, as_json) -> None:
    """Time this machine: the target scoring 1..32 tokens at a short and a long context,
    drafter steps (quantized with --draft-quant: one profile per scheme), prefill. Cached
    for generate and bench (the cost policy), with a plot."""
    parts = load_parts(Options(target, draft, backend=backend, dtype=dtype, settings=EngineSettings(quant=draft_quant)))
    p = profile.measure(parts.target, Assembler(parts).drafter_model(parse_method("sd")))
    path = profile.save(p)
    p.plot(path.with_suffix(".png"))
    click.echo(json.dumps(asdict(p)) if as_json else p.table())
    click.echo(f"profile cached in {path}, plot in {path.with_suffix('.png')}", err=True)
