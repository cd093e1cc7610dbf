"""The import rules of bgdeploy/, read from the source (no module is imported).

- ``bgdeploy/router/`` imports nothing from ``bgdeploy/control/``, and
  ``bgdeploy/control/`` nothing from ``bgdeploy/router/``: the control loop reaches a
  running router through its port (``control/router_api.py``), and ``routerd.py``,
  above both, wires the two together.
- ``bgdeploy/registry/`` imports nothing above it (control, router, the CLI, the UI).
- No circle of imports that run: an import under ``if TYPE_CHECKING:`` does not count.
- No module over 500 lines.

``python tests/unit/test_layers.py`` prints the graph: each module's runtime imports,
the circles (runtime and type-only) and the sizes.
"""

from __future__ import annotations

import ast
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500

# package -> packages (prefixes) it must not import
FORBIDDEN = {
    "bgdeploy.router": ("bgdeploy.control",),
    "bgdeploy.control": ("bgdeploy.router",),
    "bgdeploy.registry": (
        "bgdeploy.control",
        "bgdeploy.router",
        "bgdeploy.routerd",
        "bgdeploy.cli",
        "bgdeploy.ui",
    ),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    type_only: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for p in sorted((root / "bgdeploy").rglob("*.py"))
        if "migrations" not in p.parts
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, bool]]:
    """Every import statement, anywhere (functions too), with whether it is type-only."""
    found: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, type_only))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, type_only)
            else:
                visit(child, type_only)

    def visit_stmt(stmt: ast.stmt, type_only: bool) -> None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            found.append((stmt, type_only))
        else:
            visit(stmt, type_only)

    visit(tree, False)
    return found


def edges(root: Path) -> list[Edge]:
    mods = modules(root)
    out: list[Edge] = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt, type_only in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - stmt.level + 1]
                    base = ".".join(p for p in [*parts, base] if p)
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in stmt.names
                ]
            for target in dict.fromkeys(targets):
                while target and target not in mods:  # bgdeploy.x.y.z -> bgdeploy.x.y
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.append(Edge(name, target, stmt.lineno, type_only))
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_breaches(root: Path) -> list[str]:
    out = []
    for e in edges(root):
        for package, banned in FORBIDDEN.items():
            if within(e.source, package):
                for b in banned:
                    if within(e.target, b) and not e.type_only:
                        out.append(f"{e.source}:{e.line} imports {e.target}")
    return sorted(set(out))


def circles(root: Path, *, type_only: bool = False) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over runtime imports
    (or over every import, ``type_only=True``)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for e in edges(root):
        if type_only or not e.type_only:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(groups)


def oversized(root: Path) -> list[tuple[str, int]]:
    sizes = [(m, len(p.read_text().splitlines())) for m, p in modules(root).items()]
    return sorted((m, n) for m, n in sizes if n > MAX_LINES)


# -- the tests --------------------------------------------------------------------------


def test_control_and_router_do_not_import_each_other_and_registry_imports_nothing_above() -> None:
    assert layer_breaches(ROOT) == []


def test_no_circle_of_runtime_imports() -> None:
    assert circles(ROOT) == []


def test_no_module_over_500_lines() -> None:
    assert oversized(ROOT) == []


def test_a_stray_import_is_caught(tmp_path: Path) -> None:
    """The rules are not vacuous: a copy of the tree with one stray import breaks them."""
    shutil.copytree(
        ROOT / "bgdeploy",
        tmp_path / "bgdeploy",
        ignore=shutil.ignore_patterns("*.c", "*.so", "__pycache__"),
    )
    http11 = tmp_path / "bgdeploy" / "router" / "http11.py"
    http11.write_text(http11.read_text() + "\nfrom bgdeploy.control.app import App  # stray\n")
    status = tmp_path / "bgdeploy" / "control" / "status.py"
    status.write_text(
        status.read_text() + "\n\ndef _stray():\n    from bgdeploy.router import ipc\n"
    )
    breaches = layer_breaches(tmp_path)
    assert any(
        b.startswith("bgdeploy.router.http11:") and "bgdeploy.control.app" in b for b in breaches
    )
    assert any(
        b.startswith("bgdeploy.control.status:") and "bgdeploy.router.ipc" in b for b in breaches
    )
    # control.app imports the registry and config, never http11: that stray one closes
    # no circle, but a stray import back into a module's own importer does.
    app = tmp_path / "bgdeploy" / "control" / "app.py"
    app.write_text(app.read_text() + "\n\ndef _back():\n    from bgdeploy.control import status\n")
    assert any(
        "bgdeploy.control.app" in c and "bgdeploy.control.status" in c for c in circles(tmp_path)
    )


def main() -> None:
    print("runtime imports (module -> what it imports at run time):")
    graph: dict[str, list[str]] = {}
    for e in edges(ROOT):
        if not e.type_only:
            graph.setdefault(e.source, []).append(e.target)
    for m in sorted(modules(ROOT)):
        print(f"  {m} -> {', '.join(sorted(set(graph.get(m, [])))) or '-'}")
    print("circles of runtime imports:", circles(ROOT) or "none")
    print("circles counting type-only imports:", circles(ROOT, type_only=True) or "none")
    print("layer breaches:", layer_breaches(ROOT) or "none")
    sizes = sorted(
        ((len(p.read_text().splitlines()), m) for m, p in modules(ROOT).items()), reverse=True
    )
    print("largest modules:", ", ".join(f"{m} {n}" for n, m in sizes[:8]))


if __name__ == "__main__":
    main()
