"""Reading and writing safetensors files with numpy alone.

The `safetensors` package cannot hand bf16 tensors to numpy (numpy has no bf16) and would be an
extra dependency on boards that only have numpy, so qwen-edge parses the format itself: an
8-byte little-endian header length, a JSON header, then the raw tensor bytes. Every size and
offset is checked against the file before use, and tensors are memory-mapped and read one at a
time, so a 4 GB checkpoint costs only the tensor being read.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .atomic_files import create_temporary

# Bytes per element of every safetensors dtype, so sizes of tensors we skip can be checked too.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
# The dtypes whose values qwen-edge can read as float32.
FLOAT_DTYPES = ("F32", "F16", "BF16")
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_MAX_HEADER = 100 << 20  # the safetensors format's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range [start, end)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    start: int
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class SafetensorsFile:
    """One safetensors file, header parsed and validated, tensor data memory-mapped on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(
                        f"{self.path}: truncated safetensors file ({size} bytes, no header)"
                    )
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise CheckpointError(
                        f"{self.path}: header length {n} does not fit the file ({size} bytes);"
                        " the file is truncated or not a safetensors file"
                    )
                raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read: {e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: invalid safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata: dict[str, Any] = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = self._parse_entry(name, entry, data_start, size)
        self._mmap: mmap.mmap | None = None

    def _parse_entry(self, name: str, entry: Any, data_start: int, size: int) -> TensorInfo:
        where = f"{self.path}: tensor '{name}'"
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{where}: malformed header entry {entry!r}") from None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise CheckpointError(f"{where}: invalid shape {shape!r}")
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)) or not (
            0 <= begin <= end
        ):
            raise CheckpointError(f"{where}: invalid data_offsets {[begin, end]!r}")
        itemsize = DTYPE_SIZES.get(dtype)
        if itemsize is None:
            raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * itemsize:
            raise CheckpointError(
                f"{where}: {dtype} {shape} needs {numel * itemsize} bytes, "
                f"header gives {end - begin}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{where}: data ends at byte {data_start + end} but the file has only {size} bytes;"
                " the file is truncated (an interrupted download?)"
            )
        return TensorInfo(
            name, dtype, tuple(shape), self.path, data_start + begin, data_start + end
        )

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mmap

    def read_raw(self, name: str) -> np.ndarray:
        """The tensor's stored values as a read-only view of the file (bf16 as uint16)."""
        info = self.tensors[name]
        if info.dtype not in _NUMPY_DTYPES:
            raise CheckpointError(
                f"{self.path}: tensor '{name}' has dtype {info.dtype}; qwen-edge reads "
                f"{', '.join(FLOAT_DTYPES)} checkpoints (quantized or fp8 checkpoints are not "
                "supported: start from the original bf16 release)"
            )
        if info.numel == 0:
            return np.zeros(info.shape, _NUMPY_DTYPES[info.dtype])
        arr = np.frombuffer(self._map(), _NUMPY_DTYPES[info.dtype], info.numel, info.start)
        return arr.reshape(info.shape)

    def read_f32(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array (bf16 and f16 widen exactly)."""
        return to_float32(self.read_raw(name), self.tensors[name].dtype)

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Widens stored values to float32; bf16 (held as uint16) becomes the upper half of an f32."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Rounds float32 to bf16 (nearest, ties to even), returned as uint16 bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def _write_chunks(
    f: Any, name: str, dtype: str, shape: tuple[int, ...], chunks: Iterable[np.ndarray]
) -> None:
    """Writes one tensor given as row chunks, checking they add up to its shape."""
    rows = 0
    for part in chunks:
        ok = part.itemsize == DTYPE_SIZES[dtype] and (
            tuple(part.shape[1:]) == shape[1:] if shape else part.size == 1
        )
        if not ok:
            raise ValueError(f"{name}: chunk {part.dtype}{part.shape} does not fit {dtype}{shape}")
        f.write(np.ascontiguousarray(part).tobytes())
        rows += part.shape[0] if shape and part.ndim else 1
    if rows != (shape[0] if shape else 1):
        raise ValueError(f"{name}: chunks hold {rows} rows for the shape {list(shape)}")


def write_safetensors(
    path: str | Path,
    entries: list[tuple[str, str, tuple[int, ...]]],
    arrays: Iterable[np.ndarray | Iterable[np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes a safetensors file atomically (temporary file, fsync, rename), streaming tensors.

    Args:
        path: destination file.
        entries: (name, safetensors dtype, shape) of every tensor, in file order.
        arrays: the tensors in the same order, already in their storage type (bf16 as uint16);
            produced lazily, so only one needs to be in memory at a time. A tensor may also
            come as an iterable of row chunks (arrays of its trailing shape), so not even one
            tensor needs to be in memory whole.
        metadata: optional string map stored under `__metadata__`.
    """
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    path = Path(path)
    tmp, fd = create_temporary(path)  # the model file writer's: a temporary name of its own
    try:
        with open(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            count = 0
            for (name, dtype, shape), arr in zip(entries, arrays, strict=False):
                if isinstance(arr, np.ndarray):
                    if tuple(arr.shape) != tuple(shape) or arr.itemsize != DTYPE_SIZES[dtype]:
                        raise ValueError(
                            f"{name}: array {arr.dtype}{arr.shape} does not match {dtype}{shape}"
                        )
                    f.write(np.ascontiguousarray(arr).tobytes())
                else:
                    _write_chunks(f, name, dtype, tuple(shape), arr)
                count += 1
            if count != len(entries):
                raise ValueError(f"{path}: got {count} arrays for {len(entries)} header entries")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
