"""The house rules of agent/mipart, checked on the source: sizes, import cycles, where things live.

docs/architecture.md states them; this keeps the tree honest as it grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import AGENT

PACKAGE = AGENT / "mipart"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(AGENT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every mipart module this one imports, at top level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_module_or_class_is_too_big():
    too_big = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_big.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_big == []


def test_no_import_cycle_between_mipart_modules():
    """Function-local imports count too: a lazy import is no excuse for a cycle.

    A package's __init__ importing its own submodules (a registry) is not a cycle with them.
    """
    mods = modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        edges = imported_modules(name, path, known)
        # `from mipart.x import y` also names the package mipart.x; a submodule importing
        # a sibling through its package is an edge to the sibling only.
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}"
                )
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_only_the_simulator_and_its_verb_import_it():
    """Production code never imports mipart.sim: a simulated root names its own GPU backend
    (mipart.gpu.open_backend reads the root's marker), and what the simulator does differently
    (device files, writes, reloads) is behind that backend. Only `mipart sim` imports it."""
    mods = modules()
    known = set(mods)

    def is_sim(name: str) -> bool:
        return name == "mipart.sim" or name.startswith("mipart.sim.")

    outside = [
        f"{name} imports {target}"
        for name, path in mods.items()
        if not is_sim(name) and name != "mipart.cli.sim"
        for target in sorted(imported_modules(name, path, known))
        if is_sim(target)
    ]
    assert outside == []


def test_every_click_command_lives_under_cli():
    outside = [
        name
        for name, path in modules().items()
        if not name.startswith("mipart.cli") and "import click" in path.read_text()
    ]
    assert outside == []


def test_names_are_spelled_in_one_module():
    """The unit name and the default API address are defined in mipart.names only."""
    literals = (
        "mipart-vllm@",
        "127.0.0.1:8049",
        "mipart-nginx.service",
        "mipart-nginx-front.service",
        "/etc/mipart/profile.yaml",
    )
    spelled = []
    for name, path in modules().items():
        if name == "mipart.names":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and any(lit in node.value for lit in literals)
                and not _is_docstring_like(node.value)
            ):
                spelled.append(f"{name}:{node.lineno}: {node.value[:60]!r}")
    assert spelled == []


def _is_docstring_like(text: str) -> bool:
    """Prose (docstrings, help and error text) may name a unit; code must take it from mipart.names."""
    return " " in text.strip()


def test_test_modules_have_names_unique_across_the_tier_folders():
    """Tier folders without __init__.py share one module namespace under pytest's default import
    mode: a second tests/*/test_x.py fails collection when the whole suite runs (as CI does)."""
    tests = AGENT.parent / "tests"
    seen: dict[str, list[str]] = {}
    for path in tests.glob("*/test_*.py"):
        if not (path.parent / "__init__.py").exists():
            seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}
