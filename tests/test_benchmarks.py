"""The benchmark scripts' wiring on tiny models (their real runs take many minutes)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from vocabtrim import models
from vocabtrim.data import Question

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_vs_hf_runs_three_methods_through_the_bench_runner(tmp_path, tiny_dirs, monkeypatch, capsys):
    engine_vs_hf = script("engine_vs_hf")
    monkeypatch.setattr(models, "DEFAULT_TARGET", str(tiny_dirs["target"]))
    monkeypatch.setattr(models, "DEFAULT_DRAFT", str(tiny_dirs["draft"]))
    monkeypatch.setattr(engine_vs_hf, "humaneval", lambda start, stop: [
        Question(str(i), "coding", (f"w{i + 5} w{i + 9}",)) for i in range(start, stop)])
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["engine_vs_hf.py", "--prompts", "3", "--max-new-tokens", "12",
                                      "--k", "3", "--dtype", "float32", "--out", str(out)])
    engine_vs_hf.main()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["ar", "sd", "hf"]
    assert all(summary["methods"][n]["identical"] == "yes" for n in ("sd", "hf"))
    assert summary["methods"]["sd"]["overall"]["mean_draft_length"] <= 3
    assert "vocabtrim / transformers:" in capsys.readouterr().out
    assert (out / "speedup.png").exists() and len((out / "results.jsonl").read_text().splitlines()) == 9


def test_mixed_question_file_is_written_whole_and_never_over_someone_elses(tmp_path):
    drafters_mix = script("drafters_mix")
    data = drafters_mix.write_questions(tmp_path, 2, 1)
    first = data.read_text()
    assert len(first.splitlines()) == 2 + 6  # two HumanEval problems, one question per sample category
    assert drafters_mix.write_questions(tmp_path, 2, 1) == data and data.read_text() == first  # a rerun: the same
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "questions.jsonl").write_text("my own questions\n")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        drafters_mix.write_questions(mine, 2, 1)
    assert (mine / "questions.jsonl").read_text() == "my own questions\n"
