"""Drafters: who proposes the tokens the target verifies.

`ModelDrafter` runs a small LM (full or trimmed head), of the target's vocabulary or, with
`CrossVocab` as its vocabulary adapter, of its own tokenizer: through the tokens both
vocabularies share and the target tokens it spells in pieces. `SuffixDrafter` matches the
recent text against the prompt, the output so far and earlier outputs, at no model cost;
`HybridDrafter` takes the suffix draft when it is expected to pay more than a model round.
"""

from .base import Drafter, Proposal
from .cross import Bridge, CrossVocab
from .hybrid import HybridDrafter
from .model import ModelDrafter
from .suffix import SuffixDrafter

__all__ = ["Bridge", "CrossVocab", "Drafter", "HybridDrafter", "ModelDrafter", "Proposal", "SuffixDrafter"]
