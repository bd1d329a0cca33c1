"""The `.qe` reader: memory-maps the file, checks everything in the order `docs/model-file.md`
documents ("A reader checks") and hands out zero-copy views; every problem raises
`ModelFileError` naming the file, the field, what was expected and what was found."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ...errors import ConfigError, ModelFileError
from .. import quant
from ..config import MTP_PREFIX, ModelConfig
from .layout import (
    ALIGN,
    ARCH,
    MAGIC,
    MAX_HEADER,
    PREAMBLE,
    PREAMBLE_FMT,
    U32_MAX,
    U64_MAX,
    VERSION,
    BlobEntry,
    TensorEntry,
    crc32,
)


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
        magic, version, n, hcrc, res0, d, fsize, res1 = struct.unpack_from(PREAMBLE_FMT, mm, 0)
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
            if not 0 <= e[key] <= U64_MAX:
                self._fail(f"{where} {key}", "an unsigned 64-bit integer", str(e[key]))
        if not 0 <= e["crc32"] <= U32_MAX:
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
