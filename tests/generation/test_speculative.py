"""Speculative decoding with the MTP head (docs/speculative.md): the tokens are those of plain
decoding, bit for bit, whether the drafts are rejected (a random head), accepted (an oracle
head that drafts the plain continuation) or a mix; penalties, context ends; the silent
fallbacks; resuming from a head-ready snapshot (the prefix cache's); the settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_edge.backends import native
from qwen_edge.errors import GenerationConfigError
from qwen_edge.export import presets
from qwen_edge.export.convert import export
from qwen_edge.export.random_checkpoint import write_random_checkpoint
from qwen_edge.generation.loop import generate
from qwen_edge.generation.settings import GenerationConfig, settings
from qwen_edge.generation.speculative import (
    DraftLength,
    SpeculativeStats,
    prefill_for_speculation,
    speculative_step,
    supports_speculation,
)

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")

GREEDY = GenerationConfig(max_tokens=40, stop_token_ids=()).replace(
    temperature=0.0, presence_penalty=0.0, speculative="off"
)


@pytest.fixture(scope="module")
def small_mtp(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny preset with a 1000-row vocabulary and its MTP head, exported per recipe."""
    root = tmp_path_factory.mktemp("small-mtp")
    ckpt = write_random_checkpoint(
        root / "ckpt", presets.hf_config("tiny", vocab_size=1000, eos_token_id=999)
    )
    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            made[recipe] = root / f"{recipe}.qe"
            export(ckpt, made[recipe], recipe, keep_mtp=True)
        return made[recipe]

    return get


class OracleHead:
    """A native model whose MTP drafts are the plain continuation `truth` where `right(pos)`
    says so, and a wrong token elsewhere: exercises every accept / reject pattern."""

    def __init__(self, model: native.Model, truth: list[int], right: Callable[[int], bool]):
        self._m, self.truth, self.right = model, truth, right

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def mtp_forward(self, tokens: Any, hidden: Any, state: Any, **kw: Any) -> Any:
        logits, y = self._m.mtp_forward(tokens, hidden, state, **kw)
        at = state.mtp_position + 1  # the pair at t drafts token t + 2
        want = self.truth[at] if at < len(self.truth) else 0
        if not self.right(at):
            want = (want + 1) % logits.shape[0]
        logits[:] = 0.0
        logits[want] = 1.0
        return logits, y


def prompt(n: int = 12) -> list[int]:
    return [int(t) for t in np.random.default_rng(3).integers(0, 999, n)]


@pytest.mark.parametrize("recipe", ["f32", "q4"])
@pytest.mark.parametrize("draft_tokens", [1, 3])
def test_greedy_output_is_plain_greedy(small_mtp: Callable, recipe: str, draft_tokens: int) -> None:
    m = native.load(small_mtp(recipe), threads=2)
    ids = prompt()
    plain = generate(m, None, ids, GREEDY)
    assert plain.stats.speculative is None
    spec = generate(m, None, ids, GREEDY.replace(speculative="mtp", draft_tokens=draft_tokens))
    assert spec.tokens == plain.tokens
    s = spec.stats.speculative
    assert s is not None and s["rounds"] >= 1 and s["drafted_tokens"] >= 1
    assert "speculative" in spec.stats.to_dict()


@pytest.mark.parametrize(
    "pattern",
    [lambda p: True, lambda p: False, lambda p: p % 3 != 0, lambda p: (p * 7919) % 5 < 2],
)
def test_accepted_drafts_keep_the_plain_output(small_mtp: Callable, pattern: Callable) -> None:
    m = native.load(small_mtp("q8"), threads=2)
    ids = prompt()
    plain = generate(m, None, ids, GREEDY)
    oracle = OracleHead(m, ids + plain.tokens, pattern)
    for k in (1, 2, 4):
        spec = generate(oracle, None, ids, GREEDY.replace(speculative="mtp", draft_tokens=k))
        assert spec.tokens == plain.tokens, k
        s = spec.stats.speculative
        assert s is not None
        # (adaptive lengths follow measured CPU time: no counts asserted here)
    # every draft right: k + 1 tokens per verification once the length has grown
    stats = SpeculativeStats()
    steps = speculative_step(
        OracleHead(m, ids + plain.tokens, lambda p: True),
        ids,
        lambda logits: (int(np.argmax(logits)), None),
        draft_tokens=3,
        adaptive=False,
        stats=stats,
    )
    got = [t for _, t in zip(range(33), steps, strict=False)]
    assert [t for t, _ in got] == plain.tokens[:33]
    assert stats.accepted == stats.drafted == 3 * stats.rounds and stats.rounds == 8


def test_penalties_and_the_context_end(small_mtp: Callable) -> None:
    m = native.load(small_mtp("q8"), threads=1, context=30)
    ids = prompt(10)
    cfg = GREEDY.replace(repetition_penalty=1.3, frequency_penalty=0.5, max_tokens=100)
    plain = generate(m, None, ids, cfg)
    assert plain.finish_reason == "length" and len(plain.tokens) == 30 - 10 + 1
    oracle = OracleHead(m, ids + plain.tokens, lambda p: p % 4 != 1)
    for model in (m, oracle):
        spec = generate(model, None, ids, cfg.replace(speculative="mtp", draft_tokens=4))
        assert spec.tokens == plain.tokens and spec.finish_reason == "length"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampling_gives_the_plain_tokens_and_distribution(small_mtp: Callable, seed: int) -> None:
    # Each emitted token is one sampler call on the plain path's logits, in order: with the same
    # seed, the same tokens (so the same distribution), whatever the drafts.
    m = native.load(small_mtp("q8"), threads=1)
    ids = prompt()
    cfg = GREEDY.replace(temperature=0.8, top_k=20, top_p=0.95, seed=seed, max_tokens=30)
    plain = generate(m, None, ids, cfg)
    for model in (m, OracleHead(m, ids + plain.tokens, lambda p: p % 3 != 2)):
        spec = generate(model, None, ids, cfg.replace(speculative="mtp", draft_tokens=3))
        assert spec.tokens == plain.tokens
        assert spec.stats.speculative is not None


def test_sampled_first_tokens_follow_the_model(small_mtp: Callable) -> None:
    # Seeded statistics: the first two sampled tokens over 300 seeds, speculative against the
    # model's own softmax at temperature 2 (a wide distribution), chi-square on the first token
    # and the same empirical distribution as plain decoding for the pair.
    m = native.load(small_mtp("q8"), threads=1)
    ids = prompt(6)
    cfg = GREEDY.replace(
        temperature=2.0, top_k=0, top_p=1.0, max_tokens=2, speculative="mtp", draft_tokens=1
    )
    logits = m.forward(ids, m.new_state()) / 2.0
    p = np.exp(logits - logits.max())
    p /= p.sum()
    firsts, pairs, plain_pairs = [], [], []
    for seed in range(300):
        spec = generate(m, None, ids, cfg.replace(seed=seed))
        plain = generate(m, None, ids, cfg.replace(seed=seed, speculative=None))
        firsts.append(spec.tokens[0])
        pairs.append(tuple(spec.tokens))
        plain_pairs.append(tuple(plain.tokens))
    assert pairs == plain_pairs
    top = np.argsort(p)[::-1][:8]  # the likeliest tokens, the rest pooled
    observed = np.array([sum(t == k for t in firsts) for k in top] + [0.0])
    observed[-1] = len(firsts) - observed[:-1].sum()
    expected = np.append(p[top], 1.0 - p[top].sum()) * len(firsts)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 26.1, (chi2, observed, expected)  # 8 degrees of freedom, p = 0.001


def test_greedy_speculates_by_default(small_mtp: Callable) -> None:
    m = native.load(small_mtp("q8"), threads=1)
    ids = prompt()
    plain = generate(m, None, ids, GREEDY)
    auto = generate(m, None, ids, GREEDY.replace(speculative="auto"))
    assert auto.tokens == plain.tokens and auto.stats.speculative["rounds"] >= 1
    sampled = GREEDY.replace(speculative="auto", temperature=0.7, seed=4)
    assert generate(m, None, ids, sampled).stats.speculative is None


def test_falls_back_silently(small_mtp: Callable, tiny_model_file: Callable) -> None:
    ids = prompt()
    no_head = native.load(tiny_model_file("q8"), threads=1)
    cfg = GREEDY.replace(speculative="mtp", max_tokens=5)
    assert generate(no_head, None, ids, cfg).stats.speculative is None
    m = native.load(small_mtp("q8"), threads=1)
    state = m.new_state()
    m.forward(ids[:4], state)  # a continued state: the head's cache lacks those pairs
    got = generate(m, None, ids, cfg, state=state, cached_tokens=4)
    assert got.stats.speculative is None


def test_the_draft_length_follows_acceptance_and_cost() -> None:
    # Drafts never accepted, rounds costing 1 + k/2: plain steps, with a 1-draft probe now
    # and then. Drafts always accepted and verification nearly free: the longest drafts.
    lengths = DraftLength(4, 2, probe=5)
    chosen = []
    for _ in range(60):
        k = lengths.choose()
        chosen.append(k)
        lengths.update(k, 0, 1 + k / 2)
    assert chosen[-20:].count(0) >= 15 and 1 in chosen[-20:] and max(chosen[-20:]) == 1
    lengths = DraftLength(4, 1)
    for _ in range(30):
        k = lengths.choose()
        lengths.update(k, k, 1 + k / 20)
    assert lengths.choose() == 4


def test_the_settings() -> None:
    by_name = {s.name: s for s in settings()}
    spec = by_name["speculative"]
    assert spec.kind == "choice" and spec.choices == ("auto", "mtp", "off")
    assert spec.default == "auto" and by_name["draft_tokens"].default == 2
    # auto: greedy decoding only (where speculation pays: docs/speculative.md)
    base = GenerationConfig()
    assert not base.speculates  # the cards' sampling, temperature 0.7
    assert base.replace(temperature=0).speculates and base.replace(top_k=1).speculates
    assert base.replace(speculative="mtp").speculates
    assert not base.replace(temperature=0, speculative="off").speculates
    with pytest.raises(GenerationConfigError, match="speculative"):
        GenerationConfig(speculative="eagle")
    with pytest.raises(GenerationConfigError, match="draft_tokens"):
        GenerationConfig(draft_tokens=0)


def test_a_long_backlog_catches_up_in_one_call(small_mtp: Callable) -> None:
    # A round without drafts and more than 256 pairs the head has not seen: it catches up in
    # one batched call (a 300-token prompt one token before the end of the context).
    m = native.load(small_mtp("q8"), threads=1, context=301)
    ids = [int(t) for t in np.random.default_rng(5).integers(0, 999, 300)]
    plain = generate(m, None, ids, GREEDY)
    state = m.new_state()
    spec = generate(m, None, ids, GREEDY.replace(speculative="mtp", draft_tokens=2), state=state)
    assert spec.tokens == plain.tokens and len(plain.tokens) == 2
    assert spec.stats.speculative["draft_lengths"] == {"0": 1}
    assert state.mtp_position == 299  # every prompt pair but the pending token's


def test_speculating_prefills_report_progress(small_mtp: Callable) -> None:
    m = native.load(small_mtp("q8"), threads=1)
    ids = [int(t) for t in np.random.default_rng(6).integers(0, 999, 700)]
    counts: list[int] = []
    spec = generate(m, None, ids, GREEDY.replace(speculative="mtp"), progress=counts.append)
    assert spec.stats.speculative is not None and counts == [512, 188]
    counts.clear()
    prefill_for_speculation(m, ids[:300], m.new_state(), chunk=128, progress=counts.append)
    assert counts == [128, 128, 44]


class Recorder:
    """The model; records every MTP call's last draft (its argmax over all rows' logits) and
    output hidden state, keyed by the head's position after the call."""

    def __init__(self, model: native.Model):
        self._m, self.calls = model, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def mtp_forward(self, tokens: Any, hidden: Any, state: Any, **kw: Any) -> Any:
        logits, y = self._m.mtp_forward(tokens, hidden, state, **kw)
        self.calls[state.mtp_position] = (logits.tobytes(), y.tobytes())
        return logits, y


@pytest.mark.parametrize("recipe", ["f32", "q4"])
def test_a_head_ready_snapshot_resumes_exactly(small_mtp: Callable, recipe: str) -> None:
    # Speculating from a compact snapshot of a prefix (what the prefix cache keeps) gives the
    # tokens, rounds and drafts of speculating from a fresh state, bit for bit: the snapshot
    # holds the head's cache and the prefix's last hidden state.
    m = native.load(small_mtp(recipe), threads=2)
    ids = prompt(21)
    greedy = lambda logits: (int(np.argmax(logits)), None)  # noqa: E731
    plain = generate(m, None, ids, GREEDY.replace(max_tokens=24)).tokens
    runs = []
    for cut in (0, 1, 9, 20):
        state = m.new_state()
        if cut:
            prefill_for_speculation(m, ids[:cut], state, slots=3)
            snap = state.snapshot()
            assert snap.mtp_ready and snap.mtp_position == cut - 1 and snap.position == cut
            assert supports_speculation(m, snap)
            state = m.new_state()
            state.restore(snap)
        rec, stats = Recorder(m), SpeculativeStats()
        steps = speculative_step(
            rec, ids[cut:], greedy, state=state, draft_tokens=3, adaptive=False, stats=stats
        )
        tokens = [t for _, (t, _) in zip(range(24), steps, strict=False)]
        assert tokens == plain
        runs.append((stats.rounds, stats.drafted, stats.accepted, rec.calls))
    fresh = runs[0]
    for got in runs[1:]:
        assert got[:3] == fresh[:3]
        # the draft calls (the prefill's catch-up call ends elsewhere): the same bits
        assert {p: v for p, v in got[3].items() if p >= 21} == fresh[3]


def test_head_ready_states(small_mtp: Callable) -> None:
    m = native.load(small_mtp("q8"), threads=1)
    ids = prompt(8)
    s = m.new_state()
    with pytest.raises(ValueError):
        s.set_mtp_hidden(np.zeros(m.config.hidden_size, np.float32))  # no speculation yet
    prefill_for_speculation(m, ids[:5], s)
    assert s.mtp_ready and s.mtp_hidden is not None
    with_head = s.snapshot()
    m.forward(ids[5:6], s)  # a plain step: the head lacks its pair now
    assert not s.mtp_ready and s.mtp_hidden is None and not supports_speculation(m, s)
    with pytest.raises(ValueError, match="head-ready"):
        prefill_for_speculation(m, ids[6:], s)
    # a rollback that undoes the kept position drops the hidden state
    s.restore(with_head)
    s.enable_speculation(2)
    m.forward(ids[5:8], s, checkpoint=True)
    s.set_mtp_hidden(np.ones(m.config.hidden_size, np.float32))
    s.rollback(2)
    assert not s.mtp_ready
    # the snapshot's bytes: the main caches plus the head's KV cache and hidden state
    plain_state = m.new_state()
    m.forward(ids[:5], plain_state)
    plain_snap = plain_state.snapshot()
    c = m.config
    kv_row = 2 * c.head_dim  # f16
    head = 2 * c.num_key_value_heads * 5 * kv_row + 4 * c.hidden_size
    assert with_head.cache_bytes == plain_snap.cache_bytes + head
