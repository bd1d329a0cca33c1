"""The native MTP head against the numpy reference (docs/model.md §5), on a random checkpoint
exported with `--mtp`; checkpointed forwards and `State.rollback` (exact: the caches and every
later logit equal the plain path's); errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends import native
from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.convert import export

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")


@pytest.fixture(scope="module")
def mtp_file(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable:
    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            made[recipe] = tmp_path_factory.mktemp("mtp") / f"tiny-{recipe}-mtp.qe"
            export(tiny_checkpoint, made[recipe], recipe, keep_mtp=True)
        return made[recipe]

    return get


def prompt(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 5000, n)]


def test_mtp_head_matches_the_reference(tiny_checkpoint: Path, mtp_file: Callable) -> None:
    ref = ReferenceModel.from_checkpoint(tiny_checkpoint)
    assert ref.has_mtp
    m = native.load(mtp_file("f32"), threads=2)
    assert m.has_mtp
    ids = prompt(14)
    rs = ref.new_state()
    want_logits, want_hidden = ref.forward_hidden(ids, rs)
    # pairs (y_t, token t+1) over the prompt, then one chained step on the head's own output
    want_draft, want_y = ref.mtp(want_hidden[:-1], ids[1:], rs)
    want_next, _ = ref.mtp(want_y[-1:], [int(np.argmax(want_draft[-1]))], rs)

    s = m.new_state()
    s.enable_speculation(2)
    hidden = np.empty((len(ids), m.config.hidden_size), np.float32)
    logits = m.forward(ids, s, all_logits=True, hidden=hidden)
    np.testing.assert_allclose(hidden, want_hidden, atol=2e-3 * np.abs(want_hidden).max())
    np.testing.assert_allclose(logits, want_logits, atol=2e-3 * np.abs(want_logits).max())
    draft, y = m.mtp_forward(ids[1:], hidden[:-1], s)
    assert s.mtp_position == len(ids) - 1
    scale = np.abs(want_draft).max()
    np.testing.assert_allclose(draft, want_draft[-1], atol=2e-3 * scale)
    np.testing.assert_allclose(y, want_y[-1], atol=2e-3 * np.abs(want_y).max())
    nxt, _ = m.mtp_forward([int(np.argmax(draft))], y, s)
    np.testing.assert_allclose(nxt, want_next[-1], atol=2e-3 * np.abs(want_next).max())
    # a draft over the first rows is a prefix of the full draft
    s.set_mtp_position(len(ids) - 1)
    part, _ = m.mtp_forward([int(np.argmax(draft))], y, s, rows=100)
    assert part.shape == (m.draft_rows(100),) == (104,)
    assert np.array_equal(part, nxt[:104])
    assert 0 < m.mtp_weight_bytes(104) < m.mtp_weight_bytes()


@pytest.mark.parametrize("recipe", ["f32", "q4"])
def test_rollback_equals_never_running_the_tokens(mtp_file: Callable, recipe: str) -> None:
    m = native.load(mtp_file(recipe), threads=2)
    ids = prompt(24, seed=1)
    whole = m.forward(ids, m.new_state(), all_logits=True)
    for undo in range(5):
        s = m.new_state()
        s.enable_speculation(4)
        m.forward(ids[:10], s)
        verify = m.forward(ids[10:15], s, all_logits=True, checkpoint=True)
        assert np.array_equal(verify, whole[10:15])
        s.rollback(undo)
        assert s.position == 15 - undo
        rest = m.forward(ids[15 - undo :], s, all_logits=True)
        assert np.array_equal(rest, whole[15 - undo :]), undo


def test_rollback_errors(mtp_file: Callable) -> None:
    m = native.load(mtp_file("q8"), threads=1)
    s = m.new_state()
    with pytest.raises(ValueError, match="rollback"):
        s.rollback(1)  # no checkpointed forward yet
    with pytest.raises(QwenEdgeError, match="checkpoint"):
        m.forward([1, 2, 3], s, all_logits=True, checkpoint=True)  # no slots
    s.enable_speculation(2)
    m.forward([1, 2, 3], s, all_logits=True, checkpoint=True)
    m.forward([4], s)  # a plain forward ends what rollback can undo
    with pytest.raises(ValueError, match="rollback"):
        s.rollback(1)
    with pytest.raises(ValueError, match="truncated"):
        s.set_mtp_position(1)


def test_a_model_without_the_head(tiny_model_file: Callable) -> None:
    m = native.load(tiny_model_file("q8"), threads=1)
    assert not m.has_mtp and m.mtp_weight_bytes() == 0
    s = m.new_state()
    s.enable_speculation(1)
    with pytest.raises(QwenEdgeError, match="no MTP head"):
        m.mtp_forward([1], np.zeros(m.config.hidden_size, np.float32), s)
