#!/usr/bin/env python3
# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""The support window, measured: sync the committed series onto each listed transformers release and test it.

For every release, in a scratch clone of the repository (the checkout itself is never written):

1. `pip install --target SITE --no-deps` the packages a `pip install transformers==X` would change in the project's
   virtual environment (found with `pip install --dry-run --report`), so every release reuses the one torch install:
   the tests run with `PYTHONPATH=SITE` in front of the project's `.venv`;
2. `tools/patchtool.py sync-upstream --version X --from-file SITE/.../modeling_qwen2_5_vl.py` (the rebase, with
   zero hand edits);
3. the equivalence and stage tests (`--tests`, `-k` subset optional) on that release.

Each release's result is saved as JSON in the work folder as soon as it is known, under a key of what was tested
(the source's committed tree, the tests and `-k`): a re-run skips releases already done *for that key* unless
`--redo`, and any new commit tests every release again instead of reusing a result of an older series; several
workers on one folder share the releases out; the table is written to `--out` (Markdown: release, sync result, hunk offsets, tests
passed, time). Run it niced on a shared machine:

    nice -n 19 python3 tools/sync_matrix.py --minors 5.4 5.25 --out docs/compatibility.md

(`make sync-matrix`). Only the part of `--out` between its `<!-- sync-matrix:begin/end -->` markers is rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patchtool import has_package  # noqa: E402  (the sync's own probe: the matrix installs as the sync does)


ROOT = Path(__file__).resolve().parent.parent
SOURCE_PATH = "transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py"
DEFAULT_TESTS = ("tests/test_equivalence.py", "tests/test_stages.py")
VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass
class Result:
    """One release's row of the table."""

    release: str
    sync: str = "not run"  # "clean", "offsets/fuzz", "CONFLICT", or an error
    hunks: list[str] = field(default_factory=list)  # `patch: hunk N offset +K, fuzz F` notes
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    # `test id: what` for every input the release's stock model cannot process (the tests' STOCK-UNSUPPORTED lines)
    stock_unsupported: list[str] = field(default_factory=list)
    round_trip: str = "not run"  # syncing back to the pin restores the committed tree byte for byte?
    source: str = ""  # the commit tested (`git describe`-style short hash of --source's HEAD)
    seconds: float = 0.0
    install_seconds: float = 0.0
    log: str = ""

    @property
    def green(self) -> bool:
        synced = self.sync in ("clean", "offsets/fuzz") and self.round_trip == "identical"
        return synced and self.passed > 0 and not (self.failed or self.errors)


def key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def released_versions(python: str) -> list[str]:
    """Final transformers releases known to the package index, newest first (`pip index versions`)."""
    out = subprocess.run(
        [python, "-m", "pip", "index", "versions", "transformers", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Available versions: (.*)", out)
    if match is None:
        raise SystemExit(f"cannot read the transformers releases from `pip index versions`:\n{out}")
    return [v for v in (part.strip() for part in match[1].split(",")) if VERSION_RE.match(v)]


def latest_patches(versions: Sequence[str], first: str, last: str) -> list[str]:
    """The latest patch release of every minor from `first` to `last` (`x.y`), oldest first."""
    lo, hi = key(first), key(last)
    best: dict[tuple[int, ...], str] = {}
    for version in versions:
        minor = key(version)[:2]
        if lo <= minor <= hi and (minor not in best or key(version) > key(best[minor])):
            best[minor] = version
    return [best[minor] for minor in sorted(best)]


def run(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None):
    return subprocess.run(
        list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def transformers_requirement(version: str, with_kernels: bool) -> str:
    """What a user asks pip for to move to `version`: with the release's own `kernels` extra where the venv has
    kernels, as `patchtool sync-upstream` installs (see `patchtool.install` for why)."""
    return f"transformers[kernels]=={version}" if with_kernels else f"transformers=={version}"


def install_site(python: str, version: str, site: Path, log: list[str]) -> None:
    """Install into `site` exactly the packages that `pip install transformers==version` would change (with the
    release's `kernels` extra where the venv has kernels: `transformers_requirement`)."""
    if (site / ".complete").exists():
        return
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    report = site.parent / f"{site.name}.report.json"
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    requirement = transformers_requirement(version, has_package(python, "kernels"))
    dry = run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), requirement], site)
    log.append(dry.stdout + dry.stderr)
    if dry.returncode:
        raise RuntimeError(f"pip --dry-run failed for {requirement}")
    wanted = [
        f"{item['metadata']['name']}=={item['metadata']['version']}" for item in json.loads(report.read_text())["install"]
    ]
    if wanted:  # nothing to install when the venv already has this release
        done = run([*pip, "install", "--quiet", "--no-deps", "--target", str(site), *wanted], site)
        log.append(f"installed into {site}: {' '.join(wanted)}\n" + done.stdout + done.stderr)
        if done.returncode:
            raise RuntimeError(f"pip install --target failed for {' '.join(wanted)}")
    (site / ".complete").write_text(" ".join(wanted) + "\n")


def upstream_file(python: str, version: str, site: Path) -> Path:
    """The release's modeling file as the tests will import it (`site` first, then the venv)."""
    code = (
        "import importlib.metadata as m, importlib.util as u; "
        "print(m.version('transformers')); print(u.find_spec('transformers').origin)"
    )
    found = run([python, "-c", code], site, env={**os.environ, "PYTHONPATH": str(site)})
    installed, origin = (found.stdout.split("\n") + ["", ""])[:2]
    if found.returncode or installed != version:
        raise RuntimeError(f"transformers {version} is not importable from {site}: {installed or found.stderr}")
    return Path(origin).parent.parent / SOURCE_PATH


def parse_pytest(output: str, result: Result) -> None:
    """Counts and failed test ids from pytest's `-q -ra` summary."""
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    for count, what in re.findall(r"(\d+) (passed|failed|errors?|skipped)", tail):
        attr = {"error": "errors", "errors": "errors"}.get(what, what)
        setattr(result, attr, int(count))
    result.failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    result.stock_unsupported = re.findall(r"^STOCK-UNSUPPORTED (.*)$", output, re.M)


def committed_pin(repo: Path) -> str:
    """The transformers release the committed HEAD of `repo` is synced to (its `upstream_snapshot/UPSTREAM.json`)."""
    return json.loads(run(["git", "show", "HEAD:upstream_snapshot/UPSTREAM.json"], repo).stdout)["transformers_version"]


def round_trip(clone: Path, scratch: Path) -> str:
    """Sync the clone back to its committed release and compare with the commit: `identical` or what differs."""
    pin = committed_pin(clone)
    snapshot = subprocess.run(
        ["git", "show", "HEAD:upstream_snapshot/modeling_qwen2_5_vl.py"], cwd=clone, capture_output=True, check=True
    ).stdout
    scratch.write_bytes(snapshot)
    back = run([sys.executable, "tools/patchtool.py", "sync-upstream", "--version", pin, "--from-file", str(scratch),
                "--force"], clone)  # fmt: skip
    scratch.unlink()
    if back.returncode:
        return f"sync back failed: {back.stderr.strip().splitlines()[-1:]}"
    changed = run(["git", "status", "--porcelain", "--untracked-files=no"], clone).stdout.split("\n")
    changed = [line[3:] for line in changed if line]
    return "identical" if not changed else "differs: " + ", ".join(changed)


def source_commit(repo: Path) -> tuple[str, str]:
    """The short hash of `repo`'s committed HEAD and the hash of its tree (what a scratch clone tests)."""
    out = run(["git", "rev-parse", "HEAD", "HEAD^{tree}"], repo)
    if out.returncode:
        raise RuntimeError(f"not a git repository with a commit: {repo} ({out.stderr.strip()})")
    commit, tree = out.stdout.split()
    return commit[:12], tree


def run_key(tree: str, tests: Sequence[str], k: str | None) -> str:
    """What a saved result is valid for: the source tree, the tests and the `-k` selection."""
    return hashlib.sha256(json.dumps([tree, list(tests), k or ""]).encode()).hexdigest()[:12]


def check_release(args: argparse.Namespace, version: str) -> Result:
    """Sync a fresh scratch clone onto `version` and run the tests there."""
    result, log = Result(version, source=args.commit), []
    work = args.workdir
    clone, site = work / f"repo-{version}", work / f"site-{version}"
    start = time.monotonic()
    try:
        install_site(args.python, version, site, log)
        result.install_seconds = round(time.monotonic() - start, 1)
        shutil.rmtree(clone, ignore_errors=True)
        cloned = run(["git", "clone", "--quiet", str(args.source), str(clone)], work)
        if cloned.returncode:
            raise RuntimeError(f"git clone failed: {cloned.stderr}")
        sync_start = time.monotonic()
        synced = run(
            [sys.executable, "tools/patchtool.py", "sync-upstream", "--version", version,
             "--from-file", str(upstream_file(args.python, version, site))],
            clone,
        )  # fmt: skip
        out = synced.stdout + synced.stderr
        log.append(out)
        notes = re.findall(r"^  ([\w.-]+): (.*)$", out, re.M)
        result.hunks = [f"{name}: {note}" for name, note in notes]
        if synced.returncode:
            result.sync = "CONFLICT" if "CONFLICT" in out else f"error (exit {synced.returncode})"
            return result
        result.sync = "offsets/fuzz" if any(note != "clean" for _, note in notes) else "clean"
        checked = run([sys.executable, "tools/patchtool.py", "check"], clone)
        log.append(checked.stdout + checked.stderr)
        if checked.returncode:
            result.sync = "synced, check FAILED"
            return result
        env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{clone}", "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one thread per worker: faster on a shared machine
        command = [args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
        if args.k:
            command += ["-k", args.k]
        tested = run(command, clone, env=env, timeout=args.test_timeout)
        log.append(tested.stdout[-20000:] + tested.stderr[-5000:])
        parse_pytest(tested.stdout, result)
        result.round_trip = round_trip(clone, work / f"pin-{version}.py")
        return result
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        result.sync = result.sync if result.sync != "not run" else "error"
        result.failures.append(f"{type(error).__name__}: {error}")
        return result
    finally:
        result.seconds = round(time.monotonic() - start, 1)
        result.log = "\n".join(log)
        if not args.keep_clones:
            shutil.rmtree(clone, ignore_errors=True)


def render(results: Sequence[Result], args: argparse.Namespace, total: float) -> str:
    """The Markdown table of docs/compatibility.md."""
    rows = []
    for r in sorted(results, key=lambda r: key(r.release)):
        offsets = re.sub(r" \(transformers [\d.]+\)", "", "; ".join(r.hunks)) or "-"  # the release is in the row
        tests = f"{r.passed} passed" + (f", {r.failed} failed" if r.failed else "") + (
            f", {r.errors} errors" if r.errors else ""
        ) + (f", {r.skipped} skipped" if r.skipped else "")
        if r.sync not in ("clean", "offsets/fuzz"):
            tests = "not run"
        failing = ", ".join(f.split("::")[-1] for f in r.failures[:4]) + (" ..." if len(r.failures) > 4 else "")
        verdict = "**green**" if r.green else "red"
        if r.stock_unsupported:  # inputs the release's own stock model raises on (ours raises the same, or skipped)
            inputs = sorted(set(re.findall(r"the '(\w+)' input", " ".join(r.stock_unsupported))))
            same = sum("ours raises the same" in line for line in r.stock_unsupported)
            verdict += (
                f" (its stock model cannot process the {', '.join(map(repr, inputs))} input: {same} equivalence "
                f"tests pass by raising what stock raises, {len(r.stock_unsupported) - same} stage tests skipped)"
            )
        rows.append(
            f"| {r.release} | {r.sync} | {offsets} | {tests} | {verdict}{': ' + failing if failing else ''} "
            f"| {r.round_trip} | {r.seconds:.0f} s |"
        )
    selection = " ".join(args.tests) + (f" -k '{args.k}'" if args.k else "")
    commits = sorted({r.source for r in results if r.source}) or ["unknown"]
    return "\n".join(
        [
            f"| release | sync | hunk offsets (vs the {args.pin} patches) | tests | result | back to the pin | time |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Tested commit {', '.join(commits)}; tests run on each release: `{selection}`. "
            f"Time per release: install, sync, tests and the sync back "
            f"(niced, on a shared 2-core machine); {total / 60:.1f} min for the {len(results)} releases together.",
        ]
    )


BEGIN, END = "<!-- sync-matrix:begin -->", "<!-- sync-matrix:end -->"


def write_table(path: Path, table: str) -> None:
    """Put `table` between the BEGIN/END markers of `path` (prose around them is kept), or write a new file."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"
    else:
        text = f"# transformers compatibility\n\n{BEGIN}\n{table}\n{END}\n"
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("releases", nargs="*", help="exact releases (default: the latest patch of --minors)")
    parser.add_argument("--minors", nargs=2, metavar=("FIRST", "LAST"),
                        help="the window's first and last minor (default: 5.4 to the minor of --source's pin)")
    parser.add_argument("--source", type=Path, default=ROOT, help="repository to clone (its committed HEAD)")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the project's venv python")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qwen-prunevid-sync-matrix"))
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS))
    parser.add_argument("-k", help="pytest -k expression selecting a subset")
    parser.add_argument("--test-timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--redo", action="store_true", help="re-run releases that have a saved result")
    parser.add_argument("--keep-clones", action="store_true")
    args = parser.parse_args(argv)
    args.pin = committed_pin(args.source)  # the release the series under test is synced to
    args.commit, tree = source_commit(args.source)
    tag = run_key(tree, args.tests, args.k)  # saved results of another commit or test selection are not reused
    args.minors = args.minors or ("5.4", ".".join(args.pin.split(".")[:2]))
    args.workdir.mkdir(parents=True, exist_ok=True)
    releases = args.releases or latest_patches(released_versions(args.python), *args.minors)
    results = []
    for version in releases:
        saved = args.workdir / f"result-{version}-{tag}.json"
        if saved.exists() and not args.redo:
            results.append(Result(**json.loads(saved.read_text())))
            continue
        lock = args.workdir / f"running-{version}-{tag}"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))  # another worker on the same folder has it
        except FileExistsError:
            continue
        if saved.exists() and not args.redo:  # finished by another worker since the check above
            lock.unlink()
            results.append(Result(**json.loads(saved.read_text())))
            continue
        try:
            result = check_release(args, version)
            saved.write_text(json.dumps(asdict(result), indent=1) + "\n")
        finally:
            lock.unlink()
        results.append(result)
        print(
            f"{version}: sync {result.sync}; {result.passed} passed, {result.failed} failed, {result.errors} errors; "
            f"{result.seconds:.0f} s",
            flush=True,
        )
    table = render(results, args, sum(r.seconds for r in results))
    if args.out:
        write_table(args.out, table)
    print(table)
    return 0 if all(r.green for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
