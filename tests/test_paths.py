"""The cache's home: a VOCABTRIM_CACHE where a file stands in the way is one line, for every
command that writes to the cache, and the file is left as it was."""

import pytest
from conftest import cli


@pytest.mark.parametrize("command", [["models", "fetch"], ["models", "list"], ["generate", "--prompt", "w1"],
                                     ["profile"]])
@pytest.mark.parametrize("under", ["", "/sub"])
def test_a_cache_where_a_file_stands_is_one_line(tmp_path, tiny_dirs, command, under):
    (tmp_path / "a_file").write_text("mine")
    models_of = ["--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"]] if command[0] != "models" else []
    r = cli(*command, *models_of, env={"VOCABTRIM_CACHE": f"{tmp_path}/a_file{under}"})
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"error: VOCABTRIM_CACHE={tmp_path}/a_file{under} cannot hold vocabtrim's cache: {tmp_path}/a_file is a "
        "file, not a directory; point VOCABTRIM_CACHE at a directory")
    assert (tmp_path / "a_file").read_text() == "mine"
