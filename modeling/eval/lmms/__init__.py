"""lmms-eval plugin: PruneVid on MVBench, VideoMME, EgoSchema, ... with lmms-eval's own Qwen2.5-VL input path.

    pip install 'qwen-prunevid[eval]'
    lmms-eval --model qwen2_5_vl_prunevid \
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,prunevid=paper --tasks mvbench,videomme

The model is registered through lmms-eval's entry-point group `lmms_eval.models` (`manifests` below); its class is
[`modeling.eval.lmms.model.Qwen2_5_VLPruneVidLMM`]. `TASKS_DIR` holds the local task `prunevid_moving_shapes` (the
held-out split of the project's moving-shapes benchmark): pass it with `--include_path` (`python -m modeling.eval.lmms`
prints it). Importing this module does not import lmms-eval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


# lmms-eval loads this module (the entry point) when it builds its model registry, before any task imports
# qwen-vl-utils, which reads the variable once: videos are then read with decord, for this model and for a stock
# `qwen2_5_vl` run in the same environment alike (qwen-vl-utils' last resort, torchvision.io.read_video, is gone).
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


__all__ = ["MODEL_ID", "TASKS_DIR", "manifests"]

MODEL_ID = "qwen2_5_vl_prunevid"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def manifests() -> list[Any]:
    """The entry point lmms-eval reads (group `lmms_eval.models`): one chat-model manifest, `qwen2_5_vl_prunevid`
    (a chat model like the `qwen2_5_vl` it extends, so both build their inputs the same way)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path="modeling.eval.lmms.model.Qwen2_5_VLPruneVidLMM")]
