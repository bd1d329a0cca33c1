"""A backend whose forward passes are paced: the hook the power governor acts through.

`PacedModel(model, pacer)` calls `pacer.before_forward(n)` and `pacer.after_forward(n)` around
every forward pass of `n` tokens, and forwards everything else to the model, so the one
generation loop (and the server and the benchmarks above it) runs under a governor without
knowing it. The pacer is any object with those two methods (`hardware.governor.Governor`).

A multi-sequence step (`forward_batch`, the serving scheduler's continuous batching) is paced
as one pass of its longest sequence: n = 1 for a step that decodes one token for each of
several streams. A tokens-per-second budget therefore counts steps, not tokens, under
batching: at 4 streams the server emits up to 4x the budget's tokens, at about the power of
one stream's step (a step's cost is dominated by reading the weights once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Pacer(Protocol):
    """Called around each forward pass; `after_forward` may sleep (a pause between steps)."""

    def before_forward(self, n_tokens: int) -> None: ...

    def after_forward(self, n_tokens: int) -> None: ...


class PacedModel:
    """`model` with `pacer` called around each forward pass (see the module docstring)."""

    def __init__(self, model: Any, pacer: Pacer):
        self.model = model
        self.pacer = pacer

    def forward(
        self, tokens: Sequence[int], state: Any, *, all_logits: bool = False, **kw: Any
    ) -> np.ndarray:
        # kw: the native backend's speculation options (hidden, checkpoint, out)
        n = len(tokens)
        self.pacer.before_forward(n)
        try:
            return self.model.forward(tokens, state, all_logits=all_logits, **kw)
        finally:
            self.pacer.after_forward(n)

    def forward_batch(
        self, batch: Sequence[tuple[Sequence[int], Any]], *, want: Sequence[bool] | None = None
    ) -> np.ndarray:
        n = max(len(tokens) for tokens, _ in batch) if batch else 0
        self.pacer.before_forward(n)
        try:
            return forward_batch(self.model, batch, want=want)
        finally:
            self.pacer.after_forward(n)

    def new_state(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.new_state(*args, **kwargs)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self.model.logits(tokens)

    def __getattr__(self, name: str) -> Any:  # config, context, threads, ...
        return getattr(self.model, name)


def forward_batch(
    model: Any, batch: Sequence[tuple[Sequence[int], Any]], *, want: Sequence[bool] | None = None
) -> np.ndarray:
    """`model.forward_batch` where the backend has one (the native runtime), else the sequences
    one by one (the reference): the last position's logits of each, [len(batch), vocab]."""
    if hasattr(model, "forward_batch"):
        return model.forward_batch(batch, want=want)  # type: ignore[no-any-return]
    rows = [model.forward(tokens, state) for tokens, state in batch]
    out = np.stack(rows).astype(np.float32, copy=False)
    if want is not None:
        out[[not w for w in want]] = 0.0
    return out
