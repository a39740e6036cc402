"""Where vocabtrim keeps what it fetched, converted, quantized and measured, and how an
entry is named by what it depends on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    """`VOCABTRIM_CACHE`, else the user's cache directory."""
    env = os.environ.get("VOCABTRIM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vocabtrim"


def cache_file(kind: str, key: dict, suffix: str, prefix: str = "") -> Path:
    """The cache entry of `kind` for `key` (whatever its content depends on): a digest of
    the key names it, so a change of any part makes another entry."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / kind / f"{prefix}{digest}{suffix}"
