"""The package's import rule: layers imported top to bottom only, no cycle at any level, every module importable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "memprobe"

# The layers, top to bottom: a module may import from its own layer or any layer below it,
# never above. Longest prefix wins, so an integration's modules sit where their job does.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("memprobe.cli",),
    (
        "memprobe.api",
        "memprobe.calibration_run",
        "memprobe.sweep",
        "memprobe.training_plan",
        "memprobe.alternatives",
        "memprobe.suggestion",
        "memprobe.compat",
        "memprobe.inference",
        "memprobe.verify",
        "memprobe.snapshots",
        "memprobe.reporting",
        "memprobe.integrations.pytc",
        "memprobe.integrations.lightning",
        "memprobe.integrations.nnunet.plan_run",
        "memprobe.integrations.nnunet.topology_sources",
    ),
    (
        "memprobe.planning",
        "memprobe.store",
        "memprobe.integrations.nnunet.planner",
        "memprobe.integrations.nnunet.patch_plan",
    ),
    ("memprobe.backends", "memprobe.integrations.nnunet.predictor"),
    (
        "memprobe.training",
        "memprobe.formula",
        "memprobe.integrations.nnunet.networks",
    ),
    (
        "memprobe.core",
        "memprobe.core.archs",
        "memprobe.__version__",
        "memprobe.data",
        "memprobe.integrations.nnunet.fingerprint",
        "memprobe.integrations.nnunet.dataset_files",
        "memprobe.integrations.nnunet.parameters",
    ),
)
PACKAGE_ROOTS = ("memprobe", "memprobe.integrations", "memprobe.integrations.nnunet")
MAX_TOP_LEVEL_MODULES = 10
MAX_PARAMETERS = 15


def layer_of(module: str) -> int:
    """The layer index of ``module`` (0 is the top), by its longest listed prefix."""
    best = (-1, -1)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), index)
    if best[1] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_imports.py")
    return best[1]


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


def test_no_import_cycle_at_any_level() -> None:
    """Imports inside functions count too: a cycle of any length fails, naming its modules."""
    cycle = _cycle(_graph(module_level=False))
    assert cycle is None, " -> ".join(cycle or [])


def test_no_cycle_between_packages() -> None:
    """Packages form no cycle either: planning and the store, say, may not lean on each other."""
    graph = _graph(module_level=False)
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        owner = _package(source)
        packages.setdefault(owner, set()).update(_package(t) for t in targets if _package(t) != owner)
    cycle = _cycle({name: {t for t in targets if t in packages} for name, targets in packages.items()})
    assert cycle is None, " -> ".join(cycle or [])


def _package(module: str) -> str:
    """The package a module belongs to, one level below a package root (``memprobe.store``)."""
    parts = module.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:depth]) in PACKAGE_ROOTS:
            return ".".join(parts[: depth + 1])
    return module


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        if module not in PACKAGE_ROOTS:
            layer_of(module)


def test_no_import_against_the_layer_order() -> None:
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in _graph(module_level=False).items()
        if source not in PACKAGE_ROOTS
        for target in targets
        if target not in PACKAGE_ROOTS and layer_of(target) < layer_of(source)
    )
    assert upward == []


def test_at_most_ten_modules_directly_under_the_package() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_TOP_LEVEL_MODULES, flat


def test_no_function_takes_more_than_fifteen_parameters() -> None:
    """Long parameter lists are what a ``Setup`` value replaces."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                count = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
                if count > MAX_PARAMETERS:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} ({count})")
    assert long == []


@pytest.mark.parametrize("leaf", ["memprobe.backends.base", "memprobe.cli.render.base"])
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
