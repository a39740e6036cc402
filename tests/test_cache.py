"""The target's KV cache: a crop back to a shared prefix scores exactly as a fresh forward."""

import torch
from conftest import tiny_pair

from vocabtrim.cache import CachedLM


@torch.inference_mode()
def test_cache_crop_matches_fresh_forward():
    target, _ = tiny_pair()
    lm = CachedLM(target)
    seq = list(range(5, 30))
    lm.hidden(seq, 1)
    branch = seq[:17] + [40, 41, 42]  # drop 8 cached tokens, add 3 new ones
    got = lm.hidden(branch, 3)
    assert lm.cache.get_seq_length() == len(branch)
    fresh = target.model(input_ids=torch.tensor([branch])).last_hidden_state[0, -3:]
    torch.testing.assert_close(got, fresh, rtol=1e-4, atol=1e-4)
    again = lm.hidden(branch + [43], 1)  # and it keeps extending correctly
    fresh = target.model(input_ids=torch.tensor([branch + [43]])).last_hidden_state[0, -1:]
    torch.testing.assert_close(again, fresh, rtol=1e-4, atol=1e-4)
