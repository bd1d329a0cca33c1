"""The Python face of the native core: the only module that imports `qwen_edge._core`."""

from __future__ import annotations

from typing import Any

from .errors import ModelFileError, QwenEdgeError

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


def check_model_file(path: str, verify: bool = False) -> dict[str, Any]:
    """Validates a model file with the native reader (the one the runtime loads with).

    Returns:
        {"header": the JSON header text (bytes), "file_size": int, "tensors": [entries]}.

    Raises:
        ModelFileError: the file is missing, truncated, corrupt or unsupported.
    """
    try:
        return core().open_model_file(str(path), verify)  # type: ignore[no-any-return]
    except RuntimeError as e:
        raise ModelFileError(str(e)) from None
