"""A backend whose forward passes are paced: the hook the power governor acts through.

`PacedModel(model, pacer)` calls `pacer.before_forward(n)` and `pacer.after_forward(n)` around
every forward pass of `n` tokens, and forwards everything else to the model, so the one
generation loop (and the server and the benchmarks above it) runs under a governor without
knowing it. The pacer is any object with those two methods (`hardware.governor.Governor`).
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

    def new_state(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.new_state(*args, **kwargs)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self.model.logits(tokens)

    def __getattr__(self, name: str) -> Any:  # config, context, threads, ...
        return getattr(self.model, name)
