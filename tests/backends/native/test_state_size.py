"""State sizing: `Model.state_bytes` (C++ `State::bytes_for`) equals what a state allocates, and a
context whose state does not fit the available memory is a clear `ContextLengthError` before
anything is allocated, not an OOM kill; nor is a state that later cannot grow (other states,
other processes took the memory its mapped pages would need): `MemoryLimitError`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends import memory, native
from qwen_edge.backends.native import Model
from qwen_edge.errors import ContextLengthError, MemoryLimitError
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import random_tensor
from qwen_edge.formats.config import ModelConfig

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
    of the streaming kernels (kernels.h kAttentionTile) per query of a work item (ATTENTION_TOKENS
    tokens of a GQA group) and thread, then nothing else does."""
    model = Model.load(tiny_model_file("q4"), threads=2)
    cfg = model.config
    tile = native.core().ATTENTION_TILE
    full = sum(1 for t in cfg.layer_types if t == "full_attention")
    per_token_kv = 2 * full * cfg.num_key_value_heads * cfg.head_dim * 2  # f16 K and V
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    per_token_scores = 2 * native.core().ATTENTION_TOKENS * group * 4
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
    assert sizes["q4"] < sizes["q8"] < sizes["f16"] < sizes["f32"]


def test_context_that_does_not_fit_is_a_clear_error(
    tiny_model_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Model.load(tiny_model_file("q4"), threads=1)
    budget = model.state_bytes(3000)
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: budget)
    assert model.new_state(3000).context == 3000  # exactly fits
    with pytest.raises(ContextLengthError) as e:
        model.new_state(3001)
    msg = str(e.value)
    assert "3001 tokens" in msg and "smaller --context" in msg and "at most 3000 tokens" in msg
    assert "--kv-cache q8" in msg
    assert model.max_context_for(budget) == 3000
    assert model.max_context_for(model.state_bytes(1) - 1) == 0


def test_a_state_grows_only_while_memory_holds_its_next_rows(
    tiny_model_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """new_state checks the whole state, but its cache pages are mapped, not written: what
    other states and processes take later is seen only as the state grows. So each forward
    that passes what memory was last found for reads MemAvailable again (once per
    GROWTH_AHEAD tokens while memory is plentiful), and refuses tokens whose rows would not
    fit, leaving the state as it was."""
    model = Model.load(tiny_model_file("q4"), threads=1, batch=16)
    ahead = memory.GROWTH_AHEAD
    context = 2 * ahead + 100
    reads: list[int] = []
    available = [10 * model.state_bytes(context)]

    def meminfo() -> int:
        reads.append(available[0])
        return available[0]

    monkeypatch.setattr(memory, "mem_available_bytes", meminfo)
    state = model.new_state(context)
    reads.clear()
    ids = np.arange(10, 30)
    model.forward(ids, state)
    assert len(reads) == 1  # found room up to 20 + GROWTH_AHEAD tokens
    for _ in range(ahead // 20):  # to 20 + ahead // 20 * 20 <= 20 + ahead: no read
        model.forward(ids, state)
    assert len(reads) == 1
    model.forward(ids, state)  # past it: read again
    assert len(reads) == 2
    # Filled up to where memory was found for: still no read.
    checked = state._checked
    model.forward(np.arange(checked - state.position) % 1000 + 10, state)
    assert state.position == checked and len(reads) == 2
    # Now only the rows of 10 more tokens fit (other states took the rest): 20 are refused,
    # before anything runs; 10 go in.
    sb = model.state_bytes
    available[0] = sb(checked + 10) - sb(checked)
    with pytest.raises(MemoryLimitError) as e:
        model.forward(ids, state)
    assert state.position == checked
    msg = str(e.value)
    assert f"cannot grow to {checked + 20} tokens" in msg and "--kv-cache q8" in msg
    model.forward(ids[:10], state)
    assert state.position == checked + 10
    # After a reset the pages it wrote stay resident: refilling them takes no new memory,
    # and past them only the new rows count.
    state.reset()
    available[0] = sb(checked + 16) - sb(checked + 10)
    model.forward(np.arange(checked + 16) % 1000 + 10, state)
    assert state.position == checked + 16


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


# --- the 4B's shapes at its native 262,144-token context ----------------------------------------
FOUR_B_CONTEXT = 262144


def _four_b(**overrides: object) -> ModelConfig:
    return ModelConfig.from_hf(presets.hf_config("4b", **overrides))


def test_4b_state_at_262k_tokens() -> None:
    """The 4B: 8 full-attention layers of 4 KV heads x 256 keep K and V; the int8 cache holds
    1.125 bytes per element, so 4.5 GiB at 262,144 tokens (f16: 8 GiB; the 4-bit cache 2.5
    GiB); everything else (the DeltaNet states and the scratch, score tiles included) stays
    under 200 MiB."""
    cfg = _four_b()
    full = cfg.layer_types.count("full_attention")
    elems = 2 * full * cfg.num_key_value_heads * cfg.head_dim * FOUR_B_CONTEXT
    assert elems == 4 * 2**30
    for kv, per_elem in (("q8", 36 / 32), ("q4", 20 / 32), ("f16", 2)):
        total = native.state_bytes_for(cfg, FOUR_B_CONTEXT, kv, batch=128, threads=4)
        assert elems * per_elem < total < elems * per_elem + 200 * 2**20
        # Past one tile, a token adds its K and V rows and nothing else (the integer caches
        # hold their keys in groups of 16 positions, so they grow 16 tokens at a time).
        tokens = 1 if kv == "f16" else 16
        below = native.state_bytes_for(cfg, FOUR_B_CONTEXT - tokens, kv, batch=128, threads=4)
        assert total - below == tokens * elems * per_elem // FOUR_B_CONTEXT
        assert native.state_bytes_for(cfg, FOUR_B_CONTEXT - 1, kv, batch=128, threads=4) == (
            below if kv == "f16" else total
        )


def test_4b_shapes_262k_context_is_a_clear_error_when_it_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model with the 4B's layer and head shapes (its KV cache and DeltaNet states exactly)
    and a tiny hidden size: on an 8 GB board whose weights and system leave 4 GiB, a
    262,144-token state is refused before anything is allocated, naming what would fit."""
    cfg = _four_b(hidden_size=64, intermediate_size=64, vocab_size=1000, eos_token_id=999)
    tensors = {
        n: ("f16", s, random_tensor(n, s, 0).astype(np.float16))
        for n, s in cfg.text_tensor_shapes().items()
    }
    model = Model.from_tensors(cfg, tensors, threads=2, kv_cache="q8", context=FOUR_B_CONTEXT)
    need = model.state_bytes()
    real = native.state_bytes_for(_four_b(), FOUR_B_CONTEXT, "q8", threads=2)
    assert abs(need - real) < 64 * 2**20  # only the hidden-size scratch differs
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: 4 * 2**30)
    with pytest.raises(ContextLengthError) as e:
        model.new_state()
    msg = str(e.value)
    fits = model.max_context_for(4 * 2**30)
    assert 190_000 < fits < FOUR_B_CONTEXT
    assert f"a state for {FOUR_B_CONTEXT} tokens needs {need / 2**20:.0f} MiB (q8 KV" in msg
    # The message names the next smaller cache.
    assert f"at most {fits} tokens fit now" in msg and "--kv-cache q4" in msg
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: need)
    assert model.max_context_for(need) == FOUR_B_CONTEXT
