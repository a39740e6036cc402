"""Run a matrix of methods over questions, interleaved prompt by prompt, into results.jsonl.

Every method sees the same question before the next question starts, so slow phases of a
noisy machine hit all methods alike. With `repeats` > 1 each question is asked of every
method that many times, in reversed order on alternate passes, and the fastest run is kept:
on a shared machine the fastest run is the one other tenants disturbed least, and outputs
are seeded, so every run of a method produces the same tokens. Each (question, method)
result is appended as one JSON line once it exists: an interrupted run leaves valid partial
results, and `resume` skips what is already there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Question
from ..errors import VocabtrimError
from ..files import atomic_write
from ..metrics import GenerationStats
from ..prompts import chat_ids

GenerateFn = Callable[[list[int], int], tuple[list[int], GenerationStats]]


@dataclass
class Method:
    name: str
    generate: GenerateFn  # (prompt ids, max new tokens) -> (new ids, stats)
    backend: str = "torch"  # what runs its target: torch, ggml or llama.cpp (its own loop)
    drafts_on: str | None = None  # what runs its drafter model, if it has one


def ask(q: Question, m: Method, tokenizer, max_new_tokens: int) -> dict:
    """All turns of `q`; each later turn follows the method's own earlier answers."""
    messages: list[dict] = []
    total = GenerationStats()
    turns = []
    for turn in q.turns:
        messages.append({"role": "user", "content": turn})
        prompt = chat_ids(tokenizer, messages)
        new, s = m.generate(prompt, max_new_tokens)
        messages.append({"role": "assistant", "content": tokenizer.decode(new, skip_special_tokens=True)})
        turns.append({"prompt_ids": prompt, "token_ids": new})
        total.add(s)
    return {"question_id": q.id, "category": q.category, "method": m.name, "backend": m.backend,
            **({"drafts_on": m.drafts_on} if m.drafts_on else {}),
            **total.to_dict(), "turns": turns}


def read_results(path: Path) -> list[dict]:
    """The records of a results file. A line that is not a whole record (cut short by a
    kill, or damaged) is skipped, not the end of the file, and named on stderr (file:line)."""
    out, bad = _parse_results(path)
    if bad:
        print(f"warning: {path}: skipped line(s) {', '.join(str(n) for n, _ in bad)}: not a whole result "
              "record (those runs are asked again on --resume)", file=sys.stderr)
    return out


def is_results(path: Path) -> bool:
    """Whether `path` is a results file as `run_matrix` writes it: records, perhaps a damaged
    line among them, or only lines cut short (each record starts with its question id)."""
    try:
        out, bad = _parse_results(path)
    except VocabtrimError:
        return False
    return bool(out) or all(line.startswith(_RECORD_START) for _, line in bad)


_RECORD_START = '{"question_id": '  # json.dumps of `ask`'s record


def _parse_results(path: Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """The whole records of a results file, and the lines (number, text) that are not one."""
    out, bad = [], []
    if not Path(path).exists():
        return out, bad
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise VocabtrimError(f"cannot read results file {path}: {e.strerror or e}") from None
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if is_record(rec):
            out.append(rec)
        elif line.strip():
            bad.append((n, line))
    return out, bad


def is_record(rec: object) -> bool:
    """Whether `rec` is a whole result record (what `ask` returns): the report reads all of it."""
    return (isinstance(rec, dict) and all(isinstance(rec.get(k), str) for k in ("question_id", "category", "method"))
            and isinstance(rec.get("turns"), list) and bool(rec["turns"]) and all(map(_is_turn, rec["turns"]))
            and GenerationStats.holds(rec))


def _is_turn(turn: object) -> bool:
    return isinstance(turn, dict) and all(
        isinstance(turn.get(k), list) and all(isinstance(i, int) for i in turn[k]) for k in ("prompt_ids", "token_ids"))


def check_fit(questions: list[Question], tokenizer, context: int) -> None:
    """Refuse, before any model runs, a question whose first turn alone fills the context
    (later turns depend on the answers: the engine refuses those when they come)."""
    for q in questions:
        n = len(chat_ids(tokenizer, [{"role": "user", "content": q.turns[0]}]))
        if n >= context:
            raise VocabtrimError(f"question {q.id}: its first turn has {n} tokens; the context holds {context} "
                                 "(leave the question out or use models with a longer context)")


def run_matrix(questions: list[Question], methods: list[Method], tokenizer, max_new_tokens: int,
               results: Path, resume: bool = False, repeats: int = 1) -> list[dict]:
    """Fill `results` (JSONL) with one record per (question, method); return all records."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    records = read_results(results) if resume else []
    done = {(r["question_id"], r["method"]) for r in records}
    text = "".join(json.dumps(r) + "\n" for r in records)  # without the skipped lines
    atomic_write(results, lambda tmp: Path(tmp).write_text(text))  # a kill keeps the old file
    todo = [(q, [m for m in methods if (q.id, m.name) not in done]) for q in questions]
    todo = [(q, ms) for q, ms in todo if ms]
    with open(results, "a") as f, tqdm(total=repeats * sum(len(ms) for _, ms in todo),
                                       desc="bench", unit="run") as bar:
        for q, ms in todo:
            runs: dict[str, list[dict]] = {m.name: [] for m in ms}
            for rep in range(repeats):
                for m in (ms if rep % 2 == 0 else ms[::-1]):
                    bar.set_postfix_str(f"{q.id} {m.name}")
                    runs[m.name].append(ask(q, m, tokenizer, max_new_tokens))
                    bar.update(1)
            for m in ms:
                rec = min(runs[m.name], key=lambda r: r["seconds"])
                if repeats > 1:
                    rec["runs_s"] = [r["seconds"] for r in runs[m.name]]
                f.write(json.dumps(rec) + "\n")
                f.flush()
                records.append(rec)
    return records
