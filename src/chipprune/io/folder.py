"""Output folders written as units.

A run claims its output folder before any work (``claim_folder``): the path is checked (a folder,
under a parent that can be written, not already holding results unless the user said to replace
them) and locked against a second run writing to it at the same time. A folder that must change as
a whole (a pruned folder) is filled in a hidden sibling and renamed into place (``new_folder``):
readers see the old folder or the new one, never files from two runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ChipPruneError
from .atomic import UMASK

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still apply
    fcntl = None  # type: ignore[assignment]

__all__ = ["claim_folder", "new_folder", "file_sha256", "check_writable"]

_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (descriptor, depth): a claim is re-entrant in one process


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: str | Path, *, folder: bool, what: str = "--out") -> Path:
    """Refuse, before any work, an output path of the wrong kind or under a folder that cannot be written."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ChipPruneError(f"cannot write {what} {path}: it is {kind}; give the path of {'a folder' if folder else 'a file'}")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ChipPruneError(f"cannot write {what} {path}: {ancestor} is a file, so nothing can be written under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ChipPruneError(f"cannot write {what} {path}: no permission to write in {ancestor}; choose another {what}")
    return path


@contextmanager
def claim_folder(folder: str | Path, *, overwrite: bool = False, resumable: bool = False, what: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` for writing until the block ends: checked writable, locked against other
    processes, and refused when it already holds files unless ``overwrite`` (it will be replaced) or
    ``resumable`` (the run continues what is there)."""
    folder = check_writable(folder, folder=True, what=what)
    with _lock(folder, what):
        _tidy_leftovers(folder)
        if not (overwrite or resumable) and folder.is_dir() and any(folder.iterdir()):
            raise ChipPruneError(f"{what} {folder} already holds results; --overwrite replaces it as a whole, or choose another {what}")
        yield folder


@contextmanager
def new_folder(folder: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A hidden sibling of ``folder`` to fill; when the block ends without error it takes the place
    of ``folder`` as a whole (an existing one only with ``overwrite``), else it is removed."""
    folder = Path(folder)
    with claim_folder(folder, overwrite=overwrite):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".new"))
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp's folders are private
        try:
            yield tmp
            _swap_in(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _tidy_leftovers(folder: Path) -> None:
    """What a killed run left beside ``folder`` (we hold its lock): an unfinished new folder goes; a
    folder moved aside just before its replacement moved in comes back."""
    if not folder.parent.is_dir():
        return
    # Exactly our own names (mkdtemp's and _swap_in's 8 characters): 'out.x' has leftovers of its own.
    mine = re.compile(rf"\.{re.escape(folder.name)}\.[A-Za-z0-9_]{{8}}\.(new|old)")
    leftovers = sorted(p for p in folder.parent.iterdir() if mine.fullmatch(p.name))
    for path in leftovers:
        if path.suffix == ".old" and not folder.exists():
            os.rename(path, folder)
            warnings.warn(f"restored {folder}, which an interrupted run had moved aside to replace it")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: Path, folder: Path) -> None:
    # Two renames: the old folder moves aside (still whole if we are killed here), the new one moves in.
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(folder, old)
    os.rename(tmp, folder)
    _sync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


@contextmanager
def _lock(folder: Path, what: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = (folder.parent / f".{folder.name}.lock").resolve()
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ChipPruneError(f"another chipprune run is writing {folder} (lock {path}); wait for it to end, or choose another {what}") from None
        _HELD[path] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _HELD[path]
        if depth > 1:
            _HELD[path] = (fd, depth - 1)
        else:
            del _HELD[path]
            os.close(fd)  # releases the lock; the empty lock file stays (removing it would race a waiting run)
