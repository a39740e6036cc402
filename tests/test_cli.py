"""The command line: generate, calibrate, trim and export on tiny models, and bad input
(issues 12 and 26): it fails in one line before any work, nothing that is not the command's
own output is lost or overwritten, and an unforeseen failure is one line too (its traceback
with VOCABTRIM_DEBUG=1)."""

import errno
import json
import os
import shutil
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner
from conftest import cli, snapshot, tiny_tokenizer, token_map
from safetensors.torch import save_file

from vocabtrim import catalog, kernels
from vocabtrim.cli import Main
from vocabtrim.tokenmap import TokenMap
from vocabtrim.vocab import Counts, tokenizer_fingerprint


def gen(dirs, *args, env=None):
    return cli("generate", "--target", dirs["target"], "--draft", dirs["draft"], *args, env=env)


def assert_one_line_error(result, *words):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_json_on_tiny_models(tiny_dirs):
    r = gen(tiny_dirs, "--prompt", "w1 w2 w3", "--max-new-tokens", 12, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("text", "token_ids", "new_tokens", "target_forwards", "drafter_forwards",
                "accepted_per_round", "acceptance_rate", "tau", "cost_ratio", "mbsu",
                "seconds", "tokens_per_second", "prefill_s", "draft_s", "verify_s"):
        assert key in d
    assert d["new_tokens"] == len(d["token_ids"]) <= 12
    model_free = ("generate", "--target", tiny_dirs["target"], "--prompt", "w1 w2 w3", "--max-new-tokens", 12, "--json")
    alone = cli(*model_free, "--no-draft")
    assert json.loads(alone.stdout)["token_ids"] == d["token_ids"]
    # the defaults: the hybrid drafter with the cost policy; static:5 where no drafter model drafts
    assert (d["drafter"], d["policy"].split(":")[0]) == ("hybrid", "cost")
    suffix = cli(*model_free, "--drafter", "suffix")
    assert (json.loads(suffix.stdout)["policy"], json.loads(suffix.stdout)["token_ids"]) == ("static:5", d["token_ids"])


def test_generate_streams_the_same_text_as_json(tiny_dirs):
    args = ("--prompt", "w7 w9 w3", "--max-new-tokens", 6, "--raw")
    streamed, whole = gen(tiny_dirs, *args), gen(tiny_dirs, *args, "--json")
    assert streamed.exit_code == 0 and "tok/s" in streamed.stderr
    assert streamed.stdout.strip() == json.loads(whole.stdout)["text"] == "w49 w57 w51"


@pytest.mark.parametrize("args, words", [
    (["--prompt", "   "], ["prompt is empty"]),
    (["--prompt", "w1", "--max-new-tokens", "0"], ["max-new-tokens"]),
    (["--prompt", "w1", "--temperature", "-1"], ["temperature"]),
    (["--prompt", "w1", "--top-p", "0"], ["top-p"]),
    (["--prompt", "w1", "--target", "no-such-model"], ["unknown model", "no-such-model"]),
    (["--prompt", "w1", "--draft", "/nonexistent/file.gguf"], ["GGUF file not found"]),
    ([], ["--prompt"]),
])
def test_bad_input(tiny_dirs, args, words):
    assert_one_line_error(gen(tiny_dirs, *args), *words)


def test_prompt_longer_than_context(tiny_dirs):
    r = cli("generate", "--target", tiny_dirs["short"], "--no-draft", "--raw",
            "--prompt", " ".join(["w3"] * 40))
    assert_one_line_error(r, "context holds 16")


def test_corrupt_gguf(tmp_path, tiny_dirs):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    assert_one_line_error(gen(tiny_dirs, "--prompt", "w1", "--draft", bad), "broken.gguf")


def test_corrupt_cache_entry(tmp_path, tiny_dirs):
    entry = tmp_path / "models" / "qwen2.5-coder-0.5b"
    entry.mkdir(parents=True)
    for f in tiny_dirs["draft"].iterdir():
        (entry / f.name).write_bytes(f.read_bytes())
    (entry / "model.safetensors").write_bytes(b"not a safetensors file")
    (entry / "vocabtrim.json").write_text(json.dumps({"name": "qwen2.5-coder-0.5b"}))
    r = gen(tiny_dirs, "--prompt", "w1", "--draft", "qwen2.5-coder-0.5b",
            env={"VOCABTRIM_CACHE": str(tmp_path)})
    assert_one_line_error(r, "qwen2.5-coder-0.5b", "fetch")


def test_models_list(tmp_path):
    r = cli("models", "list", env={"VOCABTRIM_CACHE": str(tmp_path)})
    assert r.exit_code == 0 and "qwen2.5-coder-1.5b" in r.stdout and "not fetched" in r.stdout


def test_console_script_exits_nonzero_without_traceback():
    r = subprocess.run([sys.executable, "-m", "vocabtrim.cli", "generate", "--prompt", "x",
                        "--target", "nope"], check=False, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: unknown model 'nope': not a built-in name " \
        "(qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m), a model directory, a .gguf file or a hub id"


def test_cli_calibrate_trim_generate_export(tmp_path, tiny_dirs):
    data = tmp_path / "cal.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) for i in range(6)))
    counts = tmp_path / "counts.safetensors"
    r = cli("calibrate", "--source", "target", "--data", data, "--out", counts, "--max-new-tokens", 8,
            "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"])
    assert r.exit_code == 0, r.stderr
    c = Counts.load(counts)
    assert c.meta["source"] == "target" and c.meta["items_done"] == 6 and c.counts.sum() == c.meta["tokens"] > 0
    r = cli("trim", "--counts", counts, "--keep", 20, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 0, r.stderr
    tm = TokenMap.load(tmp_path / "tm")
    assert tm.k == 20 and 1 in tm.kept_ids.tolist()  # the EOS of the tiny tokenizer is forced in
    args = ("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"],
            "--prompt", "w7 w9 w3", "--max-new-tokens", 10, "--json")
    full, trimmed = cli(*args), cli(*args, "--token-map", tmp_path / "tm")
    map_only = cli(*args, "--token-map", tmp_path / "tm", "--no-prompt-tokens")
    for r in (full, trimmed, map_only):
        assert r.exit_code == 0, r.stderr
    full, trimmed, map_only = (json.loads(r.stdout) for r in (full, trimmed, map_only))
    assert trimmed["token_ids"] == map_only["token_ids"] == full["token_ids"]
    # the map lacks some of w7 w9 w3 (and the template's tokens): their rows cost a little
    assert map_only["cost_ratio"] < trimmed["cost_ratio"] < full["cost_ratio"]
    r = cli("export", "--token-map", tmp_path / "tm", "--format", "sglang", "--out", tmp_path / "hot.pt")
    assert r.exit_code == 0 and torch.load(tmp_path / "hot.pt", weights_only=True).numel() == 20


def test_cli_trim_rejects_counts_of_another_tokenizer(tmp_path, tiny_dirs):
    counts = tmp_path / "c.safetensors"
    (tmp_path / "t.txt").write_text("w1 w2 w3")
    assert cli("calibrate", "--source", "raw", "--data", tmp_path / "t.txt", "--out", counts,
               "--draft", tiny_dirs["other_vocab"]).exit_code == 0
    r = cli("trim", "--counts", counts, "--keep", 5, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and "another tokenizer" in r.stderr
    assert not (tmp_path / "tm").exists()


@pytest.mark.parametrize("args, words", [
    (["trim", "--counts", "missing.safetensors", "--keep", "4", "--out", "x"], "not found"),
    (["export", "--token-map", "nowhere", "--format", "sglang", "--out", "x.pt"], "no token map"),
])
def test_cli_bad_files(tmp_path, args, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(*args)
    assert r.exit_code == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_counts_file(tmp_path, tiny_dirs):
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"garbage")
    r = cli("trim", "--counts", bad, "--keep", 4, "--draft", tiny_dirs["draft"], "--out", tmp_path / "tm")
    assert r.exit_code == 1 and "not a vocabtrim counts file" in r.stderr


# --- bad input: one error line, before any model loads, and nothing written ---


# a model that does not exist: these cases must fail before any model loads




def test_a_weights_file_torch_refuses_is_one_line_with_nothing_before_it(tiny_dirs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dirs["target"], bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle" * 10)  # protocol 4: torch warns, then refuses
    r = subprocess.run([sys.executable, "-m", "vocabtrim.cli", "generate", "--target", str(bad), "--no-draft",
                        "--backend", "torch", "--prompt", "hi"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: cannot load model '{bad}': its weights file is not a checkpoint torch can read safely "
        "(torch.load with weights_only refused it)"]


FP = tokenizer_fingerprint(tiny_tokenizer(64))


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
    entry = root / "cache" / "models" / catalog.DEFAULT_DRAFT
    entry.mkdir(parents=True)
    (entry / "vocabtrim.json").write_text("{broken")
    (root / "dup_ids.jsonl").write_text("".join(json.dumps({"question_id": i, "turns": [f"w{i}"]}) + "\n"
                                                for i in (1, 2, 1)))
    save_file({"counts": torch.arange(64)}, root / "list_meta.safetensors", metadata={"vocabtrim": "[1, 2]"})
    for name, text in (("user_md/summary.md", "# my notes\n"), ("user_json/summary.json", '{"mine": 1}'),
                       ("user_png/speedup.png", "\x89PNG my plot"), ("user_results/results.jsonl", '{"id": 1}\n')):
        (root / name).parent.mkdir()
        (root / name).write_text(text)
    (root / "dir_results" / "results.jsonl").mkdir(parents=True)
    return root, {"T": tiny_dirs["target"], "D": tiny_dirs["draft"]}


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
    (GEN[:3] + ["--prompt", "w1", "--drafter", "suffix", "--policy", "cost"], "--policy cost"),
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
    # issue 26, generate: numbers out of range, options that would be ignored
    (GEN + ["--prompt", "w1", "--seed", str(2**64)], "'--seed'"),
    (GEN + ["--prompt", "w1", "--seed", "-1"], "'--seed'"),
    (GEN + ["--prompt", "w1", "--temperature", "1e-40"], "at least 0.0001, got 1e-40"),
    (GEN + ["--prompt", "w1", "--policy", "cost:max=1000000000"], "max must be an integer in [1, 256]"),
    (GEN + ["--prompt", "w1", "--policy", "heuristic:start=300"], "start must be an integer in [1, 256]"),
    (GEN + ["--prompt", "w1", "--draft-len", "100000"], "'--draft-len'"),
    (GEN + ["--prompt", "w1", "--no-draft"], "--no-draft decodes with the target alone: --draft would be ignored"),
    (GEN[:3] + ["--prompt", "w1", "--no-draft", "--drafter", "model", "--draft-quant", "int8"],
     "--drafter, --draft-quant would be ignored"),
    (GEN[:3] + ["--prompt", "w1", "--no-draft", "--no-ngram-cache"], "--[no-]ngram-cache would be ignored"),
    (GEN[:3] + ["--prompt", "w1", "--drafter", "suffix", "--draft-quant", "int4"], "--draft-quant would be ignored"),
    (GEN + ["--prompt", "w1", "--no-prompt-tokens"], "give --token-map"),
    # trim, export, calibrate: an output under a file, over a user's file, or a damaged counts file
    (TRIM + ["--keep", "5", "--out", "a_file.txt/tm"], "a_file.txt is a file, not a directory"),
    (["export", "--token-map", "tm", "--format", "sglang", "--out", "a_file.txt"],
     "refusing to overwrite a_file.txt: it is not a token map export"),
    (["export", "--token-map", "tm", "--format", "eagle3", "--out", "counts.safetensors"],
     "refusing to overwrite counts.safetensors"),
    (["export", "--token-map", "tm", "--format", "sglang", "--out", "a_file.txt/hot.pt"],
     "a_file.txt is a file, not a directory"),
    (CALIBRATE + ["--data", "a_file.txt", "--out", "a_file.txt/c.safetensors"], "a_file.txt is a file, not a"),
    (CALIBRATE + ["--data", "a_file.txt", "--out", "cluttered"], "cluttered is a directory"),
    (CALIBRATE + ["--data", "a_file.txt", "--out", "counts.safetensors"], "exists; pass --resume"),
    (CALIBRATE + ["--data", "a_file.txt", "--out", "a_file.txt", "--resume"], "not a vocabtrim counts file"),
    (CALIBRATE + ["--data", "a_file.txt", "--out", "list_meta.safetensors", "--resume"],
     "metadata is not a JSON object"),
    (CALIBRATE + ["--data", "a_file.txt", "--temperature", "0.7", "--seed", "3"],
     "--source raw counts the data's own tokens, generating nothing: --temperature, --seed would be ignored"),
    (CALIBRATE[:2] + ["draft"] + CALIBRATE[3:] + ["--data", "a_file.txt", "--draft-quant", "int8"],
     "--draft-quant would be ignored"),
    (CALIBRATE[:2] + ["target"] + CALIBRATE[3:] + ["--data", "a_file.txt", "--seed", str(2**64)], "'--seed'"),
    # bench: options, numbers and question ids checked, its directory never over a user's files
    (BENCH + ["--adaedl", "static:3"], "--adaedl takes an adaedl policy"),
    (BENCH + ["--methods", "ar,sd", "--adaedl", "adaedl:gamma=0.3"], "--adaedl would be ignored"),
    (BENCH + ["--methods", "ar,suffix", "--token-map", "tm"], "--token-map would be ignored"),
    (BENCH + ["--token-map", "tm", "--calibrate", "humaneval:n=4"], "--calibrate would be ignored"),
    (BENCH + ["--methods", "ar,sd", "--cross-draft", "missing-model"], "--cross-draft would be ignored"),
    (BENCH + ["--temperature", "1e-40"], "at least 0.0001"),
    (BENCH + ["--seed", str(2**64)], "'--seed'"),
    (BENCH + ["--data", "dup_ids.jsonl"], "dup_ids.jsonl:3: question id '1' is also the id of line 1"),
    (BENCH + ["--out", "a_file.txt"], "--out a_file.txt is a file"),
    (BENCH + ["--out", "a_file.txt/run"], "a_file.txt is a file, not a directory"),
    (BENCH + ["--out", "user_md"], "refusing to overwrite user_md/summary.md: vocabtrim bench did not write it"),
    (BENCH + ["--out", "user_json"], "refusing to overwrite user_json/summary.json"),
    (BENCH + ["--out", "user_png"], "refusing to overwrite user_png/speedup.png"),
    (BENCH + ["--out", "user_results", "--resume"], "refusing to overwrite user_results/results.jsonl"),
    (BENCH + ["--out", "dir_results", "--resume"], "refusing to overwrite dir_results/results.jsonl"),
]


@pytest.mark.parametrize("args, words", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_input_is_one_error_line_and_writes_nothing(work, monkeypatch, args, words):
    root, dirs = work
    monkeypatch.chdir(root)
    monkeypatch.setenv("VOCABTRIM_CACHE", str(root / "cache"))
    kernels.resolve("auto")  # the machine's dtype choice is measured once, like a fetched model
    before = snapshot(root)
    r = cli(*[a.format(**dirs) for a in args], env={"VOCABTRIM_CACHE": str(root / "cache")})
    assert r.exit_code == 1, r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert snapshot(root) == before


def test_help_still_works_and_usage_errors_exit_1():
    assert cli("--help").exit_code == 0 and "Usage:" in cli("--help").stdout
    r = cli("trim", "--help")
    assert r.exit_code == 0 and "--keep" in r.stdout
    p = subprocess.run([sys.executable, "-m", "vocabtrim.cli", "bench", "--limit", "0"],
                       check=False, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and len(p.stderr.splitlines()) == 1


# issue 26: anything a command raises ends in one line; VOCABTRIM_DEBUG=1 shows the traceback

@click.group(cls=Main)
def app() -> None:
    """A command group of the CLI's own class, with commands that fail in unforeseen ways."""


@app.command()
def crash() -> None:
    raise RuntimeError("a bug")


@app.command()
def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "/some/file")


@pytest.mark.parametrize("command, line", [
    ("crash", "error: RuntimeError: a bug (unexpected; VOCABTRIM_DEBUG=1 shows where it came from)"),
    ("disk-full", "error: /some/file: No space left on device"),
])
def test_an_unforeseen_failure_is_one_line_and_the_traceback_needs_debug(command, line):
    r = CliRunner().invoke(app, [command])
    assert (r.exit_code, r.stderr.strip()) == (1, line)
    r = CliRunner().invoke(app, [command], env={"VOCABTRIM_DEBUG": "1"})
    assert isinstance(r.exception, RuntimeError | OSError)  # raised, not turned into a line


def test_debug_shows_the_traceback_of_a_known_failure_too(tmp_path):
    (tmp_path / "a_file").write_text("")
    cmd = [sys.executable, "-m", "vocabtrim.cli", "bench", "--out", str(tmp_path / "a_file")]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "VOCABTRIM_DEBUG": "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "VocabtrimError: --out" in p.stderr


def test_the_ngram_cache_option_with_a_drafter_of_the_same_tokenizer_is_refused(tiny_dirs):
    for flag in ("--ngram-cache", "--no-ngram-cache"):
        r = cli("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
                "--prompt", "w1", "--policy", "static:3", flag)
        assert r.exit_code == 1 and r.stderr.strip() == (
            f"error: --[no-]ngram-cache is for a drafter of another tokenizer; {tiny_dirs['draft']} shares the "
            "target's (drop it)")
