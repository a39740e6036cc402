"""Writes that are whole or absent: temporaries a killed writer left are removed on the next
write, and a write under a file fails in one line naming it."""

import os
from pathlib import Path

import pytest
from conftest import token_map

from vocabtrim import files
from vocabtrim.errors import VocabtrimError


DEAD_PID = 2**31 - 1  # above any pid_max: no such process


def test_temporaries_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "x.json"
    dead, live = tmp_path / f".x.json.tmp{DEAD_PID}", tmp_path / f".x.json.tmp{os.getppid()}"
    for tmp in (dead, live):
        tmp.write_text("half")
    files.atomic_write(out, lambda tmp: Path(tmp).write_text("whole"))
    assert out.read_text() == "whole" and not dead.exists() and live.exists()  # a running writer's stays
    (tmp_path / f".tm.tmp{DEAD_PID}" / "map").mkdir(parents=True)
    token_map([1, 2]).save(tmp_path / "tm")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "tm", "x.json"]


def test_a_write_under_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "f").write_text("mine")
    for write in (lambda: files.atomic_write(tmp_path / "f" / "x", lambda tmp: None),
                  lambda: token_map([1, 2]).save(tmp_path / "f" / "tm")):
        with pytest.raises(VocabtrimError, match=f"cannot write {tmp_path}/f/.*: {tmp_path}/f is a file"):
            write()
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"
