"""Kernel tests run on every kernel table compiled in; tables this CPU lacks are skipped visibly."""

from __future__ import annotations

import pytest

from qwen_edge.runtime import core

_core = core()
COMPILED = _core.compiled_isas()
AVAILABLE = set(_core.available_isas())


@pytest.fixture(params=COMPILED)
def isa(request: pytest.FixtureRequest) -> str:
    if request.param not in AVAILABLE:
        pytest.skip(f"kernel table '{request.param}': unsupported CPU feature on this machine")
    return request.param
