"""The qwen-edge model file (`.qe`): a streaming atomic writer and a validating mmap reader.

`docs/model-file.md` defines every byte; this package follows it literally. `layout` holds what
both sides share (the preamble's constants, alignment, CRC, the header's table entries),
`writer` the writer, `reader` the reader. Import from here: this is the package's public face.
"""

from __future__ import annotations

from ..config import MTP_PREFIX
from .layout import (
    ALIGN,
    ARCH,
    MAGIC,
    MAX_HEADER,
    PREAMBLE,
    SUFFIX,
    VERSION,
    BlobEntry,
    TensorEntry,
    TensorSpec,
    crc32,
)
from .reader import ModelFile, read_header
from .writer import ModelFileWriter, write_model_file

__all__ = [
    "ALIGN",
    "ARCH",
    "MAGIC",
    "MAX_HEADER",
    "MTP_PREFIX",
    "PREAMBLE",
    "SUFFIX",
    "VERSION",
    "BlobEntry",
    "ModelFile",
    "ModelFileWriter",
    "TensorEntry",
    "TensorSpec",
    "crc32",
    "read_header",
    "write_model_file",
]
