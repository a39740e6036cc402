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
from ..files import atomic_write
from ..metrics import GenerationStats
from ..models import chat_ids

GenerateFn = Callable[[list[int], int], tuple[list[int], GenerationStats]]


@dataclass
class Method:
    name: str
    generate: GenerateFn  # (prompt ids, max new tokens) -> (new ids, stats)


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
    return {"question_id": q.id, "category": q.category, "method": m.name, **total.to_dict(),
            "turns": turns}


def read_results(path: Path) -> list[dict]:
    """The records of a results file. A line that is not one (cut short by a kill, or
    damaged) is skipped, not the end of the file, and its number reported on stderr."""
    out, bad = [], []
    if Path(path).exists():
        for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict) and {"question_id", "method"} <= rec.keys():
                out.append(rec)
            elif line.strip():
                bad.append(str(n))
    if bad:
        print(f"warning: {path}: skipped line(s) {', '.join(bad)}: not a result record", file=sys.stderr)
    return out


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
