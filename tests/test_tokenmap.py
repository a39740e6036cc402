"""Top-K token maps and their SGLang / EAGLE-3 exports; a map is never half written, and
nothing that is not a map is overwritten; bad ids are refused."""


import shutil

import pytest
import torch
from conftest import snapshot, tiny_model, token_map
from safetensors.torch import save_file

from vocabtrim import files, tokenmap
from vocabtrim.errors import VocabtrimError
from vocabtrim.heads import Head
from vocabtrim.tokenmap import FORMATS, TokenMap, export, trim
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


def test_export_replaces_only_an_export(tmp_path):
    out = tmp_path / "hot"
    for fmt in ("sglang", "eagle3", "sglang"):
        export(token_map([7, 3, 9]), fmt, out)
        assert tokenmap.is_export(out)
    assert torch.load(out, weights_only=True).tolist() == [7, 3, 9]
    torch.save({"kept_ids": torch.tensor([1])}, tmp_path / "dict.pt")  # torch's format, another content
    save_file({"d2t": torch.zeros(2)}, tmp_path / "half.safetensors")
    for name in ("dict.pt", "half.safetensors"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(VocabtrimError, match=f"refusing to overwrite {tmp_path}/{name}"):
            export(token_map([7, 3, 9]), "eagle3", tmp_path / name)
        assert (tmp_path / name).read_bytes() == before
