"""Shared fixtures: small checkpoints written by the numpy writer, the committed goldens."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_edge import presets
from qwen_edge.export.demo import write_random_checkpoint

DATA = Path(__file__).parent / "data"
GOLDEN_DIRS = sorted(p for p in (DATA / "goldens").iterdir() if (p / "golden.npz").is_file())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CI installs torch and transformers and sets QWEN_EDGE_REQUIRE_REFERENCE=1: there a missing
    # reference dependency must fail the run instead of skipping the parity tests.
    if os.environ.get("QWEN_EDGE_REQUIRE_REFERENCE") == "1":
        import importlib

        for module in ("torch", "transformers"):
            importlib.import_module(module)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 'tiny' preset in the hub's wrapper layout, bf16 with fp32 A_log/norm, with MTP."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), presets.hf_config("tiny"))


@pytest.fixture(scope="session")
def tiny_text_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 'tiny' preset as a text-only checkpoint (`model.*` names, plain config)."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny-text"), presets.hf_config("tiny"), layout="text"
    )


@pytest.fixture(scope="session")
def tiny_model_file(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """`tiny_model_file(recipe)`: the tiny checkpoint exported with a recipe (f32, bf16, f16,
    q8, q4), written once per session."""
    from qwen_edge.export.convert import export

    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny-exports")

    def get(recipe: str) -> Path:
        if recipe not in made:
            made[recipe] = root / f"tiny-{recipe}.qe"
            export(tiny_checkpoint, made[recipe], recipe)
        return made[recipe]

    return get
