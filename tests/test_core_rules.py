"""The textbook core's reading rules (README "How to read this code"), checked so they cannot go
stale: the six files' size against the README's table (at most 2,000 lines, none packed), line
length, docstring and function length, names defined before use, imports one way, and citations a
reader can follow."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("lrpo.py", "data.py", "bandit.py", "rollout.py", "calibrate.py", "loss.py")
PROJECT = {"lrpo", "data", "bandit", "rollout", "calibrate", "loss", "toy", "evaluate", "extras"}
# what each core file may import from the project at module level (anything else: inside a function)
ALLOWED = {"lrpo.py": PROJECT - {"toy", "evaluate"}, "data.py": set(), "rollout.py": set(),
           "loss.py": set(), "bandit.py": {"data"}, "calibrate.py": {"data"}}


def source(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def readme_table() -> dict[str, int]:
    """file -> the '~N' line count of the README's reading table."""
    rows = re.findall(r"^\| \d \| `(\w+\.py)` \|.*?\| ~(\d[\d,]*) \|", source("README.md"), re.M)
    return {name: int(n.replace(",", "")) for name, n in rows}


def test_the_readme_table_states_each_files_length_within_5_percent():
    table = readme_table()
    assert sorted(table) == sorted(CORE)
    for name, stated in table.items():
        actual = len(source(name).splitlines())
        assert abs(actual - stated) <= 0.05 * actual, f"{name}: README says ~{stated}, it has {actual}"


def test_the_core_is_at_most_2000_lines_as_the_readme_says():
    total = sum(len(source(name).splitlines()) for name in CORE)
    assert total <= 2000, total
    said = re.search(r"six top-level files, one concept each, about ([\d,]+) lines", source("README.md"))
    assert said and abs(int(said.group(1).replace(",", "")) - total) <= 0.05 * total


def packed_lines(text: str) -> list[int]:
    """Lines that hold more than one statement: ``a; b``, or a compound statement whose body
    starts on its header (``if x: return y``, ``for ...: f()``). A budget on physical lines
    must not be met by packing them."""
    tree = ast.parse(text)
    packed = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            if not isinstance(node, ast.Module) and body[0].lineno == node.lineno:
                packed.append(node.lineno)
            packed += [b.lineno for a, b in zip(body, body[1:]) if a.end_lineno == b.lineno]
    return sorted(set(packed))


def test_the_packing_rule_catches_packed_lines():
    assert packed_lines("if x: y = 1\n") == [1]
    assert packed_lines("a = 1; b = 2\n") == [1]
    assert packed_lines("def f():\n    for i in x: g(i)\n") == [2]
    assert packed_lines("if x:\n    y = 1\nelse:\n    y = 2\n") == []


@pytest.mark.parametrize("name", CORE)
def test_no_line_of_the_core_is_packed(name):
    assert packed_lines(source(name)) == [], name


@pytest.mark.parametrize("name", CORE)
def test_lines_docstrings_and_functions_are_short(name):
    text = source(name)
    long = [i for i, line in enumerate(text.splitlines(), 1) if len(line) > 100]
    assert not long, f"{name}: lines over 100 characters: {long}"
    tree = ast.parse(text)
    assert len(ast.get_docstring(tree).splitlines()) <= 25
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            assert size <= 50, f"{name}:{node.lineno} {node.name} has {size} lines"


@pytest.mark.parametrize("name", CORE)
def test_every_module_level_name_is_defined_before_it_is_used(name):
    """Read top to bottom: a function or class uses only functions and classes defined above it."""
    tree = ast.parse(source(name))
    defined_at = {node.name: node.lineno for node in tree.body
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load) and inner.id not in local \
                    and defined_at.get(inner.id, 0) > node.lineno:
                pytest.fail(f"{name}:{inner.lineno} uses {inner.id}, defined below at line "
                            f"{defined_at[inner.id]}")


@pytest.mark.parametrize("name", CORE)
def test_imports_go_one_way(name):
    tree = ast.parse(source(name))
    for node in tree.body:   # module level only: a lazy import inside a function is named there
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for module in modules:
            top = module.split(".")[0]
            if top in PROJECT:
                assert top in ALLOWED[name], f"{name} imports {module} at module level"


def test_citations_name_the_paper_or_the_official_code_never_a_file_readers_lack():
    files = [*ROOT.glob("*.py"), *(ROOT / "extras").glob("*.py"), *(ROOT / "bench").glob("*.py"),
             ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for bad in ("LRPO_SPEC", "spec §", "reference/LRPO"):
            assert bad not in text, f"{path.name} cites {bad!r}, which readers of this repository lack"
