"""The shape of the repo: dependencies point one way (inference imports no other stage) and never in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("inference", "train", "data_prep", "kernels")


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports, module-level and function-local alike (AST, nothing is imported)."""
    modules = {
        ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
        for stage in STAGES
        for f in (REPO / stage).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in modules:  # `from pkg import module` names the module; else its package
                    n = n.rpartition(".")[0]
                if n and n != name and n not in STAGES:
                    targets.add(n)
        graph[name] = targets
    return graph


def test_inference_imports_no_other_stage() -> None:
    """The kernel ships inference/ alone: an import of train/, data_prep/ or kernels/ would fail on Kaggle."""
    upward = sorted(
        f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("inference") for t in ts
        if not t.startswith("inference")
    )
    assert not upward, f"inference/ imports other stages: {upward}"


def test_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif not state.get(t):
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_function_local_imports() -> None:
    """The checks above would pass vacuously if the walker missed imports inside functions."""
    graph = import_graph()
    assert "inference.engine.predictor" in graph["inference.submission.members"]
    assert "inference.stain" in graph["inference.submission.options"]  # imported inside a function, on demand
