"""Atomic replacement of the files and folders a user keeps.

Every output that outlives a run (a model directory, an export artifact, a datafile, a
workdir record, an embeddings file) is written beside its destination, flushed to disk
and renamed over it, so a kill or a full disk at any moment leaves either the old output
or the new one, never a part of either:

  with storage.staged_file("model.jaxexport") as staging:
      staging.write_bytes(blob)                 # renamed over model.jaxexport on success
  storage.write_text("best.json", text)

  with storage.staged_dir("workdir/model") as staging:
      ...write into staging...                  # swapped with workdir/model on success

A folder is swapped with the old one in one system call (Linux's
``renameat2(RENAME_EXCHANGE)``); where that call is missing the old folder is first renamed
to a backup, which :func:`recover_dir` puts back if a kill came between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _fsync_path(path: Path) -> None:
    """Flushes a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _staging_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}.{os.getpid()}")


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a path beside ``path`` to write; on success it is fsynced and renamed over ``path``.

    On any exception (a full disk, a kill's KeyboardInterrupt) the staging file is removed
    and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(path, "partial")
    try:
        yield staging
        _fsync_path(staging)
        os.replace(staging, path)
        _fsync_path(path.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically (see :func:`staged_file`)."""
    with staged_file(path) as staging:
        staging.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces ``path`` with ``text`` (UTF-8) atomically (see :func:`staged_file`)."""
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored in ``path`` (UTF-8), or None when there is no such file.

    Raises:
      OSError, UnicodeDecodeError, json.JSONDecodeError: a file that cannot be read as JSON.
    """
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _backup_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one system call; False where the system or file system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    # Hand-written: no library exposes renameat2, the one call that swaps two folders atomically.
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def recover_dir(path: str | os.PathLike) -> bool:
    """Puts back the backup of ``path`` left by a kill inside :func:`replace_dir`'s fallback; True if it did."""
    path = Path(path)
    backup = _backup_name(path)
    if path.exists() or not backup.is_dir():
        return False
    os.rename(backup, path)
    return True


def replace_dir(staging: Path, path: Path) -> None:
    """Moves the finished folder ``staging`` to ``path``, replacing any folder there atomically."""
    _fsync_tree(staging)
    recover_dir(path)
    if not path.exists():
        os.rename(staging, path)
    elif _exchange(staging, path):
        shutil.rmtree(staging)  # now the old folder.
    else:
        backup = _backup_name(path)
        shutil.rmtree(backup, ignore_errors=True)
        os.rename(path, backup)
        os.rename(staging, path)
        shutil.rmtree(backup)
    _fsync_path(path.parent)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty folder beside ``path`` to fill; on success it replaces ``path`` (:func:`replace_dir`).

    On any exception the staging folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(path, "partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
