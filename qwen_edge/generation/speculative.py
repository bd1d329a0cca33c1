"""Exact self-speculative decoding with the model's own MTP head (docs/speculative.md).

One round: the MTP head (docs/model.md §5) drafts k tokens, one step each; the main model runs
the pending token and the k drafts in one checkpointed forward (a small GEMM: the weights are
read once for k + 1 tokens); the sampler picks each position's token in order and the round
keeps the drafts while they equal its picks, plus the first pick that differs (or the one after
the last draft). `State.rollback` then undoes the rejected drafts exactly: the KV caches
truncate and the DeltaNet states come back from the checkpoint after the last kept token.

Every emitted token is one sampler call on the logits plain decoding would have computed (the
verification's rows are bitwise those of single steps), in the same order, so the output is
that of plain decoding, token for token, for greedy and for random sampling alike (same seed,
same tokens). For random sampling this is speculative sampling (Leviathan et al. 2023) with a
deterministic draft q = one-hot(d): accepting d with probability min(1, p(d) / q(d)) = p(d) and
otherwise drawing from max(0, p - q), renormalized, is the same as drawing x ~ p and keeping d
when x == d, else emitting x.

The draft length adapts (`DraftLength`): from the running acceptance at each draft depth and
the measured time of rounds of each length, it picks the length with the most expected tokens
per second, 0 included (a plain step; the head then catches up on the skipped positions in one
batched call when drafting resumes, and a round of 1 draft probes now and then).

A model may offer `speculation_allowed()` (the serving scheduler's proxy does: it is true while
the request is alone in the batch). When it turns false at the start of a round, the
generation continues with plain one-token forwards for good: the state is exact at every round
boundary, and plain steps are what batches with other requests.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The draft's LM head: the first rows only (frequent ids come first in BPE; 87.6 % of the
# held-out corpus's tokens, and on the trained model the same acceptance as all 248,320 rows:
# docs/speculative.md). A draft step then reads 4 MB of head instead of 64 MB.
DRAFT_ROWS = 16384
MAX_DRAFT_TOKENS = 16
Sampler = Callable[[np.ndarray], tuple[int, "float | None"]]


class DraftLength:
    """Chooses each round's draft length k in 0..most from what the rounds so far measured.

    Expected tokens of a round with k drafts: 1 + sum_j prod_(i <= j) p_i, where p_i is the
    running rate at which draft i was accepted when drafts 1..i-1 were: the mean of its first
    judgements (from a prior of 0.5 worth one judgement), then exponentially weighted, so a
    depth judged in a few rounds is already believed (on the trained model p_2 is 0.97; an
    estimate crawling up from 0.5 kept the chooser at one draft for a whole generation). Time
    of such a round (CPU time of the process, robust to waiting for a core on a
    shared machine): the running mean of measured rounds of that length, or, for a
    length not measured yet, a line through the measured ones (with one length measured, a
    prior: each draft adds a quarter of a plain round). k = 0 is a plain step; after `probe`
    rounds at 0, one round drafts 1 to keep p_1 current, and every 2 * `probe` rounds one
    round drafts one more than the best, so a length's time is re-measured. One instance lives
    per model and `most`, across generations.
    """

    def __init__(self, most: int, start: int, probe: int = 8, decay: float = 0.9):
        self.most, self.k, self.probe, self.decay = most, min(start, most), probe, decay
        self.rounds = 0
        self.p = [0.5] * (most + 1)  # p[j]: acceptance of draft j given 1..j-1 accepted
        self.judged = [0] * (most + 1)  # judgements of draft j so far
        self.t: dict[int, float] = {}  # k -> running mean seconds per round
        self.idle = 0  # rounds at k = 0 since the last draft

    def update(self, k: int, kept: int, seconds: float) -> None:
        for j in range(1, min(k, kept + 1) + 1):  # drafts 1..kept+1 were judged
            self.judged[j] += 1
            rate = max(1 - self.decay, 1 / (self.judged[j] + 1))
            self.p[j] += rate * ((1.0 if j <= kept else 0.0) - self.p[j])
        old = self.t.get(k)
        self.t[k] = seconds if old is None else 0.8 * old + 0.2 * seconds
        self.idle = self.idle + 1 if k == 0 else 0

    def expected_tokens(self, k: int) -> float:
        total, run = 1.0, 1.0
        for j in range(1, k + 1):
            run *= self.p[j]
            total += run
        return total

    def seconds(self, k: int) -> float:
        if k in self.t:
            return self.t[k]
        known = sorted(self.t)
        near = min(known, key=lambda q: abs(q - k))
        if len(known) >= 2:
            lo, hi = known[0], known[-1]
            slope = max((self.t[hi] - self.t[lo]) / (hi - lo), 0.0)
            guess = self.t[near] + slope * (k - near)
        else:  # a prior: each draft adds a quarter of a plain round
            guess = self.t[near] * (1 + 0.25 * k) / (1 + 0.25 * near)
        return max(guess, 0.5 * min(self.t.values()))

    def choose(self) -> int:
        self.rounds += 1
        if self.t:
            self.k = max(
                range(self.most + 1), key=lambda k: self.expected_tokens(k) / self.seconds(k)
            )
        if self.k == 0 and self.idle >= self.probe:
            return 1
        if 0 < self.k < self.most and self.rounds % (2 * self.probe) == 0:
            return self.k + 1  # re-measure the next length: one slow round must not stick
        return self.k


# What the rounds learnt (acceptance, costs) belongs to the model and machine: kept per model
# and most-drafts setting, so a short generation does not spend itself relearning it.
_LEARNT: weakref.WeakKeyDictionary[Any, dict[int, DraftLength]] = weakref.WeakKeyDictionary()


def _lengths(model: Any, most: int) -> DraftLength:
    try:
        per_model = _LEARNT.setdefault(model, {})
    except TypeError:  # not weakly referenceable
        return DraftLength(most, most)
    return per_model.setdefault(most, DraftLength(most, most))


def supports_speculation(model: Any, state: Any = None) -> bool:
    """Whether `model` can draft with an MTP head and roll its state back (native backend over
    a model file exported with `--mtp`), and `state` (if given) can go on speculating: fresh,
    or head-ready (`mtp_ready`: the head's cache holds a pair for every earlier position and
    the state keeps the last position's hidden state, as `prefill_for_speculation` leaves it
    and prefix-cache snapshots keep it). A state prefilled plainly lacks the pairs."""
    if not getattr(model, "has_mtp", False) or not hasattr(model, "mtp_forward"):
        return False
    return state is None or state.position == 0 or bool(getattr(state, "mtp_ready", False))


def _prefill_pairs(
    model: Any,
    ids: Sequence[int],
    state: Any,
    chunk: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, list[np.ndarray], list[int]]:
    """Prefills `ids` into a fresh or head-ready `state` with every position's hidden state.
    Returns the last logits and the pairs the head has not seen: their hidden rows (the kept
    hidden state of a continued state first) and the token after each row but the last."""
    E = model.config.hidden_size
    kept = state.mtp_hidden.reshape(1, E) if state.position > 0 else None
    hidden = np.empty((len(ids), E), np.float32)
    logits = None
    for start in range(0, len(ids), chunk):
        part = list(ids[start : start + chunk])
        logits = model.forward(part, state, hidden=hidden[start : start + len(part)])
        if progress is not None:
            progress(len(part))
    if kept is None:  # fresh: the first token has no pair
        return logits, [hidden], list(ids[1:])
    return logits, [kept, hidden], list(ids)


def prefill_for_speculation(
    model: Any,
    ids: Sequence[int],
    state: Any,
    *,
    slots: int = 2,
    chunk: int = 512,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Prefills `ids` into a fresh or head-ready `state` and leaves it head-ready: the head
    runs over the new pairs (it would at the next draft anyway) and the state keeps the last
    hidden state, so a snapshot of it can speculate later (`LLM`'s prefix cache). Returns
    the last position's logits.

    Raises:
        ValueError: `state` is neither fresh nor head-ready.
    """
    if not supports_speculation(model, state):
        raise ValueError("prefill_for_speculation needs a fresh or head-ready state")
    state.enable_speculation(slots)
    logits, rows, tokens = _prefill_pairs(model, ids, state, chunk, progress)
    hid = rows[0] if len(rows) == 1 else np.concatenate(rows)
    if tokens:
        model.mtp_forward(tokens, hid[:-1], state, rows=8)
    state.set_mtp_hidden(hid[-1])
    return logits


@dataclass
class SpeculativeStats:
    """Counters and times (perf_counter seconds) of one speculative generation."""

    rounds: int = 0  # verify forwards
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, kept
    emitted: int = 0  # tokens yielded after the first
    draft_time: float = 0.0  # MTP head: catch-up pairs and draft steps
    verify_time: float = 0.0  # the checkpointed multi-token forwards
    rollback_time: float = 0.0
    sample_time: float = 0.0
    draft_lengths: dict[int, int] = field(default_factory=dict)  # k -> rounds
    plain_steps: int = 0  # one-token forwards after `speculation_allowed()` turned false

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_verify(self) -> float:
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "mtp",
            "rounds": self.rounds,
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_verify": self.tokens_per_verify,
            "draft_time_s": self.draft_time,
            "verify_time_s": self.verify_time,
            "rollback_time_s": self.rollback_time,
            "sample_time_s": self.sample_time,
            "draft_lengths": {str(k): v for k, v in sorted(self.draft_lengths.items())},
            "plain_steps": self.plain_steps,
        }


def speculative_step(
    model: Any,
    prompt: Sequence[int],
    sampler: Sampler,
    *,
    state: Any = None,
    context: int | None = None,
    draft_tokens: int = 2,
    draft_rows: int | None = DRAFT_ROWS,
    adaptive: bool = True,
    on_prefill: Callable[[], None] | None = None,
    stats: SpeculativeStats | None = None,
    chunk: int = 512,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, float | None]]:
    """`loop.generate_step` with MTP drafts: yields the same (token, logprob) pairs.

    Args:
        model: a native model with an MTP head (`supports_speculation`).
        prompt, sampler, state, context, on_prefill, progress: as `generate_step`.
        draft_tokens: the most drafts per round (the adaptive length starts there).
        draft_rows: draft over the first rows of the LM head only (None: all rows).
        adaptive: adapt the draft length to the acceptance (else always `draft_tokens`).
        stats: filled with counts and times as the generation runs.
    """
    if not 1 <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {draft_tokens}")
    st = stats if stats is not None else SpeculativeStats()
    state = model.new_state() if state is None else state
    if not supports_speculation(model, state):
        raise ValueError("speculative decoding starts from a fresh or head-ready state")
    state.enable_speculation(draft_tokens)
    E = model.config.hidden_size
    clock = time.perf_counter

    # Prefill with every position's hidden state: the MTP head's cache needs a pair for each.
    # Pairs (y_t, token t + 1): hidden rows not seen by the head yet, and the tokens after
    # each but the last (the pending token's, sampled below).
    logits, pend_hidden, pair_tokens = _prefill_pairs(model, prompt, state, chunk, progress)
    assert logits is not None
    if on_prefill is not None:
        on_prefill()

    t0 = clock()
    token, logprob = sampler(logits)
    st.sample_time += clock() - t0
    yield token, logprob
    lengths = _lengths(model, draft_tokens)
    verify_hidden = np.empty((MAX_DRAFT_TOKENS + 1, E), np.float32)
    # Reused: a fresh array of (k + 1) x vocab floats per round costs page faults.
    verify_logits = np.empty((draft_tokens + 1, model.config.vocab_size), np.float32)
    draft_logits = np.empty(model.draft_rows(draft_rows), np.float32)
    h_out = np.empty(E, np.float32)
    allowed = getattr(model, "speculation_allowed", None)
    while True:
        room = (context if context is not None else state.context) - state.position
        if room < 1:
            return
        if allowed is not None and not allowed():
            yield from _plain_steps(model, token, state, sampler, room, st)
            return
        k_now = min(lengths.choose() if adaptive else draft_tokens, room - 1)
        t0, cpu0 = clock(), time.process_time()
        backlog = 0.0
        drafts: list[int] = []
        base = state.position
        rows = sum(len(h) for h in pend_hidden)
        if k_now > 0 or rows > 256:
            # Draft: the pairs the head has not seen (the last is the pending token's), then
            # k_now - 1 steps on its own outputs. (k_now = 0 with a long backlog: catch up.)
            hid = pend_hidden[0] if len(pend_hidden) == 1 else np.concatenate(pend_hidden)
            if k_now == 0:
                model.mtp_forward(pair_tokens, hid[:-1], state, rows=8, hidden_out=h_out)
                pend_hidden, pair_tokens = [hid[-1:]], []
            else:
                pair_tokens.append(token)
                c0 = time.process_time()
                model.mtp_forward(
                    pair_tokens, hid, state, rows=draft_rows, logits=draft_logits,
                    hidden_out=h_out,
                )  # fmt: skip
                if lengths.idle:  # the plain rounds' share of this call is theirs, not ours
                    backlog = (time.process_time() - c0) * (len(hid) - 1) / len(hid)
                drafts.append(int(np.argmax(draft_logits)))
        while len(drafts) < k_now:
            model.mtp_forward(
                drafts[-1:], h_out, state, rows=draft_rows, logits=draft_logits, hidden_out=h_out
            )
            drafts.append(int(np.argmax(draft_logits)))
        t1 = clock()
        st.draft_time += t1 - t0
        # Verify the pending token and the drafts in one forward.
        n = 1 + len(drafts)
        vh = verify_hidden[:n]
        all_logits = model.forward(
            [token, *drafts], state, all_logits=True, hidden=vh, checkpoint=n > 1,
            out=verify_logits[:n],
        )  # fmt: skip
        t2 = clock()
        st.verify_time += t2 - t1
        out: list[tuple[int, float | None]] = []
        for i in range(n):
            got = sampler(all_logits[i])
            out.append(got)
            if i == len(drafts) or got[0] != drafts[i]:
                break
        kept = len(out) - 1  # drafts kept
        t3 = clock()
        st.sample_time += t3 - t2
        if drafts:
            state.rollback(len(drafts) - kept)
            state.set_mtp_position(base)  # its chained steps are overwritten next round
            pair_tokens = drafts[:kept]
            pend_hidden = [vh[: kept + 1].copy()]
        else:  # a plain step: the head catches up on it later
            pair_tokens.append(token)
            pend_hidden.append(vh[:1].copy())
        t4 = clock()
        st.rollback_time += t4 - t3
        # CPU time, not wall time: on a shared machine waiting for a core would decide.
        lengths.update(len(drafts), kept, time.process_time() - cpu0 - backlog)
        st.rounds += 1
        st.drafted += len(drafts)
        st.accepted += kept
        st.emitted += len(out)
        st.draft_lengths[len(drafts)] = st.draft_lengths.get(len(drafts), 0) + 1
        token = out[-1][0]
        for got in out:
            yield got


def _plain_steps(
    model: Any, token: int, state: Any, sampler: Sampler, room: int, st: SpeculativeStats
) -> Iterator[tuple[int, float | None]]:
    """The rest of a generation token by token (`loop.generate_step`'s decode loop), from the
    pending `token` and a state exact at a round boundary."""
    for _ in range(room):
        logits = model.forward([token], state)
        t0 = time.perf_counter()
        token, logprob = sampler(logits)
        st.sample_time += time.perf_counter() - t0
        st.plain_steps += 1
        st.emitted += 1
        yield token, logprob
