"""The architecture in the folder tree holds in the code: imports flow down (ops -> layers -> models ->
train / bench / analysis / experiments / export -> cli), packages talk through public names, and no two
modules import each other. Read from the source with ``ast``, so a lazy import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "msaconv"
# a package may import from packages of a lower rank only; root modules (_errors, __init__, ...) are shared
RANK = {"ops": 0, "layers": 1, "data": 1, "models": 2, "train": 3, "bench": 3, "analysis": 4, "experiments": 5,
        "export": 3, "cli": 6}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _runtime_imports(tree: ast.AST):
    """ImportFrom / Import nodes, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.ImportFrom, ast.Import)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(module imported from, names) for every msaconv import of module ``name``."""
    path, is_pkg = MODULES[name]
    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("msaconv.")]
            continue
        if node.level:
            target = pkg[:len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
        elif (node.module or "").startswith("msaconv"):
            target = node.module.split(".")
        else:
            continue
        base = ".".join(target)
        for a in node.names:  # ``from . import backends`` imports the module msaconv.ops.backends
            sub = f"{base}.{a.name}"
            out.append((sub, []) if sub in MODULES else (base, [a.name]))
    return out


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (SRC / parts[1]).is_dir() else None


def _private(segment: str) -> bool:
    return segment.startswith("_") and not segment.startswith("__")


def test_no_module_imports_a_private_name_of_another_package():
    bad = []
    for me in MODULES:
        for target, names in _imports(me):
            if _top(target) is None or _top(target) == _top(me):
                continue  # the root's shared modules, or inside one's own package
            if any(_private(s) for s in target.split(".")[2:]) or any(_private(n) for n in names):
                bad.append(f"{me}: from {target} import {', '.join(names) or '(module)'}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_imports_flow_down():
    bad = []
    for me in MODULES:
        mine = _top(me)
        for target, _ in _imports(me):
            theirs = _top(target)
            if mine and theirs and mine != theirs and RANK[theirs] >= RANK[mine]:
                bad.append(f"{me} ({mine}, rank {RANK[mine]}) imports {target} ({theirs}, rank {RANK[theirs]})")
    assert not bad, "\n".join(bad)


def test_every_package_has_a_rank():
    assert {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(RANK)


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for me in MODULES:
        for target, _ in _imports(me):
            # a package's __init__ re-exporting its own submodules is how a package is built, not a cycle
            if target in MODULES and target != me and not (MODULES[me][1] and target.startswith(me + ".")):
                g[me].add(target)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("graph, expected", [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
                                             ({"a": {"b"}, "b": set()}, [])])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected
