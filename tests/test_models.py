"""Fetching the built-in models: a stalled part download times out, parts are assembled
no larger than expected, and concurrent fetches of one model take turns."""

import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from vocabtrim import models
from vocabtrim.errors import VocabtrimError


def test_part_download_times_out(tmp_path, monkeypatch):
    stalled = tmp_path / "python"
    stalled.write_text("#!/bin/sh\nexec sleep 30\n")
    stalled.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(stalled))
    monkeypatch.setattr(models, "PART_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(VocabtrimError, match="timed out after 0.5 s"):
        models._download_parts(models.BUILTINS[models.DEFAULT_DRAFT], tmp_path / "wheels")
    assert time.monotonic() - t0 < 10


def test_assembly_stops_at_the_expected_size(tmp_path):
    b = models.Builtin("tiny", "", models.numbered_parts("tiny-part", 2), "1.0", "0" * 64, 10)
    with zipfile.ZipFile(tmp_path / "one.whl", "w") as z:
        z.writestr("tiny_part1/data/part01.bin", b"x" * 11)  # one byte more than all parts together
    (tmp_path / "two.whl").write_bytes(b"never opened")
    out = tmp_path / "tiny.gguf"
    with pytest.raises(VocabtrimError, match="more than the expected 10 bytes"):
        models._assemble(b, [tmp_path / "one.whl", tmp_path / "two.whl"], out)
    assert out.stat().st_size <= 10


def test_concurrent_fetches_take_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    downloads = []

    def download(b, dest):
        dest.mkdir(parents=True)
        downloads.append(b.name)
        return []

    def convert(gguf, out):
        time.sleep(0.3)  # long enough for the second fetch to arrive meanwhile
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_download_parts", download)
    monkeypatch.setattr(models, "_assemble", lambda b, wheels, out: out.write_bytes(b"gguf"))
    monkeypatch.setattr(models, "convert_gguf", convert)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(models.fetch, [models.DEFAULT_DRAFT] * 2))
    assert paths == [models.model_dir(models.DEFAULT_DRAFT)] * 2 and downloads == [models.DEFAULT_DRAFT]
    assert models.is_cached(models.DEFAULT_DRAFT)
