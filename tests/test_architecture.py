"""The package graph (doc/architecture.md, "Who imports whom"): no cycle between farmnet's
packages and top-level modules, and the model imports no edge. Every import counts, those
inside functions too, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import farmnet

ROOT = Path(farmnet.__file__).parent
#: What the model may import from farmnet: itself, and leaf modules with no I/O.
MODEL_MAY_IMPORT = {"model", "errors", "config", "messages", "convert"}


def _node(module: str) -> str | None:
    """``farmnet.server.amp`` → ``server``; ``farmnet`` itself → None."""
    parts = module.split(".")
    if parts[0] != "farmnet" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports (absolute names), wherever the import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        src = _node(_module_name(path))
        if src is None:
            continue
        targets = graph.setdefault(src, set())
        for module in _imports(path):
            dst = _node(module)
            if dst and dst != src and ((ROOT / dst).is_dir() or (ROOT / f"{dst}.py").exists()):
                targets.add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_package_cycle() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "package import cycle: " + " → ".join(cycle or [])


def test_model_imports_no_edge() -> None:
    edges = package_graph()["model"] - MODEL_MAY_IMPORT
    assert not edges, f"farmnet.model imports {sorted(edges)}: the model must not depend on the edges"


def test_the_checker_sees_a_cycle() -> None:
    """The test above could not fail if the walker missed imports: check it on a known graph."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = package_graph()
    assert "model" in graph["server"], "the walker must see server → model"
    assert "model" in graph["app"] or "server" in graph["app"]
