"""Where vocabtrim keeps what it fetched, converted, quantized and measured, and how an
entry is named by what it depends on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import VocabtrimError
from .files import file_in_the_way


def cache_root() -> Path:
    """`VOCABTRIM_CACHE`, else the user's cache directory; refused where a file stands in
    the way (the first write of a model, a profile or the dtype choice would fail there)."""
    env = os.environ.get("VOCABTRIM_CACHE")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    root = Path(env).expanduser() if env else Path(base) / "vocabtrim"
    block = file_in_the_way(root / "models")
    if block is not None:
        where = f"VOCABTRIM_CACHE={env}" if env else f"the cache {root}"
        raise VocabtrimError(f"{where} cannot hold vocabtrim's cache: {block} is a file, not a directory; "
                             "point VOCABTRIM_CACHE at a directory")
    return root


def cache_file(kind: str, key: dict, suffix: str, prefix: str = "") -> Path:
    """The cache entry of `kind` for `key` (whatever its content depends on): a digest of
    the key names it, so a change of any part makes another entry."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / kind / f"{prefix}{digest}{suffix}"
