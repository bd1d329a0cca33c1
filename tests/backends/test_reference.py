"""The numpy reference model against the committed transformers goldens, and against itself.

Measure: max |ours - transformers| over all positions and vocabulary entries, divided by the
range (max - min) of the transformers logits of the sequence. Tolerance 2e-5: fp32 rounding
alone gave at most 2.5e-6 on these variants when the goldens were made (tools/make_goldens.py),
while a real mistake (a missing +1 on a norm, a wrong RoPE pairing, a GQA mix-up) gives 1e-2
or more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN_DIRS

from qwen_edge.backends.reference import ReferenceModel, _delta_rule_chunked, _delta_rule_recurrent

LOGIT_TOL = 2e-5


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.ptp(want))


@pytest.mark.parametrize("golden", GOLDEN_DIRS, ids=lambda p: p.name)
def test_matches_transformers_goldens(golden: Path) -> None:
    g = np.load(golden / "golden.npz")
    assert len(g["prompt"]) >= 64 and len(g["decode_tokens"]) >= 16
    model = ReferenceModel.from_checkpoint(golden)
    state = model.new_state()
    prompt_logits = model.forward(g["prompt"], state, all_logits=True)
    assert rel_err(prompt_logits, g["prompt_logits"]) < LOGIT_TOL
    decode_logits = np.stack([model.step(int(t), state) for t in g["decode_tokens"]])
    assert rel_err(decode_logits, g["decode_logits"]) < LOGIT_TOL
    # the greedy continuation transformers chose is ours too
    ours = np.concatenate([prompt_logits[-1:], decode_logits[:-1]]).argmax(axis=1)
    np.testing.assert_array_equal(ours, g["decode_tokens"])


def test_goldens_cover_the_variants() -> None:
    """The parity claims need tied and untied heads, GQA ratios, r = nv/nk > 1, both layouts."""
    configs = [ReferenceModel.from_checkpoint(p).config for p in GOLDEN_DIRS]
    assert {c.tie_word_embeddings for c in configs} == {True, False}
    assert {c.num_attention_heads // c.num_key_value_heads for c in configs} >= {1, 4}
    assert max(c.linear_num_value_heads // c.linear_num_key_heads for c in configs) >= 2
    assert any(c.layer_types[0] == "full_attention" for c in configs)
    assert len({c.head_dim for c in configs}) >= 3
    assert {(p / "model.safetensors.index.json").exists() for p in GOLDEN_DIRS} == {True, False}


def test_prompt_at_once_equals_token_by_token(tiny_checkpoint: Path) -> None:
    model = ReferenceModel.from_checkpoint(tiny_checkpoint)
    ids = np.random.default_rng(3).integers(0, model.config.vocab_size, 150)
    whole = model.logits(ids)
    state = model.new_state()
    steps = np.stack([model.step(int(t), state) for t in ids])
    assert rel_err(steps, whole) < LOGIT_TOL
    # continuing a state in blocks of uneven sizes gives the same logits again
    state = model.new_state()
    blocks = [
        model.forward(ids[a:b], state, all_logits=True)
        for a, b in ((0, 1), (1, 65), (65, 131), (131, 150))
    ]
    assert rel_err(np.concatenate(blocks), whole) < LOGIT_TOL
    assert state.position == 150


def test_state_copy_restores_the_continuation(tiny_checkpoint: Path) -> None:
    model = ReferenceModel.from_checkpoint(tiny_checkpoint)
    state = model.new_state()
    model.forward([1, 2, 3, 4, 5], state)
    snapshot = state.copy()
    a = model.forward([6, 7], state, all_logits=True)
    b = model.forward([6, 7], snapshot, all_logits=True)
    np.testing.assert_array_equal(a, b)


def test_chunked_delta_rule_equals_the_recurrence() -> None:
    """Outputs and final state, from a non-zero state, over 2.5 chunks, strong and weak decay."""
    rng = np.random.default_rng(7)
    T, nv, dk, dv = 160, 3, 8, 5
    k = rng.standard_normal((T, nv, dk)).astype(np.float32)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q = (rng.standard_normal((T, nv, dk)) / np.sqrt(dk)).astype(np.float32)
    v = rng.standard_normal((T, nv, dv)).astype(np.float32)
    g = -rng.uniform(0.0, 3.0, (T, nv)).astype(np.float32) * np.array([0.01, 1, 10], np.float32)
    beta = rng.uniform(0, 1, (T, nv)).astype(np.float32)
    S0 = rng.standard_normal((nv, dk, dv)).astype(np.float32)
    o1, s1 = _delta_rule_recurrent(q, k, v, g, beta, S0)
    o2, s2 = _delta_rule_chunked(q, k, v, g, beta, S0)
    np.testing.assert_allclose(o2, o1, atol=2e-5)
    np.testing.assert_allclose(s2, s1, atol=2e-5)


def test_context_limit(tiny_checkpoint: Path) -> None:
    from qwen_edge.errors import ContextLengthError

    model = ReferenceModel.from_checkpoint(tiny_checkpoint, context=8)
    state = model.new_state()
    model.forward([1] * 6, state)
    with pytest.raises(ContextLengthError, match="6 \\+ 3 tokens exceed the context of 8"):
        model.forward([1, 2, 3], state)
