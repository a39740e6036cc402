"""The transformers drop-in: a trimmed assistant for generate(assistant_model=...)."""

import pytest
import torch
from conftest import noisy_copy, prompts, tiny_model

from vocabtrim import kernels
from vocabtrim.hf import trimmed_assistant


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.skipif(
    not kernels.packed_available(), reason="needs torch's fbgemm (x86)"))])
def test_transformers_drop_in_greedy_equals_target_alone(packed):
    target = tiny_model(64, seed=1)
    draft = noisy_copy(target, 0.2, seed=2)
    if packed:  # fbgemm fp16 layers, the `auto` choice on AVX2 CPUs
        target, draft = kernels.pack(target), kernels.pack(draft)
    kept = torch.arange(5, 64)
    assistant = trimmed_assistant(draft, kept)
    assert draft.get_output_embeddings().out_features == 64  # the original is untouched
    for p in prompts(4):
        ids = torch.tensor([p])
        ref = target.generate(ids, max_new_tokens=20, do_sample=False)
        got = target.generate(ids, max_new_tokens=20, do_sample=False, assistant_model=assistant,
                              num_assistant_tokens=4)
        assert got.tolist() == ref.tolist()
    logits = assistant(torch.tensor([[5, 6]])).logits[0, -1]
    assert torch.isinf(logits[:5]).all() and torch.isfinite(logits[5:]).all()
