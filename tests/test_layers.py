"""The import direction of ``ofa_deploy``, as a contract CI checks.

The package is built in layers, top to bottom (README, *Layout*)::

    ofa_deploy.cli                                  the command line: nothing imports it
    ofa_deploy.search, ofa_deploy.train             search (re-ranks through deploy), training
    ofa_deploy.deploy                               subnet.json -> verified module
    ofa_deploy.latency                              latency models and their builder (profile)
    ofa_deploy.compile                              ONNX -> TVM -> .so (TVM only in compile.worker)
    ofa_deploy.tuning_logs                          the tuning_logs/<target>/ layout and databases
    ofa_deploy.workloads, .export, .data, ...       the space's workloads, ONNX export, data
    ofa_deploy.search_space, ofa_deploy.targets     the space and the target registry
    ofa_deploy.errors, .atomic, .outputs, .cache    leaf utilities (standard library only)

Checked here on every module of the installed package, counting every import statement, those
inside function bodies too (the lazy imports that keep ``import ofa_deploy`` cheap are where
backward imports hide): the rules of :data:`CONTRACTS`, that only ``ofa_deploy.compile.worker``
imports TVM, and that no modules import each other in a cycle.

Why not import-linter: its graph (grimp) walks the folder of the top-level package only, and
``ofa_deploy.compile``, ``.search_space`` and ``.targets`` live in top-level folders that setup.py's
``package_dir`` maps into the package (grimp refuses them: NotATopLevelModule), so it would check a
third of the code. The graph here is read from the same ``package_dir``; as in grimp's, an import
of ``a.b.c`` is an edge to ``a.b.c`` (not also to the ``a.b`` that Python initialises first).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

ROOT = "ofa_deploy"
LEAVES = ("ofa_deploy.errors", "ofa_deploy.atomic", "ofa_deploy.outputs", "ofa_deploy.cache")  # stdlib only: anyone may use them
TVM = ("tvm", "tvm_ffi")
TVM_OWNER = "ofa_deploy.compile.worker"


@dataclass(frozen=True)
class Contract:
    """Modules under ``sources`` import only ``allowed`` (None: anything) and nothing under ``forbidden``."""

    name: str
    sources: tuple[str, ...]
    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()


ABOVE_COMPILE = ("ofa_deploy.latency", "ofa_deploy.deploy", "ofa_deploy.search", "ofa_deploy.train", "ofa_deploy.cli")
CONTRACTS = (
    Contract("the search space is the bottom of the domain: it imports only the leaf utilities",
             ("ofa_deploy.search_space",), allowed=LEAVES),
    Contract("the target registry is the bottom of the domain: it imports only the leaf utilities",
             ("ofa_deploy.targets",), allowed=LEAVES),
    Contract("the helpers (workloads, export, data, torch device) import only each other, the space, the registry "
             "and the leaf utilities",
             ("ofa_deploy.workloads", "ofa_deploy.export", "ofa_deploy.data", "ofa_deploy.torch_device"),
             allowed=("ofa_deploy.workloads", "ofa_deploy.export", "ofa_deploy.data", "ofa_deploy.torch_device",
                      "ofa_deploy.search_space", "ofa_deploy.targets") + LEAVES),
    Contract("tuning_logs (layout, databases) sits low: the registry and the leaf utilities only",
             ("ofa_deploy.tuning_logs",), allowed=("ofa_deploy.targets",) + LEAVES),
    Contract("compile is below the latency models, deploy, search, training and the CLI",
             ("ofa_deploy.compile",), forbidden=ABOVE_COMPILE),
    Contract("the latency models and their builder are below deploy, search, training and the CLI",
             ("ofa_deploy.latency",), forbidden=ABOVE_COMPILE[1:]),
    Contract("deploy is below search, training and the CLI", ("ofa_deploy.deploy",), forbidden=ABOVE_COMPILE[2:]),
    Contract("the CLI is the top: nothing else imports it", (ROOT,), forbidden=("ofa_deploy.cli",)),
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # one of our modules, or an external top-level name
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}  ({self.where})"


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def setup_keyword(name: str) -> object:
    """The literal value of one ``setup()`` keyword in setup.py."""
    for node in ast.walk(ast.parse((REPO / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def package_dirs() -> dict[str, Path]:
    """setup.py's ``package_dir``: installed package name -> folder in the repository."""
    return {k: REPO / v for k, v in setup_keyword("package_dir").items()}


def modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(not (folder.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(len(parts))):
                continue  # not inside a package (a script folder)
            name = ".".join((package,) + parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> list[Import]:
    """Every import statement of every module (module level and inside functions alike)."""
    out: list[Import] = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                ours = _under(target, ROOT)
                if ours and target not in mods:  # ``import ofa_deploy.a.b`` of a name, not a module
                    target = max((m for m in mods if _under(target, m)), key=len)
                out.append(Import(name, target if ours else target.split(".")[0], where))
    return out


def violations(graph: list[Import]) -> list[str]:
    """Broken contracts and TVM imports outside the worker, one line each."""
    lines = []
    for c in CONTRACTS:
        for imp in graph:
            source = next((src for src in c.sources if _under(imp.importer, src)), None)
            if source is None or not _under(imp.imported, ROOT) or _under(imp.imported, source):
                continue
            allowed = c.allowed is None or imp.imported == ROOT or any(_under(imp.imported, a) for a in c.allowed)
            if not allowed or any(_under(imp.imported, f) for f in c.forbidden):
                lines.append(f"{c.name}: {imp}")
    lines += [f"only {TVM_OWNER} imports TVM (it runs in the worker process): {imp}" for imp in graph
              if imp.imported in TVM and not _under(imp.importer, TVM_OWNER)]
    return lines


def cycles(graph: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as its modules."""
    edges: dict[str, set[str]] = {}
    for imp in graph:
        if _under(imp.imported, ROOT) and imp.imported != imp.importer:
            edges.setdefault(imp.importer, set()).add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def describe_cycle(component: list[str], graph: list[Import]) -> str:
    """The shortest loop of imports inside a cycle, one import per line, then all its modules."""
    inside = set(component)
    first: dict[tuple[str, str], Import] = {}
    for imp in graph:
        if imp.importer in inside and imp.imported in inside:
            first.setdefault((imp.importer, imp.imported), imp)
    best: list[str] = []
    for start in component:  # breadth-first from each module back to itself; keep the shortest loop
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parents:
            nxt = []
            for v in frontier:
                for (a, b) in first:
                    if a == v and b not in parents:
                        parents[b] = v
                        nxt.append(b)
            frontier = nxt
        if start in parents:
            loop = [start]
            while len(loop) == 1 or loop[-1] != start:
                loop.append(parents[loop[-1]])
            loop.reverse()
            if not best or len(loop) < len(best):
                best = loop
    steps = "\n".join(f"    {first[(a, b)]}" for a, b in zip(best, best[1:]))
    return f"cycle of {len(component)} modules ({', '.join(component)}), e.g.:\n{steps}"


def test_package_is_read_whole():
    """The graph sees the folders setup.py maps (a missing folder would make every check vacuous), and
    setup.py installs every package there is (a forgotten one works in the editable install only)."""
    mods = modules()
    for package in package_dirs():
        assert package in mods, f"{package} not found"
    assert "ofa_deploy.compile.worker" in mods and len(mods) > 80
    packages = {name for name, path in mods.items() if path.name == "__init__.py"}
    assert set(setup_keyword("packages")) == packages, "setup.py packages= differs from the package folders"


def test_import_contracts():
    broken = violations(imports(modules()))
    assert not broken, "imports that run against the layering (importer -> imported):\n" + "\n".join(broken)


def test_no_import_cycles():
    graph = imports(modules())
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(describe_cycle(c, graph) for c in found)
