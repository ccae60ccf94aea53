"""No import cycles inside the flannelish package (a static walk of the import graph).

The graph is built from the source with ``ast``, not by importing anything:
every module of ``flannelish`` (with ``cni/`` and ``backends/`` under the
names pyproject's package-dir gives them) is a node, and every import it can
execute is an edge.  What counts is what runs:

* imports inside functions count: they run on the first call, and a cycle
  through them is still a cycle (deferring it only moves the failure);
* ``importlib.import_module("literal")`` counts like an import statement;
* imports under ``if TYPE_CHECKING:`` do not: they never run;
* importing ``a.b.c`` also imports the packages ``a`` and ``a.b``, except the
  importer's own ancestors, which are being imported already (a package
  registering its submodules, as ``flannelish.cli`` does, is no cycle).

The test names every cycle it finds as ``a -> b -> a``.  The finder is tested
on small made-up graphs and packages as well, so a green run means "no
cycle", not "the finder saw nothing".
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "flannelish"


# -- building the graph -------------------------------------------------------------


def package_roots(root: Path) -> dict[str, Path]:
    """Package name -> directory: ``flannelish`` plus pyproject's package-dir entries."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    roots = {PACKAGE: root / PACKAGE}
    roots.update({name: root / path for name, path in mapping.items()})
    return roots


def discover(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every ``*.py`` under each package directory."""
    modules: dict[str, Path] = {}
    for package, directory in sorted(roots.items()):
        for path in sorted(directory.rglob("*.py")):
            rel = path.relative_to(directory).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            modules.setdefault(name, path)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imported_names(module: str, path: Path) -> set[tuple[str, str | None]]:
    """What `module` may import at run time: ``(name, None)`` for ``import name`` and
    ``importlib.import_module("name")``, ``(base, attr)`` for ``from base import attr``
    (attr may be a submodule or a plain attribute; the graph decides)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[tuple[str, str | None]] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names.update((base, alias.name) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add((node.args[0].value, None))
    return names


def _targets(module: str, name: str, modules: Mapping[str, Path], explicit: bool) -> set[str]:
    """Package modules that importing `name` from `module` runs: ``a.b.c`` runs ``a`` and
    ``a.b`` first, except `module`'s own ancestors (already running) unless `explicit`."""
    parts = module.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
    pieces = name.split(".")
    found = {
        parent
        for parent in (".".join(pieces[:i]) for i in range(1, len(pieces)))
        if parent in modules and parent not in ancestors and parent != module
    }
    if name in modules and name != module and (explicit or name not in ancestors):
        found.add(name)
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules its execution imports (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for base, attr in imported_names(module, path):
            if attr is None:
                edges |= _targets(module, base, modules, explicit=False)
            elif f"{base}.{attr}" in modules:  # `from pkg import submodule`
                edges |= _targets(module, f"{base}.{attr}", modules, explicit=False)
            else:  # `from module import attribute`: that module must be initialised
                edges |= _targets(module, base, modules, explicit=True)
        graph[module] = edges
    return graph


def package_graph(graph: Mapping[str, Iterable[str]], depth: int = 2) -> dict[str, set[str]]:
    """The same graph with modules merged into their package ``depth`` levels down
    (``flannelish.subnet.manager`` -> ``flannelish.subnet``): the layers.  A cycle
    here means two packages each reach into the other, even if no module-level
    cycle exists (backends/ and daemon/ once did)."""

    def package(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    merged: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = merged.setdefault(package(module), set())
        edges.update(package(t) for t in targets if package(t) != package(module))
    return merged


# -- finding cycles -----------------------------------------------------------------


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as ``[a, b, ..., a]``.

    Tarjan's algorithm (iterative, so deep graphs cannot hit the recursion
    limit); then a path around each component.  Sorted, so reports are stable.
    """
    edges = {node: sorted(set(targets)) for node, targets in graph.items()}
    for targets in list(edges.values()):
        for target in targets:
            edges.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    cycles = []
    for component in components:
        if len(component) > 1 or component[0] in edges[component[0]]:
            cycles.append(_cycle_through(component, edges))
    return sorted(cycles)


def _cycle_through(component: list[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A shortest path from the component's first member back to itself."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {component}")  # not reachable for an SCC


def describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


# -- the test that guards the package --------------------------------------------------


def test_the_flannelish_package_has_no_import_cycle():
    modules = discover(package_roots(ROOT))
    # The walk sees the whole tree, including the parts installed under other dirs.
    assert {"flannelish.cni.main", "flannelish.backends.vxlan", "flannelish.daemon.node"} <= set(
        modules
    )
    cycles = find_cycles(import_graph(modules))
    assert not cycles, "import cycles (break them; see tests/test_import_cycles.py):\n" + (
        describe(cycles)
    )


def test_the_packages_of_flannelish_do_not_depend_on_each_other_in_a_circle():
    layers = package_graph(import_graph(discover(package_roots(ROOT))))
    cycles = find_cycles(layers)
    assert not cycles, "packages that import each other (move the shared part below both):\n" + (
        describe(cycles)
    )


# -- the finder can fail --------------------------------------------------------------


def test_finder_reports_each_cycle_as_a_path_and_ignores_acyclic_parts():
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": set(),
        "x": {"x"},  # a module importing itself
        "p": {"q"},
        "q": {"p"},
    }
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["p", "q", "p"], ["x", "x"]]
    assert describe(find_cycles(graph)).splitlines()[0] == "a -> b -> c -> a"
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_finder_handles_a_long_chain_without_recursion():
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}
    assert find_cycles(chain) == []
    chain["m5000"] = {"m0"}
    (cycle,) = find_cycles(chain)
    assert len(cycle) == 5002 and cycle[0] == cycle[-1] == "m0"


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = discover({"pkg": tmp_path / "pkg"})
    return import_graph(modules)


def test_function_level_and_import_module_imports_count(tmp_path):
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "def later():\n    from . import a\n",
            "c.py": "import importlib\nimportlib.import_module('pkg.d')\n",
            "d.py": "from .c import thing\n",
        },
    )
    assert describe(find_cycles(graph)) == "pkg.a -> pkg.b -> pkg.a\npkg.c -> pkg.d -> pkg.c"


def test_type_checking_imports_do_not_count_but_their_else_branch_does(tmp_path):
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import B\n",
            "b.py": (
                "import typing\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.a import A\n"
                "if typing.TYPE_CHECKING:\n    import pkg.a\n"
            ),
        },
    )
    assert find_cycles(graph) == []
    graph = _package(
        tmp_path,
        {"b.py": "if TYPE_CHECKING:\n    pass\nelse:\n    from pkg.a import A\n"},
    )
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_parent_packages_are_imported_too_but_not_the_importers_own(tmp_path):
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            # a package that registers its submodules: no cycle
            "cli/__init__.py": "def _register():\n    from pkg.cli import run\n_register()\n",
            "cli/run.py": "from pkg.cli.opts import x\n",
            "cli/opts.py": "",
            # importing pkg.sub.leaf runs pkg/sub/__init__.py, which imports the importer
            "sub/__init__.py": "from pkg import user\n",
            "sub/leaf.py": "",
            "user.py": "import pkg.sub.leaf\n",
        },
    )
    assert find_cycles(graph) == [["pkg.sub", "pkg.user", "pkg.sub"]]


def test_package_level_cycles_are_found_where_modules_have_none():
    graph = {
        "top.daemon.reconciler": {"top.backends.base"},
        "top.backends.base": set(),
        "top.backends.vxlan": {"top.daemon.resources", "top.backends.base"},
        "top.daemon.resources": set(),
        "top.errors": set(),
    }
    assert find_cycles(graph) == []
    assert find_cycles(package_graph(graph)) == [["top.backends", "top.daemon", "top.backends"]]


def test_package_dir_mapping_names_modules_by_their_installed_package(tmp_path):
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "__init__.py").write_text("")
    (tmp_path / "top" / "core.py").write_text("from top.plugin import main\n")
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "__init__.py").write_text("")
    (tmp_path / "plugin" / "main.py").write_text("from ..core import x\n")
    modules = discover({"top": tmp_path / "top", "top.plugin": tmp_path / "plugin"})
    assert set(modules) == {"top", "top.core", "top.plugin", "top.plugin.main"}
    assert find_cycles(import_graph(modules)) == [["top.core", "top.plugin.main", "top.core"]]
