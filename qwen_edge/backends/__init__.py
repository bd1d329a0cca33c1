"""Backends: what runs the Qwen3.5 forward pass for the generation layer.

* `native`: the C++ core over a `.qe` model file (the only importer of `qwen_edge._core`);
* `onnx_runtime`: an `.onnx` graph (`qwen-edge export --format onnx`) on onnxruntime;
* `reference`: the numpy float32 reference over a checkpoint folder (exact, slow; the tests'
  ground truth beside transformers).

All implement `Backend`, so the generation loop, the server and the benchmarks drive either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """What generation needs from a model.

    `new_state()` makes a state (with `.position` and `.copy()`); `forward(tokens, state)`
    continues it and returns the logits of the last position (or of every position with
    `all_logits`); `logits(tokens)` runs a fresh state.
    """

    def new_state(self) -> Any: ...

    def forward(
        self, tokens: Sequence[int], state: Any, *, all_logits: bool = False
    ) -> np.ndarray: ...

    def logits(self, tokens: Sequence[int]) -> np.ndarray: ...
