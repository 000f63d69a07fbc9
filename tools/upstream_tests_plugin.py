# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""pytest plugin of `tools/upstream_tests.py`: on the `ours` side (`QPV_UPSTREAM_SIDE=ours`), transformers'
Qwen2.5-VL model tests run on our classes, PruneVid off.

Before collection, the test module is imported and its names `Qwen2_5_VLForConditionalGeneration` and
`Qwen2_5_VLModel` (and the test class's `all_model_classes`) become `modeling.Qwen2_5_VLPruneVid` and the vendored
`Qwen2_5_VLModel`; transformers' own modules and auto mappings are left as they are. Every model the tests build,
directly or through `from_pretrained`, gets `PruneVidConfig.disabled()` (the drop-in class alone would take the
paper's settings), through the class's own `prunevid=` default; each test checks that it is still in place.
"""

from __future__ import annotations

import importlib
import os
import sys

SIDE = os.environ.get("QPV_UPSTREAM_SIDE", "stock")
MODULE = "tests.models.qwen2_5_vl.test_modeling_qwen2_5_vl"
_state: dict = {}


def pytest_configure(config):
    if SIDE != "ours":
        return
    sys.path.insert(0, os.environ["QPV_ROOT"])
    sys.path.insert(0, str(config.rootpath))
    from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
    from modeling.integration import model as glue
    from modeling.modeling_qwen2_5_vl import Qwen2_5_VLModel

    glue._EXPLICIT_SETTINGS.set(PruneVidConfig.disabled())
    module = importlib.import_module(MODULE)
    module.Qwen2_5_VLForConditionalGeneration = Qwen2_5_VLPruneVid
    module.Qwen2_5_VLModel = Qwen2_5_VLModel
    module.Qwen2_5_VLModelTest.all_model_classes = (Qwen2_5_VLModel, Qwen2_5_VLPruneVid)
    _state.update(settings=glue._EXPLICIT_SETTINGS, off=PruneVidConfig.disabled(), module=module)


def pytest_report_header(config):
    if SIDE != "ours":
        return ["upstream tests: stock classes"]
    classes = _state["module"].Qwen2_5_VLModelTest.all_model_classes
    return [f"upstream tests: our classes {[f'{c.__module__}.{c.__qualname__}' for c in classes]}, PruneVid off"]


def pytest_runtest_setup(item):
    if SIDE == "ours" and _state["settings"].get() != _state["off"]:
        raise RuntimeError("upstream tests: the PruneVid-off default was lost; the results would not be stock's")
