#!/usr/bin/env python3
# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""Check the import graph of `modeling/` against its concerns (issue 19): imports point down the layers, never up.

    python3 tools/layers.py            # the concern graph and the verdict; exit 1 on any violation
    python3 tools/layers.py PATH       # another package folder laid out the same way (the tests use this)

The layers, top to bottom (a module may import from a lower layer only; the concerns of one layer are siblings that
must not import each other):

    __init__, __main__      the lazy front-door exports (may name any layer, lazily) and `python -m modeling`
    eval                    benchmark, baselines, accuracy table, the lmms-eval plugin (`modeling/eval/`)
    app                     `VideoQA`, media options and inputs, checkpoint checks, timing, pictures, the CLI
    integration | demo      the glue around the vendored file | the offline demo model, processor and clips
    prunevid | vendored     the algorithm in plain PyTorch (no transformers) | `modeling_qwen2_5_vl.py` (generated)

Reported (each with file:line): imports that point up or sideways; transformers imported in `prunevid/`; an eager
(module-level, outside `if TYPE_CHECKING:`) import of the package in the front door `__init__.py`; imports of
package modules that do not exist; files outside the documented concerns; package folders whose `__init__.py` is
missing or has no docstring (the docstring documents the folder's concern); cycles between modules (strongly
connected components of the module graph) and between concerns. Every import counts: module level, inside functions,
under `if TYPE_CHECKING:`, relative (`from . import x`, `from ..a import b`) or absolute (`modeling.x`), and
`importlib.import_module` / `__import__` with a literal name. Importing a module does not count as importing the
`__init__.py` of its parent packages (that is how Python packages work, not a dependency of the importer).

Standard library only (ast), so it runs with a plain `python3` in `make check`.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# Top to bottom; a module may import only from a layer below its own (or from its own concern).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "__main__"),
    ("eval",),
    ("app",),
    ("integration", "demo"),
    ("prunevid", "vendored"),
)
LEVEL = {concern: level for level, concerns in enumerate(LAYERS) for concern in concerns}
TOP_FILES = {"__init__.py": "__init__", "__main__.py": "__main__", "modeling_qwen2_5_vl.py": "vendored"}
FOLDERS = {"eval", "app", "integration", "demo", "prunevid"}
NO_TRANSFORMERS = {"prunevid"}  # concerns that must not import transformers
SKIP_DIRS = {"__pycache__"}


@dataclass(frozen=True)
class Module:
    name: str  # dotted: modeling.app.cli.run
    path: Path
    rel: str  # as reported: modeling/app/cli/run.py
    is_package: bool
    concern: str | None  # None: outside the documented concerns


@dataclass(frozen=True)
class Import:
    source: str  # module name
    target: str  # module name inside the package, or the imported name outside it
    line: int
    lazy: bool  # inside a function or under `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Violation:
    kind: str
    where: str  # file:line
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}"


@dataclass
class Report:
    package: str
    modules: dict[str, Module]
    imports: list[Import] = field(default_factory=list)  # inside the package
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def concern_edges(self) -> Counter[tuple[str, str]]:
        """(source concern, target concern) -> how many distinct module -> module imports cross that way."""
        pairs = {(i.source, i.target) for i in self.imports}
        out: Counter[tuple[str, str]] = Counter()
        for source, target in pairs:
            a, b = self.modules[source].concern, self.modules[target].concern
            if a is not None and b is not None and a != b:
                out[(a, b)] += 1
        return out

    def render(self) -> str:
        edges = self.concern_edges()
        concerns = sorted({m.concern for m in self.modules.values() if m.concern}, key=lambda c: (LEVEL[c], c))
        order = " > ".join(" | ".join(c for c in layer if c in concerns) for layer in LAYERS if set(layer) & set(concerns))
        lines = [
            f"{self.package}/: {len(self.modules)} modules, {len({(i.source, i.target) for i in self.imports})} "
            f"module -> module imports inside the package ({len(self.imports)} import statements)",
            f"layers, imports point down: {order}",
            "concern graph (distinct module -> module imports):",
        ]
        ordered = sorted(edges.items(), key=lambda item: (LEVEL[item[0][0]], item[0][0], LEVEL[item[0][1]], item[0][1]))
        lines += [f"  {a} -> {b} ({n})" for (a, b), n in ordered]
        if self.ok:
            lines.append(
                "OK: no upward or sideways import, no transformers in prunevid, no stray file, every package folder "
                "documented, no cycle between modules or concerns"
            )
        else:
            lines.append(f"FAIL: {len(self.violations)} violation(s)")
            lines += [f"  {v}" for v in self.violations]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the files
def concern_of(parts: Sequence[str]) -> str | None:
    """The concern of a file, from its path relative to the package folder."""
    if len(parts) == 1:
        return TOP_FILES.get(parts[0])
    return parts[0] if parts[0] in FOLDERS else None


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        yield Path(folder), dirs, sorted(f for f in files if not f.startswith("."))


def _display(path: Path, root: Path) -> str:
    return (Path(root.name) / path.relative_to(root)).as_posix()


def collect(root: Path, report: Report) -> None:
    """Find the modules, stray files and undocumented package folders."""
    for folder, _dirs, files in _walk(root):
        py = [f for f in files if f.endswith(".py")]
        rel_folder = folder.relative_to(root).parts
        if py:
            init = folder / "__init__.py"
            where = _display(init, root)
            if not init.exists():
                report.violations.append(Violation(
                    "undocumented package", _display(folder, root) + "/",
                    "a folder of modules without an __init__.py (and its docstring naming the folder's concern)",
                ))  # fmt: skip
            else:
                try:
                    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
                except SyntaxError:
                    doc = "?"  # reported with the module below
                if not (doc or "").strip():
                    report.violations.append(
                        Violation("undocumented package", f"{where}:1", "no docstring naming the folder's concern")
                    )
        for name in files:
            path = folder / name
            parts = (*rel_folder, name)
            concern = concern_of(parts)
            if concern is None:
                report.violations.append(Violation(
                    "stray file", _display(path, root),
                    "outside the documented concerns (top level: " + ", ".join(TOP_FILES)
                    + "; folders: " + ", ".join(sorted(FOLDERS)) + ")",
                ))  # fmt: skip
            if not name.endswith(".py"):
                continue
            dotted = [root.name, *rel_folder]
            is_package = name == "__init__.py"
            if not is_package:
                dotted.append(name[:-3])
            module = Module(".".join(dotted), path, _display(path, root), is_package, concern)
            report.modules[module.name] = module


# ---------------------------------------------------------------------------------------------------- the imports
@dataclass(frozen=True)
class _Raw:
    line: int
    base: str | None  # absolute dotted name; None when a relative import climbs above the top package
    names: tuple[str, ...]  # `from base import names`; () for `import base`
    lazy: bool


class _ImportFinder(ast.NodeVisitor):
    """Every import of a module, with whether it is lazy (in a function, or under `if TYPE_CHECKING:`)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.found: list[_Raw] = []
        self._lazy = 0

    def _package(self) -> str:
        return self.module.name if self.module.is_package else self.module.name.rpartition(".")[0]

    def _relative(self, level: int, name: str | None, anchor: str | None = None) -> str | None:
        parts = (anchor if anchor is not None else self._package()).split(".")
        if level - 1 >= len(parts):
            return None
        base = parts[: len(parts) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def _scoped(self, node: ast.AST) -> None:
        self._lazy += 1
        self.generic_visit(node)
        self._lazy -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        is_tc = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not is_tc:
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._lazy += 1
        for child in node.body:
            self.visit(child)
        self._lazy -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(_Raw(node.lineno, alias.name, (), self._lazy > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._relative(node.level, node.module) if node.level else node.module
        self.found.append(_Raw(node.lineno, base, tuple(a.name for a in node.names), self._lazy > 0))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        first = node.args[0] if node.args else None
        if called in ("import_module", "__import__") and isinstance(first, ast.Constant) and isinstance(first.value, str):
            name = first.value
            if name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                anchor = None
                package = node.args[1] if len(node.args) > 1 and called == "import_module" else None
                package = package or next((k.value for k in node.keywords if k.arg == "package"), None)
                if isinstance(package, ast.Constant) and isinstance(package.value, str):
                    anchor = package.value
                elif isinstance(package, ast.Name) and package.id == "__name__":
                    anchor = self.module.name
                base = self._relative(level, name.lstrip(".") or None, anchor)
            else:
                base = name
            self.found.append(_Raw(node.lineno, base, (), self._lazy > 0))
        self.generic_visit(node)


def resolve(report: Report) -> None:
    """Read every module's imports; record those inside the package, check transformers in `prunevid/`."""
    pkg = report.package
    modules = report.modules
    for module in list(modules.values()):
        try:
            tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        except SyntaxError as error:
            report.violations.append(Violation("syntax error", f"{module.rel}:{error.lineno}", str(error.msg)))
            continue
        finder = _ImportFinder(module)
        finder.visit(tree)
        for raw in finder.found:
            where = f"{module.rel}:{raw.line}"
            if raw.base is None:
                report.violations.append(Violation("unresolved import", where, "relative import above the package"))
                continue
            top = raw.base.split(".")[0]
            if module.concern in NO_TRANSFORMERS and top == "transformers":
                report.violations.append(Violation(
                    "transformers in prunevid", where,
                    f"imports {raw.base} (the algorithm is plain PyTorch; transformers belongs to integration)",
                ))  # fmt: skip
            if top != pkg:
                continue
            targets = []
            for name in raw.names or ((),):
                sub = f"{raw.base}.{name}" if name and name != "*" else None
                targets.append(sub if sub in modules else raw.base)
            for target in dict.fromkeys(targets):
                if target not in modules:
                    report.violations.append(Violation("unresolved import", where, f"no module {target}"))
                    continue
                report.imports.append(Import(module.name, target, raw.line, raw.lazy))


# ---------------------------------------------------------------------------------------------------- the rules
def check_directions(report: Report) -> None:
    for imp in report.imports:
        source, target = report.modules[imp.source], report.modules[imp.target]
        a, b = source.concern, target.concern
        where = f"{source.rel}:{imp.line}"
        if a == "__init__" and source.name == report.package and not imp.lazy:
            report.violations.append(Violation(
                "eager front door", where,
                f"imports {imp.target} at module level (the front door imports lazily: PEP 562 or TYPE_CHECKING)",
            ))  # fmt: skip
        if a is None or b is None or a == b:
            continue
        if LEVEL[a] > LEVEL[b]:
            kind = "upward import"
        elif LEVEL[a] == LEVEL[b]:
            kind = "sideways import"
        else:
            continue
        report.violations.append(Violation(kind, where, f"{a} -> {b} ({imp.target})"))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those that form a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start), on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child), on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    out.append(sorted(component))
    return sorted(out)


def _cycle_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first node (breadth-first inside the component)."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return [start, start]


def check_cycles(report: Report) -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for imp in report.imports:
        graph[imp.source].add(imp.target)
        where.setdefault((imp.source, imp.target), f"{report.modules[imp.source].rel}:{imp.line}")
    for component in strongly_connected(graph):
        path = _cycle_path(component, graph)
        steps = [f"{a} -> {b} ({where[(a, b)]})" for a, b in zip(path, path[1:])]
        report.violations.append(Violation(
            "module cycle", where[(path[0], path[1])],
            (f"{len(component)} modules import each other: " if len(component) > 1 else "imports itself: ")
            + "; ".join(steps),
        ))  # fmt: skip

    concern_graph: dict[str, set[str]] = defaultdict(set)
    concern_where: dict[tuple[str, str], str] = {}
    for imp in report.imports:
        a, b = report.modules[imp.source].concern, report.modules[imp.target].concern
        if a is not None and b is not None and a != b:
            concern_graph[a].add(b)
            concern_where.setdefault((a, b), where[(imp.source, imp.target)])
    for component in strongly_connected(concern_graph):
        path = _cycle_path(component, concern_graph)
        steps = [f"{a} -> {b} (e.g. {concern_where[(a, b)]})" for a, b in zip(path, path[1:])]
        report.violations.append(Violation(
            "concern cycle", concern_where[(path[0], path[1])], "; ".join(steps)
        ))  # fmt: skip


def analyse(root: Path | str) -> Report:
    """The import graph of the package folder `root` and every violation of the layering (see the module docstring)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no package folder {root}")
    report = Report(package=root.name, modules={})
    collect(root, report)
    resolve(report)
    check_directions(report)
    check_cycles(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=str(ROOT / "modeling"), help="the package folder (modeling/)")
    args = parser.parse_args(argv)
    report = analyse(args.root)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
