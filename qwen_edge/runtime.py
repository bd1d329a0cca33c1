"""The Python face of the native core: the only module that imports `qwen_edge._core`."""

from __future__ import annotations

from typing import Any

from .errors import QwenEdgeError

try:
    from . import _core
except ImportError as e:  # a source checkout without a build
    _core = None
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None


def core() -> Any:
    """The compiled extension, or a clear error when this installation has none."""
    if _core is None:
        raise QwenEdgeError(
            "qwen_edge._core, the native core, is not built in this installation "
            f"({_IMPORT_ERROR}); install the package with `pip install .` from the source tree"
        )
    return _core


def cpu_report() -> dict[str, Any]:
    """The CPU features the core detected and the kernel tables it can run here."""
    c = core()
    return {
        **c.cpu_info(),
        "compiled_isas": c.compiled_isas(),
        "available_isas": c.available_isas(),
        "selected_isa": c.selected_isa(),
    }
