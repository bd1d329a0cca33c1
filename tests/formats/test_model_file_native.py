"""The native model-file reader agrees with the Python one: the same valid files open with the
same tensor table, and every corrupt file that one rejects the other rejects too (the native
one with a ModelFileError, never a crash)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_model_file import FIELD_CASES, _mutated, _parts, _rebuild, good, tensors  # noqa: F401

from qwen_edge.backends.native import check_model_file
from qwen_edge.errors import ModelFileError
from qwen_edge.formats.model_file import ModelFile


def python_ok(path: Path, verify: bool = False) -> bool:
    try:
        ModelFile(path, verify=verify).close()
        return True
    except ModelFileError:
        return False


def native_ok(path: Path, verify: bool = False) -> bool:
    try:
        check_model_file(path, verify)
        return True
    except ModelFileError:
        return False


def test_same_table_for_a_valid_file(good: Path) -> None:  # noqa: F811
    native = check_model_file(good, verify=True)
    with ModelFile(good, verify=True) as mf:
        assert native["file_size"] == good.stat().st_size
        assert json.loads(native["header"]) == mf.header
        table = [
            (t["name"], t["format"], tuple(t["shape"]), t["offset"], t["size"])
            for t in native["tensors"]
        ]
        assert table == [
            (e.name, e.format, tuple(e.shape), e.offset, e.size) for e in mf.tensors.values()
        ]


@pytest.mark.parametrize("mutate", [c[1] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_both_reject_header_field_corruptions(good: Path, mutate: Any) -> None:  # noqa: F811
    _mutated(good, mutate)
    assert not python_ok(good)
    assert not native_ok(good)


def test_both_agree_on_truncations_and_flips(good: Path) -> None:  # noqa: F811
    raw = good.read_bytes()
    for size in np.linspace(0, len(raw) - 1, 60).astype(int):
        good.write_bytes(raw[:size])
        assert not python_ok(good) and not native_ok(good), size
    n = int.from_bytes(raw[12:16], "little")
    rng = np.random.default_rng(7)
    for _ in range(150):
        corrupt = bytearray(raw)
        corrupt[int(rng.integers(0, 64 + n))] ^= int(rng.integers(1, 256))
        good.write_bytes(bytes(corrupt))
        assert python_ok(good) == native_ok(good)


def test_both_agree_on_header_flips_with_valid_crc(good: Path) -> None:  # noqa: F811
    header, data = _parts(good)
    text = json.dumps(header).encode()
    rng = np.random.default_rng(3)
    disagreements = []
    for _ in range(200):
        corrupt = bytearray(text)
        pos = int(rng.integers(0, len(text)))
        corrupt[pos] = int(rng.choice(list(b'0123456789{}[]",:-. a"\xff')))
        _rebuild(good, None, data, raw_header=bytes(corrupt))
        if python_ok(good) != native_ok(good):
            disagreements.append(bytes(corrupt[max(0, pos - 30) : pos + 30]))
    assert not disagreements, disagreements[:3]


def test_tensor_checksum_only_with_verify(good: Path) -> None:  # noqa: F811
    raw = bytearray(good.read_bytes())
    raw[-100] ^= 0xFF  # inside the last tensor or blob
    good.write_bytes(bytes(raw))
    assert native_ok(good) and python_ok(good)
    assert not native_ok(good, verify=True) and not python_ok(good, verify=True)
