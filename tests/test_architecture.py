"""The layering rule of docs/architecture.md, checked on the source: every import of every module
of `qwen_edge` (lazy ones inside functions included) goes down the layers or stays inside its
own subpackage; modules import no cycle; only the native backend imports `_core`; only the
command line prints or parses argv, and only the server opens sockets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qwen_edge"

# Subpackage (or top-level module) -> layer; a module may import lower layers and its own
# subpackage. Mirrors the table in docs/architecture.md.
LAYERS = {
    "errors": 0,
    "version": 0,
    "_deprecated": 0,
    "_core": 1,  # the compiled C++ core (csrc/), a sibling of formats
    "formats": 1,
    "hardware": 1,
    "backends": 2,
    "generation": 3,
    "export": 4,
    "evaluation": 4,
    "serving": 5,
    "cli": 6,
    "__init__": 7,  # the public face re-exports from anywhere
    "__main__": 7,
}
PRINTS = {"cli"}  # print(), argparse, sys.argv
SOCKETS = {"serving"}  # socket, http.server, socketserver
SOCKET_MODULES = ("socket", "socketserver", "http.server", "asyncio")


MODULES: dict[str, Path] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of a module: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` may name a submodule: then it imports that module.
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES or a.name == "_core" else target))
    return out


MODULES.update({module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))})


def internal(target: str) -> str | None:
    """The qwen_edge module a target names (longest existing prefix), or None."""
    if target == "qwen_edge._core":
        return target
    parts = target.split(".")
    while parts and parts[0] == "qwen_edge":
        name = ".".join(parts)
        if name in MODULES:
            return name
        parts = parts[:-1]
    return None


def test_every_unit_has_a_layer() -> None:
    assert {unit(m) for m in MODULES} | {"_core"} <= set(LAYERS), "add the subpackage to LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    src = unit(module)
    for line, target in imports(MODULES[module]):
        dst_module = internal(target)
        if dst_module is None:
            continue
        dst = unit(dst_module)
        ok = dst == src or LAYERS[dst] < LAYERS[src]
        assert ok, (
            f"{MODULES[module]}:{line}: {src} (layer {LAYERS[src]}) imports {dst_module} "
            f"({dst}, layer {LAYERS[dst]}): layers may only import lower layers"
        )


def test_no_import_cycles() -> None:
    graph = {
        m: {d for _, t in imports(p) if (d := internal(t)) in MODULES and d != m}
        for m, p in MODULES.items()
    }
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        if m in stack:
            cycle = [*stack[stack.index(m) :], m]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, [*stack, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_only_the_native_backend_imports_core() -> None:
    users = sorted(
        m for m, p in MODULES.items() if any(t.endswith("._core") for _, t in imports(p))
    )
    assert users == ["qwen_edge.backends.native"]


def _calls_print(tree: ast.AST) -> list[int]:
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
    ]


def _uses_argv(tree: ast.AST) -> list[int]:
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr == "argv"
        and isinstance(n.value, ast.Name) and n.value.id == "sys"
    ]  # fmt: skip


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_top_layer_talks_to_the_outside(module: str) -> None:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = [t for _, t in imports(path)]
    if unit(module) not in PRINTS:
        assert not _calls_print(tree), f"{path}: print() outside the command line"
        assert not _uses_argv(tree), f"{path}: sys.argv outside the command line"
        assert "argparse" not in names, f"{path}: argparse outside the command line"
    if unit(module) not in SOCKETS:
        opened = [n for n in names if n.startswith(SOCKET_MODULES)]
        assert not opened, f"{path}: {opened} outside the server"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    # The checker itself: a formats module importing generation must be reported.
    bad = tmp_path / "qwen_edge" / "formats" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..generation.llm import load\n")
    (_, target), *_ = imports_at(bad, tmp_path)
    assert target == "qwen_edge.generation.llm"
    assert LAYERS[unit(target)] > LAYERS[unit("qwen_edge.formats.bad")]


def imports_at(path: Path, root: Path) -> list[tuple[int, str]]:
    global PACKAGE
    saved, PACKAGE = PACKAGE, root / "qwen_edge"
    try:
        return imports(path)
    finally:
        PACKAGE = saved


def test_old_import_paths_still_work_with_a_warning() -> None:
    import importlib
    import sys

    from qwen_edge._deprecated import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=new):
            assert importlib.import_module(old) is importlib.import_module(new)
