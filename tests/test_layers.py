"""The import contract: every import inside codelift points down the layers, and no modules import
each other in a cycle (lazy imports inside functions count: they are dependencies all the same)."""

import ast
from pathlib import Path

import codelift

# bottom to top; a module may import its own layer and the ones below it
LAYERS = [
    ["codelift.errors"],
    ["codelift.io", "codelift.hardware", "codelift.plots"],
    ["codelift.config"],
    ["codelift.data"],
    ["codelift.models"],
    ["codelift.prompts"],
    ["codelift.generate"],
    ["codelift.evaluate.sandbox", "codelift.evaluate.metrics", "codelift.evaluate.score", "codelift.evaluate.stats",
     "codelift.evaluate.selection"],  # judging: running programs, scoring them, choosing among them
    ["codelift.rag"],
    ["codelift.plans"],
    ["codelift.train"],
    ["codelift.evaluate"],  # the harness: generation strategies, repair, KL, the ablation
    ["codelift.pipeline"],
    ["codelift.tune"],
    ["codelift.report", "codelift.serve"],
    ["codelift.cli"],
]
SOURCE = Path(codelift.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.with_suffix("").relative_to(SOURCE.parent).parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The codelift modules `path` imports; `from package import module` names the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(path, known) - {module} for module, path in known.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{module} -> {target}" for module, targets in sorted(edges.items()) if module != "codelift"
            for target in sorted(targets) if target != "codelift" and layer(target) > layer(module)]


def cycles(edges: dict[str, set[str]]) -> list[str]:
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_points_down_the_layers():
    assert upward(graph()) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(graph()) == []


def test_the_contract_reports_an_upward_import_and_a_cycle():
    edges = {"codelift.data.loaders": {"codelift.pipeline", "codelift.errors"},
             "codelift.train.a": {"codelift.train.b"}, "codelift.train.b": {"codelift.train.a"}}
    assert upward(edges) == ["codelift.data.loaders -> codelift.pipeline"]
    assert cycles(edges) == ["codelift.train.a -> codelift.train.b -> codelift.train.a"]
    assert "codelift.train.sequence_kd" in graph()["codelift.train.distill"]  # lazy imports are seen
