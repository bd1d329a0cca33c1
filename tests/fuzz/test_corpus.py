"""The fuzzers' findings, replayed as regression tests: every file of tests/fuzz/corpus/<target>/
goes through its target again (tools/fuzz.sh runs the fuzzers themselves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzz_python import TARGETS, run_one

from qwen_edge.errors import QwenEdgeError

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_finding_stays_fixed(path: Path) -> None:
    target, data = path.parent.name, path.read_bytes()
    if target in TARGETS:
        run_one(target, data)
    elif target == "native_model_file":
        native = pytest.importorskip("qwen_edge.backends.native")
        try:
            model = native.Model.load(path, threads=1, isa="ref", verify=True, context=4)
        except QwenEdgeError:
            return
        model.forward([0], model.new_state(4))
    elif target == "native_json_config":
        native = pytest.importorskip("qwen_edge.backends.native")
        try:
            doc = json.loads(data)
            config = doc.get("config", doc) if isinstance(doc, dict) else doc
            native.core().Model(json.dumps(config), {}, 1)
        except (ValueError, RecursionError, RuntimeError):  # the core's error is a RuntimeError
            return
    else:
        raise AssertionError(f"unknown fuzz target folder {target}")


def test_the_corpus_is_small() -> None:
    """Findings are minimized inputs, not model files: the repository stays light."""
    assert all(p.stat().st_size <= 64 << 10 for p in FILES)
