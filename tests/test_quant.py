"""Quantized drafters: int8/int4 layers against their float reference, trimmed heads of a
quantized drafter, greedy identity with the target alone, the cache of quantized weights,
the CLI flag."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import alone, cli, spec_engine, tiny_model, tiny_pair
from safetensors import safe_open
from safetensors.torch import save_file

from vocabtrim import kernels, models
from vocabtrim.heads import Head
from vocabtrim.policies import Static

BOUND = {"int8": 0.01, "int4": 0.15}  # relative error of a product with random weights


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(64, 32), (100, 96), (5, 64)])  # 100, 5: int4 pads to 16 rows
def test_quantized_layer_matches_float_reference(scheme, shape):
    torch.manual_seed(0)
    w, b, x = torch.randn(*shape) * 0.05, torch.randn(shape[0]), torch.randn(7, shape[1])
    q = kernels.QuantLinear.quantize(w, b, scheme)
    ref = x @ w.T + b
    assert float((q(x) - ref).norm() / (ref - b).norm()) < BOUND[scheme]
    # weight16 is what the layer multiplies by: a trimmed head gathers its rows
    torch.testing.assert_close(x @ q.weight16.float().T + b, q(x), atol=2e-3, rtol=1e-3)
    assert q(x.reshape(7, 1, -1)).shape == (7, 1, shape[0])


def test_int4_needs_whole_groups():
    with pytest.raises(kernels.VocabtrimError, match="divisible by 32"):
        kernels.QuantLinear.quantize(torch.randn(16, 40), None, "int4")
    with pytest.raises(kernels.VocabtrimError, match="unknown quantization"):
        kernels.quantized(tiny_model(64), "int3")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_copy_leaves_the_original_and_trims_its_head(scheme):
    model = tiny_model(64, seed=5)
    before = model.get_output_embeddings().weight.clone()
    q = kernels.quantized(model, scheme)
    assert all(isinstance(m, kernels.QuantLinear) for m in q.modules() if "Linear" in type(m).__name__)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the original is untouched
    torch.testing.assert_close(model.get_output_embeddings().weight, before)
    kept = torch.tensor([7, 3, 60, 1, 22])
    full, trimmed = Head.of(q), Head.of(q, kept)
    assert isinstance(trimmed.proj, kernels.QuantLinear) and trimmed.rows == 5
    h = torch.randn(4, 32)
    torch.testing.assert_close(trimmed(h), full(h)[:, kept], atol=2e-3, rtol=1e-3)
    assert kernels.weight_count(q) == kernels.weight_count(model)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("kept", [None, torch.arange(40)])
def test_greedy_identical_with_a_quantized_drafter(scheme, kept):
    target, draft = tiny_pair()
    solo, spec = alone(target), spec_engine(target, kernels.quantized(draft, scheme), kept)
    accepted = 0
    for seed in range(8):
        prompt = torch.randint(5, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref, _ = solo.generate(prompt, 30, Static(1))
        out, s = spec.generate(prompt, 30, Static(4))
        assert out == ref
        accepted += sum(s.accepted_per_round)
    assert accepted > 0


def test_generate_with_a_quantized_drafter(tiny_dirs, tmp_path):
    args = ("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--draft-quant", "int4", "--prompt", "w1 w2", "--max-new-tokens", 8, "--json")
    env = {"VOCABTRIM_CACHE": str(tmp_path)}
    first, again = cli(*args, env=env), cli(*args, env=env)  # quantized, then read from the cache
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    first, again = json.loads(first.stdout), json.loads(again.stdout)
    assert (first["token_ids"], first["draft_lengths"]) == (again["token_ids"], again["draft_lengths"])
    assert [p.parent.name for p in tmp_path.rglob("*.safetensors")] == ["quantized"]
    r = cli("generate", "--prompt", "hi", "--draft-quant", "int3")
    assert r.exit_code == 1 and r.output.startswith("error:") and "int3" in r.output


@pytest.fixture
def quant_cache(tmp_path, monkeypatch) -> Path:
    """The directory quantized drafters are cached in, under a fresh VOCABTRIM_CACHE."""
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    return tmp_path / "quantized"


def quantize_draft(tiny_dirs, scheme: str = "int8", dtype: str = "float32", again: bool = False) -> models.Loaded:
    """The tiny drafter loaded and quantized; `again`: quantizing fails, so it must come from the cache."""
    loaded = models.load(str(tiny_dirs["draft"]), dtype)
    if not again:
        return models.quantize(loaded, scheme)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kernels.QuantLinear, "quantize", lambda *a, **k: pytest.fail("quantized again"))
        return models.quantize(loaded, scheme)


def same_drafter(a: models.Loaded, b: models.Loaded) -> bool:
    """Equal logits, and equal trimmed heads (their rows come from int4's unpacked codes)."""
    ids, h, kept = torch.tensor([[5, 9, 3, 7]]), torch.randn(2, 32), torch.tensor([7, 3, 60, 1, 22])
    return (torch.equal(a.model(ids).logits, b.model(ids).logits)
            and torch.equal(Head.of(a.model, kept)(h), Head.of(b.model, kept)(h)))


def files_of(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_quantized_drafter_is_cached_once_and_read_back(tiny_dirs, quant_cache, scheme):
    model_files = files_of(tiny_dirs["draft"])
    fresh = quantize_draft(tiny_dirs, scheme)
    cached = files_of(quant_cache)
    assert len(cached) == 1 and fresh.name.endswith(f"@{scheme}")
    again = quantize_draft(tiny_dirs, scheme, again=True)
    assert same_drafter(fresh, again) and again.name == fresh.name
    assert files_of(quant_cache) == cached and files_of(tiny_dirs["draft"]) == model_files  # nothing rewritten
    quantize_draft(tiny_dirs, scheme, "bfloat16")  # other scales: another file
    assert len(files_of(quant_cache)) == 2


def damage(path: Path, how: str) -> None:
    good = path.read_bytes()
    with safe_open(path, "pt") as f:
        key, parts = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not iterable
    if how == "garbage":
        path.write_bytes(b"not safetensors" * 10)
    elif how == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif how == "another key":
        save_file(parts, path, metadata={"key": "another model"})
    elif how == "a part missing":
        save_file(dict(list(parts.items())[1:]), path, metadata=key)
    else:  # int4 parts under the int8 key: other dtypes and shapes
        save_file(kernels.quantized_parts(kernels.quantized(tiny_model(64), "int4")), path, metadata=key)


@pytest.mark.parametrize("how", ["garbage", "truncated", "another key", "a part missing", "other shapes"])
def test_a_corrupt_or_foreign_cache_file_is_rebuilt(tiny_dirs, quant_cache, how):
    fresh = quantize_draft(tiny_dirs)
    (path,) = quant_cache.iterdir()
    good = path.read_bytes()
    damage(path, how)
    assert same_drafter(quantize_draft(tiny_dirs), fresh)  # quantized again, no error
    assert path.read_bytes() == good
    assert same_drafter(quantize_draft(tiny_dirs, again=True), fresh)


def test_a_cache_that_cannot_be_written_costs_only_time(tiny_dirs, quant_cache, capsys):
    quant_cache.write_text("a file where the cache's directory should be")
    assert same_drafter(quantize_draft(tiny_dirs), quantize_draft(tiny_dirs))
    assert "cannot cache the quantized drafter" in capsys.readouterr().err
    assert quant_cache.read_text() == "a file where the cache's directory should be"


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, so that a crash of torch's kernels fails the test, not the run."""
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=300, env=os.environ | (env or {}))


MISALIGNED = """
import torch
from vocabtrim import kernels
torch.manual_seed(0)
w = torch.randn(896, 896) * 0.05
fresh = kernels.QuantLinear.quantize(w, None, "{scheme}", torch.bfloat16)

def at_odd_address(t):  # as safetensors hands out a tensor of its memory-mapped file
    raw = bytearray(t.numel() * t.element_size() + 1)
    view = torch.frombuffer(raw, dtype=torch.uint8, offset=1).view(t.dtype).view(t.shape)
    view.copy_(t)
    return view

parts = {{k: at_odd_address(v) for k, v in fresh.parts().items()}}
again = kernels.QuantLinear("{scheme}", parts["codes"], parts["scales"], None, (896, 896))
for rows in (1, 2, 6, 41, 64, 201):
    x = torch.randn(rows, 896, dtype=torch.bfloat16)
    assert torch.equal(again(x), fresh(x)), rows
print("ok")
"""


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_parts_at_any_address_multiply_as_fresh_ones(scheme):
    done = run_python(MISALIGNED.format(scheme=scheme))
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_drafter_read_back_from_the_cache_drafts_in_a_fresh_process(tiny_dirs, tmp_path, scheme):
    """The second run of a quantized drafter reads its parts from the cache's file (the
    first quantizes): both exit 0 with the target's greedy output. Where a part lies in the
    file depends on the length of its header, which holds the drafter's path: two paths 8
    characters apart put the parts at both 8-byte offsets modulo 16 (torch's int8 kernel
    crashed on one of them)."""
    args = ["--target", str(tiny_dirs["target"]), "--dtype", "float32", "--prompt", "w1 w2 w3",
            "--max-new-tokens", "24", "--raw", "--json"]
    code = "import sys; from vocabtrim.cli import main; main(sys.argv[1:])"
    env = {"VOCABTRIM_CACHE": str(tmp_path / "cache")}

    def generate(*extra: str) -> list[int]:
        done = subprocess.run([sys.executable, "-c", code, "generate", *args, *extra], check=False,
                              capture_output=True, text=True, timeout=300, env=os.environ | env)
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        return json.loads(done.stdout)["token_ids"]

    alone = generate("--no-draft")
    for name in ("d", "d--------"):
        draft = shutil.copytree(tiny_dirs["draft"], tmp_path / name)
        quant = ("--draft", str(draft), "--drafter", "model", "--draft-quant", scheme, "--policy", "static:5")
        assert generate(*quant) == alone  # quantized and saved
        assert generate(*quant) == alone  # read back
    assert len(list((tmp_path / "cache" / "quantized").iterdir())) == 2
