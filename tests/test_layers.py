"""The package's layers point one way: base helpers and config at the bottom (no torch at
import), data above them, models above data, training above models, prediction, tuning and
compare above training's public API, the CLI on top.

The module graph is read with ``ast`` from every import statement of ``src/mmctr``, at the top
of a module or inside a function (a lazy import is still an arrow). Code under
``if __name__ == "__main__":`` runs only when the file is the program, above every layer, and
``if TYPE_CHECKING:`` imports never run: neither is an arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mmctr

SRC = Path(mmctr.__file__).parent

#: layer of each module, by the longest matching prefix; an import may point down or sideways
LAYERS = {
    "mmctr": 0,  # base helpers: columns, atomic, device, runtime, log, threads, progress, utils
    "mmctr.config": 1,
    "mmctr.data": 2,
    "mmctr.embedding": 2,
    "mmctr.models": 3,
    "mmctr.training": 4,
    "mmctr.prediction": 5,
    "mmctr.tuning": 5,
    "mmctr.compare": 5,
    "mmctr.cli": 6,
    "mmctr.drill": 7,  # drives the entry points themselves: above the cli
}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, name: str, is_pkg: bool):
    """(imported module, imported names) of every import that can run."""
    package = name if is_pkg else name.rpartition(".")[0]
    body = [n for n in tree.body if not (_is_main_block(n) or _is_type_checking_block(n))]
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [a.name for a in node.names]


def module_graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, str]]]]:
    """``{module: modules it imports}`` and ``{module: [(from module, name), ...]}``."""
    paths = {}
    for path in SRC.rglob("*.py"):
        name, is_pkg = _module_name(path)
        paths[name] = (path, is_pkg)
    edges: dict[str, set[str]] = {}
    names: dict[str, list[tuple[str, str]]] = {}
    for name, (path, is_pkg) in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[name], names[name] = set(), []
        for module, imported in _imports(tree, name, is_pkg):
            if module != "mmctr" and not module.startswith("mmctr."):
                continue
            names[name] += [(module, n) for n in imported]
            targets = [f"{module}.{n}" for n in imported if f"{module}.{n}" in paths]
            for target in targets or [module]:
                if target in paths and target != name:
                    edges[name].add(target)
    return edges, names


def layer_of(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_module_graph_has_no_cycle():
    edges, _ = module_graph()
    assert "mmctr.training.trainer" in edges  # the graph was read
    assert find_cycle(edges) is None


def test_no_import_points_up():
    edges, _ = module_graph()
    upward = sorted(
        f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer_of(b) > layer_of(a)
    )
    assert upward == []


def test_prediction_imports_nothing_private_from_training():
    _, names = module_graph()
    private = [
        f"{module}: {src}.{name}"
        for module, imported in names.items()
        if module.startswith("mmctr.prediction")
        for src, name in imported
        if src.startswith("mmctr.training") and name.startswith("_")
    ]
    assert private == []


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["mmctr", "mmctr.config", "mmctr.data.dataset"])
def test_import_loads_no_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
