"""Where engines are put together: the method grammar parsed into a Spec (every
documented method, and the refusals), and engines with their policies built from one."""

import pytest
import torch
from conftest import tiny_pair, tiny_tokenizer

from vocabtrim import assembly, profile
from vocabtrim.assembly import Assembler, Parts, EngineSettings, parse_method
from vocabtrim.bench.methods import METHODS, parse_methods
from vocabtrim.drafters import HybridDrafter, ModelDrafter, SuffixDrafter
from vocabtrim.errors import VocabtrimError
from vocabtrim.models import Loaded
from vocabtrim.policies import AdaEDL, Cost, Static

# every method the README and docs/bench.md name, written out: a change in parsing shows here
# method:                 (kind,       head,      weights, policy,   cross, ngram)
EXPECTED = {
    "ar":                   ("ar",       "full",    None,    "static", False, False),
    "sd":                   ("sd",       "full",    None,    "static", False, False),
    "sd+vt":                ("sd",       "trimmed", None,    "static", False, False),
    "sd+adaedl":            ("sd",       "full",    None,    "adaedl", False, False),
    "sd+vt+adaedl":         ("sd",       "trimmed", None,    "adaedl", False, False),
    "sd+cost":              ("sd",       "full",    None,    "cost",   False, False),
    "sd+vt+cost":           ("sd",       "trimmed", None,    "cost",   False, False),
    "sd+vt+q8":             ("sd",       "trimmed", "int8",  "static", False, False),
    "sd+vt+q4":             ("sd",       "trimmed", "int4",  "static", False, False),
    "sd+q8+adaedl":         ("sd",       "full",    "int8",  "adaedl", False, False),
    "suffix":               ("suffix",   "full",    None,    "static", False, False),
    "suffix+cost":          ("suffix",   "full",    None,    "cost",   False, False),
    "hybrid":               ("hybrid",   "full",    None,    "static", False, False),
    "hybrid+vt":            ("hybrid",   "trimmed", None,    "static", False, False),
    "hybrid+vt+cost":       ("hybrid",   "trimmed", None,    "cost",   False, False),
    "hybrid+vt+q4+cost":    ("hybrid",   "trimmed", "int4",  "cost",   False, False),
    "hybrid+q8+cost":       ("hybrid",   "full",    "int8",  "cost",   False, False),
    "hybrid+x+cost":        ("hybrid",   "full",    None,    "cost",   True,  False),
    "hybrid+x+ngram":       ("hybrid",   "full",    None,    "static", True,  True),
    "hf":                   ("hf",       "full",    None,    "static", False, False),
    "hf+x":                 ("hf",       "full",    None,    "static", True,  False),
    "pld":                  ("pld",      "full",    None,    "static", False, False),
    "x":                    ("sd",       "full",    None,    "static", True,  False),
    "x+ngram":              ("sd",       "full",    None,    "static", True,  True),
    "x+ngram+cost":         ("sd",       "full",    None,    "cost",   True,  True),
    "llamacpp":             ("llamacpp", "full",    None,    "static", False, False),
}


@pytest.mark.parametrize("name", sorted(set(METHODS) | set(EXPECTED)))
def test_every_documented_method_parses(name):
    spec = parse_method(name)
    assert spec.name == name and spec.kind in assembly.KINDS and spec.kind != "x"
    head = "trimmed" if spec.trimmed else "full"
    assert (spec.kind, head, spec.weights, spec.policy, spec.cross, spec.ngram) == EXPECTED[name]
    assert spec.model == (spec.kind in ("sd", "hybrid"))


@pytest.mark.parametrize("name, words", [
    ("magic", "unknown method 'magic'"),  # no such kind
    ("sd+turbo", "unknown method"),  # no such part
    ("sd+vt+vt", "unknown method"),  # a part twice
    ("sd+ngram", "ngram needs x"),
    ("hybrid+ngram", "ngram needs x"),
    ("x+vt", "the token map is in the target's tokens"),
    ("sd+x+vt", "the token map is in the target's tokens"),
    ("sd+q8+q4", "one of q8/q4"),
    ("sd+adaedl+cost", "one of adaedl/cost"),
    ("ar+vt", "ar takes no vt"),
    ("ar+cost", "ar takes no cost"),
    ("pld+x", "pld takes no x"),
    ("suffix+vt", "suffix takes no vt"),
    ("suffix+x", "suffix takes no x"),
    ("hf+q4", "hf takes no q4"),
    ("x+x", "x takes no x"),
])
def test_unknown_or_incompatible_parts_are_refused(name, words):
    with pytest.raises(VocabtrimError, match=words):
        parse_method(name)


def test_a_method_list_keeps_its_order_once_each():
    assert [s.name for s in parse_methods(" ar, sd+vt ,ar,,hybrid ")] == ["ar", "sd+vt", "hybrid"]
    with pytest.raises(VocabtrimError, match="no method given"):
        parse_methods(" , ")
    with pytest.raises(VocabtrimError, match="unknown method 'warp'"):
        parse_methods("ar,warp")


FLAT = profile.Profile({}, {"200": [100.0] * 40}, {"100": 10.0, "200": 10.0}, 1000.0, 1000.0)


@pytest.fixture
def assembler(monkeypatch) -> Assembler:
    """The tiny pair with a token map of 40 ids; the cost methods read a flat profile."""
    monkeypatch.setattr(profile, "for_pair", lambda target, drafter: FLAT)
    target, draft = (Loaded(n, m, tiny_tokenizer(64), "float32") for n, m in zip("td", tiny_pair()))
    return Assembler(Parts(target, draft, torch.arange(40), settings=EngineSettings(draft_len=3)))


def test_engines_are_built_as_their_spec_says(assembler):
    engine, policy = assembler.build(parse_method("ar"))
    assert engine.drafter is None and isinstance(policy, Static) and policy.max_len == 3
    engine, policy = assembler.build(parse_method("sd+vt+adaedl"))
    assert isinstance(engine.drafter, ModelDrafter) and engine.drafter.head_rows == 40
    assert isinstance(policy, AdaEDL)
    engine, policy = assembler.build(parse_method("sd"), "heuristic:start=2")  # generate --policy
    assert engine.drafter.head_rows == 64 and policy.spec() == "heuristic:start=2,max=16"
    engine, policy = assembler.build(parse_method("suffix"))
    assert isinstance(engine.drafter, SuffixDrafter) and engine.drafter.costs is None


def test_the_cost_rule_and_the_drafters_share_one_set_of_costs(assembler):
    engine, policy = assembler.build(parse_method("hybrid+vt+cost"))
    hybrid = engine.drafter
    assert isinstance(hybrid, HybridDrafter) and isinstance(policy, Cost)
    assert policy.costs is hybrid.costs is hybrid.suffix.costs  # first-draft acceptance learnt once
    assert policy.costs.t_draft == 10.0 and policy.costs.max_len == 32
    _, again = assembler.build(parse_method("hybrid+vt+cost"))
    assert again is not policy and again.costs is not policy.costs  # a fresh policy per build


def test_what_a_spec_needs_and_lacks_is_a_one_line_error(assembler):
    with pytest.raises(VocabtrimError, match="the target alone drafts none"):
        assembler.build(parse_method("ar"), "cost")
    bare = Assembler(Parts(assembler.parts.target, assembler.parts.drafter))
    with pytest.raises(VocabtrimError, match="needs a token map"):
        bare.build(parse_method("sd+vt"))


@pytest.mark.parametrize("name, words", [("x", "x needs a drafter model of another tokenizer"),
                                         ("sd", "sd needs a drafter model")])
def test_a_method_without_its_drafter_model_is_a_one_line_error(assembler, name, words):
    alone = Assembler(Parts(assembler.parts.target))
    with pytest.raises(VocabtrimError, match=words):
        alone.build(parse_method(name))
