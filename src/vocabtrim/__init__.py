"""vocabtrim: lossless speculative decoding with a vocabulary-trimmed drafter."""

__version__ = "0.1.0"
