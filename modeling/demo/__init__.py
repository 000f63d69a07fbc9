"""The offline demo: everything needed to run Qwen2.5-VL here without the Hugging Face Hub.

- `offline`: the released model's tokenizer, processor and chat template rebuilt offline (`build_processor`), and
  model configs (`tiny_config` for CPU tests, `real_config` for the released 3B / 7B / 32B architectures).
- `checkpoint`: the small Qwen2.5-VL trained here on the moving-shapes benchmark, shipped as a compact asset
  (`assets/demo_model.safetensors`) and expanded on first use into a standard checkpoint folder (`checkpoint_path`).
- `clips`: synthetic clips (textured backgrounds, moving squares, scene cuts) and `write_video`.
- `question`: the bundled clip (`assets/demo_clip.mp4`), its question and correct answer, and how it is read.

Nothing here imports the rest of the package: the app (`modeling.app`) and the evaluation (`modeling.eval`) build on
it. Importing this module imports neither torch nor transformers.
"""

from .checkpoint import (
    ASSET,
    DEMO_ARCHITECTURE,
    EMBED_KEY,
    cache_dir,
    checkpoint_path,
    demo_config,
    export_asset,
    load_asset,
    quiet_progress,
)
from .question import DEMO_CLIP, DEMO_FPS, DEMO_PIXELS, DEMO_QUESTION_FILE, demo_question


__all__ = [
    "ASSET",
    "DEMO_ARCHITECTURE",
    "DEMO_CLIP",
    "DEMO_FPS",
    "DEMO_PIXELS",
    "DEMO_QUESTION_FILE",
    "EMBED_KEY",
    "cache_dir",
    "checkpoint_path",
    "demo_config",
    "demo_question",
    "export_asset",
    "load_asset",
    "quiet_progress",
]
