"""Imports inside authchat flow one way: no module imports itself, however indirectly.

The graph is read from the source with `ast`, not by importing, so it sees
every import: relative ones, ones inside functions, and ones under
TYPE_CHECKING (a cycle there still ties two modules together for the reader
and for mypy). A package is its `__init__`: `from . import Store` in
store/messages.py is an edge to store/__init__.py, and `from . import schema`
in an `__init__` an edge to the submodule it names. Python's implicit import
of a submodule's parent packages is not an edge: it is how every package
works, and only an explicit import back from the `__init__` closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import authchat

PACKAGE_DIR = Path(authchat.__file__).parent


def _modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under the package: dotted name -> (file, is a package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module `name` lives in: itself, or the nearest enclosing package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name a `from ... import` imports from."""
    if not node.level:
        return node.module or ""
    here = module.split(".") if is_package else module.split(".")[:-1]
    base = here[:len(here) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, is_package: bool,
             modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The package's modules that `module` imports, anywhere in its source."""
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else _known(source, modules))
    return {name for name in found if name is not None and name != module}


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = _modules(package_dir)
    return {name: _imports(name, path, is_package, modules)
            for name, (path, is_package) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in `graph`, as the path that closes it (first == last), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_the_graph_covers_every_package() -> None:
    graph = import_graph()
    for name in ("authchat.server", "authchat.connection", "authchat.client",
                 "authchat.client.link", "authchat.client.gui", "authchat.protocol",
                 "authchat.protocol.events", "authchat.store", "authchat.store.messages"):
        assert name in graph
    # relative imports, a package's own __init__, and a submodule named in `from . import`
    assert "authchat.store" in graph["authchat.store.messages"]
    assert "authchat.store.schema" in graph["authchat.store"]
    assert "authchat.errors" in graph["authchat.protocol.events"]


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_wherever_its_imports_are(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f() -> None:\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n")
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (package / "sub" / "b.py").write_text("from .. import a\n")
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (package / "sub" / "b.py").write_text("import pkg.sub\n")
    assert find_cycle(import_graph(package)) == ["pkg.sub.b", "pkg.sub", "pkg.sub.b"]
    (package / "sub" / "b.py").write_text("x = 1\n")
    assert find_cycle(import_graph(package)) is None
