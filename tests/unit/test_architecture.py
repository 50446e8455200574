"""The import graph has the shape docs/architecture.md draws: dependencies point one way, no cycles.

Every import counts, at any nesting depth: a lazy import inside a function is still a dependency
(and still a cycle), it only moves the failure from import time to the first call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "service", "audit", "medrobust")
# Which layers each layer may import (its own is always allowed). training.contract is the bottom:
# it imports nothing else of the project.
ALLOWED = {
    "training.contract": set(),
    "training": {"training.contract"},
    "service": {"training.contract"},
    "audit": {"training.contract", "training", "service"},
    "medrobust": {"training.contract", "training", "service", "audit"},
}


def layer(module: str) -> str:
    return "training.contract" if module.startswith("training.contract") else module.split(".", maxsplit=1)[0]


def module_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports, from every import statement in the source."""
    files = {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for package in packages
        for path in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
            else:
                continue
            for name in names:
                # The longest project module the name starts with: `from a.b import c` is a.b.c
                # when c is a module, else a.b.
                parts = name.split(".")
                for end in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:end])
                    if candidate in files:
                        if candidate != module:
                            targets.add(candidate)
                        break
        graph[module] = targets
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_dependencies_point_one_way():
    graph = module_graph(ROOT)
    assert {layer(m) for m in graph} == set(ALLOWED), "a package appeared or vanished: update ALLOWED and the docs"
    assert upward_imports(graph) == []


def test_no_import_cycles():
    assert cycles(module_graph(ROOT)) == []


def test_contract_imports_nothing_of_the_project():
    graph = module_graph(ROOT)
    contract = {m: t for m, t in graph.items() if layer(m) == "training.contract"}
    assert contract, "expected the contract package training/contract/"
    assert all(layer(t) == "training.contract" for targets in contract.values() for t in targets)


# -- the checks themselves fire -------------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_an_upward_import_is_found_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "training/contract/__init__.py": "",
        "training/contract/card.py": "def f():\n    from medrobust.cli import UsageError\n",
        "medrobust/cli.py": "",
        "service/app.py": "import audit.store\n",
        "audit/store.py": "",
    })
    assert upward_imports(module_graph(root)) == [
        "service.app imports audit.store",
        "training.contract.card imports medrobust.cli",
    ]


@pytest.mark.parametrize("imports", [
    {
        "training/datasets.py": "def load():\n    from training.medmnist import read\n",
        "training/medmnist.py": "from training.datasets import Dataset\n",
    },
    {"service/app.py": "from service import api\n", "service/api.py": "def v():\n    from service.app import state\n"},
])
def test_a_cycle_is_found(tmp_path, imports):
    found = cycles(module_graph(_tree(tmp_path, imports)))
    assert len(found) == 1 and len(found[0]) == 2
