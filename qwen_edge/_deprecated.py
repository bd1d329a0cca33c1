"""Import paths of the flat layout before 0.2 (`qwen_edge.runtime`, `qwen_edge.generate`, ...).

They still import, with a DeprecationWarning naming the new path: a finder maps each old module
name onto the module that now holds its code. New code imports from the subpackages.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED = {
    "qwen_edge.runtime": "qwen_edge.backends.native",
    "qwen_edge.reference": "qwen_edge.backends.reference",
    "qwen_edge.generate": "qwen_edge.generation.llm",
    "qwen_edge.tokenizer": "qwen_edge.generation.tokenizer",
    "qwen_edge.chat": "qwen_edge.generation.chat_template",
    "qwen_edge.sampling": "qwen_edge.generation.sampling",
    "qwen_edge.config": "qwen_edge.formats.config",
    "qwen_edge.quant": "qwen_edge.formats.quant",
    "qwen_edge.modelfile": "qwen_edge.formats.model_file",
    "qwen_edge.presets": "qwen_edge.export.presets",
    "qwen_edge.export.hf": "qwen_edge.formats.checkpoint",
    "qwen_edge.export.safetensors_io": "qwen_edge.formats.safetensors",
    "qwen_edge.export.demo": "qwen_edge.export.random_checkpoint",
    "qwen_edge.boards": "qwen_edge.hardware.boards",
    "qwen_edge.bench": "qwen_edge.evaluation.bench",
    "qwen_edge.quality": "qwen_edge.evaluation.quality",
    "qwen_edge.server": "qwen_edge.serving.server",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: Any) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} is deprecated; import {new} instead", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


def install() -> None:
    """Makes the old import paths resolve (once per interpreter)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        # First: an installed wheel's data folder `qwen_edge/boards/` would otherwise be found
        # as a namespace package under the old module name `qwen_edge.boards`.
        sys.meta_path.insert(0, _MovedModuleFinder())
