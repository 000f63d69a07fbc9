#!/usr/bin/env python3
# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""The guarantee under transformers' own tests: run a transformers checkout's Qwen2.5-VL model tests on the stock
classes and on ours (PruneVid off), and compare them test by test.

    git clone --depth 1 --branch v5.25.0 https://github.com/huggingface/transformers ~/src/transformers
    python3 tools/upstream_tests.py --src ~/src/transformers [--out DIR] [-- extra pytest args, e.g. -k generate]

Each side runs in its own pytest process with the project's python, on the CPU, with the test file
`tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py` of `--src` (its release should be the pinned one:
upstream_snapshot/UPSTREAM.json). On the `ours` side the plugin `tools/upstream_tests_plugin.py` puts
`modeling.Qwen2_5_VLPruneVid` and the vendored `Qwen2_5_VLModel` in the test module's place of the stock classes,
with `PruneVidConfig.disabled()` as every model's settings. Printed (and written to `--out/report.json`): each side's
counts and every test whose outcome differs. Exit 0 when only the known artefacts differ (`ARTEFACTS`: tests that add
labels or pick classes by the class name in transformers' auto mappings, which `Qwen2_5_VLPruneVid` is not in; the
model computes stock's loss and gradients bitwise there, checked by hand), 1 otherwise.

Measured on 2026-12-04 (transformers 5.25.0's common test files with the model and generation test files of
upstream's main branch then): 216 tests, stock 147 passed / 4 failed / 65 skipped, ours the same except the five
artefacts; one real difference, found this way and fixed (the vendored base class's weight renaming, docs/design.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py"
SIDES = ("stock", "ours")
# Tests that choose labels or classes by the class name in transformers' auto mappings: on our side they compute no
# loss (`test_training*`) or find no causal-LM head to check (`test_causal_lm_loss_honors_shift_labels`).
ARTEFACTS = (
    "test_training",
    "test_training_gradient_checkpointing",
    "test_training_gradient_checkpointing_use_reentrant_false",
    "test_training_gradient_checkpointing_use_reentrant_true",
    "test_causal_lm_loss_honors_shift_labels",
)


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """{test name: (passed | failed | error | skipped, first line of the message)} from a junit XML file."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = ((child.get("message") or "").strip().splitlines() or [""])[0][:300]
                break
        result[case.get("name")] = (kind, message)
    return result


def compare(stock: dict, ours: dict) -> list[dict]:
    """The tests whose outcome differs between the sides (a test missing on one side counts as `absent`)."""
    rows = []
    for name in sorted(set(stock) | set(ours)):
        a, b = stock.get(name, ("absent", "")), ours.get(name, ("absent", ""))
        if a[0] != b[0]:
            rows.append({"test": name, "stock": a[0], "ours": b[0], "stock_message": a[1], "ours_message": b[1],
                         "artefact": name in ARTEFACTS})  # fmt: skip
    return rows


def run_side(side: str, src: Path, out: Path, python: str, extra: list[str]) -> Path:
    junit = out / f"{side}.xml"
    env = {**os.environ, "QPV_UPSTREAM_SIDE": side, "QPV_ROOT": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "upstream_tests_plugin", "-q", "-rA",
           TEST_FILE, f"--junitxml={junit}", *extra]  # fmt: skip
    with open(out / f"{side}.log", "w") as log:
        subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if not junit.exists():
        raise SystemExit(f"{side}: pytest wrote no results; see {out / f'{side}.log'}")
    return junit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="a transformers source checkout (with its tests/)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/qwen-prunevid-upstream-tests"))
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the project's venv python")
    ap.add_argument("pytest_args", nargs="*", help="passed to both pytest runs (after `--`)")
    args = ap.parse_args(argv)
    if not (args.src / TEST_FILE).is_file():
        ap.error(f"{args.src / TEST_FILE} not found: --src must be a transformers source checkout")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {side: outcomes(run_side(side, args.src, args.out, args.python, args.pytest_args)) for side in SIDES}
    rows = compare(results["stock"], results["ours"])
    counts = {side: {k: sum(1 for v in r.values() if v[0] == k) for k in ("passed", "failed", "error", "skipped")}
              for side, r in results.items()}  # fmt: skip
    report = {"src": str(args.src), "counts": counts, "differences": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    for side in SIDES:
        print(f"{side}: {len(results[side])} tests, {counts[side]}")
    for row in rows:
        tag = " (artefact: picks classes by name)" if row["artefact"] else ""
        print(f"DIFFERS {row['test']}{tag}\n  stock: {row['stock']} {row['stock_message']}\n"
              f"  ours:  {row['ours']} {row['ours_message']}")  # fmt: skip
    real = [row for row in rows if not row["artefact"]]
    print(f"{len(rows)} differing, {len(real)} not a known artefact; report: {args.out / 'report.json'}")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main())
