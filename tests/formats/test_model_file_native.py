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


# Config values a hostile header can carry, as raw JSON (1e400, JSON's infinity, is invalid JSON
# to both): both readers reject each with their error, before converting any
# of them to an integer (issue 12: partial_rotary_factor = 1e308 once raised OverflowError in
# Python and was undefined behaviour in C++).
HOSTILE_CONFIG = [
    ("partial_rotary_factor", b"1e308"), ("partial_rotary_factor", b"1e400"),
    ("partial_rotary_factor", b"-0.5"), ("partial_rotary_factor", b"1e-300"),
    ("rope_theta", b"1e400"), ("rms_norm_eps", b"0"), ("head_dim", b"1e308"),
    ("head_dim", b"9223372036854775808"), ("num_hidden_layers", b"1000000000000000000"),
    ("max_position_embeddings", b"1e400"), ("tie_word_embeddings", b'"no"'),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), HOSTILE_CONFIG)
def test_both_reject_hostile_config_values(good: Path, key: str, value: bytes) -> None:  # noqa: F811
    header, data = _parts(good)
    assert key in header["config"]
    header["config"][key] = "@@"
    _rebuild(good, None, data, raw_header=json.dumps(header).encode().replace(b'"@@"', value))
    for read in (lambda: ModelFile(good).close(), lambda: check_model_file(good, False)):
        with pytest.raises(ModelFileError) as caught:
            read()
        message = str(caught.value)  # names the field, or the number JSON cannot hold
        assert key in message or ("1e400" in message or "invalid JSON" in message), message
