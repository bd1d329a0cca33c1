"""qwen-edge: an edge inference runtime for the Qwen3.5 small language models."""

from __future__ import annotations

from .config import ModelConfig
from .errors import (
    ChatTemplateError,
    CheckpointError,
    ConfigError,
    ContextLengthError,
    GenerationConfigError,
    MissingDependencyError,
    ModelFileError,
    QwenEdgeError,
    TokenizerError,
)
from .generate import LLM, GenerationConfig, generate, load, stream_generate

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "ChatTemplateError",
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "GenerationConfig",
    "GenerationConfigError",
    "MissingDependencyError",
    "ModelConfig",
    "ModelFileError",
    "QwenEdgeError",
    "TokenizerError",
    "__version__",
    "generate",
    "load",
    "stream_generate",
]
