# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""Tests for tools/patchtool.py, run on throw-away copies of the repository with a synthetic two-patch series.

The tool is always run as a script with `-S` (no site-packages), which also proves that it only needs the stdlib.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
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


def git(root: Path, *args: str) -> str:
    command = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


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
    """The snapshot files as first vendored (transformers 5.22.2, commit e9a0acc), kept under tests/fixtures (the
    modeling file gzipped), so that these tests do not depend on the release the repository is synced to now (and
    exercise a real sync from there), and run in a shallow clone or an exported tree alike."""
    folder = Path(__file__).resolve().parent / "fixtures" / "upstream-5.22.2"
    files = {
        TARGET: gzip.decompress((folder / f"{TARGET}.gz").read_bytes()),
        "UPSTREAM.json": (folder / "UPSTREAM.json").read_bytes(),
    }
    meta = json.loads(files["UPSTREAM.json"])
    assert meta["transformers_version"] == "5.22.2"
    assert hashlib.sha256(files[TARGET]).hexdigest() == meta["sha256"]  # the fixture is the file it names
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
    shutil.copy(REPO / "patches" / "renames.json", root / "patches" / "renames.json")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "template")  # sync-upstream refuses to run over uncommitted changes
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
    "pin differs from UPSTREAM.json": (
        lambda root: edit(root / "pyproject.toml", '"transformers==5.22.2"', '"transformers==5.22.1"'),
        ["pyproject.toml: transformers==5.22.1, UPSTREAM.json says 5.22.2"],
    ),
    "pin missing": (
        lambda root: edit(root / "pyproject.toml", '"transformers==5.22.2"', '"transformers>=5.22"'),
        ["pyproject.toml: no `\"transformers==...\"` pin, UPSTREAM.json says 5.22.2"],
    ),
    "undefined name": (
        lambda root: edit_block_and_refresh(
            root, "self._prunevid.after_layers(self)", "self._prunevid.after_layers(self, norm_state)"
        ),
        ["[stage2-select hunk 2] name `norm_state` is not defined where the block stands "
         "(in Qwen2_5_VLTextModel.forward)"],
    ),  # fmt: skip
    "bad renames.json": (
        lambda root: (root / "patches" / "renames.json").write_text('{"renames": [{"old": "a b", "new": "c"}]}'),
        ["renames.json: expected"],
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


def sync(root: Path, new_text: str, version: str = "5.22.3", *extra: str) -> subprocess.CompletedProcess[str]:
    new_file = root.parent / "new_upstream.py"
    new_file.write_text(new_text)
    return run(root, "sync-upstream", "--version", version, "--from-file", str(new_file), *extra)


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
    """A real sync: from the first vendored release (5.22.2) to the one the repository is pinned to now (whichever
    that is: on 5.22.2 itself this is the identity sync)."""
    version = json.loads(read(REPO / "upstream_snapshot" / "UPSTREAM.json"))["transformers_version"]
    new = REPO / "upstream_snapshot" / TARGET
    out = ok(run(repo, "sync-upstream", "--version", version, "--from-file", str(new)))
    assert f"transformers 5.22.2 -> {version}" in out
    assert_synced(repo, new.read_bytes(), version)
    body = body_lines(repo)
    merge = next(i for i, line in enumerate(body) if "# >>> prunevid:stage1-merge" in line)
    assert body[merge + 6] == "        outputs = self.language_model(\n"
    select = next(i for i, line in enumerate(body) if "# >>> prunevid:stage2-select" in line)
    assert body[select - 1] == "        for i, decoder_layer in enumerate(self.layers):\n"


def rename_in_forward(text: str, cls: str, old: str, new: str) -> str:
    """Upstream renaming a parameter or local of `cls.forward` (not attributes, not keyword argument names)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"class {cls}("))
    start = next(i for i in range(start, len(lines)) if lines[i].startswith("    def forward("))
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"\S|    [^ )]", lines[i]))
    body = re.sub(rf"(?<![\w.]){old}(?![\w=])", new, "".join(lines[start:end]))
    assert body != "".join(lines[start:end])
    return "".join(lines[:start]) + body + "".join(lines[end:])


def test_sync_reports_a_renamed_local_before_any_test(repo: Path):
    """Every hunk applies (fuzz), but the block would use a local upstream renamed: a conflict naming the patch,
    the hunk, the name and the new name; nothing is written, no `.rej`."""
    before = hashes(repo)
    snapshot = read(repo / "upstream_snapshot" / TARGET)
    new = rename_in_forward(snapshot, "Qwen2_5_VLTextModel", "position_embeddings", "rotary_embeddings")
    out = failed(sync(repo, new))
    assert re.search(
        r"CONFLICT stage2-select hunk 1 \(in Qwen2_5_VLTextModel\.forward, synced line \d+\): name "
        r"`position_embeddings` is not defined there; likely new name `rotary_embeddings`",
        out,
    )
    assert "stage1-merge" not in out.split("CONFLICT", 1)[1]  # only the block that uses it
    assert "cannot rebase onto transformers 5.22.3: nothing changed" in out
    assert hashes(repo) == before and not list((repo / "patches").glob("*.rej"))


def test_sync_reports_a_renamed_parameter_with_the_parameter_in_its_place(repo: Path):
    snapshot = read(repo / "upstream_snapshot" / TARGET)
    new = rename_in_forward(snapshot, "Qwen2_5_VLModel", "past_key_values", "cache")
    out = failed(sync(repo, new))  # renames.json declares this rename for 5.24.0, which 5.22.3 does not cross
    assert re.search(
        r"CONFLICT stage1-merge hunk 1 \(in Qwen2_5_VLModel\.forward, synced line \d+\): name `past_key_values` "
        r"is not defined there; likely new name `cache` \(if upstream renamed it, declare "
        r'\{"old": "past_key_values", "new": "cache", "since": "5\.22\.3"\} in patches/renames\.json\)',
        out,
    )


def test_declared_rename_is_made_both_ways(repo: Path):
    """With the rename declared, the sync makes it in the inserted lines only; syncing back down undoes it, byte
    for byte; the lock's transformers pin follows the sync."""
    (repo / "patches" / "renames.json").write_text(
        json.dumps({"renames": [{"old": "past_key_values", "new": "cache", "since": "5.22.3", "why": "test"}]})
    )
    (repo / "requirements.lock").write_text("torch==2.14.1\ntransformers==5.22.2\n    # via qwen-prunevid\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "declare the rename")
    committed = hashes(repo)
    snapshot = read(repo / "upstream_snapshot" / TARGET)
    new = rename_in_forward(snapshot, "Qwen2_5_VLModel", "past_key_values", "cache")
    out = ok(sync(repo, new))
    assert "stage1-merge: hunk 1 renamed `past_key_values` -> `cache` (transformers 5.22.3)" in out
    patch = read(repo / "patches" / "stage1-merge.patch")
    assert "+                self, input_ids, inputs_embeds, position_ids, attention_mask, cache\n" in patch
    assert [line for line in patch.splitlines() if "past_key_values" in line and line[0] == "+"] == []
    assert read(repo / "requirements.lock") == "torch==2.14.1\ntransformers==5.22.3\n    # via qwen-prunevid\n"
    ok(run(repo, "check"))
    git(repo, "commit", "-q", "-am", "synced")
    back = repo.parent / "old_upstream.py"
    back.write_text(snapshot)
    out = ok(run(repo, "sync-upstream", "--version", "5.22.2", "--from-file", str(back)))
    assert "stage1-merge: hunk 1 renamed `cache` -> `past_key_values` (transformers 5.22.3)" in out
    assert hashes(repo) == committed
    assert "transformers==5.22.2\n" in read(repo / "requirements.lock")


def test_rename_identifier_renames_variables_only(monkeypatch):
    patchtool = load_patchtool(REPO, monkeypatch)
    lines = [
        "if x.past_key_values is not None:  # past_key_values\n",
        "    f(past_key_values, past_key_values=past_key_values, key='past_key_values')\n",
        "    past_key_values = g(past_key_values_2, [past_key_values])\n",
    ]
    assert patchtool.rename_identifier(lines, "past_key_values", "cache") == [
        "if x.past_key_values is not None:  # past_key_values\n",
        "    f(cache, past_key_values=cache, key='past_key_values')\n",
        "    cache = g(past_key_values_2, [cache])\n",
    ]
    assert patchtool.rename_identifier(["f(\n"], "f", "g") == ["f(\n"]  # does not tokenize: unchanged


def test_check_passes_on_the_real_repository():
    result = subprocess.run(
        [sys.executable, "-S", str(REPO / "tools" / "patchtool.py"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, (
        "`tools/patchtool.py check` fails on the real repository "
        "(patches/series, patches/*.patch and modeling/ must be consistent):\n" + result.stdout + result.stderr
    )
    assert "check: OK" in result.stdout


# --------------------------------------------------------------------------------------------------------------------
# sync-upstream around the rebase: dirty tree, version validation, stale rejects, all-or-nothing writes, the tests


def far_change(root: Path) -> str:
    """A new upstream file that rebases cleanly (two comment lines far from every hunk)."""
    return read(root / "upstream_snapshot" / TARGET).replace(
        "class Qwen2_5_VisionPatchEmbed(nn.Module):\n", "class Qwen2_5_VisionPatchEmbed(nn.Module):\n    # new\n    # two\n"
    )


DIRTY = {
    "edit inside a block": lambda root: edit(
        root / "modeling" / TARGET, "# drop the least attended", "# drop the least-attended"
    ),
    "edit outside a block": lambda root: edit(root / "modeling" / TARGET, "class Qwen2_5_VLMLP(", "class  Qwen2_5_VLMLP("),
    "edited patch": lambda root: edit(root / "patches" / "stage1-merge.patch", "Stage 1:", "Stage one:"),
    "new file": lambda root: (root / "modeling" / "helper.py").write_text("x = 1\n"),
    "pyproject": lambda root: edit(root / "pyproject.toml", "dependencies", "dependencies "),
}


@pytest.mark.parametrize("case", list(DIRTY))
def test_sync_refuses_uncommitted_changes_unless_forced(repo: Path, case: str):
    DIRTY[case](repo)
    before = hashes(repo)
    out = failed(sync(repo, far_change(repo)))
    assert "refusing to sync over uncommitted changes" in out and "--force" in out
    changed = git(repo, "status", "--porcelain").split()[-1]
    assert changed in out
    assert hashes(repo) == before
    ok(sync(repo, far_change(repo), "5.22.3", "--force"))
    assert json.loads(read(repo / "upstream_snapshot" / "UPSTREAM.json"))["transformers_version"] == "5.22.3"


def test_sync_outside_git_needs_force(repo: Path):
    shutil.rmtree(repo / ".git")
    assert "cannot tell whether" in failed(sync(repo, far_change(repo)))
    ok(sync(repo, far_change(repo), "5.22.3", "--force"))


RELEASES = "5.21.0,5.22.0,5.22.1,5.22.2,5.22.3,4.49.0,4.48.0"
BAD_VERSIONS = {
    "5.22": "`5.22` is not an exact transformers release: give one as x.y.z; releases of 5.22: 5.22.0, 5.22.1, "
    "5.22.2, 5.22.3",
    "latest": "`latest` is not an exact transformers release: give one as x.y.z",
    "5.22.3rc1": "`5.22.3rc1` is not an exact transformers release: give one as x.y.z",
    "4.48.0": "transformers 4.48.0 has no Qwen2.5-VL model (it first shipped in 4.49.0)",
    "5.22.9": "transformers 5.22.9 is not a release on the package index (releases of 5.22: 5.22.0, 5.22.1, 5.22.2, "
    "5.22.3)",
}


@pytest.mark.parametrize("version", list(BAD_VERSIONS))
def test_sync_validates_the_version_first(repo: Path, version: str):
    before = hashes(repo)
    result = run(repo, "sync-upstream", "--version", version, "--releases", RELEASES)  # no file: it would download
    out = failed(result)
    assert result.stdout == "" and result.stderr == f"sync-upstream: error: {BAD_VERSIONS[version]}\n"
    assert hashes(repo) == before


def test_sync_normalises_a_leading_v(repo: Path):
    new = far_change(repo)
    out = ok(sync(repo, new, "v5.22.3", "--releases", RELEASES))
    assert "transformers 5.22.2 -> 5.22.3" in out
    assert_synced(repo, new.encode(), "5.22.3")


def load_patchtool(root: Path, monkeypatch):
    """The repository copy's patchtool as a module, to inject failures into its writes."""
    spec = importlib.util.spec_from_file_location("patchtool_under_test", root / "tools" / "patchtool.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seam", ["write_bytes", "os.replace"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_sync_interrupted_at_any_write_changes_nothing(repo: Path, monkeypatch, capsys, seam: str, error: type):
    """A failure or Ctrl-C at each file write (staging: `write_bytes`; moving into place: `os.replace`) leaves every
    file as it was and no staging folder behind; without a failure, the same sync goes through."""
    patchtool = load_patchtool(repo, monkeypatch)
    new_file = repo.parent / "new_upstream.py"
    new_file.write_text(far_change(repo))
    argv = ["--root", str(repo), "sync-upstream", "--version", "5.22.3", "--from-file", str(new_file)]
    module, name = (patchtool, "write_bytes") if seam == "write_bytes" else (patchtool.os, "replace")
    real = getattr(module, name)
    before = hashes(repo)
    files = 6  # snapshot, UPSTREAM.json, two patches, generated file, pyproject.toml
    for step in range(1, files + 1):
        calls = []

        def failing(*args, **kwargs):
            calls.append(args)
            if len(calls) == step:
                raise error("injected")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, failing)
        status = patchtool.main(argv)
        monkeypatch.setattr(module, name, real)
        assert status == (130 if error is KeyboardInterrupt else 1), capsys.readouterr()
        assert len(calls) >= step
        assert hashes(repo) == before, f"step {step} changed the tree"
        assert not list(repo.glob(".patchtool-sync-*")), "staging folder left behind"
    capsys.readouterr()
    assert patchtool.main(argv) == 0
    assert hashes(repo) != before
    assert_synced(repo, new_file.read_bytes(), "5.22.3")
    assert not list(repo.glob(".patchtool-sync-*"))


def test_sync_removes_stale_rejects(repo: Path):
    conflict = read(repo / "upstream_snapshot" / TARGET).replace(
        "            hidden_states = decoder_layer(\n", "            hidden_states = decoder_layer.forward(\n"
    )
    failed(sync(repo, conflict))
    assert (repo / "patches" / "stage2-select.patch.rej").exists()
    (repo / "patches" / "stage1-merge.patch.rej").write_text("left over\n")
    out = ok(sync(repo, far_change(repo)))  # the stale rejects neither block the sync nor stay behind
    assert "removed the stale patches/stage1-merge.patch.rej" in out
    assert not list((repo / "patches").glob("*.rej"))


FAKE_PYTHON = """#!/bin/sh
# A stand-in for the venv's python: records pip and pytest calls, fails pytest when FAIL is set; has the package
# `kernels` (the one `-c` probe) only when KERNELS is set.
if [ "$1" = "-c" ]; then [ -n "$KERNELS" ]; exit $?; fi
echo "$*" >> "{log}"
case "$1 $2" in
  "-m pytest") if [ -n "$KILL" ]; then kill -TERM $PPID; sleep 5; fi
              if [ -n "$FAIL" ]; then echo "FAILED tests/test_stages.py::test_stage2 - IndexError"; exit 1; fi
            echo "3 passed";;
esac
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    script, log = tmp_path / "python", tmp_path / "calls.log"
    script.write_text(FAKE_PYTHON.format(log=log))
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize("keep", [False, True])
def test_sync_rolls_back_when_the_tests_fail(repo: Path, fake_python, monkeypatch, keep: bool):
    script, log = fake_python
    monkeypatch.setenv("FAIL", "1")
    before = hashes(repo)
    extra = ["--python", str(script), "--tests", "tests/test_stages.py"] + (["--keep"] if keep else [])
    out = failed(sync(repo, far_change(repo), "5.22.3", *extra))
    assert "failed on transformers 5.22.3" in out and "tests/test_stages.py::test_stage2" in out
    calls = log.read_text().splitlines()
    assert calls[0].endswith(f"-e {repo}[test]") and "pytest" in calls[1] and calls[1].endswith("tests/test_stages.py")
    if keep:
        assert len(calls) == 2 and "tree kept" in out
        assert json.loads(read(repo / "upstream_snapshot" / "UPSTREAM.json"))["transformers_version"] == "5.22.3"
    else:
        assert "rolled back" in out and len(calls) == 3 and calls[2] == calls[0]  # the old pin reinstalled
        assert hashes(repo) == before
    assert not list(repo.glob(".patchtool-sync-*"))


def test_sync_killed_during_the_tests_rolls_back(repo: Path, fake_python, monkeypatch):
    """SIGTERM (a `kill`, or make's own termination) while the tests run undoes the sync like Ctrl-C."""
    script, log = fake_python
    monkeypatch.setenv("KILL", "1")
    before = hashes(repo)
    result = sync(repo, far_change(repo), "5.22.3", "--python", str(script))
    assert result.returncode == 130, result.stdout + result.stderr
    assert "interrupted: the tree is back at transformers 5.22.2" in result.stderr
    assert hashes(repo) == before
    assert not list(repo.glob(".patchtool-sync-*"))


def test_sync_keeps_the_tree_when_the_tests_pass(repo: Path, fake_python):
    script, log = fake_python
    new = far_change(repo)
    out = ok(sync(repo, new, "5.22.3", "--python", str(script)))
    assert "transformers 5.22.3: all tests passed" in out
    assert log.read_text().splitlines()[1].endswith("tests/test_vision_attention.py tests/test_patchtool.py")
    assert_synced(repo, new.encode(), "5.22.3")


def test_sync_asks_for_the_kernels_extra_where_kernels_is_installed(repo: Path, fake_python, monkeypatch):
    """transformers before 5.25 fail at import with the kernels 0.19 that 5.25 brings, and pip leaves kernels in
    place when it moves transformers: where the venv has kernels, the install also asks for the pinned release's
    `kernels` extra (pip then brings the kernels release it was made for)."""
    script, log = fake_python
    monkeypatch.setenv("KERNELS", "1")
    ok(sync(repo, far_change(repo), "5.22.3", "--python", str(script)))
    assert log.read_text().splitlines()[0].endswith(f"-e {repo}[test] transformers[kernels]")


def test_missing_qwen2_5_vl_in_a_wheel_is_one_line(repo: Path, monkeypatch, capsys):
    """A release the version check lets through but whose wheel lacks the model (the download is faked)."""
    import zipfile

    patchtool = load_patchtool(repo, monkeypatch)

    def fake_download(command, check):
        folder = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(folder / "transformers-5.22.3-py3-none-any.whl", "w") as wheel:
            wheel.writestr("transformers/__init__.py", "")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(patchtool.subprocess, "run", fake_download)
    monkeypatch.setattr(patchtool, "uncommitted_changes", lambda root: [])
    monkeypatch.setattr(patchtool.importlib.metadata, "version", lambda name: "0")
    before = hashes(repo)
    status = patchtool.main(["--root", str(repo), "sync-upstream", "--version", "5.22.3", "--releases", RELEASES])
    err = capsys.readouterr().err
    assert status == 1 and err == (
        "sync-upstream: error: transformers 5.22.3 has no Qwen2.5-VL model "
        "(transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py is not in its wheel)\n"
    )
    assert hashes(repo) == before


def test_undefined_names_follow_python_scoping(monkeypatch):
    """Comprehension targets and lambda parameters are defined inside their expression; a block's own binding only
    from its next statement; locals of the function only when bound before the block."""
    patchtool = load_patchtool(REPO, monkeypatch)
    source = textwrap.dedent(
        """\
        import os


        def forward(self, x):
            y = x + 1
            # >>> prunevid:demo
            if self is not None:
                a = [t * y for t in range(3)] + list(map(lambda u: u + a0, [os.sep]))
                b, c = a, c
                d = b
                z = later
            # <<< prunevid:demo
            later = 2
            return d
        """
    )
    found = patchtool.undefined_names(source.splitlines(keepends=True))
    assert [(u.scope, u.name, u.line + 1) for u in found] == [
        ("forward", "a0", 8),
        ("forward", "c", 9),
        ("forward", "later", 11),
    ]
