"""The text of a growing answer, released as it becomes final.

Streaming decodes the whole answer at each step and releases only what can no longer
change: a trailing U+FFFD may be half of a UTF-8 character still to come, and text that
could be the start of a stop string is held until it is known not to be one. With stop
strings the text ends before the first of them, as OpenAI's API returns it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()):
        self.decode, self.stops = decode, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.shown = 0  # characters released so far
        self.stopped = False  # a stop string was seen: the text is complete

    def push(self, ids: list[int]) -> str:
        """The text that these further tokens made final."""
        self.ids += ids
        text = self._text()
        return self._release(text, len(text) if self.stopped else self._final(text))

    def finish(self) -> str:
        """The text not released yet: the answer is over, nothing is held back."""
        text = self._text()
        return self._release(text, len(text))

    @property
    def text(self) -> str:
        return self._text()

    def _text(self) -> str:
        text = self.decode(self.ids)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        self.stopped = bool(cuts)
        return text[:min(cuts)] if cuts else text

    def _final(self, text: str) -> int:
        """Where the text that cannot change any more ends."""
        end = len(text.rstrip("\ufffd"))
        held = max((n for s in self.stops for n in range(1, min(len(s) - 1, end) + 1)
                    if text[end - n:end] == s[:n]), default=0)  # could still become a stop string
        return end - held

    def _release(self, text: str, end: int) -> str:
        out = text[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out


class Printer:
    """Prints the text of accepted tokens to stdout as it grows (as a `TextStream` releases it)."""

    def __init__(self, tokenizer):
        self.text = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    def __call__(self, tokens: list[int]) -> None:
        sys.stdout.write(self.text.push(tokens))
        sys.stdout.flush()

    def finish(self) -> None:
        """Print what is still held back (text may really end in U+FFFD), then a newline."""
        sys.stdout.write(self.text.finish() + "\n")
        sys.stdout.flush()
