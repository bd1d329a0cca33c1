"""Scoring with vocabulary groups (`quality.VocabGroups`) equals scoring every id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.evaluation import quality


def _head(rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((60, 8)).astype(np.float32)
    w[20:] = w[19]  # 41 ids share one row, as a checkpoint trained on part of the vocabulary
    w[5] = w[2]
    return w


def test_groups_of_rows() -> None:
    w = _head(np.random.default_rng(0))
    g = quality.VocabGroups.of_rows(w)
    assert g is not None and g.size == 60 - 40 - 1
    assert g.first[g.group_of[5]] == 2 and g.first[g.group_of[59]] == 19
    assert np.exp(g.log_size).sum() == pytest.approx(60)
    assert quality.VocabGroups.of_rows(w[:5]) is None  # all distinct


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_scores_equal_full_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = _head(rng)
    groups = quality.VocabGroups.of_rows(w)
    h_ref = rng.standard_normal((3, 33, 8)).astype(np.float32)
    h_mod = h_ref + 0.05 * rng.standard_normal(h_ref.shape).astype(np.float32)
    wins = [list(rng.integers(0, 60, 34)) for _ in range(3)]

    # Equal rows, equal logits (a matmul may differ in the last bit between equal rows; then
    # the full-vocabulary argmax among them is noise, which grouping removes).
    def head(h: np.ndarray) -> np.ndarray:
        return (h @ w[groups.first].T)[:, groups.group_of]

    logits = {id(w_): head(h) for w_, h in zip(wins, h_mod, strict=True)}
    ref_logits = {id(w_): head(h) for w_, h in zip(wins, h_ref, strict=True)}

    def fn(ids: list[int]) -> np.ndarray:  # 34 ids -> 34 rows; the last is dropped
        return np.vstack([logits[id(next(x for x in wins if x is ids))], np.zeros((1, 60))])

    def ref_fn(ids: list[int]) -> np.ndarray:
        return np.vstack([ref_logits[id(next(x for x in wins if x is ids))], np.zeros((1, 60))])

    full = quality.compare(list(quality.reference_logprobs(ref_fn, wins)), fn, wins)
    cached = list(quality.reference_logprobs(ref_fn, wins, groups))
    assert cached[0].shape == (33, groups.size)
    grouped = quality.compare(cached, fn, wins, groups=groups)
    assert grouped.tokens == full.tokens == 99
    for key in ("mean_kl", "p99_kl", "max_kl", "ppl_ref", "ppl_model"):
        assert getattr(grouped, key) == pytest.approx(getattr(full, key), rel=1e-5), key
    assert grouped.top1 == full.top1 and full.mean_kl > 1e-4


def test_collapse_checks_the_premise() -> None:
    w = _head(np.random.default_rng(2))
    groups = quality.VocabGroups.of_rows(w)
    logits = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32) @ w.T
    groups.collapse(logits)
    logits[1, 40] += 0.5  # an engine that gave one shared-row id another logit
    with pytest.raises(QwenEdgeError, match="identical LM-head rows"):
        groups.collapse(logits)


@pytest.mark.parametrize("act_q8", [False, True])
def test_restricted_lm_head(tiny_checkpoint: Path, act_q8: bool) -> None:
    """A model whose LM head has repeated rows: computing one logit per group gives the same
    class logits as the full head."""
    from qwen_edge.backends.reference import ReferenceModel
    from qwen_edge.formats.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_checkpoint)
    weights = dict(ckpt.iter_text())
    weights["embed_tokens.weight"][3000:] = weights["embed_tokens.weight"][2999]
    models = [ReferenceModel(ckpt.config, weights, context=32) for _ in range(2)]
    if act_q8:
        for m in models:
            quality.with_q8a_inputs(m, ["embed_tokens.weight", "layers.0.mlp.down_proj.weight"])
    groups = quality.VocabGroups.of_rows(weights["embed_tokens.weight"])
    assert groups is not None and groups.size == 3000
    quality.restrict_lm_head(models[1], groups)
    ids = [5, 17, 2999, 123, 7]
    full, small = (m.forward(ids, m.new_state(), all_logits=True) for m in models)
    assert small.shape == (5, 3000)
    np.testing.assert_allclose(groups.collapse(small), groups.collapse(full), rtol=0, atol=1e-4)
