"""qwen-edge: an edge inference runtime for the Qwen3.5 small language models.

The public face: re-exports only. The layers below it are described in docs/architecture.md.
"""

from __future__ import annotations

from . import _deprecated
from .errors import (
    ChatTemplateError,
    CheckpointError,
    ConfigError,
    ContextLengthError,
    GenerationConfigError,
    MissingDependencyError,
    ModelFileError,
    ModelStoppedError,
    QwenEdgeError,
    SensorError,
    TokenizerError,
)
from .formats.config import ModelConfig
from .generation.llm import LLM, load
from .generation.loop import generate, stream_generate
from .generation.settings import GenerationConfig, SamplingParams
from .version import __version__

_deprecated.install()  # the flat layout's import paths keep working, with a warning

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
    "ModelStoppedError",
    "QwenEdgeError",
    "SamplingParams",
    "SensorError",
    "TokenizerError",
    "__version__",
    "generate",
    "load",
    "stream_generate",
]
