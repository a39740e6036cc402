"""`vocabtrim bench` without its command line: load the models once, build every method,
run the questions, and summarize with the phases' wall-clock and the peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from .. import catalog, ggml
from ..assembly import Assembler, Parts, Spec
from ..calibrate import calibrated_map
from ..data import Question
from ..engine import Stop
from ..errors import VocabtrimError
from ..loading import Options, load_parts
from ..metrics import timed
from ..prompts import stop_token_ids
from ..sampling import Sampling
from . import methods as bm
from .common import identity_check, warm_up
from .report import summarize, write_reports
from .run import check_fit, run_matrix


def evaluate(options: Options, specs: list[Spec], questions: list[Question], sampling: Sampling, seed: int,
             max_new_tokens: int, out: Path, calibration: dict | None, resume: bool = False, repeats: int = 1,
             chosen: bool = True, settings: dict | None = None) -> dict:
    """Every method of `specs` on every question, results and reports in `out`; the summary.
    `calibration`: how to build the token map where `options` names none; `chosen`: the
    user named the methods (else `llamacpp` is left out, said on stderr, where it cannot run)."""
    spent: dict[str, float] = {}  # wall-clock seconds per phase of this run, reported with the tables

    def fits(parts: Parts) -> None:  # every first turn against the context, before the weights load
        check_fit(questions, parts.target.tokenizer,
                  min(m.context for m in (parts.target, parts.drafter, parts.cross) if m is not None))

    with timed(spent, "loading"):
        parts = load_parts(options, fits)
    specs = specs if chosen else _without_llamacpp(specs, parts.target.name)
    assembler = Assembler(parts)
    if parts.cross is not None and assembler.bridge(True) is None:
        raise VocabtrimError(f"--cross-draft {options.cross} shares the target's tokenizer; the x methods "
                             "need a drafter with another one")
    if parts.kept is None and any(s.trimmed for s in specs):
        exclude = {t for q in questions for t in q.turns}
        with timed(spent, "calibration"):
            parts.kept = calibrated_map(calibration, exclude, parts.target, parts.drafter)
    tok = parts.target.tokenizer
    with timed(spent, "setup"):  # profiles and quantized drafters, where methods need them
        matrix = bm.build(specs, assembler, sampling, seed, Stop(stop_token_ids(parts.target)))
    with timed(spent, "warm-up"):
        warm_up(matrix, tok)
    with timed(spent, "generations"):
        records = run_matrix(questions, matrix, tok, max_new_tokens, out / "results.jsonl", resume, repeats)
    with timed(spent, "identity check"):
        summary = summarize(records, "ar", sampling.greedy, identity_check(assembler.target))
    summary["time_s"] = spent
    summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux counts KiB
    summary["settings"] = {**(settings or {}), "questions": len(questions), "max_new_tokens": max_new_tokens,
                           "repeats": repeats, "temperature": sampling.temperature, "seed": seed, "draft_len": options.settings.draft_len,
                           "adaedl": options.settings.adaedl, "token_map_k": None if parts.kept is None else len(parts.kept),
                           "prompt_tokens": options.settings.prompt_tokens, "backend": parts.target.backend,
                           "dtype": parts.target.dtype, "draft_quant": options.settings.quant,
                           "draft_adapter": None if options.adapter is None else str(options.adapter),
                           "target": options.target, "draft": options.draft, "cross_draft": options.cross}
    write_reports(summary, out)
    return summary


def _without_llamacpp(specs: list[Spec], target: str) -> list[Spec]:
    """`specs` less `llamacpp` where it cannot run (said on stderr): a target without a GGUF
    file, or no llama-cpp-python."""
    why = (f"the target {target} has no GGUF file" if catalog.gguf_path(target) is None else
           None if ggml.available() else f"it needs llama-cpp-python: {ggml.INSTALL_HINT}")
    if why is None:
        return specs
    print(f"note: method llamacpp left out: {why}", file=sys.stderr)
    return [s for s in specs if s.kind != "llamacpp"]
