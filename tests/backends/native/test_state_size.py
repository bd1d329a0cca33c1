"""State sizing: `Model.state_bytes` (C++ `State::bytes_for`) equals what a state allocates, and a
context whose state does not fit the available memory is a clear `ContextLengthError` before
anything is allocated, not an OOM kill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_edge.backends import native
from qwen_edge.backends.native import Model
from qwen_edge.errors import ContextLengthError

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")


@pytest.mark.parametrize("kv_cache", native.KV_CACHE_TYPES)
@pytest.mark.parametrize("context,batch,threads", [(1, 1, 1), (77, 16, 3), (4096, 128, 2)])
def test_bytes_for_equals_allocated(
    tiny_model_file: Callable[[str], Path], kv_cache: str, context: int, batch: int, threads: int
) -> None:
    model = Model.load(tiny_model_file("q4"), threads=threads, kv_cache=kv_cache, batch=batch)
    state = model.new_state(context)
    assert model.state_bytes(context) == state.allocated_bytes
    assert state.cache_bytes < state.allocated_bytes


def test_state_grows_linearly_with_context(tiny_model_file: Callable[[str], Path]) -> None:
    """KV cache (one layer in four) grows per token; the attention scores only up to one tile
    of the streaming kernels (kernels.h kAttentionTile), then nothing else does."""
    model = Model.load(tiny_model_file("q4"), threads=2)
    cfg = model.config
    tile = native.core().ATTENTION_TILE
    full = sum(1 for t in cfg.layer_types if t == "full_attention")
    per_token_kv = 2 * full * cfg.num_key_value_heads * cfg.head_dim * 2  # f16 K and V
    per_token_scores = 2 * (cfg.num_attention_heads // cfg.num_key_value_heads) * 4
    below = model.state_bytes(tile) - model.state_bytes(tile - 1)
    assert below == per_token_kv + per_token_scores
    step = model.state_bytes(1001) - model.state_bytes(1000)
    assert step == per_token_kv
    assert model.state_bytes(2000) - model.state_bytes(1000) == 1000 * step
    assert model.state_bytes(200_000) - model.state_bytes(1000) == 199_000 * step


def test_kv_types_ordered(tiny_model_file: Callable[[str], Path]) -> None:
    sizes = {
        kv: Model.load(tiny_model_file("q4"), kv_cache=kv).state_bytes(8192)
        for kv in native.KV_CACHE_TYPES
    }
    assert sizes["q8"] < sizes["f16"] < sizes["f32"]


def test_context_that_does_not_fit_is_a_clear_error(
    tiny_model_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Model.load(tiny_model_file("q4"), threads=1)
    budget = model.state_bytes(3000)
    monkeypatch.setattr(native, "mem_available_bytes", lambda: budget)
    assert model.new_state(3000).context == 3000  # exactly fits
    with pytest.raises(ContextLengthError) as e:
        model.new_state(3001)
    msg = str(e.value)
    assert "3001 tokens" in msg and "smaller --context" in msg and "at most 3000 tokens" in msg
    assert "--kv-cache q8" in msg
    assert model.max_context_for(budget) == 3000
    assert model.max_context_for(model.state_bytes(1) - 1) == 0


def test_bad_context_is_a_value_error(tiny_model_file: Callable[[str], Path]) -> None:
    model = Model.load(tiny_model_file("q4"))
    with pytest.raises(ValueError, match="context must be in"):
        model.state_bytes(model.config.max_position_embeddings + 1)
    with pytest.raises(ValueError, match="context must be in"):
        model.state_bytes(-5)


def test_state_bytes_for_needs_no_weights(tiny_model_file: Callable[[str], Path]) -> None:
    for kv in native.KV_CACHE_TYPES:
        model = Model.load(tiny_model_file("q4"), threads=2, kv_cache=kv, batch=32)
        for context in (1, 500, 70000):
            got = native.state_bytes_for(model.config, context, kv, batch=32, threads=2)
            assert got == model.state_bytes(context)
    with pytest.raises(ValueError, match="context must be in"):
        native.state_bytes_for(model.config, 0)
