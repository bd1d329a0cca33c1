"""The `.qe` layout shared by the reader and the writer: the preamble's constants, alignment,
the CRC, and the table entries of the JSON header (`docs/model-file.md` defines every byte)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from .. import quant

MAGIC = b"QWENEDGE"
VERSION = 1
PREAMBLE = 64
ALIGN = 64
MAX_HEADER = 64 << 20
ARCH = "qwen3_5"
SUFFIX = ".qe"
PREAMBLE_FMT = "<8sIIIIQQ24s"  # magic, version, N, crc, reserved, D, file size, reserved
U32_MAX = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 (zlib polynomial) of a bytes-like object, continuing from `value`."""
    return zlib.crc32(memoryview(data).cast("B"), value) & U32_MAX


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
