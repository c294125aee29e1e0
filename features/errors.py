"""The project's one error base class, in the lowest layer so that features/, models/ and pipeline/ can all use it.

Every error emoflow raises on purpose (bad input, a missing file, a full disk, a locked store, a diverged fold)
derives from :class:`EmoflowError` and carries a message that names the file/key and what to do. The CLI turns
exactly these into one line and exit 2; anything else is a bug and keeps its traceback. Subclasses also keep their
historical bases (``ValueError``, ``RuntimeError``, ...) so existing ``except ValueError`` callers still work.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class EmoflowError(Exception):
    """An error a person can act on; its message says which file/key and what to do."""


class ConfigError(EmoflowError, ValueError):
    """An unknown name (feature set, model, plan, dataset) or a bad setting."""


class DiskFullError(EmoflowError, OSError):
    """A write failed because the disk (or a file-size limit) is full; finished work is kept."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ...: 'path'"
        return str(self.strerror)


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _FULL


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent); None when unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def disk_full_error(path: str | os.PathLike, e: OSError, needed: int | None, kept: str) -> DiskFullError:
    """One message for every full-disk write: the path, the space needed (an estimate) and free, and what is kept."""
    why = "file size limit reached (RLIMIT_FSIZE/ulimit -f)" if e.errno == errno.EFBIG else "no space left on device"
    need = f"needs about {human_bytes(needed)}, " if needed is not None else ""
    msg = (f"{path}: {why} — {need}{human_bytes(free_bytes(path))} free; "
           f"{kept}; free some space and rerun the same command (it resumes)")
    err = DiskFullError(e.errno, msg)
    err.filename = os.fspath(path)
    return err


__all__ = ["EmoflowError", "ConfigError", "DiskFullError", "is_disk_full", "free_bytes", "human_bytes",
           "disk_full_error"]
