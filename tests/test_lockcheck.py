"""tools/lockcheck.py: the committed lock satisfies pyproject.toml, and a stale lock is caught before pip runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
FILES = ("pyproject.toml", "requirements.in", "requirements.lock")


def lockcheck(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "tools" / "lockcheck.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_committed_lock_is_current():
    result = lockcheck()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lockcheck: OK")


def test_lock_pins_the_vendored_transformers_and_the_filelock_bound():
    lock = (ROOT / "requirements.lock").read_text()
    pin = re.search(r'"transformers==([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert re.search(rf"^transformers=={re.escape(pin)}$", lock, re.M)
    filelock = re.search(r"^filelock==(\d+)\.(\d+)", lock, re.M)
    assert filelock and (int(filelock[1]), int(filelock[2])) < (4, 3)  # lmms-eval 0.7.3 imports filelock._api


def test_new_pin_in_pyproject_makes_the_lock_stale(copy: Path):
    text = (copy / "pyproject.toml").read_text()
    pin = re.search(r'"transformers==([^"]+)"', text)[1]
    edit(copy / "pyproject.toml", f'"transformers=={pin}"', '"transformers==99.0.0"')
    result = lockcheck("--root", copy)
    assert result.returncode == 1
    assert f"pins transformers=={pin}, but pyproject.toml dependencies requires `transformers==99.0.0`" in result.stderr
    assert "make lock" in result.stderr


def test_new_dependency_and_new_bound_are_caught(copy: Path):
    edit(copy / "pyproject.toml", '"tqdm>=4.66",', '"tqdm>=4.66",\n    "not-a-locked-package>=1",')
    edit(copy / "pyproject.toml", '"filelock<4.3"', '"filelock<4.0"')
    result = lockcheck("--root", copy)
    assert result.returncode == 1
    assert "requires `not-a-locked-package>=1`, which requirements.lock does not pin" in result.stderr
    assert "extra `eval` requires `filelock<4.0`" in result.stderr


def test_requirements_in_is_checked_and_false_markers_are_skipped(copy: Path):
    edit(copy / "requirements.in", "torch==2.14.1", "torch==2.14.0")
    edit(copy / "pyproject.toml", '"tqdm>=4.66",', '"tqdm>=4.66",\n    "pywin32>=300; sys_platform == \'win32\'",')
    result = lockcheck("--root", copy)
    assert result.returncode == 1
    assert "pins torch==2.14.1, but requirements.in requires `torch==2.14.0`" in result.stderr
    assert "pywin32" not in result.stderr  # its marker is false on this platform


def test_missing_lock(copy: Path):
    (copy / "requirements.lock").unlink()
    result = lockcheck("--root", copy)
    assert result.returncode == 1 and "make lock" in result.stderr


def test_compare_lists_what_resolved_differently(copy: Path):
    freeze = copy / "freeze.txt"
    lines = [line for line in (copy / "requirements.lock").read_text().splitlines() if "==" in line]
    lines = [re.sub(r"^filelock==.*", "filelock==4.3.1", line) for line in lines if not line.startswith("tqdm==")]
    freeze.write_text("\n".join(lines + ["brand-new==1.0"]) + "\n")
    result = lockcheck("--root", copy, "--compare", freeze)
    assert result.returncode == 0
    assert "differs from requirements.lock in 3 package(s)" in result.stdout
    assert "~ filelock: 4.2.12 (locked) -> 4.3.1" in result.stdout
    assert "+ brand-new==1.0 (not in the lock)" in result.stdout
    assert re.search(r"- tqdm==\S+ \(locked, not installed\)", result.stdout)
