"""Atomic writes: every artifact appears whole or not at all, and a failed write is one line.
And a file's version, what caches of things made from a file are keyed by.

A file is built under a temporary name beside its destination (named after the writing
process), flushed to disk, then renamed into place. A killed writer leaves its temporary
behind; the next write of the same destination removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import VocabtrimError

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>


def version(path: Path) -> tuple[str, int, int]:
    """`path` as it is now (resolved path, size, modification time): a rewritten file is
    another version, so whatever was made from the old one is not reused."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    check_output(path)
    with staged(path) as tmp:
        write(str(tmp))
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)  # the rename itself


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to build it in (the directory made, left-overs of
    killed writers removed), gone afterwards; an OSError inside becomes one line naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        yield tmp
    except OSError as e:
        raise VocabtrimError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        _remove(tmp)


def check_output(path: Path) -> None:
    """Refuse, before any work, a file path that cannot be written: a directory, or one under a file."""
    check_parent(path)
    if Path(path).is_dir():
        raise VocabtrimError(f"{path} is a directory; give a file name to write")


def check_parent(path: Path) -> None:
    """Refuse a path that cannot be created because a file stands where a directory above it
    must be (checked before any work, with the file named)."""
    block = file_in_the_way(path)
    if block is not None:
        raise VocabtrimError(f"cannot write {path}: {block} is a file, not a directory")


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing directory above `path` when it is not one (a file), else None."""
    for p in Path(path).absolute().parents:
        if p.exists():
            return None if p.is_dir() else p
    return None


def fsync(path: Path) -> None:
    """Flush a file's or a directory's contents to the disk (rename is atomic, not durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale(path: Path) -> None:
    """Delete the temporaries of `path` that writers no longer running left behind."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and not _running(int(pid)):
            _remove(tmp)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


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
