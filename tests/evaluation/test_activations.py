"""Activation statistics of matrix inputs (`qwen_edge.evaluation.activations`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.evaluation import activations
from qwen_edge.formats.quant import fake_quantize_q8a


def test_planted_outlier_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 128)).astype(np.float32)
    x[:, 37] *= 60.0  # one outlier channel, as trained models have
    s = activations.InputStats("m", 128)
    s.add(x[:25])
    s.add(x[25:])  # running statistics: two calls give the totals
    out = s.summary()
    assert out["tokens"] == 40 and out["top_channels"][0] == 37
    channel_max = np.abs(x).max(axis=0)
    assert out["channel_max_over_median"] == pytest.approx(
        channel_max.max() / np.median(channel_max), rel=1e-6
    )
    assert out["channel_max_over_median"] > 30
    q8a = np.linalg.norm(x - fake_quantize_q8a(x)) / np.linalg.norm(x)
    assert out["q8a_rel_error"] == pytest.approx(q8a, rel=1e-5)
    # One scale per token lets the outlier set every token's step: far worse than blocks of 32.
    assert out["int8_token_rel_error"] > 1.5 * out["q8a_rel_error"]
    assert out["int4_rel_error"] > 5 * out["q8a_rel_error"]
    peak = np.abs(x).max(axis=1) / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1))
    assert out["token_peak_over_rms_mean"] == pytest.approx(peak.mean(), rel=1e-6)
    assert out["token_peak_over_rms_max"] == pytest.approx(peak.max(), rel=1e-6)

    flat = activations.InputStats("flat", 128)
    flat.add(np.ones((4, 128), np.float32))
    assert flat.summary()["channel_max_over_median"] == 1.0
    assert flat.summary()["q8a_rel_error"] == 0.0


def test_record_inputs_keeps_logits(tiny_checkpoint: Path) -> None:
    plain = ReferenceModel.from_checkpoint(tiny_checkpoint, context=64)
    model = ReferenceModel.from_checkpoint(tiny_checkpoint, context=64)
    stats = activations.record_inputs(model)
    ids = list(np.random.default_rng(1).integers(0, 1000, 20))
    got = model.forward(ids, model.new_state(), all_logits=True)
    assert np.array_equal(got, plain.forward(ids, plain.new_state(), all_logits=True))

    c = model.config
    kinds = {activations.kind_of(n) for n in stats}
    assert "linear_attn.in_proj_z" not in kinds and "mlp.up_proj" not in kinds  # shared inputs
    assert len(stats) == 4 * c.num_hidden_layers + 1  # 2 mixer inputs, 2 MLP inputs per layer
    assert all(s.tokens == 20 for s in stats.values())
    head = stats[activations.LM_HEAD].summary()
    assert head["channels"] == c.hidden_size and np.isfinite(head["channel_max_over_median"])

    table = {k["kind"]: k for k in activations.by_kind(s.summary() for s in stats.values())}
    assert table["linear_attn.in_proj_qkv/z/a/b"]["layers"] == len(c.linear_layers)
    assert table["mlp.down_proj"]["layers"] == c.num_hidden_layers
    assert table["lm_head"]["layers"] == 1
    r = table["mlp.down_proj"]["q8a_rel_error"]
    assert 0 < r["min"] <= r["median"] <= r["max"] < 0.05


def test_importance_is_the_mean_square_per_channel(tiny_checkpoint: Path) -> None:
    """The calibration vectors: every matrix of the text model (siblings sharing an input get
    the same vector; the tied LM head's goes to the embedding), equal to mean(x^2) per channel
    of the recorded inputs."""
    model = ReferenceModel.from_checkpoint(tiny_checkpoint, context=64)
    stats = activations.record_inputs(model)
    xs: list[np.ndarray] = []
    head = model.lm_head

    class Spy:
        T = property(lambda self: self)
        __array_ufunc__ = None

        def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
            xs.append(np.asarray(x, np.float64).reshape(-1, x.shape[-1]))
            return x @ head  # the recording wrapper, then the real head

    model.lm_head = Spy()
    ids = list(np.random.default_rng(2).integers(0, 1000, 24))
    model.forward(ids, model.new_state(), all_logits=True)
    imp = activations.importance(stats, tied=model.config.tie_word_embeddings)
    matrices = {n for n in model.w if n.startswith("layers.") and "_proj" in n}
    assert len(matrices) == 8 * len(model.config.linear_layers) + 7 * (
        model.config.num_hidden_layers - len(model.config.linear_layers)
    )
    assert matrices <= set(imp), sorted(matrices - set(imp))[:5]
    key = "embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    x = np.concatenate(xs)
    np.testing.assert_allclose(imp[key], np.mean(x * x, axis=0), rtol=1e-5)
    gdn = f"layers.{model.config.linear_layers[0]}.linear_attn."
    assert np.array_equal(imp[gdn + "in_proj_z.weight"], imp[gdn + "in_proj_qkv.weight"])
    assert all(v.dtype == np.float32 and (v >= 0).all() for v in imp.values())
