"""The `.qe` writer: plans every offset up front (sizes follow from format and shape), reserves
the header's space with the widest possible CRC values, streams tensors one at a time into a
temporary file of its own beside the destination, then writes the final header (padded with
spaces to the reserved length), fsyncs, reads the file back against its CRCs, renames and
fsyncs the folder (`docs/model-file.md`, "Writing")."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFileError
from .. import quant
from ..atomic_files import create_temporary, fsync_dir, remove_stale_temporaries
from .layout import (
    MAGIC,
    MAX_HEADER,
    PREAMBLE,
    PREAMBLE_FMT,
    U32_MAX,
    VERSION,
    BlobEntry,
    TensorEntry,
    TensorSpec,
    align,
    crc32,
)


class ModelFileWriter:
    """Writes a model file atomically, one tensor at a time (memory bounded by one tensor).

    Use as a context manager; tensors and blobs must be written in the order they were declared
    (tensors first, then blobs). On leaving the block without error the file is finalised
    (header with CRCs, fsync, a read-back against the CRCs, rename over `path`, fsync of the
    folder); on any exception, including KeyboardInterrupt, the temporary file is removed and
    `path` is left untouched.

    The temporary file is `.<name>.<pid>.<random>.tmp` in the destination's folder, created
    exclusively, so concurrent writers to one path never share it (the last rename wins, and
    the published file is always one writer's complete output). A writer holds an exclusive
    `flock` on it; temporary files of `path` left by killed writers (dead pid, no lock) are
    removed when the next writer opens (`stale_removed` lists them).

    Args:
        path: destination file.
        header: the JSON header's fields except `tensors` and `blobs` (`arch`, `config`,
            `quant`, and optionally `generation`, `chat_template`, `special_tokens`, `source`).
        tensors: every tensor, in the order they will be written.
        blobs: (name, size in bytes) of every blob, in the order they will be written.

    Raises:
        ModelFileError: an invalid plan, a write out of order or of the wrong size, a full disk
            (with the bytes needed and free), or any other I/O error.
    """

    def __init__(
        self,
        path: str | Path,
        header: dict[str, Any],
        tensors: Iterable[TensorSpec],
        blobs: Iterable[tuple[str, int]] = (),
    ):
        self.path = Path(path)
        self.tmp_path = self.path  # set by open(): the writer's own temporary file
        self.stale_removed: list[Path] = []
        self._header = dict(header)
        for key in ("tensors", "blobs"):
            if key in self._header:
                raise ValueError(f"header must not contain '{key}': the writer builds it")
        self._tensors: list[TensorEntry] = []
        self._blobs: list[BlobEntry] = []
        offset = 0
        names: set[str] = set()
        for spec in tensors:
            if spec.name in names:
                raise ModelFileError(f"{self.path}: tensor '{spec.name}' declared twice")
            names.add(spec.name)
            try:
                size = spec.nbytes
            except quant.FormatError as e:
                raise ModelFileError(f"{self.path}: tensor '{spec.name}': {e}") from None
            shape = tuple(int(s) for s in spec.shape)
            self._tensors.append(TensorEntry(spec.name, spec.format, shape, offset, size, 0))
            offset = align(offset + size)
        for name, size in blobs:
            self._blobs.append(BlobEntry(name, offset, int(size), 0))
            offset = align(offset + int(size))
        # Reserve room for the header as it will be with the widest CRC values.
        widest = self._header_bytes(
            [
                TensorEntry(t.name, t.format, t.shape, t.offset, t.size, U32_MAX)
                for t in self._tensors
            ],
            [BlobEntry(b.name, b.offset, b.size, U32_MAX) for b in self._blobs],
        )
        self.header_size = len(widest)
        if self.header_size > MAX_HEADER:
            raise ModelFileError(
                f"{self.path}: header of {self.header_size} bytes exceeds {MAX_HEADER}"
            )
        self.data_offset = align(PREAMBLE + self.header_size)
        last = self._tensors + self._blobs
        self.file_size = self.data_offset + (max(e.offset + e.size for e in last) if last else 0)
        self._next = 0  # index into tensors + blobs of the next expected write
        self._file: Any = None
        self._done = False

    def _header_bytes(self, tensors: list[TensorEntry], blobs: list[BlobEntry]) -> bytes:
        doc = dict(self._header)
        doc["tensors"] = [t.to_json() for t in tensors]
        doc["blobs"] = [b.to_json() for b in blobs]
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )

    # context manager
    def __enter__(self) -> ModelFileWriter:
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
            if isinstance(exc, OSError) and not isinstance(exc, ModelFileError):
                raise self._io_error(exc) from exc

    def open(self) -> None:
        """Creates `<path>.tmp` and reserves the whole file's space on disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.path.parent).free
        if self.file_size > free:
            raise ModelFileError(
                f"{self.path}: not enough disk space: the model file needs "
                f"{self.file_size / 1e6:.1f} MB, {free / 1e6:.1f} MB are free; free some space "
                "or write elsewhere with -o"
            )
        self.stale_removed = remove_stale_temporaries(self.path)
        try:
            self.tmp_path, fd = create_temporary(self.path)
            self._file = os.fdopen(fd, "wb")  # closed in commit/abort
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # held until closed: "alive"
            with contextlib.suppress(AttributeError, OSError, ValueError):
                # Reserve the blocks now so a full disk fails at once, not after minutes.
                # Filesystems without fallocate raise EOPNOTSUPP/EINVAL: just write.
                os.posix_fallocate(self._file.fileno(), 0, self.file_size)
            self._file.seek(self.data_offset)
        except OSError as e:
            self.abort()
            raise self._io_error(e) from e

    def _io_error(self, e: OSError) -> ModelFileError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return ModelFileError(
                f"{self.path}: the disk is full (writing a {self.file_size / 1e6:.1f} MB model "
                "file); nothing was left behind. Free some space or write elsewhere with -o"
            )
        return ModelFileError(f"{self.path}: cannot write the model file: {e}")

    def _expect(self, kind: str, name: str) -> TensorEntry | BlobEntry:
        entries: list[TensorEntry | BlobEntry] = [*self._tensors, *self._blobs]
        if self._file is None:
            raise ModelFileError(f"{self.path}: writer is not open")
        if self._next >= len(entries):
            raise ModelFileError(f"{self.path}: {kind} '{name}' was not declared")
        entry = entries[self._next]
        is_tensor = isinstance(entry, TensorEntry)
        if entry.name != name or is_tensor != (kind == "tensor"):
            what = "tensor" if is_tensor else "blob"
            raise ModelFileError(
                f"{self.path}: writes must follow the declared order: expected {what} "
                f"'{entry.name}', got {kind} '{name}'"
            )
        return entry

    def _write(self, entry: TensorEntry | BlobEntry, data: Any) -> int:
        pieces = data if isinstance(data, Iterator) else iter([data])
        pos = self.data_offset + entry.offset
        written, crc = 0, 0
        try:
            if self._file.tell() != pos:
                self._file.seek(pos)
            for piece in pieces:
                view = memoryview(np.ascontiguousarray(np.frombuffer(piece, dtype=np.uint8)))
                written += view.nbytes
                if written > entry.size:
                    break
                self._file.write(view)
                crc = crc32(view, crc)
            pad = align(entry.offset + entry.size) - entry.offset - entry.size
            if written == entry.size and pad:
                self._file.write(bytes(pad))
        except OSError as e:
            raise self._io_error(e) from e
        if written != entry.size:
            found = f"more than {entry.size}" if written > entry.size else str(written)
            raise ModelFileError(
                f"{self.path}: '{entry.name}': expected {entry.size} bytes, got {found}"
            )
        self._next += 1
        return crc

    def write_tensor(self, name: str, data: Any) -> None:
        """Appends the stored bytes of the next declared tensor: a bytes-like object, or an
        iterator of bytes-like pieces (written as they come; their sizes must add up)."""
        entry = self._expect("tensor", name)
        assert isinstance(entry, TensorEntry)
        crc = self._write(entry, data)
        i = self._tensors.index(entry)
        self._tensors[i] = TensorEntry(
            entry.name, entry.format, entry.shape, entry.offset, entry.size, crc
        )

    def write_blob(self, name: str, data: Any) -> None:
        """Appends the next declared blob."""
        entry = self._expect("blob", name)
        assert isinstance(entry, BlobEntry)
        crc = self._write(entry, data)
        i = self._blobs.index(entry)
        self._blobs[i] = BlobEntry(entry.name, entry.offset, entry.size, crc)

    def commit(self) -> None:
        """Writes the header, fsyncs, renames over the destination and fsyncs the folder."""
        if self._done:
            return
        total = len(self._tensors) + len(self._blobs)
        if self._next != total:
            entries = [*self._tensors, *self._blobs]
            self.abort()
            raise ModelFileError(
                f"{self.path}: only {self._next} of {total} tensors/blobs were written "
                f"(next: '{entries[self._next].name}'); the file was not created"
            )
        try:
            header = self._header_bytes(self._tensors, self._blobs)
            header = header + b" " * (self.header_size - len(header))
            preamble = struct.pack(
                PREAMBLE_FMT,
                MAGIC,
                VERSION,
                self.header_size,
                crc32(header),
                0,
                self.data_offset,
                self.file_size,
                bytes(24),
            )
            f = self._file
            f.truncate(self.file_size)
            f.seek(0)
            f.write(preamble)
            f.write(header)
            f.write(bytes(self.data_offset - PREAMBLE - len(header)))
            f.flush()
            os.fsync(f.fileno())
            self._read_back(header)
            os.replace(self.tmp_path, self.path)
            f.close()  # after the rename: the lock marks the file as alive until then
            self._file = None
            self._done = True
            fsync_dir(self.path.parent)
        except OSError as e:
            self.abort()
            raise self._io_error(e) from e
        except BaseException:
            self.abort()
            raise

    def _read_back(self, header: bytes) -> None:
        """Reads the finished temporary file back and checks header and every CRC, so a file
        that the disk or another process changed under us is never published."""
        with open(self.tmp_path, "rb") as f:
            f.seek(PREAMBLE)
            if f.read(len(header)) != header:
                raise ModelFileError(f"{self.tmp_path}: the header read back differs")
            for e in [*self._tensors, *self._blobs]:
                f.seek(self.data_offset + e.offset)
                left, crc = e.size, 0
                while left:
                    piece = f.read(min(left, 16 << 20))
                    if not piece:
                        break
                    crc = crc32(piece, crc)
                    left -= len(piece)
                if left or crc != e.crc32:
                    raise ModelFileError(
                        f"{self.tmp_path}: '{e.name}' read back with another CRC than written; "
                        "the disk or another process changed the file, it was not published"
                    )

    def abort(self) -> None:
        """Closes and removes the temporary file (the destination is untouched)."""
        if not self._done and self.tmp_path != self.path:
            with contextlib.suppress(FileNotFoundError):
                self.tmp_path.unlink()  # before closing: unlocked, it could look stale
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def write_model_file(
    path: str | Path,
    header: dict[str, Any],
    tensors: Iterable[tuple[TensorSpec, Any]],
    blobs: Iterable[tuple[str, Any]] = (),
) -> Path:
    """Writes a whole model file from in-memory tensors (tests, small models).

    Args:
        path: destination.
        header: header fields (see `ModelFileWriter`).
        tensors: (spec, stored bytes) pairs.
        blobs: (name, bytes) pairs.
    """
    tensors, blobs = list(tensors), list(blobs)
    specs = [s for s, _ in tensors]
    with ModelFileWriter(path, header, specs, [(n, len(bytes(b))) for n, b in blobs]) as w:
        for spec, data in tensors:
            w.write_tensor(spec.name, data)
        for name, data in blobs:
            w.write_blob(name, data)
    return Path(path)
