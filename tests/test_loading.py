"""The loading home (loading.py) and the backend registry (backend.py): what is refused
before any weights load, and the registry's entries. The layering rules of the package
(issue 37) are checked here too, on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import cli, tiny_model, write_gguf
from vocabtrim import backend, loading, models
from vocabtrim.errors import VocabtrimError
from vocabtrim.gguf_header import check_gguf

SRC = Path(__file__).parents[1] / "src" / "vocabtrim"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    return write_gguf(tiny_model(64, seed=1), tmp_path_factory.mktemp("gguf") / "t.gguf")


@pytest.fixture
def no_weights(monkeypatch):
    """Any torch weights loading fails the test: what it checks is refused before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")
    monkeypatch.setattr(models, "_weights", refuse)


def test_a_truncated_gguf_is_said_as_such_before_anything_loads(gguf_file, tmp_path, tiny_dirs, no_weights):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_file.read_bytes()[:-4096])
    with pytest.raises(VocabtrimError, match="cut.gguf is a truncated GGUF file: its tensors end at byte"):
        check_gguf(cut)
    r = cli("generate", "--target", tiny_dirs["target"], "--draft", cut, "--prompt", "w1")
    assert r.exit_code == 1 and r.stderr.startswith("error: cut.gguf is a truncated GGUF file")


def test_a_file_that_is_not_gguf_is_refused_before_anything_loads(tmp_path, tiny_dirs, no_weights):
    fake = tmp_path / "draft.gguf"
    fake.write_text("not a model")
    r = cli("generate", "--target", tiny_dirs["target"], "--draft", fake, "--prompt", "w1")
    assert r.exit_code == 1 and r.stderr.strip() == "error: draft.gguf is not a GGUF file"


def test_a_token_map_of_another_tokenizer_is_refused_before_weights_load(tiny_dirs, tmp_path, no_weights):
    from conftest import token_map

    tm = token_map([3, 4, 5], vocab=80)  # a map of another vocabulary
    tm.save(tmp_path / "tm")
    for args in (["generate", "--prompt", "w1"], ["bench", "--data", "humaneval", "--limit", "1", "--methods", "ar,sd+vt",
                                                   "--out", tmp_path / "out"]):
        r = cli(*args, "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--token-map", tmp_path / "tm")
        assert r.exit_code == 1 and "the token map was made for another tokenizer" in r.stderr, r.stderr


def test_a_prompt_longer_than_the_context_is_refused_before_weights_load(tiny_dirs, tmp_path, no_weights):
    long = tmp_path / "long.txt"
    for words, line in ((20, r"error: the prompt has \d+ tokens; the context holds 16\n"),
                        (2000, r"error: the prompt has more than 16 tokens \(\d+ in its first 256 characters\); "
                               r"the context holds 16\n")):  # a long one: from a prefix, not tokenized whole
        long.write_text("w5 " * words)
        r = cli("generate", "--target", tiny_dirs["short"], "--no-draft", "--prompt-file", long, "--backend", "torch")
        assert r.exit_code == 1 and re.fullmatch(line, r.stderr), r.stderr


def test_the_registry_names_every_backend_once():
    assert backend.NAMES == ("auto", "torch", "ggml", "native")
    for name, entry in backend.REGISTRY.items():
        assert entry.name == name and isinstance(entry.runs_gguf, bool)
    assert backend.get("torch").max_context is None and backend.key("torch") == {}
    assert backend.key("native") == {"backend": "native", "build": backend.get("native").build()}
    assert len(backend.get("native").build()) == 12 and backend.get("torch").build() == ""
    assert [b.name for b in backend.candidates(False)] == ["torch"]
    with pytest.raises(VocabtrimError, match="unknown backend 'amx': one of auto, torch, ggml, native"):
        backend.get("amx")


def test_a_named_backend_is_taken_as_asked(tiny_dirs):
    assert loading.choose(str(tiny_dirs["target"]), "torch") == "torch"
    assert loading.choose(str(tiny_dirs["target"]), "auto") == "torch"  # no GGUF file: the one candidate


def test_auto_weighs_a_step_and_a_verification(tiny_dirs, monkeypatch):
    """auto's probe: the sum of a one-token step and a TIMING_VERIFY-token verification (at
    one token the backends are bound by memory alike; they differ in verifying)."""
    ms = {1: 2.0, loading.TIMING_VERIFY: 5.0}
    seen = []
    monkeypatch.setattr(loading, "forward_ms", lambda score, vocab, ids, n, repeats: seen.append(n) or ms[n])
    assert loading._probe_ms("torch", str(tiny_dirs["target"]), "float32") == 7.0
    assert sorted(set(seen)) == [1, loading.TIMING_VERIFY] and len(seen) == 2 * loading.TIMING_ROUNDS


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}


def test_the_package_keeps_its_layering():
    """click only in the command line; engines built only in assembly.py; no module over
    450 lines; backend names compared only by the registry."""
    names = set(backend.REGISTRY)
    for rel, tree in _modules().items():
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
            (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert "click" not in imported or rel.startswith("cli/"), rel
        assert len((SRC / rel).read_text().splitlines()) <= 450, rel
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "Engine" not in calls or rel == "assembly.py", rel
        compared = {c.value for n in ast.walk(tree) if isinstance(n, ast.Compare)
                    for c in [n.left, *n.comparators] if isinstance(c, ast.Constant)}
        assert not compared & names or rel == "backend.py", (rel, compared & names)


def _floors() -> dict[str, int]:
    """The README Design table's floors (0: the top), each module of the package by name."""
    readme = (SRC.parents[1] / "README.md").read_text()
    table = re.findall(r"^\| (\w+) \| (.+) \|$", readme[readme.index("| floor |"):].split("\n\n")[0], re.M)
    floors = {}
    for depth, (_, cell) in enumerate(row for row in table if row[0] != "floor"):
        for name in re.findall(r"`([\w/]+?)(?:\.py|/)`", cell):
            floors.setdefault(name.split("/")[0], depth)
    return floors


def test_imports_run_down_the_floors_the_readme_names():
    """Every module sits on one of the README Design table's floors and imports only from
    its own floor or lower ones: no upward import, so no circle between floors."""
    floors = _floors()
    for rel, tree in _modules().items():
        me = Path(rel).parts[0].removesuffix(".py")
        if me in ("__init__", "__main__"):
            continue
        assert me in floors, f"{rel} is on no floor of the README's Design table"
        package = Path(rel).parts[:-1]
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.level:
                base = list(package[:len(package) - n.level + 1]) + (n.module or "").split(".")
                names = [base[0]] if base[0] else [a.name for a in n.names]
                for name in names:
                    assert floors.get(name, len(floors)) >= floors[me], f"{rel} imports {name} from a floor above"
