"""A vocabulary as data: its identity (the fingerprint token maps and counts are checked
against), the bytes each token stands for, and token counts over it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import VocabtrimError
from .files import atomic_write


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a vocabulary: the same token strings at the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2 byte-level BPE writes byte b as one printable character; the inverse map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for (None where unknown): special tokens by their
    text, byte-level BPE through the byte alphabet, SentencePiece with its space marker
    and byte fallback."""
    vocab = tokenizer.get_vocab()
    out: list[bytes | None] = [None] * (max(vocab.values()) + 1)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    byte_level = "ByteLevel" in str(tokenizer.backend_tokenizer.decoder)
    of_char = _byte_of_char()
    for piece, i in vocab.items():
        if i in special:
            out[i] = piece.encode()
        elif byte_level:
            out[i] = bytes(of_char[c] for c in piece) if all(c in of_char for c in piece) else None
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("\u2581", " ").encode()
    return out


@dataclass
class Counts:
    """Token counts over a vocabulary plus where they came from."""

    counts: torch.Tensor  # int64 [vocab]
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = save({"counts": self.counts}, metadata={"vocabtrim": json.dumps(self.meta)})
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))

    @classmethod
    def load(cls, path: Path) -> Counts:
        """The counts file at `path`, checked whole: one int64 vector of counts >= 0 and a
        JSON object of provenance (a resumed run reads its progress from it)."""
        try:
            tensors = load_file(path)
            with safe_open(path, "pt") as f:
                meta = json.loads((f.metadata() or {})["vocabtrim"])
            counts = tensors["counts"]
        except FileNotFoundError:
            raise VocabtrimError(f"counts file not found: {path}") from None
        except (SafetensorError, KeyError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise VocabtrimError(f"{path} is not a vocabtrim counts file ({e})") from None
        if not isinstance(meta, dict):
            raise VocabtrimError(f"{path} is not a vocabtrim counts file (its metadata is not a JSON object)")
        if counts.dtype != torch.int64 or counts.dim() != 1 or not counts.numel() or bool((counts < 0).any()):
            raise VocabtrimError(f"{path} is not a vocabtrim counts file (counts must be a 1-D int64 vector >= 0)")
        return cls(counts, meta)
