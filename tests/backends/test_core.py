"""The native core: CPU feature report, kernel tables, and one kernel family on every table."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core

_core = core()
ISAS = _core.available_isas()


def test_cpu_report() -> None:
    info = _core.cpu_info()
    assert info["arch"] in ("x86_64", "aarch64", "unknown")
    assert _core.compiled_isas()[-1] == "ref"
    assert ISAS[-1] == "ref" and set(ISAS) <= set(_core.compiled_isas())
    if info["arch"] == "x86_64" and "avx2" in info["features"]:
        assert "avx2" in ISAS
    assert _core.selected_isa() in ISAS


def test_forcing_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _core.selected_isa("ref") == "ref"
    with pytest.raises(RuntimeError, match="unknown kernel table 'nope'"):
        _core.selected_isa("nope")
    monkeypatch.setenv("QWEN_EDGE_ISA", "ref")
    assert _core.selected_isa() == "ref"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("rows", "k"), [(1, 1), (3, 7), (5, 8), (2, 17), (7, 31), (4, 1024), (3, 1031)]
)
def test_gemv_f32(isa: str, rows: int, k: int) -> None:
    rng = np.random.default_rng(rows * 1000 + k)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    want = w.astype(np.float64) @ x.astype(np.float64)
    got = _core.gemv_f32(w, x, isa=isa)
    # float32 sums of k products: error grows like sqrt(k) * eps * |w||x|
    bound = 4 * np.sqrt(k) * np.finfo(np.float32).eps * (np.abs(w) @ np.abs(x))
    assert np.all(np.abs(got - want) <= bound + 1e-6)


def test_gemv_f32_rejects_bad_shapes() -> None:
    with pytest.raises(RuntimeError, match="w has 3 columns, x has 4"):
        _core.gemv_f32(np.zeros((2, 3), np.float32), np.zeros(4, np.float32))


def test_native_model_file_reader_rejects_garbage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from qwen_edge.backends.native import check_model_file
    from qwen_edge.errors import ModelFileError

    path = tmp_path / "model.qe"
    with pytest.raises(ModelFileError, match="cannot open"):
        check_model_file(path)
    path.write_bytes(b"QWENEDGE" + bytes(10))
    with pytest.raises(ModelFileError, match="expected at least 64 bytes, found 18"):
        check_model_file(path)
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelFileError, match="not a qwen-edge model file"):
        check_model_file(path)
