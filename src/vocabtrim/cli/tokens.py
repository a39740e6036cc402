"""`calibrate`, `trim` and `export`: token counts, token maps and their exports."""

from __future__ import annotations

from pathlib import Path

import click

from .. import catalog, tokenmap
from ..assembly import Assembler, EngineSettings, parse_method
from ..calibrate import (
    SOURCES,
    check_counts_out,
    count_tokens,
    generate_fn,
    in_drafter_tokens,
    load_items,
    tokenize_fn,
)
from ..errors import VocabtrimError
from ..loading import Options, load_drafter, load_parts
from ..prompts import stop_token_ids
from ..sampling import Sampling
from ..tokenmap import FORMATS, TokenMap, check_replaceable, check_size_rule
from ..vocab import Counts, tokenizer_fingerprint
from . import backend_option, dtype_option, main, quant_option, refuse_unused, seed_option


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
@click.option("--target", default=catalog.DEFAULT_TARGET, show_default=True)
@click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings.")
@backend_option
@dtype_option
@quant_option
def calibrate(source, data, out, limit, skip, max_new_tokens, temperature, seed, target, draft,
              resume, backend, dtype, draft_quant) -> None:
    """Count token frequencies on a calibration set (only generated tokens count)."""
    sampling = Sampling(temperature)
    if source == "raw":
        refuse_unused("--source raw counts the data's own tokens, generating nothing", target="--target",
                       max_new_tokens="--max-new-tokens", temperature="--temperature", seed="--seed",
                       backend="--backend", dtype="--dtype", draft_quant="--draft-quant")
    elif source == "draft":
        refuse_unused("--source draft counts what the drafter generates alone", target="--target",
                       draft_quant="--draft-quant")
    check_counts_out(out, resume)
    items = load_items(data, answers=source == "raw")[skip:][:limit]
    if not items:
        raise VocabtrimError(f"no calibration items in {data} (after --skip/--limit)")
    meta = {"source": source, "data": data, "skip": skip, "limit": limit, "items": len(items)}
    if source == "raw":
        lm = load_drafter(draft, "bfloat16", lazy=True)  # only its tokenizer is used
        per_item = tokenize_fn(lm.tokenizer)
        meta.update(model=draft)
    else:
        # the target's text comes out of the speculative engine: lossless, and faster
        gen_model = target if source == "target" else draft
        parts = load_parts(Options(gen_model, draft if source == "target" else None,
                                   backend=backend if source == "target" else "torch", dtype=dtype,
                                   settings=EngineSettings(quant=draft_quant)))
        engine, policy = Assembler(parts).build(parse_method("sd" if parts.drafter else "ar"))
        lm = parts.target
        meta.update(model=gen_model, backend=lm.backend, dtype=lm.dtype, max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=seed)
        per_item = generate_fn(engine, policy, lm, max_new_tokens, sampling, seed)
        if parts.drafter is not None:  # the target's text, counted in the drafter's tokens for its map
            per_item, lm = in_drafter_tokens(per_item, lm, parts.drafter), parts.drafter
    meta["tokenizer"] = tokenizer_fingerprint(lm.tokenizer)
    counts = count_tokens(items, out, meta, lm.config.vocab_size, per_item, resume)
    click.echo(f"counted {counts.meta['tokens']} tokens from {counts.meta['items_done']} items, "
               f"{int((counts.counts > 0).sum())} distinct -> {out}")


@main.command()
@click.option("--counts", type=click.Path(path_type=Path), required=True)
@click.option("--keep", type=int, help="K: how many tokens the drafter head keeps.")
@click.option("--coverage", type=float, help="Keep the fewest tokens covering this fraction of counts.")
@click.option("--draft", default=catalog.DEFAULT_DRAFT, show_default=True,
              help="The drafter the map is for (its tokenizer must match the counts).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Token map directory.")
def trim(counts, keep, coverage, draft, out) -> None:
    """Choose the K most frequent tokens: the trimmed drafter head's vocabulary."""
    check_size_rule(keep, coverage)
    check_replaceable(out)
    c = Counts.load(counts)
    drf = load_drafter(draft, "bfloat16", lazy=True)  # only its tokenizer and vocabulary are used
    fp = tokenizer_fingerprint(drf.tokenizer)
    if c.meta.get("tokenizer") != fp or c.counts.numel() != drf.config.vocab_size:
        raise VocabtrimError(
            f"{counts} was counted with another tokenizer (vocabulary {c.counts.numel()}, "
            f"fingerprint {c.meta.get('tokenizer')}); {draft} has {drf.config.vocab_size}, {fp}")
    tm = tokenmap.trim(c, keep, coverage, sorted(stop_token_ids(drf)))
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
