"""tools/upstream_tests.py: transformers' own Qwen2.5-VL model tests on the stock classes and on ours, compared.

A stand-in for a transformers checkout (a test module of the same name and class) checks what the tool promises:
our classes in the test module's place on one side only, PruneVid off there, per-test comparison, the known
artefacts told apart from a real difference, the exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import upstream_tests  # noqa: E402

STAND_IN = '''
import unittest

from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel


class Qwen2_5_VLModelTest(unittest.TestCase):
    all_model_classes = (Qwen2_5_VLModel, Qwen2_5_VLForConditionalGeneration)

    def test_same_on_both_sides(self):
        self.assertEqual(len(self.all_model_classes), 2)

    def test_classes_are_the_module_names(self):
        self.assertEqual(self.all_model_classes, (Qwen2_5_VLModel, Qwen2_5_VLForConditionalGeneration))

    def test_drop_in_has_pruneVid_off(self):
        cls = self.all_model_classes[1]
        if cls.__module__.startswith("transformers."):
            self.skipTest("stock")
        from modeling import PruneVidConfig
        from modeling.demo.offline import tiny_config

        self.assertEqual(cls(tiny_config()).prunevid, PruneVidConfig.disabled())

    def test_training(self):  # stands for a test that picks classes by name: a known artefact when it differs
        self.assertTrue(Qwen2_5_VLForConditionalGeneration.__module__.startswith("transformers."))

    def test_base_class_is_stock(self):  # stands for a real difference
        self.assertTrue(Qwen2_5_VLModel.__module__.startswith("transformers."))
'''


def test_compares_stock_and_ours_test_by_test(tmp_path, capsys):
    src = tmp_path / "transformers"
    folder = src / "tests" / "models" / "qwen2_5_vl"
    folder.mkdir(parents=True)
    for package in (src / "tests", src / "tests" / "models", folder):
        (package / "__init__.py").write_text("")
    (folder / "test_modeling_qwen2_5_vl.py").write_text(STAND_IN)

    code = upstream_tests.main(["--src", str(src), "--out", str(tmp_path / "out"), "--python", sys.executable])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["stock"] == {"passed": 4, "failed": 0, "error": 0, "skipped": 1}
    assert report["counts"]["ours"] == {"passed": 3, "failed": 2, "error": 0, "skipped": 0}
    differing = {row["test"]: (row["stock"], row["ours"], row["artefact"]) for row in report["differences"]}
    assert differing == {
        "test_drop_in_has_pruneVid_off": ("skipped", "passed", False),
        "test_training": ("passed", "failed", True),
        "test_base_class_is_stock": ("passed", "failed", False),
    }
    assert code == 1  # a difference that is not a known artefact
    out = capsys.readouterr().out
    assert "DIFFERS test_base_class_is_stock" in out and "2 not a known artefact" in out


def test_refuses_a_folder_without_the_tests(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        upstream_tests.main(["--src", str(tmp_path)])
    assert "transformers source checkout" in capsys.readouterr().err
