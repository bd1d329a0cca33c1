"""ONNX export: the graph passes onnx.checker, runs a batch of rows at different positions, is
written atomically, and onnxruntime-genai loads it (its weights: test_onnx_weights.py)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.cli import main
from qwen_edge.errors import ConfigError
from qwen_edge.export import onnx_export
from qwen_edge.formats.atomic_files import publishing

onnx = pytest.importorskip("onnx", reason="the ONNX export needs onnx (the test extra)")
pytest.importorskip("onnxruntime", reason="running the graph needs onnxruntime (the test extra)")


def test_graph_passes_the_checker_and_uses_the_contrib_operators(
    tiny_onnx: Callable[..., Path],
) -> None:
    path = tiny_onnx("q4s")
    onnx.checker.check_model(str(path))
    ops = set(onnx_export.iter_graph_ops(path))
    contrib = [
        "MatMulNBits", "CausalConvWithState", "LinearAttention", "LinearAttentionGate",
        "GatedRMSNorm", "GroupQueryAttention", "SkipSimplifiedLayerNormalization",
        "GatherBlockQuantized", "RotaryEmbedding",
    ]  # fmt: skip
    for op in contrib:
        assert ("com.microsoft", op) in ops, op
    model = onnx.load(str(path), load_external_data=False)
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    assert {"past.0.conv", "past.0.recurrent", "present.0.conv", "present.0.recurrent",
            "past_key_values.3.key", "present.3.value", "logits"} <= names  # fmt: skip
    # the weights live in the external data file beside the graph, and nothing else is left
    assert path.with_name("model.onnx.data").stat().st_size > path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    header = json.loads({p.key: p.value for p in model.metadata_props}["qwen_edge.header"])
    assert header["onnx"]["recipe"] == "q4s" and header["config"]["num_hidden_layers"] == 4


def test_a_batch_of_rows_at_different_positions_equals_each_row_alone(
    tiny_onnx: Callable[..., Path],
) -> None:
    """RoPE's angles are this call's B * S positions: two rows with different pasts and
    positions in one call give each row's own logits."""
    import onnxruntime as ort

    from qwen_edge.backends.onnx_runtime import OnnxModel

    path = tiny_onnx("q4s")
    model = OnnxModel.load(path, threads=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pasts = [[5, 9, 2], [7, 1, 4]]  # equal lengths: GQA's caches share one past length
    nexts = [[3], [6]]  # GQA takes a batch after a past one token per row (a decode step)
    rows, states = [], []
    for past, nxt in zip(pasts, nexts, strict=True):
        state = model.new_state()
        model.forward(past, state)
        states.append(dict(state.arrays))
        rows.append(model.forward(nxt, state, all_logits=True))
    p, n = len(pasts[0]), len(nexts[0])
    positions = np.broadcast_to(np.arange(p, p + n), (3, 2, n)).astype(np.int64).copy()
    positions[:, 1] += 4  # row 1 at other positions than row 0
    feed = {
        "input_ids": np.array(nexts, np.int64),
        "attention_mask": np.ones((2, p + n), np.int64),
        "position_ids": positions,
        **{k: np.concatenate([s[k] for s in states]) for k in states[0]},
    }
    batch = session.run(["logits"], feed)[0]
    alone = session.run(["logits"], {
        **{k: v[1:] for k, v in feed.items() if k != "position_ids"},
        "position_ids": positions[:, 1:],
    })[0][0]  # fmt: skip
    np.testing.assert_allclose(batch[0], rows[0], rtol=0, atol=1e-4 * np.abs(rows[0]).max())
    np.testing.assert_allclose(batch[1], alone, rtol=0, atol=1e-4 * np.abs(alone).max())
    assert np.abs(alone - rows[1]).max() > 1e-3 * np.abs(rows[1]).max()  # the shift matters


def test_from_checkpoint_equals_from_model_file(
    tiny_checkpoint: Path, tiny_model_file: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "direct" / "m.onnx"
    onnx_export.export_onnx(tiny_checkpoint, out, "q4s")
    direct = onnx.load(str(out))
    via_file = tmp_path / "file" / "m.onnx"
    onnx_export.export_onnx(tiny_model_file("q4s"), via_file)
    inits = onnx.load(str(via_file)).graph.initializer
    other = {i.name: onnx.numpy_helper.to_array(i) for i in inits}
    for init in direct.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), other[init.name],
                                      err_msg=init.name)  # fmt: skip


def test_bad_output_and_options(tiny_checkpoint: Path, tmp_path: Path,
                                tiny_model_file: Callable[[str], Path]) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=r"\.onnx"):
        onnx_export.export_onnx(tiny_checkpoint, tmp_path / "m.qe")
    with pytest.raises(ConfigError, match="unknown recipe"):
        onnx_export.export_onnx(tiny_checkpoint, tmp_path / "m.onnx", "q3")
    with pytest.raises(ConfigError, match="override"):
        onnx_export.export_onnx(tiny_model_file("q4s"), tmp_path / "m.onnx",
                                overrides={"norm.weight": "f16"})  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_cli_writes_genai_files(tiny_checkpoint: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "g" / "model.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--genai", "--genai-threads",
                 "2", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["recipe"] == "q4s" and report["formats"] == {"q4g32": 26, "q8g32": 6}
    cfg = json.loads((out.parent / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "qwen3_5_text"
    assert cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert cfg["model"]["decoder"]["inputs"]["past_conv_names"] == "past.%d.conv"
    tok = json.loads((out.parent / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "Qwen2Tokenizer"


def test_onnxruntime_genai_generates_the_backends_greedy_tokens(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    from qwen_edge.backends.onnx_runtime import OnnxModel

    out = tmp_path / "genai" / "model.onnx"
    onnx_export.export_onnx(tiny_checkpoint, out, "q4s", genai=True, threads=1)
    prompt = [11, 22, 33, 44, 55, 66, 77]
    model = og.Model(str(out.parent))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    genai_tokens = []
    while not gen.is_done():
        gen.generate_next_token()
        genai_tokens.append(int(gen.get_next_tokens()[0]))

    ours = OnnxModel.load(out, threads=1)
    state = ours.new_state()
    logits = ours.forward(prompt, state)
    tokens = []
    for _ in range(12):
        tokens.append(int(np.argmax(logits)))
        logits = ours.forward([tokens[-1]], state)
    assert genai_tokens == tokens


def test_concurrent_exports_publish_their_files_one_after_the_other(
    tiny_model_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """The graph and its .data are two renames: they happen under the folder's lock, so another
    export to the folder cannot put its graph beside this one's data. A SIGKILLed export's
    temporary folder is removed by the next export to the path."""
    out = tmp_path / "m.onnx"
    stale = tmp_path / f".m.onnx.{2**22 + 3}.abcd1234.tmp"  # a dead process's
    stale.mkdir()
    (stale / "m.onnx.data").write_bytes(b"half")
    done = threading.Event()
    errors: list[BaseException] = []

    def export() -> None:
        try:
            onnx_export.export_onnx(tiny_model_file("q8"), out)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        done.set()

    with publishing(tmp_path):  # another export publishing in this folder
        worker = threading.Thread(target=export)
        worker.start()

        def ready() -> bool:  # the export's own temporary folder holds both files
            both = {"m.onnx", "m.onnx.data"}
            folders = [p for p in tmp_path.iterdir() if p.is_dir() and p != stale]
            return any(both <= {f.name for f in p.iterdir()} for p in folders)

        while not ready() and not done.is_set():
            done.wait(0.05)
        assert not errors, errors
        assert not stale.exists()  # removed before the export began
        assert not done.wait(2.0), "published while another export held the folder"
        assert not out.exists()
    worker.join()
    assert not errors, errors
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary
    assert os.path.getsize(tmp_path / "m.onnx.data") > 0
