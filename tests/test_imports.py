"""The import graph of the project's modules (the top-level files and extras/) has no cycle,
counting imports inside functions too: each module can be read, and understood, before the ones
that import it. bench/ and tests/ are leaves (nothing imports them) and are not checked."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_modules() -> dict[str, Path]:
    files = [p for p in ROOT.glob("*.py")] + [p for p in (ROOT / "extras").glob("*.py")]
    return {(p.stem if p.parent == ROOT else f"extras.{p.stem}"): p
            for p in files if p.stem != "__init__"}


def imports_of(path: Path, modules: dict) -> set[str]:
    """The project modules that ``path`` imports anywhere (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert {"lrpo", "bandit", "extras.cli"} <= set(graph)   # the graph is the project's
    assert "data" in graph["bandit"]
    assert cycles(graph) == []


def test_the_core_algorithm_modules_import_no_shell():
    """data, bandit, rollout, loss and calibrate are the paper: they import only each other (the
    encoder and language-ID models in extras/ that calibrate loads are models, not the shell)."""
    graph = import_graph()
    core = {"data", "bandit", "rollout", "loss", "calibrate"}
    models = {"extras.encoders", "extras.language_id"}
    for module in core:
        assert graph[module] <= core | models, (module, graph[module] - core - models)
