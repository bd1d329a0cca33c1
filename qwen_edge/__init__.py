"""qwen-edge: an edge inference runtime for the Qwen3.5 small language models."""

from __future__ import annotations

from .config import ModelConfig
from .errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    MissingDependencyError,
    ModelFileError,
    QwenEdgeError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "MissingDependencyError",
    "ModelConfig",
    "ModelFileError",
    "QwenEdgeError",
    "__version__",
]
