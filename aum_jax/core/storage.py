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

Nothing a command did not write is deleted or replaced: a command checks each output path
before it starts (:func:`check_output_file`, :func:`check_output_dir`): an existing file is
replaced only with ``--overwrite``, and a folder only with ``--overwrite`` and only if it holds
nothing but what that kind of output holds (``own``: its file-name patterns), which
:func:`replace_dir` checks again at the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import json
import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from aum_jax.core.errors import UserError

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class OutputExistsError(UserError, FileExistsError):
    """An output path that holds something this command would replace or delete without leave."""


def foreign_entries(folder: Path, own: Collection[str]) -> list[str]:
    """The names in ``folder`` that match none of the file-name patterns ``own``, sorted."""
    return sorted(name for name in os.listdir(folder) if not any(fnmatch.fnmatchcase(name, p) for p in own))


def check_output_file(path: str | os.PathLike | None, flag: str, *, overwrite: bool = False) -> None:
    """Refuses, before anything is written, an output file path a command may not replace.

    Args:
      path: the path the command will write (None: no such output; nothing to check).
      flag: the option that named it, for the message (``--json``).
      overwrite: the user's ``--overwrite``: an existing file may be replaced.

    Raises:
      OutputExistsError: ``path`` is a folder, or an existing file without ``overwrite``.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{flag} {path} exists; pass --overwrite to replace it")


def check_output_dir(path: str | os.PathLike, flag: str, own: Collection[str], *, overwrite: bool = False) -> None:
    """Refuses, before anything is written, an output folder a command may not replace.

    A missing path or an empty folder is always fine; a folder that holds only what this kind of
    output holds (``own``) is replaced with ``overwrite``; one that holds anything else never is.

    Raises:
      OutputExistsError: ``path`` is a file, a folder holding other files, or a previous output
        of this kind without ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a file; name a folder")
    if not path.is_dir() or not os.listdir(path):
        return
    foreign = foreign_entries(path, own)
    if foreign:
        raise OutputExistsError(f"{flag} {path} holds files this command did not write ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}); name a new or empty folder")
    if not overwrite:
        raise OutputExistsError(f"{flag} {path} exists; pass --overwrite to replace it")


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


def replace_dir(staging: Path, path: Path, own: Collection[str]) -> None:
    """Moves the finished folder ``staging`` to ``path``, replacing any folder there atomically.

    Args:
      staging: the new folder, beside ``path``.
      path: the destination.
      own: the file-name patterns of what this kind of folder holds: an old folder at ``path``
        holding anything else is not replaced.

    Raises:
      OutputExistsError: ``path`` is a file, or a folder holding entries outside ``own``.
    """
    recover_dir(path)
    if path.exists():
        foreign = foreign_entries(path, own) if path.is_dir() else ["a file"]
        if foreign:
            raise OutputExistsError(f"{path} holds files that were not written as such a folder "
                                    f"({', '.join(foreign[:3])}); it is not replaced")
    _fsync_tree(staging)
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
def staged_dir(path: str | os.PathLike, own: Collection[str]) -> Iterator[Path]:
    """Yields an empty folder beside ``path`` to fill; on success it replaces ``path`` (:func:`replace_dir`).

    The folder is made with the user's umask. On any exception the staging folder is removed
    and ``path`` is untouched; ``own`` is as :func:`replace_dir` takes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(path, "partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, path, own)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
