"""The ggml target: a GGUF file on llama.cpp's kernels behind the target seam. Its logits
against the torch target of the same weights (also after a crop of its cache), greedy
identity with a drafter against itself alone, and sampled output distributed as the
target's own (chi-square)."""

import pytest
import torch
from conftest import (
    RUNS,
    SMALL_PROMPT,
    SMALL_SAMPLING,
    chi2_pvalue,
    exact_joint,
    model_drafter,
    noisy_copy,
    prompts,
    small_pair,
    tiny_model,
    write_gguf,
)

from vocabtrim.engine import Engine
from vocabtrim.errors import VocabtrimError
from vocabtrim.policies import Static
from vocabtrim.target import TorchTarget

ggml = pytest.importorskip("vocabtrim.ggml", exc_type=ImportError)  # the backend's extra: llama-cpp-python


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_model(64, seed=1)
    return model, ggml.GgmlTarget(write_gguf(model, tmp_path_factory.mktemp("gguf") / "t.gguf"), 256, 2)


@torch.inference_mode()
def test_logits_are_the_torch_targets(tiny):
    model, target = tiny
    torch_target = TorchTarget(model)
    assert (target.vocab_size, target.context) == (64, 256)
    for seq, n in (([5, 9, 3, 7, 11, 2, 40, 33], 4), ([5, 9, 3, 7, 11, 20, 21], 3), ([5, 9], 1)):  # crops too
        torch.testing.assert_close(target.logits(seq, n), torch_target.logits(seq, n), atol=2e-3, rtol=1e-3)
    target.reset()
    torch.testing.assert_close(target.logits([5, 9, 3], 2), torch_target.logits([5, 9, 3], 2), atol=2e-3, rtol=1e-3)


def test_greedy_identical_with_a_drafter(tiny):
    model, target = tiny
    alone, spec = Engine(target), Engine(target, model_drafter(noisy_copy(model, 0.3, seed=2), model))
    accepted = 0
    for p in prompts(6):
        ref, _ = alone.generate(p, 30, Static(1))
        out, s = spec.generate(p, 30, Static(4))
        assert out == ref
        accepted += sum(s.accepted_per_round)
    assert accepted > 0


def test_sampling_follows_the_target(tmp_path):
    small_t, small_d = small_pair()
    eng = Engine(ggml.GgmlTarget(write_gguf(small_t, tmp_path / "s.gguf"), 64, 2), model_drafter(small_d, small_t))
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(RUNS):
        out, _ = eng.generate(list(SMALL_PROMPT), 3, Static(2), SMALL_SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    p = chi2_pvalue(counts, exact_joint(3), RUNS)
    assert p > 1e-3, f"sampled continuations on ggml do not follow the target (chi-square p={p:.2g})"


def test_what_llama_cpp_cannot_read_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(VocabtrimError, match="llama.cpp cannot load"):
        ggml.GgmlTarget(bad)
