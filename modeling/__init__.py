"""qwen-prunevid: PruneVid visual-token pruning for Qwen2.5-VL as a drop-in class.

    from modeling import Qwen2_5_VLPruneVid, PruneVidConfig

The package, by concern (imports point down this list, never up; tests/test_layout.py checks it):

- `modeling.eval`: the accuracy table, its benchmark and baselines, the lmms-eval plugin;
- `modeling.app`: the front door, `VideoQA`, `MediaOptions` and the `qwen-prunevid` command line;
- `modeling.integration` (the glue: `Qwen2_5_VLPruneVid`, the controller, stats) and `modeling.demo` (the offline
  model, tokenizer, processor and clips);
- `modeling.prunevid`: the algorithm in plain PyTorch, and `PruneVidConfig`;
- `modeling.modeling_qwen2_5_vl`: the vendored upstream file with the patch series applied (generated).

The names below are imported on first use (PEP 562), so that `python -m modeling --help` and the command line's input
checks do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .app.options import MediaOptions
    from .app.videoqa import VideoQA
    from .integration.controller import PruneVidController
    from .integration.model import Qwen2_5_VLPruneVid
    from .integration.stats import PruneVidStats
    from .prunevid.config import PRESETS, PruneVidConfig

__all__ = ["PRESETS", "MediaOptions", "PruneVidConfig", "PruneVidController", "PruneVidStats", "Qwen2_5_VLPruneVid",
           "VideoQA"]  # fmt: skip

_LAZY = {
    "PRESETS": ".prunevid.config",
    "PruneVidConfig": ".prunevid.config",
    "MediaOptions": ".app.options",
    "VideoQA": ".app.videoqa",
    "PruneVidController": ".integration.controller",
    "PruneVidStats": ".integration.stats",
    "Qwen2_5_VLPruneVid": ".integration.model",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
