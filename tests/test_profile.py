"""The machine profile the cost rule reads: its measurement on tiny models, the cache,
interpolation, the timing of a forward through the target seam, and the command."""

import json
from dataclasses import asdict

import pytest
import torch
from conftest import cli, tiny_pair, tiny_tokenizer

from vocabtrim import profile
from vocabtrim.models import Loaded
from vocabtrim.profile import Profile
from vocabtrim.target import TorchTarget

V = 64


def loaded(model, name: str) -> Loaded:
    return Loaded(name, model, tiny_tokenizer(V), "float32")


def pair(target_name: str = "t", draft_name: str = "d") -> tuple[Loaded, Loaded]:
    target, draft = tiny_pair()
    return loaded(target, target_name), loaded(draft, draft_name)


def test_quick_profile_is_measured_cached_and_plotted(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    tgt, drf = pair("tiny-target", "tiny-draft")
    p = profile.for_pair(tgt, drf)
    assert p.quick and len(p.target_ms[str(profile.QUICK_CONTEXT)]) == max(profile.QUICK_N)
    assert p.verify_ms(40) > 0 and p.draft_step_ms(V) > 0 and p.prefill_tokens_per_s > 0
    monkeypatch.setattr(profile, "measure", lambda *a, **k: pytest.fail("measured twice"))
    assert profile.for_pair(tgt, drf) == p  # cached by what changes it
    assert p.key["target"] == "tiny-target" and p.key["threads"] == torch.get_num_threads()
    p.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "drafter step" in p.table()


def test_full_profile_times_every_n_at_two_contexts():
    p = profile.measure(*pair(), progress=False)
    assert len(p.target_ms) == 2 and "200" in p.target_ms  # the long one fits the tiny context
    assert all(len(ms) == 32 for ms in p.target_ms.values())
    assert len(p.draft_ms) == 2 and not p.quick


def test_profile_interpolates_contexts_and_head_rows():
    p = profile.Profile({}, {"200": [10.0, 20.0], "1000": [30.0, 40.0]}, {"100": 5.0, "300": 9.0}, 1.0, 1.0)
    assert p.verify_ms(1, 600) == 20.0 and p.verify_ms(4, 200) == 40.0
    assert p.draft_step_ms(200) == 7.0
    noisy = profile.Profile({}, {"200": [10.0, 12.0, 11.0]}, {"100": 5.0, "300": 9.0}, 1.0, 1.0)
    assert noisy.verify_ms(40) == 11.0  # a last timing below the one before: extended flat


def test_a_forward_is_timed_on_new_tokens_after_the_cached_context():
    """forward_ms reads the context once, then each repeat scores n other new tokens after
    it; prefill_s reads a context into the target's emptied cache."""
    calls = []
    ms = profile.forward_ms(lambda seq, n: calls.append((list(seq), n)), 64, [5, 6], 3, repeats=2)
    assert ms >= 0 and calls == [([5, 6], 1), ([5, 6, 40, 41, 42], 3), ([5, 6, 41, 42, 43], 3)]
    target = TorchTarget(tiny_pair()[0])
    target.logits(list(range(5, 25)), 1)
    assert profile.prefill_s(target, [5, 6, 7]) > 0 and target.lm.cache.get_seq_length() == 3


def test_a_damaged_cached_profile_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    tgt, drf = pair()
    path = profile.path_for(profile.key(tgt, drf, "float32"))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert profile.load(profile.key(tgt, drf, "float32")) is None
    assert profile.for_pair(tgt, drf).quick
    assert json.loads(path.read_text())["quick"]


def test_profile_command_on_tiny_models(tiny_dirs, tmp_path):
    env = {"VOCABTRIM_CACHE": str(tmp_path)}
    r = cli("profile", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            env=env)
    assert r.exit_code == 0, r.output
    assert "target @200" in r.output and "drafter step" in r.output
    assert len(list((tmp_path / "profiles").glob("*.png"))) == 1
    r = cli("generate", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--prompt", "w1 w2", "--max-new-tokens", 8, "--policy", "cost", "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["policy"].startswith("cost")
    r = cli("profile", "--target", tiny_dirs["target"], "--draft", tiny_dirs["draft"], "--dtype", "float32",
            "--draft-quant", "int8", env=env)  # a scheme is profiled on its own
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "profiles").glob("*.png"))) == 2


PROFILE = Profile({"machine": "here"}, {"64": [1.0, 1.5, 2.0]}, {"64": 0.5, "32": 0.3}, 900.0, 2000.0, True)


@pytest.mark.parametrize("damage", [
    "{broken", "[1, 2]", json.dumps({**asdict(PROFILE), "target_ms": [1.0]}),
    json.dumps({**asdict(PROFILE), "draft_ms": {"64": 0.5}}),
    json.dumps({**asdict(PROFILE), "prefill_tokens_per_s": -1}),
    json.dumps({**asdict(PROFILE), "target_ms": {"64": [1.0, "slow"]}}), json.dumps({**asdict(PROFILE), "extra": 1}),
])
def test_a_damaged_profile_is_named_and_measured_again(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setenv("VOCABTRIM_CACHE", str(tmp_path))
    path = profile.save(PROFILE)
    assert profile.load(PROFILE.key) == PROFILE
    path.write_text(damage)
    assert profile.load(PROFILE.key) is None
    assert capsys.readouterr().err.strip() == f"warning: {path} is not a whole profile; measuring again"
