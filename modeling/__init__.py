"""qwen-prunevid: PruneVid visual-token pruning for Qwen2.5-VL as a drop-in class.

    from modeling import Qwen2_5_VLPruneVid, PruneVidConfig
"""

from .model import Qwen2_5_VLPruneVid
from .pipeline import VideoQA
from .prunevid.config import PRESETS, PruneVidConfig

__all__ = ["PRESETS", "PruneVidConfig", "Qwen2_5_VLPruneVid", "VideoQA"]
