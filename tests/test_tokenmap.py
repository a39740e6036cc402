"""Top-K token maps and their SGLang / EAGLE-3 exports; a map is never half written, and
nothing that is not a map is overwritten; bad ids are refused."""


import pytest
import torch

from vocabtrim.tokenmap import TokenMap, export, trim
from vocabtrim.vocab import Counts


def counts_of(values: list[int], tokenizer="fp") -> Counts:
    return Counts(torch.tensor(values, dtype=torch.int64), {"tokenizer": tokenizer})


def test_top_k_is_deterministic_and_forces_special_tokens():
    c = counts_of([5, 9, 9, 0, 3, 9, 1, 0])
    assert trim(c, keep=3).kept_ids.tolist() == [1, 2, 5]  # ties: lower id first
    assert trim(c, keep=3, always=[7]).kept_ids.tolist() == [1, 2, 7]
    assert trim(c, keep=3, always=[2]).kept_ids.tolist() == [1, 2, 5]
    tm = trim(c, coverage=0.75)  # 27 of 36 counted tokens need ids 1, 2, 5
    assert tm.kept_ids.tolist() == [1, 2, 5] and tm.meta["coverage"] == pytest.approx(27 / 36)
    assert trim(c, coverage=0.76).k == 4
    for bad in ({"keep": 0}, {"keep": 9}, {"coverage": 1.5}, {}):
        with pytest.raises(Exception, match="K must|coverage|exactly one"):
            trim(c, **bad)


def test_exports_round_trip(tmp_path):
    from safetensors import safe_open

    tm = TokenMap(torch.tensor([40, 3, 17, 1]), {"k": 4, "vocab_size": 64})
    export(tm, "sglang", tmp_path / "hot.pt")
    hot = torch.load(tmp_path / "hot.pt", weights_only=True)
    assert hot.dtype == torch.int64 and hot.tolist() == [40, 3, 17, 1]
    export(tm, "eagle3", tmp_path / "e3.safetensors")
    with safe_open(tmp_path / "e3.safetensors", "pt") as f:
        d2t, t2d, meta = f.get_tensor("d2t"), f.get_tensor("t2d"), f.metadata()
    assert d2t.dtype == torch.int64 and t2d.dtype == torch.bool and t2d.numel() == 64
    assert (torch.arange(4) + d2t).tolist() == [1, 3, 17, 40]
    assert t2d.nonzero().flatten().tolist() == [1, 3, 17, 40] and meta["draft_vocab_size"] == "4"


