"""The onnxruntime backend: the exported graph's logits against the reference on the same
dequantized weights (exactly, with MatMulNBits in f32) and against the native runtime (both
rounding activations to int8 blocks); prompt at once equals token by token; the state carries
across calls; `qwen_edge.load` runs `.onnx` files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.errors import ContextLengthError, ModelFileError
from qwen_edge.evaluation.quality import model_file_weights

pytest.importorskip("onnx", reason="the ONNX export needs onnx (the test extra)")
pytest.importorskip("onnxruntime", reason="the backend needs onnxruntime (the test extra)")

from qwen_edge.backends.onnx_runtime import OnnxModel

RECIPES = ["q4s", "q8", "q4", "q4m", "f32"]
# Graph with MatMulNBits in f32 (accuracy_level 0) vs the numpy reference on the model file's
# dequantized weights: max |difference| / max |logit|, measured 3.8e-6 to 5.0e-6 (q4s 3.8e-6,
# q4m 5.0e-6) on the tiny checkpoint; only the order of f32 operations differs.
EXACT_REL = 1e-4
# Default graph (int8 activation blocks in MatMulNBits) vs the native runtime (q8a blocks):
# logit NMSE, measured 6.6e-5 (q4s) and 2.9e-5 (q8) on 64 random ids of the tiny random model,
# whose random layers amplify activation rounding. Formats with a block minimum (q4k, in q4
# and q4m) run through MatMulNBits' float-zero-point path, which multiplies in f32 while the
# native kernels round activations: measured 2.7e-3 (q4), 1.8e-3 (q4m).
NATIVE_NMSE = {"q4s": 5e-4, "q8": 5e-4, "q4": 1e-2, "q4m": 1e-2}


def ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 248320, n)


@pytest.mark.parametrize("recipe", RECIPES)
def test_graph_equals_the_reference_on_the_same_weights(
    recipe: str, tiny_onnx: Callable[..., Path], tiny_model_file: Callable[[str], Path]
) -> None:
    model = OnnxModel.load(tiny_onnx(recipe, 0), threads=2)
    config, weights = model_file_weights(tiny_model_file(recipe))
    tokens = ids(37)
    want = ReferenceModel(config, weights).logits(tokens)
    got = model.logits(tokens)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < EXACT_REL, f"{recipe}: relative error {err:.2e}"
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("recipe", ["q4s", "q8", "q4", "q4m"])
def test_graph_matches_the_native_runtime(
    recipe: str, tiny_onnx: Callable[..., Path], tiny_model_file: Callable[[str], Path]
) -> None:
    from qwen_edge.backends import native

    if not native.available():
        pytest.skip("the native core is not built in this installation")
    tokens = ids(64, seed=1)
    got = OnnxModel.load(tiny_onnx(recipe), threads=2).logits(tokens)
    want = native.Model.load(tiny_model_file(recipe), threads=2).logits(tokens)
    nmse = float(((got - want) ** 2).mean() / (want**2).mean())
    assert nmse < NATIVE_NMSE[recipe], f"{recipe}: NMSE {nmse:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85


@pytest.mark.parametrize("split", [[37], [1] * 13, [1, 7, 13, 2, 1, 13], [36, 1]])
def test_state_carries_across_calls(split: list[int], tiny_onnx: Callable[..., Path]) -> None:
    model = OnnxModel.load(tiny_onnx("q4s", 0), threads=1)
    tokens = ids(sum(split), seed=2)
    whole = model.logits(tokens)
    state = model.new_state()
    parts, start = [], 0
    for n in split:
        parts.append(model.forward(tokens[start : start + n], state, all_logits=True))
        start += n
    assert state.position == len(tokens)
    # prompt at once vs token by token: the chunked and recurrent delta rule, f32 rounding only
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0,
                               atol=1e-4 * np.abs(whole).max())  # fmt: skip
    last = model.forward(tokens[:5], model.new_state())
    np.testing.assert_allclose(last, model.logits(tokens[:5])[-1], rtol=0, atol=1e-5 * 20)


def test_copy_restore_and_errors(tiny_onnx: Callable[..., Path]) -> None:
    model = OnnxModel.load(tiny_onnx("q4s"), threads=1, context=16)
    state = model.new_state()
    model.forward(ids(6), state)
    snap = state.copy()
    a = model.forward([5], state)
    state.restore(snap)
    np.testing.assert_array_equal(model.forward([5], state), a)
    with pytest.raises(ContextLengthError):
        model.forward(ids(10), state)
    assert state.position == 7
    with pytest.raises(ValueError):
        model.forward([248320], state)
    with pytest.raises(ValueError):
        model.forward([], state)
    with pytest.raises(ModelFileError):
        OnnxModel.load(Path(tiny_onnx("q4s")).with_name("missing.onnx"))


def test_load_generates_through_the_common_api(tiny_onnx: Callable[..., Path]) -> None:
    import qwen_edge

    path = tiny_onnx("q8")
    llm = qwen_edge.load(path, threads=1)
    assert type(llm.model).__name__ == "OnnxModel"
    out = llm.generate([1, 2, 3], max_tokens=5, temperature=0.0)
    model = OnnxModel.load(path, threads=1)
    state = model.new_state()
    logits = model.forward([1, 2, 3], state)
    want = []
    for _ in range(5):
        want.append(int(np.argmax(logits)))
        logits = model.forward([want[-1]], state)
    assert out.tokens == want


def test_eval_on_the_graph_equals_eval_of_the_model_file(
    tiny_onnx: Callable[..., Path], tiny_model_file: Callable[[str], Path], tiny_checkpoint: Path
) -> None:
    from qwen_edge.evaluation.quality import evaluate

    # the exact graph (f32 MatMulNBits) on onnxruntime vs the reference on the dequantized file
    graph = evaluate(tiny_onnx("q4s", 0), tiny_checkpoint, tokens=96, ctx=48)
    model_file = evaluate(tiny_model_file("q4s"), tiny_checkpoint, tokens=96, ctx=48)
    assert graph.tokens == model_file.tokens == 94
    assert graph.mean_kl == pytest.approx(model_file.mean_kl, rel=1e-3)
    assert graph.top1 == model_file.top1


def test_bench_dispatches_on_onnx(tiny_onnx: Callable[..., Path]) -> None:
    from qwen_edge.evaluation import bench

    path = tiny_onnx("q4s")
    cfg = bench.BenchConfig(
        threads=(1,), prompt=8, decode=4, decode_prompt=2, repetitions=1, warmup=0,
        measure_bandwidth=False,
    )  # fmt: skip
    record = bench.run(path, cfg)
    assert record["engine"].startswith("qwen-edge onnxruntime")
    assert record["model"]["file_bytes"] == OnnxModel.load(path).file_size
    run = record["runs"][0]
    assert run["isa"] == "onnxruntime" and len(run["decode_tok_s"]) == 1
