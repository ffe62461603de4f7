"""The package's import graph: no cycles, no two modules that import each other, every module importable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "memprobe"

# Pairs that still import each other inside functions, each owned by work outside #16's reach:
# mend them there, then drop them here. A new pair fails the test.
KNOWN_PAIRS = {
    ("memprobe.archs.registry", "memprobe.nnunet.specs"),  # nnU-Net presets registered lazily
    ("memprobe.backends.distributed", "memprobe.backends.trace_backend"),  # the fake process group
    ("memprobe.db", "memprobe.db_postgres"),  # the server database subclasses the SQLite one
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(test)


def _statements(tree: ast.Module, module_level: bool) -> list[ast.AST]:
    """Import statements run when the module is imported (``module_level``), or anywhere in it."""
    if not module_level:
        return list(ast.walk(tree))
    found: list[ast.AST] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, (ast.If, ast.Try)) and not _is_type_checking(node):
            for block in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, block, []))
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _statements(ast.parse(path.read_text()), module_level):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    # Importing a submodule runs its package's __init__ anyway: an edge to an ancestor is no knot.
    return {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}


def _graph(module_level: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules, module_level) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph``, as the modules along it, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        trail.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_module_level_imports_form_no_cycle() -> None:
    cycle = _cycle(_graph(module_level=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_no_two_modules_import_each_other() -> None:
    """Protocols and results live in leaf modules; a package ``__init__`` picks the implementation."""
    graph = _graph(module_level=False)
    pairs = {tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]}
    assert pairs - KNOWN_PAIRS == set()


@pytest.mark.parametrize("leaf", ["memprobe.backends.base", "memprobe.reporters.base"])
def test_protocol_modules_import_no_implementation(leaf: str) -> None:
    package = leaf.rpartition(".")[0]
    assert not {t for t in _graph(module_level=False)[leaf] if t.startswith(package)}


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """Every module imports in a fresh interpreter: no partially initialised module on the way."""
    names = sorted(n for n in _modules() if not n.endswith("__main__") and n != "memprobe.backends.worker")
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        if (error.name or '').startswith('memprobe'):\n"
        "            raise\n"  # an optional third-party extra is absent: not this test's concern
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
