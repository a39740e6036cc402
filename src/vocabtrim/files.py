"""Atomic writes: every artifact appears whole or not at all."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import VocabtrimError

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    if path.is_dir():
        raise VocabtrimError(f"{path} is a directory; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(new: Path, out: Path) -> None:
    """Move the directory `new` to `out`, replacing the directory there, if any.

    A directory cannot be renamed over a non-empty one, and renaming the old one aside
    first leaves a moment with nothing at `out` (a kill there loses it). On Linux one
    renameat2(RENAME_EXCHANGE) swaps the two atomically instead: readers and a kill always
    find a whole old or a whole new directory at `out`. Elsewhere, or on a file system
    without the exchange, the old one is renamed aside for the instant between two renames.
    """
    if not out.exists():
        new.rename(out)
        return
    if not _exchange(new, out):
        aside = new.with_name(f"{new.name}.old")
        out.rename(aside)
        new.rename(out)
        new = aside
    shutil.rmtree(new)  # now the old directory


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not supported."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
