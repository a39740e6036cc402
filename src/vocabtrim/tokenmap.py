"""The token map: which K target tokens the trimmed drafter head keeps, and its exports.

A token map is a directory holding `token_map.safetensors` (`kept_ids`, int64, most frequent
first) and `token_map.json` (K, coverage, vocabulary size, tokenizer fingerprint, drafter,
and the calibration provenance). Exports are what serving engines read: an SGLang
`--speculative-token-map` file and EAGLE-3 `d2t` / `t2d` buffers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .calibrate import Counts
from .errors import VocabtrimError
from .files import atomic_write

FORMATS = ("sglang", "eagle3")


@dataclass
class TokenMap:
    kept_ids: torch.Tensor  # int64 [K], most frequent first
    meta: dict

    @property
    def k(self) -> int:
        return self.kept_ids.numel()

    def save(self, out: Path) -> None:
        """Write the directory atomically (build in a temp dir, then rename over)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
            save_file({"kept_ids": self.kept_ids.contiguous()}, f"{tmp}/token_map.safetensors")
            Path(tmp, "token_map.json").write_text(json.dumps(self.meta, indent=1))
            if out.exists():
                shutil.rmtree(out)
            Path(tmp).rename(out)

    @classmethod
    def load(cls, path: Path) -> TokenMap:
        path = Path(path)
        try:
            kept = load_file(path / "token_map.safetensors")["kept_ids"]
            meta = json.loads((path / "token_map.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise VocabtrimError(f"no token map at {path} (expected a directory made by `vocabtrim trim`)") from None
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
            raise VocabtrimError(f"{path} is not a valid token map ({e})") from None
        if kept.dtype != torch.int64 or kept.dim() != 1 or kept.numel() != meta.get("k"):
            raise VocabtrimError(f"{path} is not a valid token map (kept_ids shape or dtype)")
        return cls(kept, meta)

    def check_drafter(self, vocab_size: int, fingerprint: str) -> None:
        if self.meta.get("vocab_size") != vocab_size or self.meta.get("tokenizer") != fingerprint:
            raise VocabtrimError(
                f"the token map was made for another tokenizer (vocabulary {self.meta.get('vocab_size')}, "
                f"fingerprint {self.meta.get('tokenizer')}); this drafter has {vocab_size}, {fingerprint}")


def trim(counts: Counts, keep: int | None = None, coverage: float | None = None,
         always: list[int] = ()) -> TokenMap:
    """Top-K ids by count (ties: lower id first), with `always` ids forced in.

    Forced ids that did not make the cut replace the least frequent kept ones, so the map
    has exactly K entries. With `coverage`, K is the smallest that covers that fraction of
    the counted tokens."""
    c = counts.counts
    vocab = c.numel()
    total = int(c.sum())
    if (keep is None) == (coverage is None):
        raise VocabtrimError("give exactly one of --keep and --coverage")
    # stable sort on -count keeps ascending ids among equal counts: deterministic
    order = torch.sort(-c, stable=True).indices
    if coverage is not None:
        if not 0 < coverage <= 1:
            raise VocabtrimError(f"coverage must be in (0, 1], got {coverage}")
        if total == 0:
            raise VocabtrimError("the counts file counted no tokens")
        cum = c[order].cumsum(0)
        keep = int(torch.searchsorted(cum, torch.tensor(coverage * total), side="left")) + 1
    if not 1 <= keep <= vocab:
        raise VocabtrimError(f"K must be between 1 and the vocabulary size {vocab}, got {keep}")
    kept = order[:keep].tolist()
    missing = [t for t in dict.fromkeys(always) if t not in set(kept)]
    if len(missing) > keep:
        raise VocabtrimError(f"K={keep} is smaller than the {len(missing)} special tokens it must keep")
    if missing:
        kept = kept[: keep - len(missing)] + missing
    ids = torch.tensor(kept, dtype=torch.int64)
    covered = int(c[ids].sum())
    meta = {"k": keep, "vocab_size": vocab, "coverage": covered / total if total else 0.0,
            "forced_ids": list(dict.fromkeys(always)), "tokenizer": counts.meta.get("tokenizer"),
            "calibration": counts.meta}
    return TokenMap(ids, meta)


def export(tm: TokenMap, fmt: str, out: Path) -> None:
    """Write what a serving engine reads (atomically)."""
    if fmt == "sglang":
        atomic_write(out, lambda tmp: torch.save(tm.kept_ids.clone(), tmp))
    elif fmt == "eagle3":
        # EAGLE-3 draft index i stands for the i-th kept id in ascending id order:
        # target_id = i + d2t[i]; t2d marks the kept ids in the target vocabulary.
        ids = torch.sort(tm.kept_ids).values
        d2t = ids - torch.arange(ids.numel())
        t2d = torch.zeros(tm.meta["vocab_size"], dtype=torch.bool)
        t2d[ids] = True
        meta = {"draft_vocab_size": str(ids.numel()), "target_vocab_size": str(t2d.numel())}
        atomic_write(out, lambda tmp: save_file({"d2t": d2t, "t2d": t2d}, tmp, metadata=meta))
    else:
        raise VocabtrimError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
