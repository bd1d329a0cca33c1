"""Sampling: each filter against a plain full-sort reference written here, the drawn frequencies
against the softmax, penalties and bias, seeding, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.errors import GenerationConfigError
from qwen_edge.generation.sampling import (
    Sampler,
    _top_k_ids,
    _top_p_ids,
    _weights,
)
from qwen_edge.generation.settings import SamplingParams

V = 248_320
SEED = 1234


def logits_like_a_model(rng: np.random.Generator, n: int = V) -> np.ndarray:
    """Heavy right tail, like real next-token logits: a few likely tokens, a long flat rest."""
    x = rng.standard_normal(n).astype(np.float32) * 2.0
    x[rng.choice(n, 30, replace=False)] += rng.uniform(4, 12, 30).astype(np.float32)
    return x


def reference_keep(x: np.ndarray, top_k: int, top_p: float, min_p: float, t: float) -> set[int]:
    """transformers' warpers, literally: temperature, top-k, top-p, min-p on a full sort."""
    z = x.astype(np.float64) / t
    order = np.argsort(-z, kind="stable")
    keep = np.ones(z.size, bool)
    if top_k:
        keep[order[top_k:]] = False
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        sorted_p = p[order]
        preceding = np.cumsum(sorted_p) - sorted_p
        drop = order[preceding >= top_p]
        drop = drop[drop != order[0]]
        keep[drop] = False
    if min_p > 0.0:
        keep &= p >= min_p * p.max()
    return set(np.flatnonzero(keep).tolist())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p", "t"),
    [(20, 1.0, 0.0, 1.0), (20, 0.8, 0.0, 0.7), (0, 0.9, 0.0, 1.0), (0, 0.5, 0.0, 0.3),
     (0, 1.0, 0.05, 1.0), (40, 0.95, 0.1, 1.3), (0, 0.95, 0.0, 5.0)],
)  # fmt: skip
def test_draws_stay_in_the_reference_set(
    seed: int, top_k: int, top_p: float, min_p: float, t: float
) -> None:
    rng = np.random.default_rng([SEED, seed])
    x = logits_like_a_model(rng)
    allowed = reference_keep(x, top_k, top_p, min_p, t)
    s = Sampler(SamplingParams(temperature=t, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed), V)
    draws = {s(x)[0] for _ in range(80)}
    assert draws <= allowed, f"seed {seed}: drew {sorted(draws - allowed)[:5]} outside the set"


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_set_equals_the_reference(scale: float, top_p: float) -> None:
    # Covers the pool of the largest logits (peaky) and the bracketing search (flat).
    rng = np.random.default_rng(int(scale * 100 + top_p * 1000))
    x = (rng.standard_normal(V) * scale).astype(np.float32)
    x[-100:] = -np.inf  # suppressed ids are never kept
    top = float(x.max())
    total = float(np.sum(_weights(x, top, 1.0), dtype=np.float64))
    ours = set(_top_p_ids(x, None, top, 1.0, top_p * total).tolist())
    assert ours == reference_keep(x, 0, top_p, 0.0, 1.0)


def test_top_k_ids_equal_argpartition() -> None:
    rng = np.random.default_rng(SEED)
    for n, k in [(V, 1), (V, 20), (V, 300), (1000, 999), (V, 5000)]:
        x = rng.standard_normal(n).astype(np.float32)
        x[rng.choice(n, 50)] = x.max()  # ties at the top
        ours = np.sort(x[_top_k_ids(x, k)])
        assert np.array_equal(ours, np.sort(x)[-k:])


def test_frequencies_follow_the_softmax() -> None:
    rng = np.random.default_rng(SEED)
    for n in (7, V):  # small: direct draw; large: the two-level draw over the whole vocabulary
        x = np.full(n, -30.0, np.float32)
        x[[1, n // 2, n - 1]] = [2.0, 1.0, 0.0]
        x[: n // 3] += rng.standard_normal(n // 3).astype(np.float32)  # mass from the tail too
        p = np.exp(x.astype(np.float64) - x.max())
        p /= p.sum()
        s = Sampler(SamplingParams(temperature=1.0, seed=5), n)
        draws = np.array([s(x)[0] for _ in range(2500)])
        for token in (1, n // 2, n - 1):
            freq = np.mean(draws == token)
            assert abs(freq - p[token]) < 4 * np.sqrt(p[token] * (1 - p[token]) / draws.size) + 1e-3


def test_greedy_and_logprob() -> None:
    rng = np.random.default_rng(SEED)
    x = logits_like_a_model(rng)
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1)):
        token, logprob = Sampler(params, V)(x)
        assert token == int(np.argmax(x))
        z = x.astype(np.float64)
        expected = z[token] - (z.max() + np.log(np.sum(np.exp(z - z.max()))))
        assert logprob == pytest.approx(expected, abs=1e-4)
    assert Sampler(SamplingParams(temperature=0.0), V, logprobs=False)(x)[1] is None


def test_seed_makes_runs_reproducible() -> None:
    rng = np.random.default_rng(SEED)
    steps = [logits_like_a_model(rng) for _ in range(20)]
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=42)

    def run(p: SamplingParams) -> list[int]:
        s = Sampler(p, V)
        return [s(x)[0] for x in steps]

    assert run(params) == run(params)
    others = {
        tuple(run(SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=s))) for s in range(5)
    }
    assert len(others) > 1


def test_penalties_and_bias() -> None:
    x = np.zeros(100, np.float32)
    x[[10, 11, 12, 13]] = [5.0, 4.9, -1.0, -1.05]
    greedy = SamplingParams(temperature=0.0)
    assert Sampler(greedy, 100)(x)[0] == 10
    # Repetition penalty counts the prompt: 10 is divided (5 -> 3.3) below 11.
    assert (
        Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), 100, prompt=[10])(x)[0]
        == 11
    )
    # Negative logits are multiplied: with everything else masked, 12 (-1.5) loses to 13 (-1.05).
    only = np.full(100, -np.inf, np.float32)
    only[[12, 13]] = [-1.0, -1.05]
    assert (
        Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), 100, prompt=[12])(only)[0]
        == 13
    )
    # Presence and frequency count generated tokens only (not the prompt).
    s = Sampler(SamplingParams(temperature=0.0, presence_penalty=0.2), 100, prompt=[11])
    s.accept(10)
    assert s(x)[0] == 11
    s = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.06), 100)
    s.accept(10)
    assert s(x)[0] == 10  # one occurrence: 5 - 0.06 > 4.9
    s.accept(10)
    assert s(x)[0] == 11  # two: 5 - 0.12 < 4.9
    assert Sampler(SamplingParams(temperature=0.0, logit_bias={50: 10.0}), 100)(x)[0] == 50
    assert Sampler(SamplingParams(temperature=0.0, logit_bias={10: -100.0}), 100)(x)[0] == 11


def test_ids_without_a_token_are_never_drawn() -> None:
    x = np.zeros(V, np.float32)
    x[248_100:] = 50.0  # embedding padding rows that happen to score high
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, seed=1)):
        s = Sampler(params, V, valid_vocab=248_077)
        assert all(s(x)[0] < 248_077 for _ in range(50))


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"top_k": -1}, {"top_p": 0}, {"top_p": 1.5}, {"min_p": 2},
     {"repetition_penalty": 0}, {"presence_penalty": 3}, {"logit_bias": {1: float("nan")}},
     # not finite, absurdly large, or not a number at all
     {"temperature": float("inf")}, {"temperature": 1e308}, {"top_p": float("nan")},
     {"temperature": "hot"}, {"temperature": True}, {"top_k": 10**40}, {"top_k": 2.5},
     {"repetition_penalty": 1e300}, {"seed": -1}, {"seed": 2**64}, {"logit_bias": {1: 101}},
     {"logit_bias": {-1: 1}}, {"logit_bias": {1: "x"}}],
)  # fmt: skip
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(GenerationConfigError) as e:
        SamplingParams(**kwargs)
    assert e.value.field == next(iter(kwargs))  # names the setting, for the API's `param`


def test_bad_logits() -> None:
    s = Sampler(SamplingParams(), 10)
    with pytest.raises(ValueError, match="shape"):
        s(np.zeros(11, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        s(np.full(10, np.nan, np.float32))
    with pytest.raises(ValueError, match="excluded"):
        Sampler(SamplingParams(), 10, valid_vocab=0)(np.zeros(10, np.float32))
    with pytest.raises(GenerationConfigError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={10: 1.0}), 10)
