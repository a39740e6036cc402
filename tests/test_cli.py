"""The command line: generate, calibrate, trim and export on tiny models, and bad input
(Issue 12): it fails in one line before any work, and nothing is lost or overwritten."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import cli

from vocabtrim.tokenmap import TokenMap
from vocabtrim.vocab import Counts


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
