#!/usr/bin/env python3
# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""Maintain the PruneVid patch series on top of the vendored transformers modeling file.

`modeling/modeling_qwen2_5_vl.py` is generated: it is the pristine upstream file in `upstream_snapshot/` with its
relative imports made absolute, plus every patch listed in `patches/series`, applied in order. Patches are
insert-only and every inserted line sits in a guarded block

    # >>> prunevid:NAME
    if <guard mentioning prunevid>:
        ...
    # <<< prunevid:NAME

so that with PruneVid off the code path is exactly upstream's.

Commands (stdlib only, runs with a plain `python3`):

    apply          regenerate modeling/modeling_qwen2_5_vl.py from the snapshot and the series
    refresh        rewrite patches/*.patch from the blocks edited in the generated file
    check          verify snapshot checksum, generated file, and that every patch is insert-only and guarded,
                   and that every name a block uses is defined where it stands
    sync-upstream  rebase the series onto another transformers release (--version X [--from-file PATH]
                   [--python VENV_PYTHON [--keep]] [--force]): all or nothing, see `cmd_sync`

Upstream renames (a parameter or local the blocks use, e.g. `past_key_values` -> `cache` in 5.24) are declared in
`patches/renames.json`; a sync across the release that made one renames it in the inserted lines, either way.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import dataclasses
import difflib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import tokenize
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


TARGET = "modeling_qwen2_5_vl.py"
HEADER_PREFIX = "# qwen-prunevid: "
MARKER_RE = re.compile(r"^(?P<indent>[ \t]*)# (?P<kind>>>>|<<<) prunevid:(?P<name>\S*)[ \t]*$")
IMPORT_RE = re.compile(r"^(?P<indent>[ \t]*)from (?P<dots>\.+)(?P<module>[\w.]*) import\b")
HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
FUNCNAME_RE = re.compile(r"^[ \t]*((?:async[ \t]+)?def[ \t].*|class[ \t].*)$")
PIN_RE = re.compile(r'("transformers==)([^"]*)(")')
VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
FIRST_QWEN2_5_VL = (4, 49, 0)  # the first transformers release with models/qwen2_5_vl
# What a sync rewrites: uncommitted changes there would be lost, so sync-upstream refuses to run on them.
LOCK = "requirements.lock"
SYNCED_PATHS = ("modeling", "patches", "upstream_snapshot", "pyproject.toml", LOCK)
LOCK_PIN_RE = re.compile(r"^(transformers==)(\S+)$", re.M)
DEFAULT_SYNC_TESTS = (
    "tests/test_equivalence.py",
    "tests/test_stages.py",
    "tests/test_vision_attention.py",
    "tests/test_patchtool.py",
)
NO_NEWLINE = "\\ No newline at end of file\n"
MAX_FUZZ = 2


class PatchError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


# --------------------------------------------------------------------------------------------------------------------
# Text helpers


def split_lines(text: str) -> list[str]:
    """Split on `\\n` only (unlike `str.splitlines`), keeping line ends, so that `"".join` restores `text`."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 file as lines, without newline translation."""
    with open(path, encoding="utf-8", newline="") as handle:
        return split_lines(handle.read())


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file (creating its folder); every file the tool writes goes through here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 file without newline translation."""
    write_bytes(path, text.encode("utf-8"))


def rewrite_imports(lines: Sequence[str], source_path: str) -> list[str]:
    """Make relative imports absolute: the only change ever made to upstream lines.

    With `source_path` = `transformers/models/qwen2_5_vl/x.py`, `from .X import` becomes
    `from transformers.models.qwen2_5_vl.X import` and `from ...X import` becomes `from transformers.X import`.
    """
    package = source_path.split("/")[:-1]

    def absolute(match: re.Match[str]) -> str:
        base = package[: len(package) - len(match["dots"]) + 1]
        if not base:
            raise PatchError(f"relative import beyond the top-level package: {match[0]!r}")
        return f"{match['indent']}from {'.'.join(base + [match['module']] if match['module'] else base)} import"

    return [IMPORT_RE.sub(absolute, line) for line in lines]


def excerpt_diff(expected: Sequence[str], actual: Sequence[str], labels: tuple[str, str], limit: int = 30) -> str:
    """A short unified diff for error messages."""
    diff = list(difflib.unified_diff(expected, actual, *labels, n=2))
    shown = [line if line.endswith("\n") else line + "\n" for line in diff[:limit]]
    if len(diff) > limit:
        shown.append(f"... ({len(diff) - limit} more diff lines)\n")
    return "".join("    " + line for line in shown)


# --------------------------------------------------------------------------------------------------------------------
# Blocks


@dataclass
class Block:
    """A `# >>> prunevid:NAME` ... `# <<< prunevid:NAME` block; `start` and `end` are inclusive line indices."""

    name: str
    start: int
    end: int


def find_blocks(lines: Sequence[str]) -> tuple[list[Block], list[tuple[int, str]]]:
    """Find the marker-delimited blocks of `lines`; also return structural problems as `(line index, message)`."""
    blocks: list[Block] = []
    problems: list[tuple[int, str]] = []
    opened: tuple[int, str] | None = None
    for index, line in enumerate(lines):
        match = MARKER_RE.match(line)
        if match is None:
            continue
        name = match["name"]
        if not name:
            problems.append((index, f"empty marker name: `{line.strip()}`"))
        if match["kind"] == ">>>":
            if opened is not None:
                problems.append((index, f"marker opened inside block `{opened[1]}` (opened at line {opened[0] + 1})"))
            opened = (index, name)
        elif opened is None:
            problems.append((index, f"closing marker `{line.strip()}` without an opening marker"))
        else:
            if name != opened[1]:
                problems.append((index, f"block `{opened[1]}` is closed by `{line.strip()}`"))
            blocks.append(Block(opened[1], opened[0], index))
            opened = None
    if opened is not None:
        problems.append((opened[0], f"block `{opened[1]}` is never closed"))
    return blocks, problems


def strip_blocks(lines: Sequence[str], blocks: Sequence[Block], keep: Sequence[str] = ()) -> list[str]:
    """Remove every block whose name is not in `keep`."""
    dropped = {i for block in blocks if block.name not in keep for i in range(block.start, block.end + 1)}
    return [line for i, line in enumerate(lines) if i not in dropped]


def guard_problem(block: Sequence[str]) -> str | None:
    """Why a block (markers included) is not a single `if` guarded on prunevid without `else`, or None if it is."""
    indent = MARKER_RE.match(block[0])["indent"]
    if MARKER_RE.match(block[-1])["indent"] != indent:
        return "closing marker is not indented like the opening marker"
    inner = block[1:-1]
    source = textwrap.dedent("".join(inner))
    try:
        body = ast.parse(source).body
    except SyntaxError as error:
        return f"block is not valid Python on its own ({error.msg}, block line {error.lineno})"
    if not body:
        return "empty block: it must contain one guarded `if` statement"
    if len(body) != 1 or not isinstance(body[0], ast.If):
        kinds = ", ".join(type(node).__name__ for node in body)
        return f"unguarded block: it must be exactly one `if` statement, found {len(body)} statement(s) ({kinds})"
    statement = body[0]
    if statement.orelse:
        return "the guard `if` has an `else`/`elif` branch, so it changes the path with PruneVid off"
    guard_line = inner[statement.lineno - 1]
    if len(guard_line) - len(guard_line.lstrip()) != len(indent):
        return "the guard `if` is not indented like the markers"
    test = ast.get_source_segment(source, statement.test) or ""
    if "prunevid" not in test:
        return f"the guard `if {test}:` does not mention prunevid"
    return None


# --------------------------------------------------------------------------------------------------------------------
# Scopes (enclosing class/function), for messages and `@@` headers


def enclosing_scope(lines: Sequence[str], index: int, indent: int) -> str:
    """Qualified name (`Class.method`) of the scope that code inserted before `lines[index]` at `indent` joins."""
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return "<unknown>"
    statements = sorted(
        ((node.lineno, node.col_offset, node) for node in ast.walk(tree) if isinstance(node, ast.stmt)),
        key=lambda item: item[:2],
    )
    names: list[str] = []
    level = indent
    for lineno, col, node in reversed(statements):
        if lineno > index or col >= level:
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        level = col
        if level == 0:
            break
    return ".".join(reversed(names)) or "<module>"


def qualified_names(lines: Sequence[str]) -> set[str]:
    """All qualified class/function names defined in `lines` (empty if it does not parse)."""
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return set()
    found: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(prefix + child.name)
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def funcname(lines: Sequence[str], index: int) -> str:
    """Like git's python diff driver: the last `def`/`class` line before `lines[index]`, for `@@` headers."""
    for line in reversed(lines[:index]):
        match = FUNCNAME_RE.match(line.rstrip("\r\n"))
        if match:
            return match[1][:80]
    return ""


# --------------------------------------------------------------------------------------------------------------------
# Patches


@dataclass
class Hunk:
    """One `@@` hunk; `lines` keep their ` `/`+`/`-` prefix, `file_line` is the 1-based line of the `@@` header."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    header: str
    lines: list[str]
    file_line: int

    @property
    def old(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] != "+"]

    @property
    def new(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] != "-"]

    def _context(self, lines: Sequence[str]) -> int:
        count = 0
        for line in lines:
            if line[0] != " ":
                break
            count += 1
        return count

    @property
    def leading_context(self) -> int:
        return self._context(self.lines)

    @property
    def trailing_context(self) -> int:
        return self._context(self.lines[::-1])

    @property
    def insert_indent(self) -> int:
        """Indentation of the first inserted line (to find the scope it joins)."""
        first = next((line[1:] for line in self.lines if line[0] == "+"), "")
        return len(first) - len(first.lstrip())

    def runs(self) -> Iterator[tuple[int, list[str]]]:
        """Contiguous runs of inserted lines, as (1-based line in the patch file, lines without the `+`)."""
        run: list[str] = []
        for offset, line in enumerate([*self.lines, " "]):
            if line[0] == "+":
                run.append(line[1:])
            elif run:
                yield self.file_line + offset - len(run) + 1, run
                run = []

    def text(self) -> str:
        return self.header + "".join(line if line.endswith("\n") else line + "\n" + NO_NEWLINE for line in self.lines)


@dataclass
class Patch:
    """A quilt-style patch: free-text description lines, then a unified diff of the modeling file."""

    name: str
    description: list[str]
    hunks: list[Hunk]

    @property
    def filename(self) -> str:
        return f"patches/{self.name}.patch"

    @classmethod
    def parse(cls, name: str, text: str) -> Patch:
        lines = split_lines(text)
        start = next(
            (i for i in range(len(lines) - 1) if lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")),
            len(lines),
        )
        patch = cls(name, lines[:start], [])
        i = start + 2
        while i < len(lines):
            match = HUNK_RE.match(lines[i])
            if match is None:
                raise PatchError(f"{patch.filename}:{i + 1}: expected a `@@` hunk header, found {lines[i]!r}")
            old_start, old_len, new_start, new_len = (int(g) if g is not None else 1 for g in match.groups())
            hunk = Hunk(old_start, old_len, new_start, new_len, lines[i], [], i + 1)
            i += 1
            old_seen = new_seen = 0
            while old_seen < old_len or new_seen < new_len:
                if i >= len(lines) or lines[i][0] not in " +-\n":
                    raise PatchError(f"{patch.filename}:{hunk.file_line}: hunk is shorter than its `@@` header says")
                line = lines[i] if lines[i] != "\n" else " \n"  # editors may strip the space of empty context
                hunk.lines.append(line)
                old_seen += line[0] != "+"
                new_seen += line[0] != "-"
                i += 1
                if i < len(lines) and lines[i].startswith("\\"):
                    hunk.lines[-1] = hunk.lines[-1].rstrip("\n")
                    i += 1
            patch.hunks.append(hunk)
        return patch


def make_diff(before: Sequence[str], after: Sequence[str]) -> str:
    """Unified diff (3 lines of context) with git-style function names in the `@@` headers."""
    out: list[str] = []
    for line in difflib.unified_diff(before, after, f"a/{TARGET}", f"b/{TARGET}", n=3):
        match = HUNK_RE.match(line)
        if match:
            start, length = int(match[1]), int(match[2] if match[2] is not None else 1)
            name = funcname(before, start - 1 if length else start)
            line = f"{match[0]}{' ' + name if name else ''}\n"
        out.append(line if line.endswith("\n") else line + "\n" + NO_NEWLINE)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Applying hunks


@dataclass
class HunkResult:
    """Where a hunk applied (0-based `line` in the result), or why not (`line` is then where it was expected)."""

    patch: str
    number: int
    hunk: Hunk
    line: int
    applied: bool
    offset: int = 0
    fuzz: int = 0
    scope: str = ""

    def note(self) -> str:
        how = [f"offset {self.offset:+d} line(s)"] if self.offset else []
        how += [f"fuzz {self.fuzz}"] if self.fuzz else []
        return f"{self.patch}: hunk {self.number} applied at line {self.line + 1} ({', '.join(how)})"


def outward(start: int, last: int) -> Iterator[int]:
    """Positions in [0, last], nearest to `start` first (later ones win ties)."""
    start = min(max(start, 0), last)
    for distance in range(max(start, last - start) + 1):
        for position in (start + distance, start - distance) if distance else (start,):
            if 0 <= position <= last:
                yield position


def locate(target: Sequence[str], hunk: Hunk, expected: int) -> tuple[int, int, int, int] | None:
    """Find the hunk's old lines in `target` near `expected`: exact match first, then fuzz 1 and 2.

    Fuzz N ignores up to N context lines at the leading and trailing edges, like GNU patch. Returns
    `(position of the kept old lines, fuzz, leading lines ignored, trailing lines ignored)`, or None.
    """
    old = hunk.old
    tried = set()
    for fuzz in range(MAX_FUZZ + 1):
        top, bottom = min(fuzz, hunk.leading_context), min(fuzz, hunk.trailing_context)
        needle = old[top : len(old) - bottom]
        if (top, bottom) in tried or (not needle and old):
            continue
        tried.add((top, bottom))
        for position in outward(expected + top, len(target) - len(needle)):
            if target[position : position + len(needle)] == needle:
                return position, fuzz, top, bottom
    return None


def apply_patch(
    target: Sequence[str], patch: Patch, mapping: Callable[[int], int] = lambda line: line
) -> tuple[list[str], list[HunkResult]]:
    """Apply every hunk that fits; `mapping` maps a 0-based line of the patch's old file onto `target`."""
    result = list(target)
    outcomes: list[HunkResult] = []
    inserted = carry = 0
    for number, hunk in enumerate(patch.hunks, 1):
        first_old = hunk.old_start - 1 if hunk.old_len else hunk.old_start
        nominal = mapping(first_old) + inserted
        found = locate(result, hunk, nominal + carry)
        if found is None:
            scope = enclosing_scope(result, nominal + carry + hunk.leading_context, hunk.insert_indent)
            outcomes.append(HunkResult(patch.name, number, hunk, nominal + carry, False, scope=scope))
            continue
        position, fuzz, top, bottom = found
        result[position : position + len(hunk.old) - top - bottom] = hunk.new[top : len(hunk.new) - bottom]
        start = position - top
        carry = start - nominal
        offset = start - (first_old + inserted)  # relative to the line numbers written in the patch
        outcomes.append(HunkResult(patch.name, number, hunk, start, True, offset, fuzz))
        inserted += len(hunk.new) - len(hunk.old)
    return result, outcomes


def failure_message(outcome: HunkResult) -> str:
    return (
        f"patch {outcome.patch}: hunk {outcome.number} FAILED: context not found near line {outcome.line + 1} "
        f"(in {outcome.scope})"
    )


# --------------------------------------------------------------------------------------------------------------------
# Names: what a block uses must be defined where it stands; renames upstream made are declared in patches/renames.json


@dataclass(frozen=True)
class Rename:
    """Upstream renamed `old` to `new` in transformers `since`: a sync across `since` renames it in inserted lines."""

    old: str
    new: str
    since: str
    why: str = ""


def read_renames(path: Path) -> list[Rename]:
    """The renames of `patches/renames.json` (`{"renames": [{"old", "new", "since", "why"}, ...]}`); none if absent."""
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["renames"]
        renames = [Rename(e["old"], e["new"], e["since"], e.get("why", "")) for e in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise PatchError(f"{path.name}: expected {{\"renames\": [{{\"old\", \"new\", \"since\", \"why\"}}]}} ({error!r})")
    for rename in renames:
        if not (rename.old.isidentifier() and rename.new.isidentifier() and VERSION_RE.match(rename.since)):
            raise PatchError(f"{path.name}: bad entry {rename}: names must be identifiers, `since` a release x.y.z")
    return renames


_NOISE = (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)  # tokens between code tokens


def rename_identifier(lines: Sequence[str], old: str, new: str) -> list[str]:
    """`lines` (Python source) with the variable `old` renamed to `new`: name tokens only, not attributes (`x.old`),
    keyword arguments (`f(old=...)`), strings or comments. Source that does not tokenize is returned unchanged."""
    text = "".join(lines)
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in _NOISE]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return list(lines)
    edits: list[tuple[int, int]] = []
    depth = 0
    for i, token in enumerate(tokens):
        if token.type == tokenize.OP:
            depth += (token.string in "([{") - (token.string in ")]}")
        if token.type != tokenize.NAME or token.string != old:
            continue
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if (i and tokens[i - 1].string == ".") or (depth > 0 and after == "="):
            continue
        edits.append(token.start)
    out = list(lines)
    for row, col in sorted(edits, reverse=True):
        line = out[row - 1]
        out[row - 1] = line[:col] + new + line[col + len(old) :]
    return out


def renames_between(renames: Sequence[Rename], current: str, target: str) -> list[tuple[str, str, Rename]]:
    """(from, to, rename) for every declared rename a sync from release `current` to `target` crosses: forwards
    (old -> new) going up over `since`, backwards (new -> old) going down."""
    low, high = sorted((version_key(current), version_key(target)))
    upward = version_key(target) > version_key(current)
    found = []
    for rename in renames:
        if low < version_key(rename.since) <= high:
            found.append((rename.old, rename.new, rename) if upward else (rename.new, rename.old, rename))
    return found


def rename_patch(patch: Patch, renames: Sequence[tuple[str, str, Rename]]) -> tuple[Patch, list[str]]:
    """`patch` with the names renamed in its inserted lines, and a note per rename that changed a hunk."""
    hunks, notes = [], []
    for number, hunk in enumerate(patch.hunks, 1):
        lines = list(hunk.lines)
        for old, new, rename in renames:
            inserted = [i for i, line in enumerate(lines) if line[0] == "+"]
            renamed = rename_identifier([lines[i][1:] for i in inserted], old, new)
            if any(lines[i][1:] != text for i, text in zip(inserted, renamed)):
                notes.append(f"hunk {number} renamed `{old}` -> `{new}` (transformers {rename.since})")
            for i, text in zip(inserted, renamed):
                lines[i] = "+" + text
        hunks.append(dataclasses.replace(hunk, lines=lines))
    return dataclasses.replace(patch, hunks=hunks), notes


@dataclass
class Undefined:
    """A name loaded in a block that is not defined where the block stands (`line`: 0-based, in the body)."""

    block: Block
    scope: str
    name: str
    line: int


def _bound_names(node: ast.AST, before: int | None = None) -> dict[str, int]:
    """Names bound in `node`'s scope (not inside nested functions, lambdas or classes, whose own names count), with
    the first line that binds each; only bindings on lines before `before` when given."""
    found: dict[str, int] = {}

    def record(name: str, line: int) -> None:
        if before is None or line < before:
            found[name] = min(found.get(name, line), line)

    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        line = getattr(child, "lineno", 0)
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            record(child.name, line)
            stack.extend(child.decorator_list)
            continue
        if isinstance(child, ast.Lambda):
            continue
        if isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
            record(child.id, line)
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            for alias in child.names:
                record(alias.asname or alias.name.split(".")[0], line)
        elif isinstance(child, (ast.Global, ast.Nonlocal)):
            for name in child.names:
                record(name, line)
        elif isinstance(child, ast.ExceptHandler) and child.name:
            record(child.name, line)
        elif isinstance(child, (ast.MatchAs, ast.MatchStar)) and child.name:
            record(child.name, line)
        elif isinstance(child, ast.MatchMapping) and child.rest:
            record(child.rest, line)
        stack.extend(ast.iter_child_nodes(child))
    return found


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    args = function.args
    return [*args.posonlyargs, *args.args, *([args.vararg] if args.vararg else []), *args.kwonlyargs,
            *([args.kwarg] if args.kwarg else [])]  # fmt: skip


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _loads(node: ast.AST, local: frozenset[str] = frozenset()) -> Iterator[ast.Name]:
    """Names loaded in `node`, lambda parameters and comprehension targets excepted inside their own expression."""
    if isinstance(node, ast.Lambda):
        local = local | {arg.arg for arg in _parameters(node)}
    elif isinstance(node, _COMPREHENSIONS):
        targets = [n for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)]
        local = local | {n.id for n in targets}
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _loads(child, local)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def undefined_names(lines: Sequence[str]) -> list[Undefined]:
    """Every name a `# >>> prunevid:` block of `lines` loads that is not defined where the block stands: not a
    builtin, a module-level name, a parameter of an enclosing function, a local bound before the block in the
    innermost function (anywhere in outer ones), nor bound by an earlier statement of the block (`a, b = f(b)`
    loads `b` before it binds it). Empty if `lines` does not parse."""
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return []
    parents = _parents(tree)
    statements = {(node.lineno, node.col_offset): node for node in ast.walk(tree) if isinstance(node, ast.If)}
    module = set(_bound_names(tree)) | set(dir(builtins)) | {"__file__", "__name__", "__doc__", "__spec__"}
    blocks, _ = find_blocks(lines)
    found = []
    for block in blocks:
        indent = len(MARKER_RE.match(lines[block.start])["indent"].expandtabs())
        guard = statements.get((block.start + 2, indent))
        if guard is None:
            continue  # not a guarded block: `check` reports that
        own = _bound_names(guard)  # counted from the statement after the one that binds each
        defined = set(module)
        scope: list[str] = []
        node, innermost = guard, True
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defined |= {arg.arg for arg in _parameters(node)}
                defined |= set(_bound_names(node, before=guard.lineno if innermost else None))
                innermost = False
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                scope.append(node.name)
        qualname = ".".join(reversed(scope)) or "<module>"
        seen = set()
        for name in _loads(guard):
            statement = name
            while not isinstance(statement, ast.stmt):
                statement = parents[statement]
            if name.id in own and own[name.id] < statement.lineno:
                continue
            if name.id not in defined and name.id not in seen:
                seen.add(name.id)
                found.append(Undefined(block, qualname, name.id, name.lineno - 1))
    return found


def _function(tree: ast.AST, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function `Class.method` (or `function`) of `tree`, None if it has none by that name."""
    node: ast.AST = tree
    for part in qualname.split("."):
        node = next(
            (c for c in ast.iter_child_nodes(node)
             if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and c.name == part),
            None,
        )  # fmt: skip
        if node is None:
            return None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def likely_new_name(old_lines: Sequence[str], new_lines: Sequence[str], scope: str, name: str) -> str | None:
    """The name upstream most likely renamed `name` (defined in `scope` of `old_lines`) to in `new_lines`: the new
    parameter in the same place of the signature, else the newly bound name whose binding line reads most like
    the line that bound `name` (difflib ratio >= 0.6). None when there is no such name."""
    try:
        old_tree, new_tree = ast.parse("".join(old_lines)), ast.parse("".join(new_lines))
    except SyntaxError:
        return None
    old_function, new_function = _function(old_tree, scope), _function(new_tree, scope)
    if old_function is None or new_function is None:
        return None
    old_params = {arg.arg: arg.lineno for arg in _parameters(old_function)}
    new_params = {arg.arg: arg.lineno for arg in _parameters(new_function)}
    old_bound = {**_bound_names(old_function), **old_params}
    new_bound = {**_bound_names(new_function), **new_params}
    candidates = {n: line for n, line in new_bound.items() if n not in old_bound}
    if name not in old_bound or not candidates:
        return None
    if name in old_params:
        index = list(old_params).index(name)
        same_place = list(new_params)[index] if index < len(new_params) else None
        if same_place in candidates:
            return same_place
    pattern = old_lines[old_bound[name] - 1].replace(name, "").strip()

    def score(candidate: str) -> float:
        text = new_lines[candidates[candidate] - 1].replace(candidate, "").strip()
        return difflib.SequenceMatcher(None, pattern, text).ratio()

    best = max(sorted(candidates), key=score)
    return best if score(best) >= 0.6 else None


def block_hunks(patches: Sequence[Patch]) -> dict[str, list[int]]:
    """Per patch, the hunk number of each of its blocks in file order (a hunk may hold several blocks)."""
    numbers = {}
    for patch in patches:
        numbers[patch.name] = [
            number
            for number, hunk in enumerate(patch.hunks, 1)
            for line in hunk.lines
            if line[0] == "+" and (m := MARKER_RE.match(line[1:])) and m["kind"] == ">>>"
        ]
    return numbers


def undefined_in_series(
    body: Sequence[str], patches: Sequence[Patch], old_body: Sequence[str] | None = None
) -> list[tuple[str, int, Undefined, str | None]]:
    """(patch, hunk number, undefined name, likely new name) for every name a block of `body` uses but cannot see.
    The likely new name is looked for in `old_body`, the same series on the previous upstream, when given."""
    numbers = block_hunks(patches)
    blocks, _ = find_blocks(body)
    order: dict[int, int] = {}
    counts: dict[str, int] = {}
    for block in blocks:
        order[block.start] = counts.get(block.name, 0)
        counts[block.name] = order[block.start] + 1
    found = []
    for item in undefined_names(body):
        hunks = numbers.get(item.block.name, [])
        index = order[item.block.start]
        hunk = hunks[index] if index < len(hunks) else 0
        hint = likely_new_name(old_body, body, item.scope, item.name) if old_body is not None else None
        found.append((item.block.name, hunk, item, hint))
    series = [patch.name for patch in patches]
    return sorted(found, key=lambda f: (series.index(f[0]) if f[0] in series else len(series), f[1], f[2].line))


# --------------------------------------------------------------------------------------------------------------------
# The repository


@dataclass
class Repo:
    """Paths and file formats of a qwen-prunevid checkout."""

    root: Path

    @property
    def snapshot(self) -> Path:
        return self.root / "upstream_snapshot" / TARGET

    @property
    def upstream_json(self) -> Path:
        return self.root / "upstream_snapshot" / "UPSTREAM.json"

    @property
    def generated(self) -> Path:
        return self.root / "modeling" / TARGET

    @property
    def pyproject(self) -> Path:
        return self.root / "pyproject.toml"

    @property
    def renames(self) -> Path:
        return self.root / "patches" / "renames.json"

    def patch_path(self, name: str) -> Path:
        return self.root / "patches" / f"{name}.patch"

    def meta(self) -> dict[str, str]:
        return json.loads(self.upstream_json.read_text(encoding="utf-8"))

    def series(self) -> list[str]:
        """Patch names from `patches/series` (file names without `.patch`; `#` comments and blank lines allowed)."""
        path = self.root / "patches" / "series"
        if not path.exists():
            return []
        entries = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
        return [entry.removesuffix(".patch") for entry in entries if entry]

    def patches(self, names: Sequence[str]) -> list[Patch]:
        patches = []
        for name in names:
            path = self.patch_path(name)
            if not path.exists():
                raise PatchError(f"patches/series lists {name}.patch but {path.relative_to(self.root)} does not exist")
            with open(path, encoding="utf-8", newline="") as handle:
                patches.append(Patch.parse(name, handle.read()))
        return patches

    def base(self, meta: dict[str, str]) -> list[str]:
        """The snapshot with its relative imports rewritten: what the patches apply to."""
        return rewrite_imports(read_lines(self.snapshot), meta["source_path"])

    def header(self, meta: dict[str, str], names: Sequence[str]) -> list[str]:
        """The `# qwen-prunevid: ` lines that open the generated file."""
        sha = meta["sha256"][:12]
        lines = [
            "GENERATED FILE: do not edit outside `# >>> prunevid:` blocks.",
            f"generated by tools/patchtool.py from transformers {meta['transformers_version']} "
            f"{meta['source_path']} (sha256 {sha})",
            f"+ patches/series: {', '.join(names) if names else '(empty)'}",
            "edit code only inside `# >>> prunevid:NAME` ... `# <<< prunevid:NAME` blocks, then run `make patches`.",
        ]
        return [f"{HEADER_PREFIX}{line}\n" for line in lines]

    def read_generated(self) -> tuple[list[str], list[str]]:
        """The generated file as (header, body); the body starts at the first line not starting with the prefix."""
        lines = read_lines(self.generated)
        split = next((i for i, line in enumerate(lines) if not line.startswith(HEADER_PREFIX)), len(lines))
        return lines[:split], lines[split:]


def apply_series(base: Sequence[str], patches: Sequence[Patch]) -> tuple[list[str], list[HunkResult]]:
    """Apply the patches in order; failed hunks are skipped and reported."""
    lines, outcomes = list(base), []
    for patch in patches:
        lines, results = apply_patch(lines, patch)
        outcomes += results
    return lines, outcomes


def render_patches(
    repo: Repo, base: Sequence[str], body: Sequence[str], names: Sequence[str], header_len: int = 0
) -> dict[str, str]:
    """Patch texts for a generated body (header stripped): patch i = diff(base + blocks 1..i-1, base + blocks 1..i).

    Raises if the body has malformed markers, unknown names, or differs from `base` outside blocks; the result is
    verified by applying it again. `header_len` only serves to give line numbers of the generated file in messages.
    """
    where = f"modeling/{TARGET}"
    blocks, problems = find_blocks(body)
    if problems:
        raise PatchError("\n".join(f"{where}:{header_len + i + 1}: {msg}" for i, msg in problems))
    for block in blocks:
        if block.name not in names:
            raise PatchError(
                f"{where}:{header_len + block.start + 1}: block `{block.name}` is not a known patch: "
                f"add {block.name}.patch to patches/series"
            )
    outside = strip_blocks(body, blocks)
    if outside != list(base):
        raise PatchError(
            "upstream lines were edited outside `# >>> prunevid:` blocks (move the change into a guarded block, "
            "or `make apply` to discard it):\n" + excerpt_diff(base, outside, ("upstream", "generated"))
        )
    texts, previous = {}, list(base)
    for i, name in enumerate(names):
        after = strip_blocks(body, blocks, keep=names[: i + 1])
        path = repo.patch_path(name)
        description = Patch.parse(name, path.read_text(encoding="utf-8")).description if path.exists() else []
        texts[name] = "".join(description) + make_diff(previous, after)
        previous = after
    patches = [Patch.parse(name, text) for name, text in texts.items()]
    regenerated, outcomes = apply_series(base, patches)
    removed = any(line[0] == "-" for patch in patches for hunk in patch.hunks for line in hunk.lines)
    if removed or regenerated != list(body) or any(not o.applied or o.offset or o.fuzz for o in outcomes):
        raise PatchError("internal error: the regenerated patches are not insert-only or do not reproduce the file")
    for patch in patches:
        if not patch.hunks:
            print(f"warning: {patch.name} has no `# >>> prunevid:{patch.name}` block left: {patch.filename} is empty")
    return texts


# --------------------------------------------------------------------------------------------------------------------
# Commands


def cmd_apply(repo: Repo) -> int:
    """Regenerate the modeling file from the snapshot and the series; write nothing if a hunk fails."""
    meta, names = repo.meta(), repo.series()
    body, outcomes = apply_series(repo.base(meta), repo.patches(names))
    failures = [o for o in outcomes if not o.applied]
    for outcome in outcomes:
        if outcome.applied and (outcome.offset or outcome.fuzz):
            print(outcome.note())
    if failures:
        raise PatchError("\n".join(map(failure_message, failures)) + "\nnothing was written")
    write_text(repo.generated, "".join(repo.header(meta, names) + body))
    print(f"apply: wrote modeling/{TARGET} (transformers {meta['transformers_version']} + {len(names)} patch(es))")
    return 0


def cmd_refresh(repo: Repo) -> int:
    """Rewrite every patch of the series from the blocks of the generated file, keeping descriptions."""
    meta, names = repo.meta(), repo.series()
    header, body = repo.read_generated()
    texts = render_patches(repo, repo.base(meta), body, names, len(header))
    for name, text in texts.items():
        write_text(repo.patch_path(name), text)
    print(f"refresh: wrote {len(texts)} patch(es): {', '.join(f'patches/{n}.patch' for n in texts) or '-'}")
    return 0


def lint_patch(patch: Patch) -> list[str]:
    """Insert-only and guarded-block violations of one patch, as `file:line: message`."""
    problems = []
    for number, hunk in enumerate(patch.hunks, 1):
        where = f"[{patch.name} hunk {number}]"
        for offset, line in enumerate(hunk.lines, 1):
            if line[0] == "-":
                problems.append(
                    f"{patch.filename}:{hunk.file_line + offset}: {where} removes or changes an upstream line "
                    f"(patches must be insert-only): {line[1:].rstrip()!r}"
                )
        for first, run in hunk.runs():
            blocks, structure = find_blocks(run)
            problems += [f"{patch.filename}:{first + i}: {where} {msg}" for i, msg in structure]
            covered = {i for block in blocks for i in range(block.start, block.end + 1)}
            for i, line in enumerate(run):
                if i not in covered and (i == 0 or i - 1 in covered):
                    problems.append(
                        f"{patch.filename}:{first + i}: {where} inserted line outside a "
                        f"`# >>> prunevid:{patch.name}` block: {line.rstrip()!r}"
                    )
            for block in blocks:
                if block.name != patch.name:
                    problems.append(
                        f"{patch.filename}:{first + block.start}: {where} block is named `{block.name}`, "
                        f"but blocks of this patch must be named `{patch.name}`"
                    )
                reason = guard_problem(run[block.start : block.end + 1])
                if reason:
                    problems.append(f"{patch.filename}:{first + block.start}: {where} {reason}")
    return problems


def cmd_check(repo: Repo) -> int:
    """Exit 0 only if the snapshot, the patches and the generated file are all consistent and guarded."""
    meta, names = repo.meta(), repo.series()
    problems: list[str] = []
    sha = hashlib.sha256(repo.snapshot.read_bytes()).hexdigest()
    if sha != meta["sha256"]:
        problems.append(
            f"upstream_snapshot/{TARGET}: sha256 {sha[:12]}... does not match UPSTREAM.json "
            f"({meta['sha256'][:12]}...): the snapshot must stay byte for byte upstream's"
        )
    pins = [m[2] for m in PIN_RE.finditer(repo.pyproject.read_text(encoding="utf-8"))] if repo.pyproject.exists() else []
    if pins != [meta["transformers_version"]]:
        found = ", ".join(f"transformers=={pin}" for pin in pins) or "no `\"transformers==...\"` pin"
        problems.append(
            f"pyproject.toml: {found}, UPSTREAM.json says {meta['transformers_version']}: the tests compare against "
            "the installed release, so the pin must be the vendored one"
        )
    patches = []
    for name in names:
        try:
            patches += repo.patches([name])
        except PatchError as error:
            problems.append(str(error))
    for patch in patches:
        problems += lint_patch(patch)
    expected_body, outcomes = apply_series(repo.base(meta), patches)
    problems += [failure_message(o) for o in outcomes if not o.applied]
    try:
        read_renames(repo.renames)
    except PatchError as error:
        problems.append(f"patches/{error}")
    expected_header = repo.header(meta, names)
    for name, number, item, _ in undefined_in_series(expected_body, patches):
        problems.append(
            f"modeling/{TARGET}:{len(expected_header) + item.line + 1}: [{name} hunk {number}] name `{item.name}` is not "
            f"defined where the block stands (in {item.scope})"
        )

    generated = f"modeling/{TARGET}"
    if not repo.generated.exists():
        problems.append(f"{generated}: missing (run `make apply`)")
    else:
        header, body = repo.read_generated()
        version = next((m[1] for line in header if (m := re.search(r"from transformers (\S+) ", line))), None)
        if version != meta["transformers_version"]:
            problems.append(
                f"{generated}: header names transformers {version}, UPSTREAM.json says {meta['transformers_version']}"
            )
        blocks, structure = find_blocks(body)
        problems += [f"{generated}:{len(header) + i + 1}: {msg}" for i, msg in structure]
        for block in blocks:
            if block.name and block.name not in names:
                problems.append(
                    f"{generated}:{len(header) + block.start + 1}: block `{block.name}` is not a known patch: "
                    f"add {block.name}.patch to patches/series"
                )
        expected = expected_header + expected_body
        if header + body != expected:
            problems.append(
                f"{generated}: drift: the file differs from apply(snapshot, series) (block edits: `make patches`; "
                "anything else: `make apply` discards it):\n"
                + excerpt_diff(expected, header + body, ("apply", generated))
            )
    if problems:
        for problem in problems:
            print(f"check: {problem}", file=sys.stderr)
        print(f"check: FAILED - {len(problems)} violation(s)", file=sys.stderr)
        return 1
    counts = {p.name: sum(line[0] == "+" for h in p.hunks for line in h.lines) for p in patches}
    per_patch = ", ".join(f"{name}: {count}" for name, count in counts.items())
    print(
        f"check: OK - {len(patches)} patches, {sum(len(p.hunks) for p in patches)} hunks, "
        f"{sum(counts.values())} inserted lines ({per_patch}); upstream transformers {meta['transformers_version']}"
    )
    return 0


def fetch_upstream(version: str, source_path: str, from_file: Path | None) -> bytes:
    """The upstream file of transformers `version`: from a file, the installed package, or a downloaded wheel."""
    if from_file is not None:
        return from_file.read_bytes()
    try:
        installed = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    spec = importlib.util.find_spec("transformers") if installed == version else None  # does not import torch
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent.parent / source_path
        if path.exists():
            print(f"sync-upstream: using the installed transformers {version}: {path}")
            return path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*command, f"transformers=={version}", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("transformers-*.whl"), None)
        if wheel is None:
            raise PatchError(f"pip download produced no transformers wheel for {version}")
        with zipfile.ZipFile(wheel) as archive:
            if source_path not in archive.namelist():
                raise PatchError(f"transformers {version} has no Qwen2.5-VL model ({source_path} is not in its wheel)")
            return archive.read(source_path)


def line_mapping(old: Sequence[str], new: Sequence[str]) -> Callable[[int], int]:
    """Map 0-based lines of `old` onto `new` through their matching blocks (difflib.SequenceMatcher)."""
    blocks = difflib.SequenceMatcher(None, old, new, autojunk=False).get_matching_blocks()

    def mapping(line: int) -> int:
        guess = line
        for a, b, size in blocks:
            if a <= line < a + size:
                return b + line - a
            if a + size <= line:
                guess = b + size + line - a - size
        return guess

    return mapping




# --------------------------------------------------------------------------------------------------------------------
# sync-upstream: validation, the dirty-tree guard, the all-or-nothing write, the tests


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def released_versions() -> list[str] | None:
    """Final transformers releases on the package index (`pip index versions`), or None when it cannot be asked."""
    command = [sys.executable, "-m", "pip", "index", "versions", "transformers", "--disable-pip-version-check"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^Available versions: (.*)$", out, re.M)
    return [v for v in (part.strip() for part in match[1].split(",")) if VERSION_RE.match(v)] if match else None


def check_version(raw: str, releases: Sequence[str] | None) -> str:
    """The exact release `raw` names (a leading `v` dropped), or a PatchError saying in one line why it is none.

    `releases` are the final releases on the package index (None: unknown, e.g. offline with `--from-file`).
    Runs before anything is downloaded or written.
    """
    version = raw.strip()
    version = version[1:] if version[:1] in ("v", "V") else version
    if not VERSION_RE.match(version):
        within = sorted((r for r in releases or () if r.startswith(version + ".")), key=version_key)
        hint = f"; releases of {version}: {', '.join(within)}" if within and version else ""
        raise PatchError(f"`{raw}` is not an exact transformers release: give one as x.y.z{hint}")
    if version_key(version) < FIRST_QWEN2_5_VL:
        first = ".".join(map(str, FIRST_QWEN2_5_VL))
        raise PatchError(f"transformers {version} has no Qwen2.5-VL model (it first shipped in {first})")
    if releases is not None and version not in releases:
        minor = ".".join(version.split(".")[:2])
        within = sorted((r for r in releases if r.startswith(minor + ".")), key=version_key)
        hint = f" (releases of {minor}: {', '.join(within)})" if within else ""
        raise PatchError(f"transformers {version} is not a release on the package index{hint}")
    return version


def uncommitted_changes(root: Path) -> list[str]:
    """`git status --porcelain` lines for what a sync rewrites (git-ignored files such as `*.rej` excepted)."""
    command = ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all", "--", *SYNCED_PATHS]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise PatchError(f"cannot run git to look for uncommitted changes ({error}); --force syncs anyway") from None
    if result.returncode:
        raise PatchError(
            f"cannot tell whether {root} has uncommitted changes (git: {result.stderr.strip()}); --force syncs anyway"
        )
    # Leftover `*.rej` files are ours to remove (see cmd_sync), whether or not git ignores them.
    return [line for line in result.stdout.splitlines() if not (line.startswith("??") and line.endswith(".rej"))]


class Transaction:
    """Replace several files all or nothing.

    `stage` writes each new content into a temporary folder inside the repository (so on the same file system) and
    copies the current file beside it; `commit` then moves every staged file into place with `os.replace`, which is
    atomic per file. If anything is raised before `commit` returns (an error, Ctrl-C, SIGTERM), every file already
    moved is put back, with its old bytes and modification time. `rollback` undoes a finished commit until `close`.
    """

    def __init__(self, root: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=".patchtool-sync-", dir=root))
        self.moves: list[tuple[Path, Path, Path | None]] = []  # (staged, target, copy of the old target or None)

    def stage(self, target: Path, data: bytes) -> None:
        staged = self.folder / f"{len(self.moves)}.new"
        write_bytes(staged, data)
        backup = None
        if target.exists():
            backup = self.folder / f"{len(self.moves)}.old"
            shutil.copy2(target, backup)
        self.moves.append((staged, target, backup))

    def commit(self) -> None:
        try:
            for staged, target, _ in self.moves:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Put back every target whose staged file was moved into place (a staged file that still exists was not)."""
        for staged, target, backup in reversed(self.moves):
            if staged.exists():
                continue
            if backup is None:
                target.unlink(missing_ok=True)
            elif backup.exists():
                os.replace(backup, target)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def has_package(python: str, name: str) -> bool:
    """Whether `python`'s environment has the distribution `name` installed."""
    code = f"import importlib.metadata as m; m.version({name!r})"
    return subprocess.run([python, "-c", code], capture_output=True, check=False).returncode == 0


def install(repo: Repo, python: str) -> bool:
    """Install the project into `python`'s venv, which also installs the transformers release pyproject pins.

    `kernels` (optional before transformers 5.25, required from 5.25) stays installed when transformers moves, and
    releases before 5.25 build its objects at import and fail with kernels 0.19 ("Either a revision or a version must
    be specified"); where it is installed, the pinned release's own `kernels` extra is asked for too, so pip brings
    the kernels release it was made for (tools/sync_matrix.py does the same)."""
    command = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{repo.root}[test]"]
    if has_package(python, "kernels"):
        command.append("transformers[kernels]")
    print(f"sync-upstream: {' '.join(command)}", flush=True)
    return subprocess.run(command).returncode == 0


def run_tests(repo: Repo, python: str, tests: Sequence[str]) -> list[str]:
    """Run `tests` with pytest, echoing its output; returns the `FAILED`/`ERROR` test ids (empty when all passed)."""
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    print(f"sync-upstream: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, cwd=repo.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            output.append(line)
    except BaseException:  # interrupted: stop the tests too before the tree is rolled back
        process.terminate()
        process.wait()
        raise
    if process.wait() == 0:
        return []
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", "".join(output), re.M) or [f"`{' '.join(command)}`"]


def cmd_sync(
    repo: Repo,
    raw_version: str,
    from_file: Path | None,
    *,
    force: bool = False,
    releases: Sequence[str] | None = None,
    python: str | None = None,
    tests: Sequence[str] = DEFAULT_SYNC_TESTS,
    keep: bool = False,
) -> int:
    """Rebase the series onto transformers `raw_version` (3-way: old base, new base, patches); all or nothing.

    The version is validated before any download (`releases`: the index's releases, asked for when None and no
    `from_file` is given). Uncommitted changes under `SYNCED_PATHS` stop the sync unless `force`. Stale `*.rej`
    files go first. The renames of `patches/renames.json` the sync crosses are made in the inserted lines. A hunk
    whose context is gone writes only `patches/NAME.patch.rej`; a block that uses a name not defined where it now
    stands (upstream renamed or removed it) is a conflict too, reported with the likely new name, and writes
    nothing. Otherwise every file (`requirements.lock`'s transformers pin included) is staged and moved into
    place at once (`Transaction`). With `python` (the venv's interpreter), the project and its new pin are then
    installed and `tests` run; if they fail, the tree goes back to how it was (unless `keep`) and the failing tests
    are listed. Exit status 1 on any failure.
    """
    if releases is None and from_file is None:
        releases = released_versions()
        if releases is None:
            print("sync-upstream: note: could not list the releases on the package index", file=sys.stderr)
    version = check_version(raw_version, releases)
    if not force:
        dirty = uncommitted_changes(repo.root)
        if dirty:
            raise PatchError(
                "refusing to sync over uncommitted changes (a sync rewrites these files and would discard them):\n"
                + "".join(f"    {line}\n" for line in dirty)
                + "commit them first, or pass --force (make sync-upstream ... FORCE=1) to discard them"
            )
    for stale in sorted((repo.root / "patches").glob("*.rej")):
        stale.unlink()
        print(f"sync-upstream: removed the stale patches/{stale.name}")
    meta, names = repo.meta(), repo.series()
    patches = repo.patches(names)
    crossed = renames_between(read_renames(repo.renames), meta["transformers_version"], version)
    new_bytes = fetch_upstream(version, meta["source_path"], from_file)
    old_cur = repo.base(meta)
    new_cur = rewrite_imports(split_lines(new_bytes.decode("utf-8")), meta["source_path"])
    new_base, new_names = list(new_cur), qualified_names(new_cur)
    summary, conflicts, rejects, renamed_patches = [], [], {}, []
    for patch in patches:
        renamed, notes = rename_patch(patch, crossed)  # the names upstream renamed between the two releases
        renamed_patches.append(renamed)
        new_next, outcomes = apply_patch(new_cur, renamed, line_mapping(old_cur, new_cur))
        old_next, old_outcomes = apply_patch(old_cur, patch)
        if not all(o.applied for o in old_outcomes):
            raise PatchError(f"{patch.filename} does not apply to the current snapshot: run `patchtool.py check`")
        for outcome in outcomes:
            if outcome.applied:
                notes += [f"hunk {outcome.number} offset {outcome.offset:+d}"] if outcome.offset else []
                notes += [f"hunk {outcome.number} fuzz {outcome.fuzz}"] if outcome.fuzz else []
                continue
            index = outcome.hunk.old_start - 1 + outcome.hunk.leading_context
            scope = enclosing_scope(old_cur, index, outcome.hunk.insert_indent)
            old_blocks, _ = find_blocks(old_cur)
            snapshot_line = len(strip_blocks(old_cur[:index], old_blocks)) + 1
            if scope not in new_names and scope != "<module>":
                why = f"context not found: the anchor function `{scope}` no longer exists upstream"
            else:
                why = f"context not found: upstream changed the lines around it (`{scope}` still exists)"
            conflicts.append(
                f"CONFLICT {patch.name} hunk {outcome.number} (in {scope}, old snapshot line {snapshot_line}): {why}"
            )
            rejects.setdefault(patch.name, []).append(outcome.hunk)
            notes.append(f"hunk {outcome.number} FAILED")
        summary.append(f"  {patch.name}: {', '.join(notes) or 'clean'}")
        old_cur, new_cur = old_next, new_next
    if not conflicts:  # every hunk applied: does every block still see the names it uses?
        for name, number, item, hint in undefined_in_series(new_cur, renamed_patches, old_cur):
            why = f"name `{item.name}` is not defined there"
            if hint:
                why += (
                    f"; likely new name `{hint}` (if upstream renamed it, declare "
                    f'{{"old": "{item.name}", "new": "{hint}", "since": "{version}"}} in patches/renames.json)'
                )
            conflicts.append(f"CONFLICT {name} hunk {number} (in {item.scope}, synced line {item.line + 1}): {why}")
    if conflicts:
        for name, hunks in rejects.items():
            rej = f"--- a/{TARGET}\n+++ b/{TARGET}\n" + "".join(hunk.text() for hunk in hunks)
            write_text(repo.patch_path(name).with_suffix(".patch.rej"), rej)
        print("\n".join(summary), file=sys.stderr)
        print("\n".join(conflicts), file=sys.stderr)
        rej_files = ", ".join(f"patches/{name}.patch.rej" for name in rejects)
        raise PatchError(
            f"cannot rebase onto transformers {version}: nothing changed"
            + (f"; rejected hunks in {rej_files}" if rejects else "")
        )

    new_meta = {**meta, "transformers_version": version, "sha256": hashlib.sha256(new_bytes).hexdigest()}
    texts = render_patches(repo, new_base, new_cur, names)
    pyproject = repo.pyproject.read_text(encoding="utf-8") if repo.pyproject.exists() else ""
    pyproject, pins = PIN_RE.subn(rf"\g<1>{version}\g<3>", pyproject)
    if not pins:
        raise PatchError("no `\"transformers==...\"` pin in pyproject.toml to update: nothing changed")
    lock = repo.root / LOCK
    # The lock pins the same release (tools/lockcheck.py); `make lock` then re-resolves what transformers needs.
    locked = LOCK_PIN_RE.sub(rf"\g<1>{version}", lock.read_text(encoding="utf-8")) if lock.exists() else None
    transaction = Transaction(repo.root)
    try:
        transaction.stage(repo.snapshot, new_bytes)
        transaction.stage(repo.upstream_json, (json.dumps(new_meta, indent=2) + "\n").encode())
        for name, text in texts.items():
            transaction.stage(repo.patch_path(name), text.encode())
        transaction.stage(repo.generated, "".join(repo.header(new_meta, names) + new_cur).encode())
        transaction.stage(repo.pyproject, pyproject.encode())
        if locked is not None:
            transaction.stage(lock, locked.encode())
        transaction.commit()
        print(f"sync-upstream: transformers {meta['transformers_version']} -> {version}")
        print("\n".join(summary), flush=True)
        if python is None:
            return 0
        try:
            failed = run_tests(repo, python, tests) if install(repo, python) else ["pip install of the new pin"]
        except BaseException:
            if not keep:
                transaction.rollback()
                print(
                    f"sync-upstream: interrupted: the tree is back at transformers {meta['transformers_version']}; "
                    f"the venv may hold {version}: `{python} -m pip install -e .[test]` reinstalls the pin",
                    file=sys.stderr,
                )
            raise
        if not failed:
            print(f"sync-upstream: transformers {version}: all tests passed")
            return 0
        listing = "".join(f"    {test}\n" for test in failed)
        if keep:
            print(f"sync-upstream: failed on transformers {version} (tree kept, --keep):\n{listing}", file=sys.stderr)
            return 1
        transaction.rollback()
        print(
            f"sync-upstream: failed on transformers {version}:\n{listing}rolled back: the tree is as it was "
            f"(transformers {meta['transformers_version']}); reinstalling its pin (--keep keeps the synced tree)",
            file=sys.stderr,
            flush=True,
        )
        install(repo, python)
        return 1
    finally:
        transaction.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="patchtool.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("apply", help="regenerate modeling/modeling_qwen2_5_vl.py from the snapshot and the series")
    commands.add_parser("refresh", help="rewrite patches/*.patch from the blocks of the generated file")
    commands.add_parser("check", help="verify that everything is consistent, insert-only and guarded")
    sync = commands.add_parser("sync-upstream", help="rebase the series onto another transformers release")
    sync.add_argument("--version", required=True, help="exact transformers release, e.g. 5.23.0 (or v5.23.0)")
    sync.add_argument("--from-file", type=Path, help="use this file as the new upstream modeling file")
    sync.add_argument("--force", action="store_true", help="sync even over uncommitted changes (they are lost)")
    sync.add_argument("--python", help="the venv's python: install the new pin and run --tests; roll back on failure")
    sync.add_argument("--tests", nargs="+", default=list(DEFAULT_SYNC_TESTS), help="test files run after the sync")
    sync.add_argument("--keep", action="store_true", help="keep the synced tree when the tests fail (to fix the glue)")
    sync.add_argument(
        "--releases", type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
        help="comma-separated releases to validate --version against instead of asking the package index (offline)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    repo = Repo(args.root.resolve())
    try:
        if args.command == "apply":
            return cmd_apply(repo)
        if args.command == "refresh":
            return cmd_refresh(repo)
        if args.command == "check":
            return cmd_check(repo)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a `kill` undoes the sync like Ctrl-C does
        try:
            return cmd_sync(
                repo, args.version, args.from_file, force=args.force, releases=args.releases, python=args.python,
                tests=args.tests, keep=args.keep,
            )  # fmt: skip
        finally:
            signal.signal(signal.SIGTERM, previous)
    except (PatchError, OSError, subprocess.CalledProcessError) as error:
        print(f"{args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
