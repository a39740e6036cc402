"""The token map: which K target tokens the trimmed drafter head keeps, and its exports.

A token map is a directory holding `token_map.safetensors` (`kept_ids`, int64, most frequent
first) and `token_map.json` (K, coverage, vocabulary size, tokenizer fingerprint, drafter,
and the calibration provenance). Exports are what serving engines read: an SGLang
`--speculative-token-map` file and EAGLE-3 `d2t` / `t2d` buffers.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import VocabtrimError
from .files import atomic_write, check_output, check_parent, fsync, replace_dir, staged
from .vocab import Counts

FORMATS = ("sglang", "eagle3")
EAGLE3_META = ("draft_vocab_size", "target_vocab_size")
FILES = ("token_map.safetensors", "token_map.json")
META_KEYS = ("k", "vocab_size", "coverage", "tokenizer")  # what `trim` always writes


def check_ids(ids: torch.Tensor, vocab_size: int, what: str = "the token map") -> None:
    """Refuse ids that are not distinct or not in [0, vocab_size).

    Draft index i stands for token ids[i]: a duplicate leaves one of its head rows out of
    the scattered distribution q (q then differs from what was sampled), and an id out of
    range wraps around or writes outside the vocabulary in the exports."""
    if ids.dim() != 1 or ids.numel() == 0:
        raise VocabtrimError(f"{what} must hold a non-empty list of token ids")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise VocabtrimError(f"{what} holds ids outside [0, {vocab_size}): {_some(bad)}")
    uniq, counts = ids.unique(return_counts=True)
    if (counts > 1).any():
        raise VocabtrimError(f"{what} holds duplicate ids: {_some(uniq[counts > 1])}")


def _some(ids: torch.Tensor, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:n].tolist())
    return shown + (f" (and {ids.numel() - n} more)" if ids.numel() > n else "")


def check_replaceable(out: Path) -> None:
    """Refuse to write a token map over anything but a token map (a kept directory, a file)."""
    out = Path(out)
    check_parent(out)
    if out.exists() and not is_token_map(out):
        raise VocabtrimError(f"refusing to overwrite {out}: it is not a token map written by vocabtrim")


def is_token_map(path: Path) -> bool:
    """A directory holding exactly the two token map files, with vocabtrim's metadata."""
    path = Path(path)
    if not path.is_dir() or sorted(p.name for p in path.iterdir()) != sorted(FILES):
        return False
    try:
        _read_meta(path)
    except VocabtrimError:
        return False
    return True


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "token_map.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VocabtrimError(f"{path} is not a valid token map ({e})") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise VocabtrimError(f"{path}/token_map.json is not a token map's metadata (lacks {', '.join(missing)})")
    if not all(isinstance(meta[k], int) and meta[k] > 0 for k in ("k", "vocab_size")):
        raise VocabtrimError(f"{path}/token_map.json: k and vocab_size must be positive integers")
    return meta


@dataclass
class TokenMap:
    kept_ids: torch.Tensor  # int64 [K], most frequent first
    meta: dict

    @property
    def k(self) -> int:
        return self.kept_ids.numel()

    def save(self, out: Path) -> None:
        """Write the directory in a temp dir beside `out`, then put it in place in one step
        (see files.replace_dir): an earlier map at `out` is replaced, anything else refused."""
        out = Path(out).resolve()  # `.` has no name to build a sibling from
        check_replaceable(out)
        with staged(out) as tmp:
            new = tmp / "map"
            new.mkdir(parents=True)
            (new / "token_map.safetensors").write_bytes(save({"kept_ids": self.kept_ids.contiguous()}))
            (new / "token_map.json").write_text(json.dumps(self.meta, indent=1))
            for f in [*(new / name for name in FILES), new]:
                fsync(f)
            replace_dir(new, out)
            fsync(out.parent)

    @classmethod
    def load(cls, path: Path) -> TokenMap:
        path = Path(path)
        if not all((path / f).is_file() for f in FILES):
            raise VocabtrimError(f"no token map at {path} (expected a directory made by `vocabtrim trim`)")
        meta = _read_meta(path)
        try:
            kept = load_file(path / "token_map.safetensors")["kept_ids"]
        except (SafetensorError, KeyError, OSError) as e:
            raise VocabtrimError(f"{path} is not a valid token map ({e})") from None
        if kept.dtype != torch.int64 or kept.dim() != 1 or kept.numel() != meta["k"]:
            raise VocabtrimError(f"{path} is not a valid token map (kept_ids shape or dtype)")
        check_ids(kept, meta["vocab_size"], f"token map {path}")
        return cls(kept, meta)

    def check_drafter(self, vocab_size: int, fingerprint: str) -> None:
        if self.meta.get("vocab_size") != vocab_size or self.meta.get("tokenizer") != fingerprint:
            raise VocabtrimError(
                f"the token map was made for another tokenizer (vocabulary {self.meta.get('vocab_size')}, "
                f"fingerprint {self.meta.get('tokenizer')}); this drafter has {vocab_size}, {fingerprint}")


def check_size_rule(keep: int | None, coverage: float | None) -> None:
    """Exactly one of K >= 1 and a coverage in (0, 1]: `trim` checks, and the CLI before loading a model."""
    if (keep is None) == (coverage is None):
        raise VocabtrimError("give exactly one of --keep and --coverage")
    if keep is not None and keep < 1:
        raise VocabtrimError(f"K must be >= 1 (--keep), got {keep}")
    if coverage is not None and not 0 < coverage <= 1:
        raise VocabtrimError(f"--coverage must be in (0, 1], got {coverage}")


def trim(counts: Counts, keep: int | None = None, coverage: float | None = None,
         always: list[int] = ()) -> TokenMap:
    """Top-K ids by count (ties: lower id first), with `always` ids forced in.

    Forced ids that did not make the cut replace the least frequent kept ones, so the map
    has exactly K entries. With `coverage`, K is the smallest that covers that fraction of
    the counted tokens."""
    c = counts.counts
    vocab = c.numel()
    total = int(c.sum())
    check_size_rule(keep, coverage)
    # stable sort on -count keeps ascending ids among equal counts: deterministic
    order = torch.sort(-c, stable=True).indices
    if coverage is not None:
        if total == 0:
            raise VocabtrimError("the counts file counted no tokens")
        cum = c[order].cumsum(0)
        keep = int(torch.searchsorted(cum, torch.tensor(coverage * total), side="left")) + 1
    if keep > vocab:
        raise VocabtrimError(f"K must be between 1 and the vocabulary size {vocab}, got {keep}")
    kept = order[:keep].tolist()
    missing = [t for t in dict.fromkeys(always) if t not in set(kept)]
    if len(missing) > keep:
        raise VocabtrimError(f"K={keep} is smaller than the {len(missing)} special tokens it must keep")
    if missing:
        kept = kept[: keep - len(missing)] + missing
    ids = torch.tensor(kept, dtype=torch.int64)
    check_ids(ids, vocab, "the trimmed map (with the tokens it must keep)")
    covered = int(c[ids].sum())
    meta = {"k": keep, "vocab_size": vocab, "coverage": covered / total if total else 0.0,
            "forced_ids": list(dict.fromkeys(always)), "tokenizer": counts.meta.get("tokenizer"),
            "calibration": counts.meta}
    return TokenMap(ids, meta)


def export(tm: TokenMap, fmt: str, out: Path) -> None:
    """Write what a serving engine reads (atomically), over nothing but an earlier export."""
    if fmt not in FORMATS:
        raise VocabtrimError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_ids(tm.kept_ids, tm.meta["vocab_size"])
    check_export_out(out)
    if fmt == "sglang":
        buf = io.BytesIO()
        torch.save(tm.kept_ids.clone(), buf)
        data = buf.getvalue()
    else:
        # EAGLE-3 draft index i stands for the i-th kept id in ascending id order:
        # target_id = i + d2t[i]; t2d marks the kept ids in the target vocabulary.
        ids = torch.sort(tm.kept_ids).values
        d2t = ids - torch.arange(ids.numel())
        t2d = torch.zeros(tm.meta["vocab_size"], dtype=torch.bool)
        t2d[ids] = True
        data = save({"d2t": d2t, "t2d": t2d}, metadata={EAGLE3_META[0]: str(ids.numel()),
                                                       EAGLE3_META[1]: str(t2d.numel())})
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))


def check_export_out(out: Path) -> None:
    """Refuse an export path holding anything but an export (either format): a user's file
    of the same name is never replaced."""
    out = Path(out)
    check_output(out)
    if out.exists() and not is_export(out):
        raise VocabtrimError(f"refusing to overwrite {out}: it is not a token map export written by vocabtrim "
                             "(an SGLang token map or EAGLE-3 d2t/t2d buffers); choose another --out")


def is_export(path: Path) -> bool:
    """Whether `path` holds what `export` writes: EAGLE-3 buffers (exactly `d2t` and `t2d`, with
    their vocabulary sizes in the metadata) or an SGLang map (a 1-D int64 tensor, torch's zip format)."""
    try:
        with safe_open(path, "pt") as f:
            return sorted(f.keys()) == ["d2t", "t2d"] and set(EAGLE3_META) <= (f.metadata() or {}).keys()
    except (SafetensorError, OSError):
        pass
    if not zipfile.is_zipfile(path):
        return False
    try:
        ids = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many types for a zip it cannot read
        return False
    return isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.dim() == 1
