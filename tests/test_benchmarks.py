"""The benchmark scripts' wiring on tiny models (their real runs take many minutes)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import bench_gguf, tiny_model, write_gguf

from vocabtrim import catalog
from vocabtrim.bench.report import markdown, summarize
from vocabtrim.data import Question
from vocabtrim.errors import VocabtrimError
from vocabtrim.metrics import GenerationStats

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engine_vs_hf_runs_three_methods_through_the_bench_runner(tmp_path, tiny_dirs, monkeypatch, capsys):
    engine_vs_hf = script("engine_vs_hf")
    monkeypatch.setattr(catalog, "DEFAULT_TARGET", str(tiny_dirs["target"]))
    monkeypatch.setattr(catalog, "DEFAULT_DRAFT", str(tiny_dirs["draft"]))
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


# What llama-server 0.3.36's vendored build (draft-simple, 0.5B drafter for the 1.5B target)
# answered to a 16-token prompt with n_predict 32, and what its /metrics counters moved by.
LLAMA_RESPONSE = {
    "index": 0, "content": "Here is a Python function for quick Sort:\n\n```python\ndef quickSort(arr):\n"
                           "    if len(arr) <= 1:\n        return arr\n    else",
    "tokens": [8420, 374, 264, 13027, 729, 369, 3974, 15967, 1447, 73594, 12669, 198, 750, 3974, 10231, 10939,
               982, 262, 421, 2422, 10939, 8, 2651, 220, 16, 510, 286, 470, 2890, 198, 262, 770],
    "id_slot": 0, "stop": True, "tokens_predicted": 32, "tokens_evaluated": 16, "truncated": False,
    "stop_type": "limit", "stopping_word": "", "tokens_cached": 47,
    "timings": {"cache_n": 0, "prompt_n": 16, "prompt_ms": 3073.451, "prompt_per_token_ms": 192.0906875,
                "prompt_per_second": 5.205874438863675, "predicted_n": 32, "predicted_ms": 39290.068,
                "predicted_per_token_ms": 1267.4215483870967, "predicted_per_second": 0.7890034702917795,
                "draft_n": 27, "draft_n_accepted": 21},
}
LLAMA_METRICS_DELTA = {"prompt_tokens_total": 16.0, "tokens_predicted_total": 32.0, "n_decode_total": 11.0,
                       "spec_decode_num_draft_tokens_total": 27.0, "spec_decode_num_accepted_tokens_total": 21.0,
                       "spec_decode_num_drafts_total": 9.0}


def test_llamacpp_peers_modes_flags_and_refusals(tmp_path, monkeypatch):
    peers = script("llamacpp_peers")
    args = peers.parse_args([])
    assert args.modes == ["alone", "ngram-simple", "ngram-mod", "draft"] and args.limit == 4
    assert args.max_new_tokens == 128 and args.repeats == 1 and peers.BASELINE == "llamacpp-alone"
    assert peers.parse_args(["--modes", "draft,alone,draft"]).modes == ["alone", "draft"]  # the baseline first
    assert peers.parse_args(["--per-category", "2"]).limit is None
    cmd = peers.server_command(Path("llama-server"), "draft", Path("t.gguf"), Path("d.gguf"), 2)
    assert cmd[cmd.index("--spec-type") + 1] == "draft-simple" and cmd[cmd.index("-md") + 1] == "d.gguf"
    assert {"--metrics", "--no-webui"} <= set(cmd) and cmd[cmd.index("--cache-ram") + 1] == "0"
    alone = peers.server_command(Path("llama-server"), "alone", Path("t.gguf"), None, 2)
    assert "--spec-type" not in alone and "-md" not in alone
    for mode in ("ngram-simple", "ngram-mod"):
        flags = peers.server_command(Path("s"), mode, Path("t.gguf"), None, 2)
        assert flags[flags.index("--spec-type") + 1] == mode
    body = peers.completion_request([1, 2, 3], 32)
    assert body["prompt"] == [1, 2, 3] and body["n_predict"] == 32 and body["return_tokens"] is True
    assert body["cache_prompt"] is False and body["temperature"] == 0 and body["samplers"] == ["temperature"]
    out = tmp_path / "out"
    for argv, message in ((["--modes", "alone,beam"], "error: unknown mode.*beam"),
                          (["--max-new-tokens", "0"], "error: --max-new-tokens must be >= 1"),
                          (["--target", str(tmp_path / "nothing.gguf")], "error: GGUF file not found"),
                          (["--target", "no-such-model"], "error: unknown model 'no-such-model'")):
        monkeypatch.setattr(sys, "argv", ["llamacpp_peers.py", "--limit", "1", "--out", str(out), *argv])
        with pytest.raises(SystemExit, match=message):
            peers.main()
    assert not out.exists()  # refused before anything was built, started or written


def test_llamacpp_response_maps_onto_bench_stats():
    peers = script("llamacpp_peers")
    tokens, s = peers.stats_from(LLAMA_RESPONSE, 42.5, LLAMA_METRICS_DELTA)
    assert tokens == LLAMA_RESPONSE["tokens"] and s.new_tokens == 32 and s.seconds == 42.5
    assert s.prefill_s == pytest.approx(3.073451) and s.target_forwards == 11  # the prompt's forward, then 10
    assert len(s.draft_lengths) == len(s.accepted_per_round) == 9
    assert sum(s.draft_lengths) == 27 and sum(s.accepted_per_round) == 21
    assert all(a <= d for a, d in zip(s.accepted_per_round, s.draft_lengths))
    assert s.new_tokens == sum(s.accepted_per_round) + s.bonus_tokens  # bench's invariant
    assert s.acceptance_rate == pytest.approx(21 / 27) and s.mean_draft_length == pytest.approx(3)
    assert s.tau == pytest.approx(32 / 11) and s.drafter_forwards == 0 and s.mbsu == s.tau
    assert GenerationStats.holds(s.to_dict())
    alone = {**LLAMA_RESPONSE, "timings": {k: v for k, v in LLAMA_RESPONSE["timings"].items() if "draft" not in k}}
    tokens, s = peers.stats_from(alone, 40.0, {"n_decode_total": 32.0, "spec_decode_num_drafts_total": 0.0})
    assert s.tau == 1 and s.draft_lengths == [] and s.bonus_tokens == 32 and s.acceptance_rate == 0
    with pytest.raises(VocabtrimError, match="token ids"):  # a server that ignores return_tokens
        peers.stats_from({**LLAMA_RESPONSE, "tokens": []}, 1.0, LLAMA_METRICS_DELTA)
    with pytest.raises(VocabtrimError, match="context"):
        peers.stats_from({**LLAMA_RESPONSE, "truncated": True}, 1.0, LLAMA_METRICS_DELTA)


def test_llamacpp_identity_is_token_equality_with_the_target_alone():
    peers = script("llamacpp_peers")
    assert peers.same_tokens([7], [1, 2, 3], [1, 2, 3]) is None
    assert peers.same_tokens([7], [1, 2, 3], [1, 5, 3]) == {"position": 1, "token_a": 2, "token_b": 5, "tie": False}
    assert peers.same_tokens([7], [1, 2], [1, 2, 3])["token_a"] is None

    def record(method: str, answer: list[int]) -> dict:
        stats = GenerationStats(new_tokens=len(answer), target_forwards=len(answer), seconds=1.0)
        return {"question_id": "q", "category": "coding", "method": method, "backend": "llama.cpp", **stats.to_dict(),
                "turns": [{"prompt_ids": [7], "token_ids": answer}]}

    records = [record("llamacpp-alone", [1, 2, 3]), record("llamacpp-draft", [1, 2, 3]),
               record("llamacpp-ngram-mod", [1, 4, 3])]
    summary = summarize(records, peers.BASELINE, True, peers.same_tokens)
    assert summary["baseline"] == summary["reference"] == "llamacpp-alone"
    assert summary["methods"]["llamacpp-draft"]["identical"] == "yes"
    assert summary["methods"]["llamacpp-ngram-mod"]["identical"] == "NO: 1 real mismatch(es)"
    assert "GREEDY MISMATCHES" in markdown(summary)


def test_llamacpp_build_is_found_complete_or_not_at_all(tmp_path, monkeypatch):
    peers = script("llamacpp_peers")
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    done = peers.bin_dir("9.9.9")
    assert done == tmp_path / "llama.cpp" / "9.9.9-noamx" / "bin"  # a build made with AMX is not reused
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-int8" in peers.CMAKE_OPTIONS
    done.mkdir(parents=True)
    for name in peers.BINARIES:
        (done / name).write_text("")
    assert peers.ensure_binaries("9.9.9") == done  # complete: nothing is fetched or built
    assert not list((tmp_path / "llama.cpp").glob(".9.9.9.build-*"))


def test_the_oracle_splits_an_answer_into_its_cheapest_rounds():
    ceiling = script("ceiling")
    curve = [0.0, 10.0, 15.0, 40.0]  # ms to verify 0..3 tokens
    assert ceiling.oracle_ms(4, curve) == 30.0  # 2 + 2, not 3 + 1 (50) or four single steps (40)
    assert ceiling.oracle_ms(3, curve[:2]) == 30.0  # rounds of one token only: the target alone
    assert ceiling.oracle_ms(0, curve) == 0.0
    assert ceiling.free_speedup(1.0, curve) == (pytest.approx(20 / 15), 1)  # 2 tokens in 15 ms, not 3 in 40
    assert ceiling.free_speedup(0.0, curve) == (1.0, 0)
    assert ceiling.acceptance_for(1.2, curve) == pytest.approx(0.8, abs=1e-6)  # (1 + a) / 15 ms = 1.2 / 10 ms
    assert ceiling.acceptance_for(1.5, curve) is None


def test_ceiling_bounds_a_bench_run_on_ggml(tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_cpp")
    ceiling = script("ceiling")
    path = write_gguf(tiny_model(64, seed=1), tmp_path / "t.gguf")
    out = bench_gguf(path, tmp_path, "ar,suffix", 2)
    monkeypatch.setattr(sys, "argv", ["ceiling.py", "--results", str(out), "--target", str(path),
                                      "--max-len", "8", "--repeats", "1"])
    ceiling.main()
    printed = capsys.readouterr().out
    assert "| 8 tokens |" in printed and "| suffix |" in printed
    monkeypatch.setattr(sys, "argv", ["ceiling.py", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="error: .* is not a finished bench run"):
        ceiling.main()
