# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""Tests for tools/patchtool.py, run on throw-away copies of the repository with a synthetic two-patch series.

The tool is always run as a script with `-S` (no site-packages), which also proves that it only needs the stdlib.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
TARGET = "modeling_qwen2_5_vl.py"

MERGE_BLOCK = """\
# >>> prunevid:stage1-merge
if getattr(self, "_prunevid", None) is not None:
    inputs_embeds, position_ids, attention_mask = self._prunevid.before_language_model(
        self, input_ids, inputs_embeds, position_ids, attention_mask, past_key_values
    )
# <<< prunevid:stage1-merge
"""
SELECT_BLOCK = """\
# >>> prunevid:stage2-select
if getattr(self, "_prunevid", None) is not None:
    # drop the least attended visual tokens before this layer
    hidden_states, position_embeddings = self._prunevid.before_layer(self, i, hidden_states, position_embeddings)
# <<< prunevid:stage2-select
"""
SELECT_NORM_BLOCK = """\
# >>> prunevid:stage2-select
if self._prunevid is not None:  # prunevid bookkeeping

    self._prunevid.after_layers(self)
# <<< prunevid:stage2-select
"""
# (anchor line, block): each block is inserted right before its anchor, with the anchor's indentation.
BLOCKS = [
    ("outputs = self.language_model(", MERGE_BLOCK),
    ("hidden_states = decoder_layer(", SELECT_BLOCK),
    ("hidden_states = self.norm(hidden_states)", SELECT_NORM_BLOCK),
]
INSERTED = {"stage1-merge": 6, "stage2-select": 5 + 5}
MERGE_DESCRIPTION = "Stage 1: merge static/dynamic tokens right before the language model.\n\n"


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the repository copy's patchtool (default --root: the copy) with only the stdlib available."""
    command = [sys.executable, "-S", str(root / "tools" / "patchtool.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


def insert_blocks(lines: list[str], blocks=BLOCKS) -> list[str]:
    """Insert each block before the first line whose stripped text starts with its anchor (the developer's edit)."""
    lines = list(lines)
    for anchor, block in blocks:
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(anchor))
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        lines[index:index] = [indent + line if line.strip() else line for line in block.splitlines(keepends=True)]
    return lines


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = read(path)
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def hashes(root: Path) -> dict[str, str]:
    """Hashes of everything a failed sync must leave alone."""
    paths = [*(root / "modeling").rglob("*"), *(root / "upstream_snapshot").rglob("*")]
    paths += [*(root / "patches").glob("*.patch"), root / "patches" / "series", root / "pyproject.toml"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def first_snapshot() -> dict[str, bytes]:
    """The snapshot files as first vendored (transformers 5.22.2), read from git history, so that these tests do
    not depend on the release the repository is synced to now (and exercise a real sync from there)."""
    git = ["git", "-C", str(REPO)]
    revs = subprocess.run(
        [*git, "log", "--format=%H", "--reverse", "--", "upstream_snapshot/UPSTREAM.json"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert revs, "no history for upstream_snapshot/ (a shallow or exported tree?)"
    files = {
        name: subprocess.run([*git, "show", f"{revs[0]}:upstream_snapshot/{name}"], capture_output=True, check=True).stdout
        for name in (TARGET, "UPSTREAM.json")
    }
    assert json.loads(files["UPSTREAM.json"])["transformers_version"] == "5.22.2"
    return files


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """A repository copy whose series was produced the developer's way: apply, insert blocks, refresh, apply."""
    root = tmp_path_factory.mktemp("template")
    (root / "upstream_snapshot").mkdir()
    for name, data in first_snapshot().items():
        (root / "upstream_snapshot" / name).write_bytes(data)
    (root / "tools").mkdir()
    shutil.copy(REPO / "tools" / "patchtool.py", root / "tools" / "patchtool.py")
    (root / "pyproject.toml").write_text('[project]\ndependencies = [\n    "transformers==5.22.2",\n]\n')
    (root / "patches").mkdir()
    (root / "patches" / "series").write_text("# PruneVid, in order\nstage1-merge.patch\n\nstage2-select.patch\n")
    (root / "patches" / "stage1-merge.patch").write_text(MERGE_DESCRIPTION)
    (root / "patches" / "stage2-select.patch").write_text("")
    ok(run(root, "apply"))
    generated = root / "modeling" / TARGET
    edited = "".join(insert_blocks(generated.read_text().splitlines(keepends=True)))
    generated.write_text(edited)
    ok(run(root, "refresh"))
    (root / "edited.py").write_text(edited)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(template, root)
    return root


def body_lines(root: Path) -> list[str]:
    lines = read(root / "modeling" / TARGET).splitlines(keepends=True)
    return [line for line in lines if not line.startswith("# qwen-prunevid: ")]


def test_refresh_apply_round_trip(repo: Path):
    generated = repo / "modeling" / TARGET
    generated.unlink()
    ok(run(repo, "apply"))
    assert generated.read_bytes() == (repo / "edited.py").read_bytes()

    merge = read(repo / "patches" / "stage1-merge.patch")
    assert merge.startswith(MERGE_DESCRIPTION + f"--- a/{TARGET}\n+++ b/{TARGET}\n")
    assert re.search(r"^@@ -\d+,6 \+\d+,12 @@ def forward\($", merge, re.M)
    for name in ("stage1-merge", "stage2-select"):
        diff = read(repo / "patches" / f"{name}.patch").split(f"+++ b/{TARGET}\n", 1)[1]
        assert not [line for line in diff.splitlines() if line.startswith("-")], f"{name} is not insert-only"
        assert sum(line.startswith("+") for line in diff.splitlines()) == INSERTED[name]

    out = ok(run(repo, "check"))
    assert "2 patches, 3 hunks, 16 inserted lines (stage1-merge: 6, stage2-select: 10)" in out

    header = read(generated).splitlines()[:4]
    assert all(line.startswith("# qwen-prunevid: ") for line in header)
    source = "transformers 5.22.2 transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py (sha256 3b9f08d6450f)"
    assert source in header[1]
    assert "stage1-merge, stage2-select" in header[2]


def test_import_rewrite_is_the_only_change_outside_blocks(repo: Path):
    body = body_lines(repo)
    assert not [line for line in body if re.match(r"\s*from \.", line)]
    assert "from transformers.utils.generic import (\n" in body
    assert "from transformers.activations import ACT2FN\n" in body
    assert any(line.startswith("from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import") for line in body)

    outside, inside = [], False
    for line in body:
        inside = inside or "# >>> prunevid:" in line
        if not inside:
            outside.append(line)
        inside = inside and "# <<< prunevid:" not in line
    snapshot = read(repo / "upstream_snapshot" / TARGET).splitlines(keepends=True)
    assert len(outside) == len(snapshot)
    changed = [(old, new) for old, new in zip(snapshot, outside) if old != new]
    assert len(changed) == sum(line.startswith("from .") for line in snapshot) == 16
    for old, new in changed:
        assert re.match(r"from \.+", old) and new == re.sub(r"^from \.\.\.", "from transformers.", old).replace(
            "from .configuration", "from transformers.models.qwen2_5_vl.configuration"
        )


def edit_block_and_refresh(root: Path, old: str, new: str) -> None:
    edit(root / "modeling" / TARGET, old, new)
    ok(run(root, "refresh"))


def bump_patch_line_outside_block(root: Path) -> None:
    """Add an inserted line after a block's closing marker, fixing the `@@` counts by hand."""
    path = root / "patches" / "stage1-merge.patch"
    text = read(path).replace(
        "+        # <<< prunevid:stage1-merge\n", "+        # <<< prunevid:stage1-merge\n+        x = 1\n"
    )
    path.write_text(re.sub(r"(@@ -\d+,6 \+\d+,)12", r"\g<1>13", text))


def change_upstream_line_in_patch(root: Path) -> None:
    path = root / "patches" / "stage2-select.patch"
    text = read(path)
    context = re.search(r"^ (        hidden_states = self\.norm.*\n)", text, re.M)[1]
    path.write_text(text.replace(" " + context, f"-{context}+{context.rstrip()}  # changed\n", 1))


VIOLATIONS = {
    "unguarded": (
        lambda root: edit_block_and_refresh(root, '        if getattr(self, "_prunevid", None) is not None:\n'
                                            "            inputs_embeds,", "        inputs_embeds,"),
        ["stage1-merge hunk 1", "unguarded block"],
    ),
    "else": (
        lambda root: edit_block_and_refresh(
            root, "    self._prunevid.after_layers(self)\n",
            "    self._prunevid.after_layers(self)\n        else:\n            pass\n",
        ),
        ["stage2-select hunk 2", "`else`"],
    ),
    "guard without prunevid": (
        lambda root: edit_block_and_refresh(
            root, 'if getattr(self, "_prunevid", None) is not None:\n                # drop',
            "if hidden_states is not None:\n                # drop",
        ),
        ["stage2-select hunk 1", "does not mention prunevid"],
    ),
    "line outside markers": (bump_patch_line_outside_block, ["stage1-merge hunk 1", "outside a `# >>> prunevid:"]),
    "upstream line changed": (change_upstream_line_in_patch, ["stage2-select hunk 2", "insert-only", "drift"]),
    "drift": (
        lambda root: edit(
            root / "modeling" / TARGET, "class Qwen2_5_VLMLP(nn.Module):", "class Qwen2_5_VLMLP(nn.Module):#"
        ),
        ["drift", "+class Qwen2_5_VLMLP(nn.Module):#"],
    ),
    "unknown marker": (
        lambda root: edit(root / "modeling" / TARGET, "prunevid:stage1-merge", "prunevid:stage3-extra", count=2),
        ["block `stage3-extra` is not a known patch", "add stage3-extra.patch to patches/series"],
    ),
    "empty marker": (
        lambda root: edit(root / "modeling" / TARGET, "prunevid:stage1-merge", "prunevid:", count=2),
        ["empty marker name"],
    ),
    "tampered snapshot": (
        lambda root: edit(root / "upstream_snapshot" / TARGET, "class Qwen2_5_VLMLP(", "class  Qwen2_5_VLMLP("),
        ["does not match UPSTREAM.json", "drift"],
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_check_reports_violations(repo: Path, case: str):
    mutate, expected = VIOLATIONS[case]
    mutate(repo)
    out = failed(run(repo, "check"))
    for needle in expected:
        assert needle in out
    assert "check: FAILED" in out


def test_refresh_refuses_bad_edits(repo: Path):
    generated = repo / "modeling" / TARGET
    before = hashes(repo)
    edit(generated, "prunevid:stage1-merge", "prunevid:stage3-extra", count=2)
    assert "add stage3-extra.patch to patches/series" in failed(run(repo, "refresh"))
    ok(run(repo, "apply"))
    edit(generated, "class Qwen2_5_VLMLP(nn.Module):", "class Qwen2_5_VLMLP(nn.Module):  # edited")
    out = failed(run(repo, "refresh"))
    assert "edited outside" in out and "+class Qwen2_5_VLMLP(nn.Module):  # edited" in out
    before.pop(f"modeling/{TARGET}")
    after = hashes(repo)
    after.pop(f"modeling/{TARGET}")
    assert after == before


def test_refresh_patch_without_blocks_becomes_empty(repo: Path):
    lines = read(repo / "modeling" / TARGET).splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "# >>> prunevid:stage1-merge" in line)
    del lines[start : start + 6]
    (repo / "modeling" / TARGET).write_text("".join(lines))
    out = ok(run(repo, "refresh"))
    assert "warning: stage1-merge has no" in out
    assert read(repo / "patches" / "stage1-merge.patch") == MERGE_DESCRIPTION
    assert "stage1-merge: 0, stage2-select: 10" in ok(run(repo, "check"))


def test_apply_with_offset_and_fuzz(repo: Path):
    snapshot = repo / "upstream_snapshot" / TARGET
    edit(snapshot, "\n\nclass Qwen2_5_VLMLP(", "\n\n# one\n# two\n# three\n\nclass Qwen2_5_VLMLP(")
    out = ok(run(repo, "apply"))
    assert "stage1-merge: hunk 1 applied at line" in out and "offset +4 line(s)" in out
    assert sum("# >>> prunevid:" in line for line in body_lines(repo)) == 3

    # The outermost leading context line of the stage1 hunk changes: fuzz 1 still places the block.
    merge = read(repo / "patches" / "stage1-merge.patch")
    outer = merge.split("\n@@", 1)[1].split("\n")[1][1:]  # first context line of hunk 1
    assert outer.strip() == "mm_token_type_ids=mm_token_type_ids,"
    edit(snapshot, outer + "\n            )\n\n        outputs", outer + "  # moved\n            )\n\n        outputs")
    out = ok(run(repo, "apply"))
    assert "stage1-merge: hunk 1" in out and "fuzz 1" in out
    body = body_lines(repo)
    index = next(i for i, line in enumerate(body) if "# >>> prunevid:stage1-merge" in line)
    assert body[index - 1] == "\n" and body[index + 6].strip() == "outputs = self.language_model("


def test_apply_failure_names_patch_hunk_and_function(repo: Path):
    generated = repo / "modeling" / TARGET
    before = generated.read_bytes()
    edit(repo / "upstream_snapshot" / TARGET, "outputs = self.language_model(", "out = self.language_model(")
    out = failed(run(repo, "apply"))
    pattern = r"patch stage1-merge: hunk 1 FAILED: context not found near line (\d+) \(in Qwen2_5_VLModel\.forward\)"
    assert 1240 < int(re.search(pattern, out)[1]) < 1260
    assert "nothing was written" in out
    assert generated.read_bytes() == before


def sync(root: Path, new_text: str, version: str = "5.22.3") -> subprocess.CompletedProcess[str]:
    new_file = root.parent / "new_upstream.py"
    new_file.write_text(new_text)
    return run(root, "sync-upstream", "--version", version, "--from-file", str(new_file))


def assert_synced(root: Path, new_bytes: bytes, version: str) -> None:
    assert (root / "upstream_snapshot" / TARGET).read_bytes() == new_bytes
    meta = json.loads(read(root / "upstream_snapshot" / "UPSTREAM.json"))
    assert meta == {
        "transformers_version": version,
        "source_path": "transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py",
        "sha256": hashlib.sha256(new_bytes).hexdigest(),
    }
    assert read(root / "upstream_snapshot" / "UPSTREAM.json").endswith("}\n")
    assert f'"transformers=={version}",' in read(root / "pyproject.toml")
    assert f"from transformers {version} " in read(root / "modeling" / TARGET)
    assert read(root / "patches" / "stage1-merge.patch").startswith(MERGE_DESCRIPTION)
    assert "16 inserted lines" in ok(run(root, "check"))
    compile(read(root / "modeling" / TARGET), TARGET, "exec")


def test_sync_upstream_change_far_from_hunks(repo: Path):
    new = read(repo / "upstream_snapshot" / TARGET).replace(
        "class Qwen2_5_VisionPatchEmbed(nn.Module):\n",
        "class Qwen2_5_VisionPatchEmbed(nn.Module):\n    # a new upstream comment\n    # on two lines\n",
    )
    out = ok(sync(repo, new))
    assert "stage1-merge: hunk 1 offset +2" in out and "stage2-select: hunk 1 offset +2, hunk 2 offset +2" in out
    assert_synced(repo, new.encode(), "5.22.3")
    assert "@@ -1249,6 +1249,12 @@ def forward(" in read(repo / "patches" / "stage1-merge.patch")


def test_sync_upstream_change_in_outer_context_applies_with_fuzz(repo: Path):
    tail = "\n            )\n\n        outputs = self.language_model("
    new = read(repo / "upstream_snapshot" / TARGET).replace(
        "                mm_token_type_ids=mm_token_type_ids," + tail,
        "                mm_token_type_ids=mm_token_type_ids,  # new" + tail,
    )
    out = ok(sync(repo, new))
    assert "stage1-merge: hunk 1 fuzz 1" in out and "stage2-select: clean" in out
    assert_synced(repo, new.encode(), "5.22.3")


def test_sync_upstream_change_next_to_insertion_point_conflicts(repo: Path):
    before = hashes(repo)
    new = read(repo / "upstream_snapshot" / TARGET).replace(
        "            hidden_states = decoder_layer(\n", "            hidden_states = decoder_layer.forward(\n"
    )
    out = failed(sync(repo, new))
    assert re.search(
        r"CONFLICT stage2-select hunk 1 \(in Qwen2_5_VLTextModel\.forward, old snapshot line 854\): "
        r"context not found: upstream changed the lines around it \(`Qwen2_5_VLTextModel\.forward` still exists\)",
        out,
    )
    assert hashes(repo) == before
    assert (repo / "patches" / "stage2-select.patch.rej").exists()


def test_sync_upstream_anchor_function_removed(repo: Path):
    lines = read(repo / "upstream_snapshot" / TARGET).splitlines(keepends=True)
    text_model = next(i for i, line in enumerate(lines) if line.startswith("class Qwen2_5_VLTextModel("))
    start = next(i for i in range(text_model, len(lines)) if lines[i].strip() == "@merge_with_config_defaults")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("@auto_docstring"))
    new = "".join(lines[:start] + lines[end - 2 :])
    before = hashes(repo)
    out = failed(sync(repo, new))
    for number in (1, 2):
        assert (
            f"CONFLICT stage2-select hunk {number} (in Qwen2_5_VLTextModel.forward, old snapshot line "
        ) in out
    assert "context not found: the anchor function `Qwen2_5_VLTextModel.forward` no longer exists upstream" in out
    assert "stage1-merge: hunk 1 offset" in out  # the other patch would have applied
    assert hashes(repo) == before
    rej = read(repo / "patches" / "stage2-select.patch.rej")
    assert rej.startswith(f"--- a/{TARGET}\n+++ b/{TARGET}\n@@ ") and rej.count("\n@@ ") == 2
    assert "+            # >>> prunevid:stage2-select\n" in rej
    assert not (repo / "patches" / "stage1-merge.patch.rej").exists()


def test_sync_upstream_real_release(repo: Path):
    """A real sync: from the first vendored release (5.22.2) to the one the repository is on now."""
    version = json.loads(read(REPO / "upstream_snapshot" / "UPSTREAM.json"))["transformers_version"]
    assert version != "5.22.2", "the repository should have been synced past its first snapshot"
    new = REPO / "upstream_snapshot" / TARGET
    out = ok(run(repo, "sync-upstream", "--version", version, "--from-file", str(new)))
    assert f"transformers 5.22.2 -> {version}" in out
    assert_synced(repo, new.read_bytes(), version)
    body = body_lines(repo)
    merge = next(i for i, line in enumerate(body) if "# >>> prunevid:stage1-merge" in line)
    assert body[merge + 6] == "        outputs = self.language_model(\n"
    select = next(i for i, line in enumerate(body) if "# >>> prunevid:stage2-select" in line)
    assert body[select - 1] == "        for i, decoder_layer in enumerate(self.layers):\n"


def test_check_passes_on_the_real_repository():
    result = subprocess.run(
        [sys.executable, "-S", str(REPO / "tools" / "patchtool.py"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, (
        "`tools/patchtool.py check` fails on the real repository "
        "(patches/series, patches/*.patch and modeling/ must be consistent):\n" + result.stdout + result.stderr
    )
    assert "check: OK" in result.stdout
