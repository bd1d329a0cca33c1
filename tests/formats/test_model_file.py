"""qwen_edge.modelfile: round trip, zero-copy views, atomic writes, and every corruption class of
docs/model-file.md raising ModelFileError (never another exception)."""

from __future__ import annotations

import errno
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_edge.errors import ModelFileError
from qwen_edge.export import presets
from qwen_edge.formats import model_file as modelfile
from qwen_edge.formats import quant
from qwen_edge.formats.config import ModelConfig
from qwen_edge.formats.model_file import ModelFile, ModelFileWriter, TensorSpec

# The tiny preset with a small vocabulary keeps the files (and the fuzz loops) small.
CONFIG = ModelConfig.from_hf(presets.hf_config("tiny", vocab_size=512))
TOKENIZER = b'{"model": {"type": "BPE"}, "note": "not a real tokenizer"}'


def _format_for(name: str, shape: tuple[int, ...]) -> str:
    if not quant.can_pack(shape):
        return "f32"
    if "embed" in name:
        return "q8g32"
    if "down_proj" in name:
        return "q6k"
    return ("q4k", "q4g32", "q4ag32", "f16", "bf16")[len(name) % 5]


def _tiny_tensors(seed: int = 0) -> list[tuple[TensorSpec, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, shape in CONFIG.text_tensor_shapes().items():
        w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        fmt = _format_for(name, shape)
        out.append((TensorSpec(name, fmt, shape), w, quant.quantize(fmt, w)))
    return out


def _header() -> dict[str, Any]:
    return {
        "arch": "qwen3_5",
        "config": CONFIG.to_dict(),
        "quant": {"recipe": "test", "overrides": {}},
        "generation": {"temperature": 0.7},
        "chat_template": "{{ messages }}",
        "special_tokens": {"eos": [248046]},
        "source": {"exporter": "test"},
    }


@pytest.fixture(scope="module")
def tensors() -> list[tuple[TensorSpec, np.ndarray, np.ndarray]]:
    return _tiny_tensors()


@pytest.fixture
def good(tmp_path: Path, tensors: list) -> Path:
    path = tmp_path / "m.qe"
    modelfile.write_model_file(
        path,
        _header(),
        [(spec, data) for spec, _, data in tensors],
        [("tokenizer.json", TOKENIZER)],
    )
    return path


def test_round_trip(good: Path, tensors: list) -> None:
    with ModelFile(good, verify=True) as mf:
        assert mf.config == CONFIG
        assert mf.header["generation"] == {"temperature": 0.7}
        assert list(mf.tensors) == [spec.name for spec, _, _ in tensors]
        for spec, _, data in tensors:
            e = mf.tensors[spec.name]
            assert (e.format, e.shape, e.size) == (spec.format, spec.shape, data.size)
            assert (mf.data_offset + e.offset) % 64 == 0
            raw = mf.raw(spec.name)
            assert raw.tobytes() == data.tobytes()
            assert not raw.flags.writeable and not raw.flags.owndata  # a view of the map
            want = quant.dequantize(spec.format, data, spec.shape)
            assert np.array_equal(mf.dequantize(spec.name), want)
        assert mf.blob("tokenizer.json") == TOKENIZER
        assert mf.array("norm.weight").dtype == np.float32
        assert mf.size == good.stat().st_size
    assert not list(good.parent.glob(".m.qe.*"))


def test_plain_arrays_are_typed_views(tmp_path: Path) -> None:
    tensors = _tiny_tensors(1)
    fmts = {"layers.0.mlp.up_proj.weight": "f16", "layers.0.mlp.gate_proj.weight": "bf16"}
    items = []
    for spec, w, _ in tensors:
        fmt = fmts.get(spec.name, "f32")
        items.append((TensorSpec(spec.name, fmt, spec.shape), quant.quantize(fmt, w)))
    path = modelfile.write_model_file(tmp_path / "p.qe", _header(), items)
    with ModelFile(path) as mf:
        up = mf.array("layers.0.mlp.up_proj.weight")
        assert up.dtype == np.float16 and up.shape == (192, 64)
        gate = mf.array("layers.0.mlp.gate_proj.weight")
        assert gate.dtype == np.uint16
        assert np.array_equal(
            quant.bf16_to_f32(gate), mf.dequantize("layers.0.mlp.gate_proj.weight")
        )
        emb = mf.array("embed_tokens.weight")
        assert emb.dtype == np.float32 and not emb.flags.owndata


def test_header_is_padded_json_and_layout_matches_doc(good: Path) -> None:
    raw = good.read_bytes()
    magic, version, n, crc, res, d, size, res2 = struct.unpack_from("<8sIIIIQQ24s", raw)
    assert (magic, version, res, res2) == (b"QWENEDGE", 1, 0, bytes(24))
    assert size == len(raw) and d % 64 == 0 and d >= 64 + n
    assert zlib.crc32(raw[64 : 64 + n]) == crc
    assert raw[64 + n : d] == bytes(d - 64 - n)
    header = json.loads(raw[64 : 64 + n])
    for e in header["tensors"] + header["blobs"]:
        assert zlib.crc32(raw[d + e["offset"] : d + e["offset"] + e["size"]]) == e["crc32"]


# --- corruption ---------------------------------------------------------------------------------
def _parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    _, _, n, _, _, d, _, _ = struct.unpack_from("<8sIIIIQQ24s", raw)
    return json.loads(raw[64 : 64 + n]), raw[d:]


def _rebuild(path: Path, header: Any, data: bytes, raw_header: bytes | None = None) -> None:
    """Writes a file with a modified header and valid preamble/CRC around it."""
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    d = (64 + len(hb) + 63) // 64 * 64
    pre = struct.pack(
        "<8sIIIIQQ24s", b"QWENEDGE", 1, len(hb), zlib.crc32(hb), 0, d, d + len(data), bytes(24)
    )
    path.write_bytes(pre + hb + bytes(d - 64 - len(hb)) + data)


def _set_u32(path: Path, offset: int, value: int, fmt: str = "<I") -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))


def _expect(path: Path, *patterns: str, verify: bool = False) -> None:
    with pytest.raises(ModelFileError) as info:
        ModelFile(path, verify=verify)
    msg = str(info.value)
    assert str(path) in msg
    for p in patterns:
        assert p in msg, msg


def test_preamble_corruptions(good: Path) -> None:
    raw = good.read_bytes()
    n = struct.unpack_from("<I", raw, 12)[0]
    cases: list[tuple[int, int, str, tuple[str, ...]]] = [
        (0, 0x45455751, "<I", ("magic", "not a qwen-edge model file")),
        (8, 2, "<I", ("version", "expected 1, found 2", "newer qwen-edge")),
        (8, 0, "<I", ("version", "found 0")),
        (20, 1, "<I", ("reserved",)),
        (50, 7, "<I", ("reserved",)),
        (12, 0, "<I", ("header size", "found 0")),
        (12, 1, "<I", ("header size",)),
        (12, (64 << 20) + 1, "<I", ("header size",)),
        (24, 64, "<Q", ("data offset", f">= {64 + n}")),
        (24, (64 + n + 64) // 64 * 64 + 1, "<Q", ("data offset", "multiple of 64")),
        (32, len(raw) + 64, "<Q", ("file size", "truncated")),
        (32, len(raw) - 64, "<Q", ("file size", "extra bytes")),
        (16, 12345, "<I", ("header crc32",)),
    ]
    for offset, value, fmt, patterns in cases:
        good.write_bytes(raw)
        _set_u32(good, offset, value, fmt)
        _expect(good, *patterns)


def test_too_small_and_missing(tmp_path: Path) -> None:
    for size in (0, 1, 63):
        p = tmp_path / f"s{size}.qe"
        p.write_bytes(b"QWENEDGE"[:size] + bytes(max(0, size - 8)))
        _expect(p, "file size", "at least 64 bytes")
    with pytest.raises(ModelFileError, match="file not found"):
        ModelFile(tmp_path / "nope.qe")
    with pytest.raises(ModelFileError, match="is a folder"):
        ModelFile(tmp_path)


def test_extended_file(good: Path) -> None:
    with open(good, "ab") as f:
        f.write(bytes(64))
    _expect(good, "file size", "extra bytes")


def test_header_json_corruptions(good: Path) -> None:
    _, data = _parts(good)
    _rebuild(good, None, data, raw_header=b"\xff\xfe not utf-8")
    _expect(good, "header", "UTF-8 JSON")
    _rebuild(good, None, data, raw_header=b'{"arch": "qwen3_5",')
    _expect(good, "header", "UTF-8 JSON")
    _rebuild(good, None, data, raw_header=b"[" * 100000 + b"]" * 100000)
    _expect(good, "header")
    _rebuild(good, None, data, raw_header=b'{"x": NaN}')
    _expect(good, "header", "UTF-8 JSON")
    _rebuild(good, [1, 2], data)
    _expect(good, "header", "a JSON object")


def _mutated(good: Path, mutate: Any) -> None:
    header, data = _parts(good)
    mutate(header)
    _rebuild(good, header, data)


def _tensor(h: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in h["tensors"] if t["name"] == name)


EMB = "embed_tokens.weight"
UP = "layers.0.mlp.up_proj.weight"
NORM = "norm.weight"
DOWN = "layers.0.mlp.down_proj.weight"  # q6k

FIELD_CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("missing arch", lambda h: h.pop("arch"), ("header field 'arch'", "missing")),
    ("missing blobs", lambda h: h.pop("blobs"), ("header field 'blobs'", "missing")),
    ("config type", lambda h: h.update(config=[]), ("'config'", "an object", "an array")),
    ("tensors type", lambda h: h.update(tensors={}), ("'tensors'", "an array", "an object")),
    ("quant type", lambda h: h.update(quant="q4"), ("'quant'", "an object", "a string")),
    ("optional type", lambda h: h.update(chat_template=3), ("'chat_template'", "a string")),
    ("arch", lambda h: h.update(arch="llama"), ("arch", "'qwen3_5'", "'llama'")),
    ("entry type", lambda h: h["tensors"].__setitem__(0, 5), ("tensors[0]", "an object")),
    (
        "entry field",
        lambda h: _tensor(h, EMB).pop("crc32"),
        (f"tensor '{EMB}' field 'crc32'", "missing"),
    ),
    (
        "entry field type",
        lambda h: _tensor(h, EMB).update(offset="0"),
        (f"tensor '{EMB}' field 'offset'", "an integer", "a string"),
    ),
    (
        "bool is not int",
        lambda h: _tensor(h, EMB).update(size=True),
        ("field 'size'", "a boolean"),
    ),
    (
        "negative offset",
        lambda h: _tensor(h, EMB).update(offset=-64),
        ("offset", "unsigned 64-bit"),
    ),
    ("crc range", lambda h: _tensor(h, EMB).update(crc32=1 << 32), ("crc32", "32-bit")),
    (
        "unknown format",
        lambda h: _tensor(h, UP).update(format="q3k"),
        (f"tensor '{UP}' format", "'q3k'"),
    ),
    ("bad shape", lambda h: _tensor(h, NORM).update(shape=[0]), ("shape", "positive")),
    ("shape rank", lambda h: _tensor(h, NORM).update(shape=[1] * 5), ("shape", "1 to 4")),
    (
        "packed K",
        lambda h: _tensor(h, UP).update(shape=[192, 48], size=quant.packed_size("q8g32", 8, 32)),
        ("shape", "multiple of 32"),
    ),
    (
        "byte count",
        lambda h: _tensor(h, UP).update(size=_tensor(h, UP)["size"] + 64),
        (f"tensor '{UP}' size",),
    ),
    (
        "q6k byte count",
        lambda h: _tensor(h, DOWN).update(size=_tensor(h, DOWN)["size"] - 64),
        (f"tensor '{DOWN}' size", "q6k"),
    ),
    (
        "q6k read as q4k",
        lambda h: _tensor(h, DOWN).update(format="q4k"),
        (f"tensor '{DOWN}' size", "q4k"),
    ),
    (
        "dtype mismatch",
        lambda h: _tensor(h, NORM).update(format="f16"),
        (f"tensor '{NORM}' size", "f16"),
    ),
    (
        "duplicate",
        lambda h: h["tensors"].append(dict(_tensor(h, NORM))),
        ("unique tensor names",),
    ),
    (
        "misaligned",
        lambda h: _tensor(h, NORM).update(offset=_tensor(h, NORM)["offset"] + 4),
        ("offset", "multiple of 64"),
    ),
    (
        "outside",
        lambda h: _tensor(h, NORM).update(offset=1 << 40),
        ("offset + size", "data section"),
    ),
    (
        "overlap",
        lambda h: _tensor(h, NORM).update(offset=_tensor(h, EMB)["offset"]),
        ("overlap",),
    ),
    (
        "blob outside",
        lambda h: h["blobs"][0].update(size=1 << 30),
        ("blob 'tokenizer.json' offset + size",),
    ),
    ("blob overlap", lambda h: h["blobs"][0].update(offset=0), ("overlap",)),
    (
        "unsupported config",
        lambda h: h["config"].update(num_key_value_heads=3),
        ("config", "supports", "num_key_value_heads"),
    ),
    ("unknown config key", lambda h: h["config"].update(sliding_window=4), ("config",)),
    ("bad config value", lambda h: h["config"].update(layer_types=5), ("config",)),
    (
        "missing tensor",
        lambda h: h["tensors"].remove(_tensor(h, NORM)),
        (f"tensor '{NORM}'", "missing"),
    ),
    (
        "shape vs config",
        lambda h: h["config"].update(intermediate_size=160),
        ("shape", "disagrees with the config"),
    ),
]


@pytest.mark.parametrize(("mutate", "patterns"), [c[1:] for c in FIELD_CASES],
                         ids=[c[0] for c in FIELD_CASES])  # fmt: skip
def test_header_field_corruptions(good: Path, mutate: Any, patterns: tuple[str, ...]) -> None:
    _mutated(good, mutate)
    _expect(good, *patterns)


def test_extra_tensor(good: Path) -> None:
    header, data = _parts(good)
    offset = (len(data) + 63) // 64 * 64
    extra = {"name": "layers.9.norm.weight", "format": "f32", "shape": [64], "offset": offset,
             "size": 256, "crc32": zlib.crc32(bytes(256))}  # fmt: skip
    header["tensors"].append(extra)
    _rebuild(good, header, data + bytes(offset - len(data) + 256))
    _expect(good, "tensor 'layers.9.norm.weight'", "the config does not have")


def test_mtp_tensors_are_allowed(tmp_path: Path, tensors: list) -> None:
    items = [(spec, data) for spec, _, data in tensors]
    w = np.ones((64, 128), np.float32)
    items.append((TensorSpec("mtp.fc.weight", "q4k", (64, 128)), quant.quantize("q4k", w)))
    path = modelfile.write_model_file(tmp_path / "mtp.qe", _header(), items)
    with ModelFile(path, verify=True) as mf:
        assert "mtp.fc.weight" in mf.tensors


def test_tensor_crc_checked_only_with_verify(good: Path) -> None:
    with ModelFile(good) as mf:
        e = mf.tensors[UP]
        pos = mf.data_offset + e.offset + 5
    raw = bytearray(good.read_bytes())
    raw[pos] ^= 0x10
    good.write_bytes(bytes(raw))
    ModelFile(good).close()  # header and layout are fine
    _expect(good, f"tensor '{UP}' crc32", "corrupt", verify=True)


def test_blob_crc(good: Path) -> None:
    raw = bytearray(good.read_bytes())
    raw[-1] ^= 0xFF  # the last bytes are the blob
    good.write_bytes(bytes(raw))
    _expect(good, "blob 'tokenizer.json' crc32", verify=True)


def test_truncation_everywhere(good: Path) -> None:
    raw = good.read_bytes()
    with ModelFile(good) as mf:
        d = mf.data_offset
        n = struct.unpack_from("<I", raw, 12)[0]
        bounds = {d + e.offset for e in mf.tensors.values()}
        bounds |= {d + e.offset + e.size for e in mf.tensors.values()}
        bounds |= {d + e.offset for e in mf.blobs.values()}
    points = {0, 1, 8, 12, 16, 20, 24, 32, 40, 63, 64, 65, 64 + n - 1, 64 + n, d - 1, d}
    points |= {b + k for b in bounds for k in (-1, 0, 1)}
    points |= set(np.linspace(0, len(raw) - 1, 97).astype(int).tolist())
    points = {p for p in points if 0 <= p < len(raw)}
    assert len(points) > 100
    for size in sorted(points):
        good.write_bytes(raw[:size])
        with pytest.raises(ModelFileError):
            ModelFile(good)


def test_random_byte_flips_in_preamble_and_header(good: Path) -> None:
    raw = good.read_bytes()
    n = struct.unpack_from("<I", raw, 12)[0]
    rng = np.random.default_rng(1234)
    for trial in range(300):
        corrupt = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, 64 + n))
            corrupt[pos] ^= int(rng.integers(1, 256))
        if corrupt == bytearray(raw):
            continue
        good.write_bytes(bytes(corrupt))
        try:
            ModelFile(good).close()
        except ModelFileError:
            continue
        raise AssertionError(f"trial {trial}: a corrupt preamble/header was accepted")


def test_random_header_flips_with_valid_crc(good: Path) -> None:
    """Flips past the CRC check reach the JSON and table validation: ModelFileError or a file
    that is still valid, never another exception."""
    header, data = _parts(good)
    text = json.dumps(header).encode()
    rng = np.random.default_rng(99)
    errors = 0
    for _ in range(300):
        corrupt = bytearray(text)
        pos = int(rng.integers(0, len(text)))
        corrupt[pos] = int(rng.choice(list(b'0123456789{}[]",:-. a"\xff')))
        _rebuild(good, None, data, raw_header=bytes(corrupt))
        try:
            ModelFile(good).close()
        except ModelFileError:
            errors += 1
    assert errors > 100


# --- writer -------------------------------------------------------------------------------------
def _specs(tensors: list) -> list[TensorSpec]:
    return [spec for spec, _, _ in tensors]


def test_writer_failure_leaves_nothing(tmp_path: Path, tensors: list) -> None:
    dest = tmp_path / "m.qe"
    dest.write_bytes(b"previous file")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), ModelFileWriter(dest, _header(), _specs(tensors)) as w:
            spec, _, data = tensors[0]
            w.write_tensor(spec.name, data)
            assert w.tmp_path.exists()
            raise exc
        assert not list(tmp_path.glob(".m.qe.*"))
        assert dest.read_bytes() == b"previous file"


def test_writer_disk_full(tmp_path: Path, tensors: list, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "m.qe"
    w = ModelFileWriter(dest, _header(), _specs(tensors))
    with pytest.raises(ModelFileError, match="the disk is full"), w:
        real = w._file

        class Full:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def write(self, data: Any) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

        w._file = Full()
        spec, _, data = tensors[0]
        w.write_tensor(spec.name, data)
    real.close()
    assert not list(tmp_path.glob(".m.qe.*")) and not dest.exists()

    class Usage:
        free = 1000

    monkeypatch.setattr(modelfile.writer.shutil, "disk_usage", lambda _: Usage)
    with pytest.raises(ModelFileError, match="not enough disk space"):
        ModelFileWriter(dest, _header(), _specs(tensors)).open()
    assert not list(tmp_path.glob(".m.qe.*"))


def test_writer_checks_order_sizes_and_completeness(tmp_path: Path, tensors: list) -> None:
    dest = tmp_path / "m.qe"
    specs = _specs(tensors)
    with (
        pytest.raises(ModelFileError, match="declared order"),
        ModelFileWriter(dest, _header(), specs) as w,
    ):
        w.write_tensor(specs[1].name, tensors[1][2])
    with (
        pytest.raises(ModelFileError, match="expected .* bytes"),
        ModelFileWriter(dest, _header(), specs) as w,
    ):
        w.write_tensor(specs[0].name, tensors[0][2][:-1])
    with (
        pytest.raises(ModelFileError, match="only 1 of"),
        ModelFileWriter(dest, _header(), specs) as w,
    ):
        w.write_tensor(specs[0].name, tensors[0][2])
    with pytest.raises(ModelFileError, match="declared twice"):
        ModelFileWriter(dest, _header(), [specs[0], specs[0]])
    with pytest.raises(ModelFileError, match="multiple of 32"):
        ModelFileWriter(dest, _header(), [TensorSpec("x", "q4k", (8, 24))])
    assert not dest.exists() and not list(tmp_path.glob(".m.qe.*"))
