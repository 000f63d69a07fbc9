"""qwen-prunevid: PruneVid visual-token pruning for Qwen2.5-VL as a drop-in class.

    from modeling import Qwen2_5_VLPruneVid, PruneVidConfig

The names are imported on first use (PEP 562), so that `python -m modeling --help` and the command line's input checks
do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .model import Qwen2_5_VLPruneVid
    from .pipeline import VideoQA
    from .prunevid.config import PRESETS, PruneVidConfig

__all__ = ["PRESETS", "PruneVidConfig", "Qwen2_5_VLPruneVid", "VideoQA"]

_LAZY = {
    "PRESETS": ".prunevid.config",
    "PruneVidConfig": ".prunevid.config",
    "Qwen2_5_VLPruneVid": ".model",
    "VideoQA": ".pipeline",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
