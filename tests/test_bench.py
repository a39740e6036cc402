"""bench: questions, the resumable runner, the summary and its plots, the identity check,
and the command end to end on tiny models."""

import json
import os

import pytest
import torch
from conftest import cli, fake_method, tiny_model, tiny_tokenizer

from vocabtrim.bench.identity import divergence
from vocabtrim.bench.methods import METHODS, HFGenerate
from vocabtrim.bench.report import markdown, plot, speedup_interval, summarize
from vocabtrim.bench.run import Method, read_results, run_matrix
from vocabtrim.data import Question, load_questions, select
from vocabtrim.engine import Stop
from vocabtrim.errors import VocabtrimError
from vocabtrim.metrics import GenerationStats
from vocabtrim.sampling import Sampling
from vocabtrim.target import TIE_TOLERANCE, TorchTarget

TORCH_METHODS = [m for m in METHODS if m != "llamacpp"]  # llamacpp runs a GGUF file: test_ggml

SPEC_BENCH = [
    {"question_id": 81, "category": "writing", "turns": ["w5 w6", "w7 w8"]},
    {"question_id": 82, "category": "writing", "turns": ["w9 w10", "w11"]},
    {"question_id": 161, "category": "translation", "turns": ["w12 w13"]},
    {"question_id": 162, "category": "translation", "turns": ["w14 w15"]},
    {"question_id": 241, "category": "qa", "turns": ["w16"]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_questions_formats(tmp_path):
    qs = load_questions(str(write_jsonl(tmp_path / "sb.jsonl", SPEC_BENCH)))
    assert qs[0] == Question("81", "writing", ("w5 w6", "w7 w8")) and len(qs) == 5
    qs = load_questions(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "category": "x"}])))
    assert [(q.id, q.category, q.turns) for q in qs] == [("1", "default", ("a",)), ("2", "x", ("b",))]
    assert len(load_questions("humaneval")) == 164
    assert [q.id for q in select(load_questions(str(tmp_path / "sb.jsonl")), per_category=1)] == ["81", "161", "241"]
    assert len(select(qs, limit=1)) == 1


@pytest.mark.parametrize("line", ['{"turns": []}', '{"category": "x"}', 'not json', '{"turns": [3]}', '[1]'])
def test_malformed_question_line_is_named(tmp_path, line):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(Exception, match=r"q.jsonl:2: expected"):
        load_questions(str(path))


def test_run_matrix_resumes_without_repeating_work(tmp_path):
    qs = [Question(str(i), "c", ("w5", "w6")) for i in range(3)]
    calls: list = []
    out = tmp_path / "results.jsonl"
    methods = [fake_method("ar", calls, fail_at=5), fake_method("sd", calls)]
    with pytest.raises(KeyboardInterrupt):
        run_matrix(qs, methods, tiny_tokenizer(64), 4, out)
    assert len(read_results(out)) == 2  # two complete (question, method) records survived
    with open(out, "a") as f:
        f.write('{"question_id": "torn')  # a line cut short by a kill
    calls.clear()
    recs = run_matrix(qs, [fake_method("ar", calls), fake_method("sd", calls)], tiny_tokenizer(64), 4, out,
                      resume=True)
    assert len(recs) == 6 and len(calls) == 8  # 4 remaining records x 2 turns each
    assert len(read_results(out)) == 6
    # the second turn was asked after the method's own first answer
    first, second = (turn["prompt_ids"] for turn in recs[0]["turns"][:2])
    assert second[: len(first)] == first


def test_run_matrix_repeats_alternate_order_and_keep_the_fastest(tmp_path):
    calls: list = []
    times = iter([3.0, 1.0, 2.0, 5.0, 0.5, 4.0])  # ar, sd, then sd, ar (reversed), then ar, sd

    def timed(name):
        def gen(ids, max_new):
            calls.append(name)
            return [7], GenerationStats(new_tokens=1, target_forwards=1, seconds=next(times))
        return Method(name, gen)

    q = Question("0", "c", ("w5",))
    recs = run_matrix([q], [timed("ar"), timed("sd")], tiny_tokenizer(64), 4, tmp_path / "r.jsonl", repeats=3)
    assert calls == ["ar", "sd", "sd", "ar", "ar", "sd"]
    best = {r["method"]: (r["seconds"], r["runs_s"]) for r in recs}
    assert best == {"ar": (0.5, [3.0, 5.0, 0.5]), "sd": (1.0, [1.0, 2.0, 4.0])}
    with pytest.raises(ValueError, match="repeats"):
        run_matrix([q], [timed("ar")], tiny_tokenizer(64), 4, tmp_path / "s.jsonl", repeats=0)


def test_speedup_interval_brackets_the_ratio():
    base = [{"question_id": str(i), "new_tokens": 10, "seconds": 1.0} for i in range(8)]
    fast = [{"question_id": str(i), "new_tokens": 10, "seconds": 0.8 + 0.05 * (i % 3)} for i in range(8)]
    lo, hi = speedup_interval(fast, base)
    point = 80 / sum(r["seconds"] for r in fast) / (80 / 8.0)
    assert lo < point < hi and lo > 1.0
    assert speedup_interval(fast[:1], base) is None


def test_bench_end_to_end_on_tiny_models(tmp_path, tiny_dirs):
    data = write_jsonl(tmp_path / "sb.jsonl", SPEC_BENCH)
    calib = write_jsonl(tmp_path / "calib.jsonl", [{"prompt": f"w{i} w{i + 2}"} for i in range(20, 26)])
    out = tmp_path / "out"
    args = ["bench", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--data", data,
            "--per-category", 1, "--max-new-tokens", 10, "--out", out,
            "--calibrate", f"{calib}:n=4,k=30,tokens=6", "--repeats", 2, "--methods", ",".join(TORCH_METHODS),
            "--cross-draft", tiny_dirs["other_vocab"]]
    env = {"VOCABTRIM_CACHE": str(tmp_path / "cache")}
    r = cli(*args, env=env)
    assert r.exit_code == 0, r.stderr + str(r.exception)
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 3 * len(TORCH_METHODS) and {r["method"] for r in recs} == set(TORCH_METHODS)
    assert all(r["seconds"] == min(r["runs_s"]) and len(r["runs_s"]) == 2 for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["methods"].items():
        mine = [x for x in recs if x["method"] == name]
        tokens = sum(x["new_tokens"] for x in mine)
        assert m["overall"]["tokens"] == tokens
        assert m["overall"]["tokens_per_second"] == pytest.approx(tokens / sum(x["seconds"] for x in mine))
        if name not in ("hf", "pld", "hf+x"):  # our engine times its phases; transformers is timed as a whole
            decode = sum(x["seconds"] - x["prefill_s"] for x in mine)
            assert m["overall"]["decode_tokens_per_second"] == pytest.approx(tokens / decode)
            assert 0 < sum(m["overall"]["time_split"].values()) <= 1
        assert set(m["categories"]) == {"writing", "translation", "qa"}
        if name != "ar":
            assert m["identical"] == "yes", m.get("mismatches")
    assert summary["methods"]["ar"]["overall"]["speedup"] == pytest.approx(1.0)
    assert (out / "summary.md").read_text() == markdown(summary)
    assert {"loading", "calibration", "warm-up", "generations"} <= summary["time_s"].keys()
    assert summary["time_s"]["generations"] >= sum(x["seconds"] for x in recs)
    assert "Run time" in r.stdout and "Peak resident memory" in r.stdout and summary["peak_rss_gb"] > 0
    assert (out / "speedup.png").stat().st_size > 1000 and (out / "tau_mbsu.png").stat().st_size > 1000
    assert any((tmp_path / "cache" / "calibration").glob("*.safetensors"))  # counts cached for reuse
    again = cli(*args, env=env)
    assert again.exit_code == 1 and "--resume" in again.stderr


def rec(method, ids, question_id="1", category="c", seconds=1.0):
    """A results.jsonl record of one greedy turn."""
    return {"question_id": question_id, "category": category, "method": method, "new_tokens": 2,
            "seconds": seconds, "target_forwards": 1, "drafter_forwards": 0, "draft_lengths": [],
            "accepted_per_round": [], "cost_ratio": 0.0, "prefill_s": 0, "draft_s": 0, "verify_s": 0,
            "turns": [{"prompt_ids": [1], "token_ids": ids}]}


def test_speed_ups_are_over_the_fastest_target_alone_and_identity_needs_the_same_weights():
    recs = [rec("ar", [5, 6], seconds=2.0) | {"backend": "ggml"}, rec("llamacpp", [5, 6]) | {"backend": "ggml"},
            rec("sd", [5, 6], seconds=0.5) | {"backend": "ggml", "drafts_on": "torch"},
            rec("hf", [5, 7]) | {"backend": "torch"}]
    s = summarize(recs, check=lambda p, a, b: {"tie": False})
    ms = s["methods"]
    assert s["baseline"] == "llamacpp" and ms["sd"]["overall"]["speedup"] == pytest.approx(2.0)
    assert ms["ar"]["overall"]["speedup"] == pytest.approx(0.5)
    assert ms["llamacpp"]["identical"] == "yes" and ms["hf"]["identical"] == "n/a: another backend"
    assert ms["sd"]["identical"] == "yes"  # the target's backend decides identity, not the drafter's
    assert "Speed-up over `llamacpp`" in markdown(s) and "| hf | torch |" in markdown(s)
    assert "| sd | ggml+torch drafter |" in markdown(s)


def test_summary_reports_a_real_mismatch_loudly():
    check = lambda p, a, b: {"position": 1, "margin": 3.0, "tie": False}
    s = summarize([rec("ar", [5, 6]), rec("sd", [5, 7])], check=check)
    assert s["methods"]["sd"]["identical"].startswith("NO")
    assert "GREEDY MISMATCHES" in markdown(s)
    tie = lambda p, a, b: {"position": 1, "margin": 0.0, "tie": True}
    assert summarize([rec("ar", [5, 6]), rec("sd", [5, 7])], check=tie)["methods"]["sd"]["identical"] == "ties only (1)"


def test_a_run_without_a_target_alone_has_no_speed_ups_and_no_phantom_method():
    s = summarize([rec("sd", [5, 6]), rec("suffix", [5, 6])])
    assert set(s["methods"]) == {"sd", "suffix"} and s["methods"]["sd"]["overall"]["speedup"] is None
    assert "| sd |" in markdown(s) and "No speed-ups: no target alone" in markdown(s)


@pytest.mark.parametrize("questions", [4, 1], ids=["with intervals", "without intervals"])
def test_plot_draws_intervals_where_the_summary_has_them(tmp_path, questions):
    recs = [rec(m, [5, 6], str(q), "ab"[q % 2], seconds=s * (1 + q / 10))
            for q in range(questions) for m, s in (("ar", 1.0), ("sd", 0.6))]
    summary = summarize(recs)
    assert (summary["methods"]["sd"]["overall"]["speedup_ci"] is None) == (questions == 1)
    paths = plot(summary, tmp_path)
    assert [p.name for p in paths] == ["speedup.png", "tau_mbsu.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_bench_bad_arguments(tmp_path):
    r = cli("bench", "--methods", "ar,warp", "--out", tmp_path)
    assert r.exit_code == 1 and "unknown method 'warp'" in r.stderr
    r = cli("bench", "--calibrate", "humaneval:z=1", "--out", tmp_path)
    assert r.exit_code == 1 and "bad --calibrate" in r.stderr
    r = cli("bench", "--repeats", "0", "--out", tmp_path)
    assert r.exit_code == 1 and r.stderr.strip() == "error: --repeats must be >= 1, got 0"


def test_divergence_finds_the_first_difference_and_its_margin():
    target = tiny_model(64, seed=1)
    seam = TorchTarget(target)
    assert divergence(seam, [5, 6], [7, 8, 9], [7, 8, 9]) is None
    d = divergence(seam, [5, 6], [7, 8, 9], [7, 8, 10])
    with torch.no_grad():
        logits = target(torch.tensor([[5, 6, 7, 8]])).logits[0, -1]
    assert (d["position"], d["token_a"], d["token_b"]) == (2, 9, 10)
    assert d["margin"] == pytest.approx(abs(float(logits[9] - logits[10])), abs=1e-4)
    assert d["tolerance"] == TIE_TOLERANCE[torch.float32] and d["tie"] == (d["margin"] <= 0.01)
    assert divergence(seam, [5], [7], [7, 8])["margin"] is None  # one output is a prefix: no tie


def test_transformers_peer_stops_at_the_end_of_the_context():
    target = tiny_model(context=24)
    stop = Stop(frozenset())
    new, stats = HFGenerate(target, Sampling(), 0, stop)(list(range(2, 20)), 50)
    assert len(new) == stats.new_tokens <= 24 - 18  # not an indexing error past the positions it has


def record(question_id: str, **changes) -> dict:
    """A whole results.jsonl record, as `run_matrix` writes it, with `changes` (None: left out)."""
    rec = {"question_id": question_id, "category": "c", "method": "ar", **GenerationStats(new_tokens=1).to_dict(),
           "turns": [{"prompt_ids": [3, 4], "token_ids": [5]}]}
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not None}


def test_read_results_skips_damaged_lines_and_names_them(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    rec = [json.dumps(record(str(i))) for i in range(3)]
    damaged = [json.dumps(record("9", category=None)), json.dumps(record("9", seconds="fast")),
               json.dumps(record("9", turns=[{"prompt_ids": [3]}]))]
    path.write_text("\n".join([rec[0], "garbage", rec[1], "[1]", *damaged, rec[2], '{"torn']) + "\n")
    assert [r["question_id"] for r in read_results(path)] == ["0", "1", "2"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: ") and "line(s) 2, 4, 5, 6, 7, 9" in err[0]
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(VocabtrimError, match="cannot read results file"):
        read_results(tmp_path / "dir.jsonl")


def test_resume_never_truncates_the_old_results(tmp_path):
    out, keep = tmp_path / "results.jsonl", tmp_path / "link.jsonl"
    qs = [Question(str(i), "c", ("w5",)) for i in range(2)]
    run_matrix(qs[:1], [fake_method("ar", [])], tiny_tokenizer(64), 4, out)
    with open(out, "a") as f:
        f.write('{"question_id": "torn')
    old = out.read_text()
    os.link(out, keep)  # the old file itself: an in-place rewrite would change it
    recs = run_matrix(qs, [fake_method("ar", [])], tiny_tokenizer(64), 4, out, resume=True)
    assert len(recs) == 2 and len(read_results(out)) == 2
    assert keep.read_text() == old


# bench: damaged results are asked again, a question that cannot fit fails before any work

def bench_args(tiny_dirs, data, out, *more) -> list:
    return ["bench", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--data", data,
            "--methods", "ar,suffix", "--max-new-tokens", 4, "--dtype", "float32", "--out", out, *more]


def test_bench_resume_asks_a_damaged_record_again(tmp_path, tiny_dirs):
    data, out = tmp_path / "q.jsonl", tmp_path / "out"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}", "category": "c"}) + "\n" for i in (5, 9)))
    assert cli(*bench_args(tiny_dirs, data, out)).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    del first["category"]
    (out / "results.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    r = cli(*bench_args(tiny_dirs, data, out, "--resume"))
    assert r.exit_code == 0, r.stderr
    assert f"warning: {out / 'results.jsonl'}: skipped line(s) 1: not a whole result record" in r.stderr
    recs = read_results(out / "results.jsonl")
    assert sorted((x["question_id"], x["method"]) for x in recs) == [(q, m) for q in "12" for m in ("ar", "suffix")]
    assert json.loads((out / "summary.json").read_text())["methods"]["suffix"]["identical"] == "yes"


def test_bench_refuses_a_question_longer_than_the_context_before_any_work(tmp_path, tiny_dirs):
    data, out = tmp_path / "q.jsonl", tmp_path / "out"
    data.write_text(json.dumps({"question_id": "short", "turns": ["w5"]}) + "\n"
                    + json.dumps({"question_id": "long", "turns": [" ".join(["w3"] * 40)]}) + "\n")
    r = cli(*bench_args({"target": tiny_dirs["short"], "draft": tiny_dirs["short"]}, data, out))
    assert r.exit_code == 1 and r.stderr.startswith("error: question long: its first turn has ")
    assert "the context holds 16" in r.stderr and not out.exists()
