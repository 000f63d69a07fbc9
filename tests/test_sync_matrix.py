"""`tools/sync_matrix.py` reuses a saved release result only for the same commit and tests.

The matrix takes an hour, so results are saved per release and a re-run skips what is done; a result saved for an
older patch series (or other tests) must never stand in for the current one in docs/compatibility.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import sync_matrix  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    """`check_release` recorded instead of run; the source's commit set by the test."""
    state = {"calls": [], "commit": ("aaaaaaaaaaaa", "tree-1")}

    def check_release(args, version):
        state["calls"].append((version, args.commit))
        return sync_matrix.Result(version, sync="clean", passed=3, round_trip="identical", source=args.commit)

    monkeypatch.setattr(sync_matrix, "check_release", check_release)
    monkeypatch.setattr(sync_matrix, "committed_pin", lambda repo: "5.24.0")
    monkeypatch.setattr(sync_matrix, "source_commit", lambda repo: state["commit"])
    return state


def test_saved_results_are_reused_for_the_same_commit_and_tests(fake, tmp_path, capsys):
    argv = ["5.23.0", "5.24.0", "--workdir", str(tmp_path)]
    assert sync_matrix.main(argv) == 0
    assert sync_matrix.main(argv) == 0
    assert fake["calls"] == [("5.23.0", "aaaaaaaaaaaa"), ("5.24.0", "aaaaaaaaaaaa")]  # the second run reused both
    assert "Tested commit aaaaaaaaaaaa" in capsys.readouterr().out


def test_a_new_commit_or_other_tests_run_every_release_again(fake, tmp_path):
    argv = ["5.24.0", "--workdir", str(tmp_path)]
    sync_matrix.main(argv)
    fake["commit"] = ("bbbbbbbbbbbb", "tree-2")  # the series changed
    sync_matrix.main(argv)
    sync_matrix.main([*argv, "--tests", "tests/test_stages.py"])
    sync_matrix.main([*argv, "--tests", "tests/test_stages.py", "-k", "merge"])
    sync_matrix.main([*argv, "--tests", "tests/test_stages.py", "-k", "merge", "--redo"])
    assert [c for _, c in fake["calls"]] == ["aaaaaaaaaaaa"] + ["bbbbbbbbbbbb"] * 4


def test_source_commit_reads_the_repository(tmp_path):
    commit, tree = sync_matrix.source_commit(sync_matrix.ROOT)
    assert len(commit) == 12 and len(tree) == 40
    with pytest.raises(RuntimeError, match="not a git repository"):
        sync_matrix.source_commit(tmp_path)


def test_the_kernels_extra_is_asked_for_where_kernels_is_installed(tmp_path):
    """transformers before 5.25 fail at import with the kernels 0.19 that 5.25 brings: where the venv has kernels,
    the release's own `kernels` extra is asked for (pip then brings the kernels that release was made for)."""
    assert sync_matrix.transformers_requirement("5.4.0", with_kernels=True) == "transformers[kernels]==5.4.0"
    assert sync_matrix.transformers_requirement("5.4.0", with_kernels=False) == "transformers==5.4.0"
    assert sync_matrix.has_package(sys.executable, "pytest")
    assert not sync_matrix.has_package(sys.executable, "no-such-distribution-qpv")
