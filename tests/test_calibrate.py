"""Calibration data and resumable token counting."""

import pytest
import torch
from safetensors.torch import save_file

from vocabtrim.calibrate import count_tokens, load_items, stdlib_files
from vocabtrim.errors import VocabtrimError
from vocabtrim.vocab import Counts


def test_count_resume_counts_each_item_once(tmp_path):
    items = [f"item{i}" for i in range(7)]
    seen = []

    def per_item(text, fail_at=None):
        if fail_at is not None and text == fail_at:
            raise KeyboardInterrupt
        seen.append(text)
        return [int(text[-1]), 9]

    out = tmp_path / "c.safetensors"
    with pytest.raises(KeyboardInterrupt):
        count_tokens(items, out, {"source": "raw"}, 12, lambda t: per_item(t, "item4"), save_every_s=0)
    assert Counts.load(out).meta["items_done"] == 4
    with pytest.raises(Exception, match="exists"):
        count_tokens(items, out, {"source": "raw"}, 12, per_item)
    with pytest.raises(Exception, match="other settings"):
        count_tokens(items, out, {"source": "target"}, 12, per_item, resume=True)
    c = count_tokens(items, out, {"source": "raw"}, 12, per_item, resume=True)
    assert seen == items
    assert c.counts.tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 7, 0, 0] and c.meta["tokens"] == 14


def test_load_items_formats(tmp_path):
    (tmp_path / "sb.jsonl").write_text('{"question_id": 1, "category": "qa", "turns": ["a?", "b?"]}\n'
                                       '{"prompt": "c"}\n\n{"text": "d"}\n')
    assert load_items(str(tmp_path / "sb.jsonl")) == ["a?", "c", "d"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    with pytest.raises(Exception, match="bad.jsonl:2"):
        load_items(str(tmp_path / "bad.jsonl"))
    assert len(load_items("humaneval")) == 164
    assert len(load_items("stdlib")) == len(stdlib_files()) > 100
    names = {f.name for f in stdlib_files()}
    assert "os.py" in names and not any("site-packages" in f.parts for f in stdlib_files())
    with pytest.raises(Exception, match="no calibration data"):
        load_items(str(tmp_path / "missing"))


SERVED = {  # answers a serving engine wrote, in the three shapes the README names
    "text": ('{"text": "def f(): pass"}', "def f(): pass"),
    "prompt/response": ('{"prompt": "Write f.", "response": "def f(): pass"}', "def f(): pass"),
    "messages": (('{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "f?"},'
                  ' {"role": "assistant", "content": "def f():"}, {"role": "user", "content": "and g?"},'
                  ' {"role": "assistant", "content": "def g():"}]}'), "def f():\ndef g():"),
}


@pytest.mark.parametrize("shape", SERVED)
def test_raw_counting_reads_only_what_the_assistant_wrote(tmp_path, shape):
    line, counted = SERVED[shape]
    (tmp_path / "answers.jsonl").write_text(line + "\n")
    assert load_items(str(tmp_path / "answers.jsonl"), answers=True) == [counted]


def test_prompt_mode_takes_the_prompt_of_each_shape(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(line for line, _ in SERVED.values()) + "\n")
    assert load_items(str(tmp_path / "p.jsonl")) == ["def f(): pass", "Write f.", "f?"]
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(Exception, match="no assistant turn"):
        load_items(str(tmp_path / "bad.jsonl"), answers=True)


def test_resuming_counts_with_damaged_progress_is_refused(tmp_path):
    out, meta = tmp_path / "c.safetensors", {"source": "raw"}
    for progress in ({}, {"items_done": 9, "tokens": 4}, {"items_done": "2", "tokens": 4}):
        Counts(torch.zeros(12, dtype=torch.int64), {**meta, **progress}).save(out)
        with pytest.raises(VocabtrimError, match="is damaged: its items_done and tokens"):
            count_tokens(["a", "b"], out, meta, 12, lambda text: [1], resume=True)
    save_file({"counts": torch.tensor([1.5, 2.0])}, out, metadata={"vocabtrim": "{}"})
    with pytest.raises(VocabtrimError, match="1-D int64 vector"):
        Counts.load(out)
