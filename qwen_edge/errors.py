"""Exceptions raised by qwen-edge.

Library code raises these and never prints or exits; only `cli.py` turns them into messages and
exit codes. Every message names the file, field or tensor at fault and, where it helps, what to
do next.
"""

from __future__ import annotations


class QwenEdgeError(Exception):
    """Base class of every error qwen-edge raises on purpose."""


class ConfigError(QwenEdgeError):
    """A model configuration that is invalid or describes a model qwen-edge does not run."""


class CheckpointError(QwenEdgeError):
    """A Hugging Face checkpoint folder that is incomplete, inconsistent or unreadable."""


class ModelFileError(QwenEdgeError):
    """A qwen-edge model file that is truncated, corrupt or of an unsupported version."""


class ContextLengthError(QwenEdgeError):
    """A prompt or generation that does not fit the model state's context length."""


class MemoryLimitError(ContextLengthError):
    """A state that cannot grow: the memory its next tokens' cache rows need is not available
    (other states, other processes). Generation ends there as at a full context; a prompt
    that cannot be held is refused."""


class ModelStoppedError(QwenEdgeError):
    """A forward pass of a model that was stopped (`Model.stop()`, or the interpreter exiting)."""


class SensorError(QwenEdgeError):
    """A power or thermal sensor that is missing, unreadable or reports nonsense; the message
    says how to make it readable."""


class MissingDependencyError(QwenEdgeError):
    """An optional dependency is needed for this feature; the message names the pip extra."""


def require(module: str, extra: str):
    """Imports an optional dependency or raises MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"this feature needs the Python package '{module.split('.')[0]}': "
            f"pip install 'qwen-edge[{extra}]'"
        ) from e


class TokenizerError(QwenEdgeError, ValueError):
    """An unreadable tokenizer, input that is not valid UTF-8, or an unknown token id."""


class ChatTemplateError(QwenEdgeError, ValueError):
    """Chat messages the template cannot render (bad roles or content), or a broken template."""


class GenerationConfigError(QwenEdgeError, ValueError):
    """Sampling or generation settings out of range; `field` names the setting at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
