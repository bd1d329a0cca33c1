"""The qwen-edge model file (`.qe`): streaming atomic writer and validating mmap reader.

`docs/model-file.md` defines every byte; this module follows it literally. The writer plans
every offset up front (sizes follow from format and shape), reserves the header's space with
the widest possible CRC values, streams tensors one at a time into a temporary file of its own
beside the destination, then writes the final header (padded with spaces to the reserved
length), fsyncs, reads the file back against its CRCs, renames and fsyncs the folder. The
reader memory-maps the file, checks everything in the documented order and hands out zero-copy
views; every problem raises `ModelFileError` naming the file, the field, what was expected and
what was found.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import math
import mmap
import os
import re
import secrets
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..errors import ConfigError, ModelFileError
from . import quant
from .config import ModelConfig

MAGIC = b"QWENEDGE"
VERSION = 1
PREAMBLE = 64
ALIGN = 64
MAX_HEADER = 64 << 20
ARCH = "qwen3_5"
SUFFIX = ".qe"
MTP_PREFIX = "mtp."
_PREAMBLE_FMT = "<8sIIIIQQ24s"  # magic, version, N, crc, reserved, D, file size, reserved
_U32_MAX = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 (zlib polynomial) of a bytes-like object, continuing from `value`."""
    return zlib.crc32(memoryview(data).cast("B"), value) & _U32_MAX


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the table: `offset` is relative to the data section."""

    name: str
    format: str
    shape: tuple[int, ...]
    offset: int
    size: int
    crc32: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "shape": list(self.shape),
            "offset": self.offset,
            "size": self.size,
            "crc32": self.crc32,
        }


@dataclass(frozen=True)
class BlobEntry:
    """An opaque byte string (tokenizer.json, ...): `offset` is relative to the data section."""

    name: str
    offset: int
    size: int
    crc32: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "size": self.size, "crc32": self.crc32}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the writer will receive: name, storage format and logical shape."""

    name: str
    format: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return quant.tensor_nbytes(self.format, self.shape)


# --- writer -------------------------------------------------------------------------------------
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
            offset = _align(offset + size)
        for name, size in blobs:
            self._blobs.append(BlobEntry(name, offset, int(size), 0))
            offset = _align(offset + int(size))
        # Reserve room for the header as it will be with the widest CRC values.
        widest = self._header_bytes(
            [
                TensorEntry(t.name, t.format, t.shape, t.offset, t.size, _U32_MAX)
                for t in self._tensors
            ],
            [BlobEntry(b.name, b.offset, b.size, _U32_MAX) for b in self._blobs],
        )
        self.header_size = len(widest)
        if self.header_size > MAX_HEADER:
            raise ModelFileError(
                f"{self.path}: header of {self.header_size} bytes exceeds {MAX_HEADER}"
            )
        self.data_offset = _align(PREAMBLE + self.header_size)
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
            pad = _align(entry.offset + entry.size) - entry.offset - entry.size
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
                _PREAMBLE_FMT,
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


def create_temporary(path: Path) -> tuple[Path, int]:
    """A new temporary file for `path` in its folder: `.<name>.<pid>.<random>.tmp`, created
    exclusively with the mode a plain open() gives (the umask applies, unlike mkstemp's 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
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


# --- reader -------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


class ModelFile:
    """A model file, memory-mapped and validated (docs/model-file.md, "A reader checks").

    Args:
        path: the `.qe` file.
        verify: also check every tensor's and blob's CRC-32 (reads the whole file).

    Attributes:
        header: the parsed JSON header.
        config: the model configuration (`ModelConfig`).
        tensors: name -> `TensorEntry`, in file order.
        blobs: name -> `BlobEntry`.

    Raises:
        ModelFileError: at the first problem found, naming file, field, expected and found.
    """

    def __init__(self, path: str | Path, *, verify: bool = False):
        self.path = Path(path)
        self._mm: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < PREAMBLE:
                    self._fail("file size", f"at least {PREAMBLE} bytes", f"{size} bytes")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: file not found") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.path}: is a folder, not a model file") from None
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{self.path}: cannot read: {e}") from None
        try:
            self.size = size
            self._validate()
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    def _fail(self, field: str, expected: str, found: str, hint: str = "") -> NoReturn:
        msg = f"{self.path}: {field}: expected {expected}, found {found}"
        raise ModelFileError(msg + (f"; {hint}" if hint else ""))

    # --- validation, in the documented order ---
    def _validate(self) -> None:
        mm = self._mm
        assert mm is not None
        magic, version, n, hcrc, res0, d, fsize, res1 = struct.unpack_from(_PREAMBLE_FMT, mm, 0)
        if magic != MAGIC:
            self._fail("magic", repr(MAGIC), repr(magic), "this is not a qwen-edge model file")
        if version != VERSION:
            hint = (
                "the file was written by a newer qwen-edge; upgrade qwen-edge to read it"
                if version > VERSION
                else "unknown version"
            )
            self._fail("version", str(VERSION), str(version), hint)
        if res0 != 0 or res1 != bytes(24):
            self._fail("reserved preamble bytes", "zeros", "non-zero bytes")
        if not 2 <= n <= MAX_HEADER:
            self._fail("header size", f"2..{MAX_HEADER}", str(n))
        if PREAMBLE + n > d:
            self._fail("data offset", f">= {PREAMBLE + n} (64 + header size)", str(d))
        if d % ALIGN:
            self._fail("data offset", f"a multiple of {ALIGN}", str(d))
        if fsize != self.size:
            what = "truncated" if self.size < fsize else "has extra bytes"
            self._fail(
                "file size", f"{fsize} bytes (from the preamble)", f"{self.size} bytes",
                f"the file is {what}; export it again or copy it completely",
            )  # fmt: skip
        if d > self.size:
            self._fail("data offset", f"<= file size {self.size}", str(d))
        raw = mm[PREAMBLE : PREAMBLE + n]
        if crc32(raw) != hcrc:
            self._fail("header crc32", f"{hcrc:#010x}", f"{crc32(raw):#010x}", "corrupt header")
        try:
            header = json.loads(
                raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            self._fail("header", "UTF-8 JSON", f"invalid data ({e})")
        if not isinstance(header, dict):
            self._fail("header", "a JSON object", type(header).__name__)
        self.data_offset = d
        self.header: dict[str, Any] = header
        self._check_fields(header)
        self.tensors = self._check_tensors(header["tensors"])
        self.blobs = self._check_blobs(header["blobs"])
        self._check_placement()
        self.config = self._check_config(header)
        self._check_tensor_set()

    def _check_fields(self, h: dict[str, Any]) -> None:
        required = {
            "arch": str, "config": dict, "quant": dict, "tensors": list, "blobs": list,
        }  # fmt: skip
        optional = {
            "generation": dict, "chat_template": str, "special_tokens": dict, "source": dict,
        }  # fmt: skip
        for key, typ in required.items():
            if key not in h:
                self._fail(f"header field '{key}'", "present", "missing")
            if not isinstance(h[key], typ):
                self._fail(f"header field '{key}'", _JSON_TYPES[typ], _json_type(h[key]))
        for key, typ in optional.items():
            if key in h and not isinstance(h[key], typ):
                self._fail(f"header field '{key}'", _JSON_TYPES[typ], _json_type(h[key]))
        if h["arch"] != ARCH:
            self._fail("arch", repr(ARCH), repr(h["arch"]), "qwen-edge runs Qwen3.5 models")

    def _entry_fields(self, kind: str, i: int, e: Any, fields: dict[str, type]) -> str:
        if not isinstance(e, dict):
            self._fail(f"{kind}s[{i}]", "an object", _json_type(e))
        name = e.get("name")
        where = f"{kind} '{name}'" if isinstance(name, str) else f"{kind}s[{i}]"
        for key, typ in fields.items():
            if key not in e:
                self._fail(f"{where} field '{key}'", "present", "missing")
            v = e[key]
            ok = _is_int(v) if typ is int else isinstance(v, typ)
            if not ok:
                self._fail(f"{where} field '{key}'", _JSON_TYPES[typ], _json_type(v))
        for key in ("offset", "size"):
            if not 0 <= e[key] <= _U64_MAX:
                self._fail(f"{where} {key}", "an unsigned 64-bit integer", str(e[key]))
        if not 0 <= e["crc32"] <= _U32_MAX:
            self._fail(f"{where} crc32", "an unsigned 32-bit integer", str(e["crc32"]))
        return where

    def _check_tensors(self, entries: list[Any]) -> dict[str, TensorEntry]:
        fields = {
            "name": str, "format": str, "shape": list, "offset": int, "size": int, "crc32": int,
        }  # fmt: skip
        out: dict[str, TensorEntry] = {}
        for i, e in enumerate(entries):
            where = self._entry_fields("tensor", i, e, fields)
            name, fmt, shape = e["name"], e["format"], e["shape"]
            if name in out:
                self._fail(f"{where}", "unique tensor names", "a second tensor of that name")
            if fmt not in quant.FORMATS:
                self._fail(f"{where} format", f"one of {', '.join(quant.FORMATS)}", repr(fmt))
            if not (1 <= len(shape) <= 4 and all(_is_int(s) and 0 < s < 1 << 40 for s in shape)):
                self._fail(f"{where} shape", "1 to 4 positive integers", json.dumps(shape))
            shape_t = tuple(shape)
            if quant.is_packed(fmt) and not quant.can_pack(shape_t):
                self._fail(
                    f"{where} shape",
                    f"a 2-D shape with columns a multiple of {quant.BLOCK_K} for {fmt}",
                    json.dumps(shape),
                )
            want = quant.tensor_nbytes(fmt, shape_t)
            if e["size"] != want:
                self._fail(f"{where} size", f"{want} bytes ({fmt} {shape})", str(e["size"]))
            out[name] = TensorEntry(name, fmt, shape_t, e["offset"], e["size"], e["crc32"])
        return out

    def _check_blobs(self, entries: list[Any]) -> dict[str, BlobEntry]:
        fields = {"name": str, "offset": int, "size": int, "crc32": int}
        out: dict[str, BlobEntry] = {}
        for i, e in enumerate(entries):
            where = self._entry_fields("blob", i, e, fields)
            if e["name"] in out:
                self._fail(where, "unique blob names", "a second blob of that name")
            out[e["name"]] = BlobEntry(e["name"], e["offset"], e["size"], e["crc32"])
        return out

    def _check_placement(self) -> None:
        spans: list[tuple[int, int, str]] = []
        for kind, entries in (("tensor", self.tensors), ("blob", self.blobs)):
            for e in entries.values():
                where = f"{kind} '{e.name}'"
                if e.offset % ALIGN:
                    self._fail(f"{where} offset", f"a multiple of {ALIGN}", str(e.offset))
                end = self.data_offset + e.offset + e.size
                if end > self.size:
                    self._fail(
                        f"{where} offset + size",
                        f"<= {self.size - self.data_offset} (the data section)",
                        f"{e.offset} + {e.size}",
                    )
                spans.append((e.offset, e.offset + e.size, where))
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                self._fail(f"{b} offset", f">= {end_a} (the end of {a})", str(start_b),
                           "tensors and blobs must not overlap")  # fmt: skip

    def _check_config(self, h: dict[str, Any]) -> ModelConfig:
        try:
            return ModelConfig.from_dict(h["config"])
        except (ConfigError, TypeError, ValueError) as e:
            raise ModelFileError(
                f"{self.path}: config: a configuration this runtime supports, found: {e}"
            ) from None

    def _check_tensor_set(self) -> None:
        expected = self.config.text_tensor_shapes()
        for name, shape in expected.items():
            if name not in self.tensors:
                self._fail(f"tensor '{name}'", "present (required by the config)", "missing")
            if self.tensors[name].shape != shape:
                self._fail(
                    f"tensor '{name}' shape", json.dumps(list(shape)),
                    json.dumps(list(self.tensors[name].shape)), "it disagrees with the config",
                )  # fmt: skip
        extra = [n for n in self.tensors if n not in expected and not n.startswith(MTP_PREFIX)]
        if extra:
            self._fail(
                f"tensor '{extra[0]}'", "only the text model's tensors (and mtp.*)",
                "a tensor the config does not have",
            )  # fmt: skip

    # --- access ---
    def verify(self) -> None:
        """Checks every tensor's and blob's CRC-32 (reads the whole file)."""
        for kind, entries in (("tensor", self.tensors), ("blob", self.blobs)):
            for e in entries.values():
                got = crc32(self._view(e.offset, e.size))
                if got != e.crc32:
                    self._fail(
                        f"{kind} '{e.name}' crc32", f"{e.crc32:#010x}", f"{got:#010x}",
                        "the file is corrupt; export or copy it again",
                    )  # fmt: skip

    def _view(self, offset: int, size: int) -> np.ndarray:
        if self._mm is None:
            raise ModelFileError(f"{self.path}: the file is closed")
        return np.frombuffer(self._mm, dtype=np.uint8, count=size, offset=self.data_offset + offset)

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor '{name}'") from None

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor: a read-only uint8 view into the mapping (no copy)."""
        e = self._entry(name)
        return self._view(e.offset, e.size)

    def array(self, name: str) -> np.ndarray:
        """A plain tensor as a read-only view of its logical shape (f32 -> float32, f16 ->
        float16, bf16 -> uint16 bits); packed tensors as their raw bytes."""
        e = self._entry(name)
        data = self._view(e.offset, e.size)
        if e.format == "f32":
            return data.view("<f4").reshape(e.shape)
        if e.format == "f16":
            return data.view("<f2").reshape(e.shape)
        if e.format == "bf16":
            return data.view("<u2").reshape(e.shape)
        return data

    def dequantize(self, name: str) -> np.ndarray:
        """A tensor as float32 of its logical shape (a view for f32, else a new array)."""
        e = self._entry(name)
        return quant.dequantize(e.format, self._view(e.offset, e.size), e.shape)

    def blob(self, name: str) -> bytes:
        """A blob's bytes (a copy)."""
        try:
            e = self.blobs[name]
        except KeyError:
            raise KeyError(f"{self.path}: no blob '{name}'") from None
        return self._view(e.offset, e.size).tobytes()

    def iter_dequantized(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.tensors:
            yield name, self.dequantize(name)

    def close(self) -> None:
        """Unmaps the file; views handed out earlier keep the mapping alive until released."""
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999: the native reader rejects it as out of range
        raise ValueError(f"number {text} is out of range")
    return value


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if v is None:
        return "null"
    for typ, label in _JSON_TYPES.items():
        if isinstance(v, typ):
            return label
    return "a number" if isinstance(v, float) else type(v).__name__


def read_header(path: str | Path) -> dict[str, Any]:
    """The validated JSON header of a model file (without checking tensor CRCs)."""
    with ModelFile(path) as mf:
        return mf.header
