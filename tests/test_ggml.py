"""The ggml target: a GGUF file on llama.cpp's kernels behind the target seam. Its logits
against the torch target of the same weights (also after a crop of its cache), greedy
identity with a drafter against itself alone, and sampled output distributed as the
target's own (chi-square)."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    RUNS,
    assert_greedy_identical_with_a_drafter,
    bench_gguf,
    chi2_pvalue,
    cli,
    exact_joint,
    model_drafter,
    prompts,
    small_counts,
    small_pair,
    tiny_model,
    write_gguf,
)

from vocabtrim import backend, catalog, ggml, loading, models
from vocabtrim.engine import Engine, Stop
from vocabtrim.errors import VocabtrimError
from vocabtrim.isolate import Crashed
from vocabtrim.policies import Static
from vocabtrim.sampling import Sampling
from vocabtrim.target import TorchTarget

pytest.importorskip("llama_cpp")  # the backend's extra: vocabtrim[ggml]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_model(64, seed=1)
    path = write_gguf(model, tmp_path_factory.mktemp("gguf") / "t.gguf")
    return model, ggml.GgmlTarget(path, 256, 2), path


@torch.inference_mode()
def test_logits_are_the_torch_targets(tiny):
    model, target, _ = tiny
    torch_target = TorchTarget(model)
    assert (target.vocab_size, target.context) == (64, 256)
    for seq, n in (([5, 9, 3, 7, 11, 2, 40, 33], 4), ([5, 9, 3, 7, 11, 20, 21], 3), ([5, 9], 1)):  # crops too
        torch.testing.assert_close(target.logits(seq, n), torch_target.logits(seq, n), atol=2e-3, rtol=1e-3)
    target.reset()
    torch.testing.assert_close(target.logits([5, 9, 3], 2), torch_target.logits([5, 9, 3], 2), atol=2e-3, rtol=1e-3)


def test_greedy_identical_with_a_drafter(tiny):
    model, target, _ = tiny
    assert_greedy_identical_with_a_drafter(target, model)


def test_sampling_follows_the_target(tmp_path):
    small_t, small_d = small_pair()
    eng = Engine(ggml.GgmlTarget(write_gguf(small_t, tmp_path / "s.gguf"), 64, 2), model_drafter(small_d, small_t))
    p = chi2_pvalue(small_counts(eng), exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations on ggml do not follow the target (chi-square p={p:.2g})"


def test_what_llama_cpp_cannot_read_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(VocabtrimError, match="llama.cpp cannot load"):
        ggml.GgmlTarget(bad)


def test_llama_cpp_alone_is_the_targets_greedy_output(tiny):
    _, target, path = tiny
    peer = ggml.LlamaCppAlone(path, 256, Sampling(), 0, frozenset({1}))
    for p in prompts(4):
        ref, _ = Engine(target).generate(p, 20, Static(1), stop=Stop(frozenset({1})))
        out, s = peer(p, 20)
        assert out == ref and s.new_tokens == s.target_forwards == len(out) and s.tau == 1


def test_a_ggml_target_loads_no_torch_weights_until_asked(tiny):
    _, _, path = tiny
    loaded = models.load(str(path), "float32", "ggml")
    assert loaded.backend == "ggml" and loaded.gguf == path and not isinstance(loaded.weights, torch.nn.Module)
    assert isinstance(loaded.as_target(), ggml.GgmlTarget) and loaded.context == 256
    assert isinstance(loaded.model, torch.nn.Module)  # transformers' peers ask: the 16-bit copy loads now
    assert models.load(str(path), "float32", "torch").as_target().vocab_size == 64


def test_generate_on_ggml(tiny):
    _, target, path = tiny
    r = cli("generate", "--target", path, "--backend", "ggml", "--no-draft", "--raw", "--prompt", "w2w2",
            "--max-new-tokens", 6, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["backend"] == "ggml"
    tok = models.load(str(path), "float32", "ggml").tokenizer
    ref, _ = Engine(target).generate(tok("w2w2")["input_ids"], 6, Static(1))
    assert out["token_ids"][:len(ref)] == ref[:len(out["token_ids"])]


def test_backend_choice(tiny, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    _, _, path = tiny
    assert loading.choose(str(tiny_dirs["target"]), "auto") == "torch"  # no GGUF file
    assert loading.choose(str(path), "torch") == "torch"
    first = loading.choose(str(path), "auto", "float32")
    assert first in ("torch", "ggml", "native") and len(list((tmp_path / "profiles").glob("*.json"))) == 1
    assert loading.choose(str(path), "auto", "float32") == first  # cached, not timed again
    monkeypatch.setattr(backend.get("native"), "build", lambda: "another build")
    loading.choose(str(path), "auto", "float32")  # a rebuilt engine: timed again
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 2
    r = cli("generate", "--target", tiny_dirs["target"], "--backend", "ggml", "--no-draft", "--prompt", "hi")
    assert r.exit_code == 1 and "the ggml backend runs GGUF files" in r.output


def test_bench_on_ggml_with_llama_cpp_beside(tiny, tmp_path):
    _, _, path = tiny
    out = bench_gguf(path, tmp_path, "ar,llamacpp,suffix", 3)
    summary = json.loads((out / "summary.json").read_text())
    ms = summary["methods"]
    assert {n: m["backend"] for n, m in ms.items()} == {"ar": "ggml", "llamacpp": "ggml", "suffix": "ggml"}
    assert ms["llamacpp"]["identical"] == ms["suffix"]["identical"] == "yes"
    assert summary["baseline"] in ("ar", "llamacpp")  # the faster target alone
    assert "| llamacpp | ggml |" in (out / "summary.md").read_text()


def test_amx_is_avoided_where_llama_cpp_offers_it():
    xeon = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    epyc = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |"
    assert ggml.avoids_amx(xeon) and not ggml.avoids_amx(epyc)
    assert ggml.avoids_amx(ggml.system_info()) == ("AMX_INT8 = 1" in ggml.system_info())


def test_amx_avoidance_keeps_the_other_buffers(tiny):
    """On an AMX build the model loads without extra buffer types (an F32 file repacks
    nothing, so no override is named); elsewhere llama.cpp's defaults stand."""
    _, _, path = tiny
    amx = ggml.model_params(path, info="AVX2 = 1 | AMX_INT8 = 1")
    assert not amx.use_extra_bufts and not amx.tensor_buft_overrides
    assert ggml.model_params(path, info="AVX2 = 1").use_extra_bufts


_BUFFERS = """
import ctypes, json, sys
from pathlib import Path
import llama_cpp as ll
from vocabtrim import ggml
lines = []
ggml._init()
log = ll.llama_log_callback(lambda level, text, data: lines.append(text.decode(errors="replace")))
ll.llama_log_set(log, ctypes.c_void_p())
params = ggml.model_params(Path(sys.argv[1]), info=sys.argv[2] or None)
assert ll.llama_model_load_from_file(sys.argv[1].encode(), params)
print(json.dumps(sorted(line.split(":", 1)[1].strip() for line in "".join(lines).splitlines()
                        if "model buffer size" in line)))
"""


def _buffers(path, info: str = "") -> list[str]:
    """The model buffers llama.cpp reports loading `path` with model_params (in a child: a
    crash is a failed test, not a dead suite)."""
    r = subprocess.run([sys.executable, "-c", _BUFFERS, str(path), info], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the load ended with {_ended(r.returncode)}: {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ended(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else f"exit status {code}"


@pytest.mark.real
def test_amx_avoidance_repacks_what_llama_cpp_repacks(no_real_pair):
    """The tensors named for the CPU_REPACK buffer (REPACKED_X86) are exactly those llama.cpp
    repacks by itself: the same buffers, to the byte, with AMX kept out."""
    path = catalog.gguf_path(catalog.DEFAULT_TARGET)
    info = ggml.system_info()
    ours = _buffers(path, info + " | AMX_INT8 = 1")
    assert not any(b.startswith("AMX") for b in ours)
    if "AVX2 = 1" in info:
        assert any(b.startswith("CPU_REPACK") for b in ours), ours
    if ggml.avoids_amx(info):
        pytest.skip("llama.cpp offers AMX on this CPU, so its own choice is not there to compare with")
    assert ours == _buffers(path)


_DECODE = """
import sys
from vocabtrim.ggml import GgmlTarget
t = GgmlTarget(sys.argv[1], 1024)
seq = [(500 + 7 * i) % t.vocab_size for i in range(216)]
t.logits(seq[:200], 1)
assert t.logits(seq[:208], 8).shape == (8, t.vocab_size)
assert t.logits(seq, 16).shape == (16, t.vocab_size)
"""


@pytest.mark.real
def test_multi_token_decode_of_the_real_target_survives(no_real_pair):
    """The decodes that crashed in llama.cpp's AMX matmul on Xeon hosts (a 200-token prompt,
    then 8 and 16 tokens), in a child process: on a host without AMX it simply passes."""
    path = catalog.gguf_path(catalog.DEFAULT_TARGET)
    r = subprocess.run([sys.executable, "-c", _DECODE, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the decode ended with {_ended(r.returncode)}: {r.stderr[-2000:]}"


def test_a_backend_that_crashes_while_timing_is_not_chosen(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    _, _, path = tiny

    def timing(fn, name, *args):
        if name == "ggml":
            raise Crashed("SIGSEGV")
        return 5.0

    monkeypatch.setattr(loading, "run_isolated", timing)
    assert loading.choose(str(path), "auto", "float32") == "torch"
    assert "the ggml backend crashed while timing" in capsys.readouterr().err
    monkeypatch.setattr(loading, "run_isolated", lambda fn, name, *a: (_ for _ in ()).throw(Crashed("SIGILL")))
    with pytest.raises(VocabtrimError, match="every backend crashed"):
        loading.choose(str(path), "auto", "bfloat16")
