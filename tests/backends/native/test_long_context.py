"""Long prompts: a prefill of thousands of tokens fed in chunks equals the same prompt in one
forward pass, bit for bit, for every KV cache type, and the numpy reference within the golden
tolerance; the attention kernels stream the cache in tiles, so the state's score scratch stops
growing at one tile and the state stays the size `Model.state_bytes` said before allocating.

CI runs a 3,000-token prompt (a dozen attention tiles) on the small configuration; the longer
check, tens of thousands of tokens against the reference, is `tools/long_context_check.py`
(docs/benchmarks.md, "Long contexts")."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import native, nmse, random_weights, rel_err, small_config

from qwen_edge.backends.native import core
from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.generation.loop import prefill

PROMPT = 3000  # > 11 tiles of the streaming softmax; a few seconds on 2 cores
CONTEXT = 4096
CHUNK = 512  # generation.loop.prefill's chunks; the model's batch splits them further
TILE = core().ATTENTION_TILE


@pytest.fixture(scope="module")
def long_case() -> tuple:
    config = small_config()
    weights = random_weights(config)
    tensors = {n: ("f32", w.shape, w) for n, w in weights.items()}
    ids = np.random.default_rng(11).integers(0, config.vocab_size, PROMPT)
    return config, weights, tensors, ids


def _chunked(model, ids: np.ndarray, chunk: int) -> np.ndarray:
    """Every position's logits, the prompt fed `chunk` tokens per forward call."""
    state = model.new_state(CONTEXT)
    parts = [
        model.forward(ids[s : s + chunk], state, all_logits=True) for s in range(0, len(ids), chunk)
    ]
    assert state.position == len(ids)
    return np.concatenate(parts)


@pytest.mark.parametrize("kv", ["f32", "f16", "q8", "q4"])
def test_chunked_long_prefill_equals_one_shot(long_case: tuple, kv: str) -> None:
    config, _, tensors, ids = long_case
    assert PROMPT > 8 * TILE
    # One shot: the whole prompt in one forward pass of one batch.
    whole_model = native(config, tensors, kv_cache=kv, threads=2, batch=4096, context=CONTEXT)
    whole_state = whole_model.new_state(CONTEXT)
    whole = whole_model.forward(ids, whole_state, all_logits=True)
    # Chunked: 512-token forward calls, each split into the model's 128-token batches, with
    # another thread count (the attention items land on other threads' scratch tiles).
    model = native(config, tensors, kv_cache=kv, threads=3, batch=128, context=CONTEXT)
    np.testing.assert_array_equal(_chunked(model, ids, CHUNK), whole)
    # The generation loop's prefill is the same chunked path: its last logits are the same.
    state = model.new_state(CONTEXT)
    np.testing.assert_array_equal(prefill(model, list(ids), state, chunk=700), whole[-1])
    # Decoding after the long prefill reads every tile of the cache.
    nxt = int(whole[-1].argmax())
    step = model.forward([nxt], state)
    np.testing.assert_array_equal(whole_model.forward([nxt], whole_state), step)


def test_long_prefill_matches_the_reference(long_case: tuple) -> None:
    """f32 weights and cache: the streaming kernels against the numpy reference's full softmax
    over all 3,000 positions (the reference fed in chunks too, its own causal masking)."""
    config, weights, tensors, ids = long_case
    model = native(config, tensors, kv_cache="f32", threads=2, batch=128, context=CONTEXT)
    got = _chunked(model, ids, CHUNK)
    ref = ReferenceModel(config, weights, context=CONTEXT)
    state = ref.new_state()
    want = np.concatenate(
        [ref.forward(ids[s : s + 1000], state, all_logits=True) for s in range(0, PROMPT, 1000)]
    )
    assert rel_err(got, want) < 2e-5  # test_forward's GOLDEN_TOL
    # The f16, int8 and 4-bit caches stay close to it over the long prompt too.
    for kv, bound in (("f16", 1e-5), ("q8", 1e-3), ("q4", 2e-2)):
        other = native(config, tensors, kv_cache=kv, threads=2, batch=128, context=CONTEXT)
        assert nmse(_chunked(other, ids, CHUNK), want) < bound
