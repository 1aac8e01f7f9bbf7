"""The layout holds: every pipeline module imports only its own layer or those below, and no modules anywhere
(pipeline/ or bench/) import each other in a circle.

Imports are read from the source (AST), every one of them: top of the file, inside functions, and under
TYPE_CHECKING alike, since an import deferred to run time is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top: the order data flows. A module may import from its own layer and the layers before it.
LAYERS: list[tuple[str, ...]] = [
    ("contract",),        # what the data and the policy are
    ("runtime",),         # thread pools and memory a stage runs within
    ("store",),           # the I/O layer: database engine and schema, artifact store
    ("data",),            # rows in
    ("registry",),        # the book of record and the runs' lifecycle
    ("workspace",),       # what every stage reaches
    ("model",),           # features, training, evaluation, intervals, cards
    ("serving",),         # forecasts out
    ("monitoring",),      # drift, live performance, outcomes
    ("stages",),          # one function per stage
    ("champion", "compare", "tasks", "erasure"),  # an operator's say over the champion, two versions compared; a stage
                                                  # as an Airflow task; erasure
    ("views",),           # what Airflow shows
    ("cli", "__main__"),  # the command line
]


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module under `package_dir`, by dotted name."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imported(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of `known` that the module `name` at `path` imports, wherever the import statement is."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    names = module_names(package_dir)
    return {name: imported(name, path, names) for name, path in names.items()}


def layer_of(module: str, root: str = "pipeline") -> int | None:
    """The index in LAYERS of `module`'s first component under `root` (None: the package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for index, members in enumerate(LAYERS):
        if parts[1] in members:
            return index
    raise AssertionError(f"{module} is in no layer: add its package or module to LAYERS in {__file__}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer, as 'importer -> imported'."""
    wrong = []
    for module, targets in graph.items():
        own = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                wrong.append(f"{module} ({'/'.join(LAYERS[own])}) -> {target} ({'/'.join(LAYERS[theirs])})")
    return sorted(wrong)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def pipeline_graph() -> dict[str, set[str]]:
    return import_graph(ROOT / "pipeline")


def test_the_graph_is_read_from_every_module(pipeline_graph: dict[str, set[str]]) -> None:
    assert len(pipeline_graph) >= 50
    assert sum(len(targets) for targets in pipeline_graph.values()) >= 150
    assert "pipeline.data.ingest" in pipeline_graph["pipeline.stages"]
    assert "pipeline.model.train" in pipeline_graph["pipeline.stages"]  # imported inside a function: still counted


def test_every_module_is_in_a_layer_and_each_subpackage_says_what_it_owns(
        pipeline_graph: dict[str, set[str]]) -> None:
    for module in pipeline_graph:
        layer_of(module)
    for init in (ROOT / "pipeline").glob("*/__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and "\n" not in docstring.strip(), f"{init}: one line saying what it owns"


def test_no_module_imports_one_above_it(pipeline_graph: dict[str, set[str]]) -> None:
    assert upward_imports(pipeline_graph) == []


def test_the_workspace_is_low_and_holds_no_stage_logic(pipeline_graph: dict[str, set[str]]) -> None:
    reached = pipeline_graph["pipeline.workspace"]
    assert reached and all(layer_of(target) < layer_of("pipeline.workspace") for target in reached)
    for user in ("pipeline.model.cards", "pipeline.model.intervals", "pipeline.serving.scoring"):
        assert "pipeline.workspace" in pipeline_graph[user] and "pipeline.stages" not in pipeline_graph[user]


@pytest.mark.parametrize("package", ["pipeline", "bench"])
def test_no_circles(package: str) -> None:
    graph = import_graph(ROOT / package)
    assert len(graph) >= 10
    assert circles(graph) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The two checks on a made-up tree that breaks both rules: they must say so."""
    package = tmp_path / "pipeline"
    for folder in ("contract", "model"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text('"""A layer."""\n')
    (package / "__init__.py").write_text("")
    (package / "contract" / "config.py").write_text("def f():\n    from pipeline.model import train\n")
    (package / "model" / "train.py").write_text("from pipeline.model.cards import x\n")
    (package / "model" / "cards.py").write_text("from . import train\n")
    graph = import_graph(package)
    assert upward_imports(graph) == ["pipeline.contract.config (contract) -> pipeline.model.train (model)"]
    assert circles(graph) == [["pipeline.model.cards", "pipeline.model.train"]]
