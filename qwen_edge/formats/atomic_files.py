"""Atomic publication of files: each writer writes a temporary file (or folder) of its own
beside the destination (`.<name>.<pid>.<random>.tmp`, created exclusively), fsyncs it, renames
it into place and fsyncs the folder; the temporaries that killed writers left are removed by
the next writer of the same path. The model-file writer, the safetensors writer, the exports'
side files, benchmark JSON and reports all publish this way (`docs/reliability.md`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Removes the temporary files that killed writers of `path` left behind.

    A temporary file is stale when the process named in it is gone and no writer holds its
    lock; a live writer's is never touched.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        candidate = path.parent / name
        if candidate.is_dir():  # a multi-file writer's temporary folder (the ONNX export's)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
            continue
        try:
            with open(candidate, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                candidate.unlink()
        except OSError:  # locked (alive after all), or already gone
            continue
        removed.append(candidate)
    return removed


def write_atomically(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` as the model file writer does: into a temporary file of this
    writer's own beside it (`.<name>.<pid>.<random>.tmp`, created exclusively), fsync, rename,
    fsync the folder. Readers see the old file or the whole new one; concurrent writers never
    share a temporary file; any exception removes it; killed writers' temporaries of `path`
    are removed first."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp, fd = create_temporary(path)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_temporary_folder(path: Path) -> Path:
    """A new temporary folder for the files of `path` (a writer of several files):
    `.<name>.<pid>.<random>.tmp` beside it, created exclusively; `remove_stale_temporaries`
    removes it once its process is gone."""
    tmp, _ = _claim_temporary(path, lambda tmp: tmp.mkdir())
    return tmp


@contextlib.contextmanager
def publishing(folder: Path) -> Iterator[None]:
    """Holds an exclusive lock on `folder` (flock on the folder itself, so no lock file is left
    behind) while a writer of several files renames them into place: concurrent writers
    publish one after the other, never one's file beside another's."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_temporary(path: Path) -> tuple[Path, int]:
    """A new temporary file for `path` in its folder: `.<name>.<pid>.<random>.tmp`, created
    exclusively with the mode a plain open() gives (the umask applies, unlike mkstemp's 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return _claim_temporary(path, lambda tmp: os.open(tmp, flags, 0o666))


def _claim_temporary(path: Path, create: Callable[[Path], _T]) -> tuple[Path, _T]:
    """`create`s `.<name>.<pid>.<random>.tmp` beside `path`; `create` raises FileExistsError
    when the name is taken, and another random name is tried."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number no process has: leave it
    return True


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is done
    finally:
        os.close(fd)
