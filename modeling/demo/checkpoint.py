"""A small Qwen2.5-VL trained here to answer the moving-shapes benchmark (`modeling.eval.benchmark`).

No released Qwen2.5-VL weights can be downloaded where this project is built, so the offline demo, the accuracy
table and the lmms-eval tests use a model with the real Qwen2.5-VL architecture scaled down (`demo_config`), the
real tokenizer and processor (`modeling.demo.offline`), trained from scratch by `tools/train_demo_model.py` (its log is
`modeling/demo/assets/demo_model.log`).

The weights ship compactly as `modeling/demo/assets/demo_model.safetensors`: every tensor but the embedding in float16,
and only the embedding rows of the tokens the task uses (`embed_ids` / `embed_rows`); the other rows are zero, as
they were throughout training (tied embeddings: a zero row is a zero logit, so the model learned to score its
answers above every unused token). On first use, `checkpoint_path()` expands that into a standard checkpoint folder
(config.json, model.safetensors, tokenizer and processor files) in the user cache, which any Qwen2.5-VL loader reads:
`Qwen2_5_VLPruneVid.from_pretrained(path)`, the stock `Qwen2_5_VLForConditionalGeneration`, `AutoProcessor`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import torch

__all__ = ["ASSET", "DEMO_ARCHITECTURE", "EMBED_KEY", "cache_dir", "checkpoint_path", "demo_config", "export_asset",
           "load_asset", "quiet_progress"]  # fmt: skip

ASSET = Path(__file__).resolve().parent / "assets" / "demo_model.safetensors"
EMBED_KEY = "model.language_model.embed_tokens.weight"

#: The scaled-down architecture: vision depth 4 (full attention in blocks 1 and 3, windowed elsewhere, as the
#: released towers alternate), LLM 8 layers so that PruneVid's layer M = round(10 * 8 / 28) = 3 is mid-network.
DEMO_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 192,
    "intermediate_size": 384,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vision_depth": 4,
    "vision_hidden_size": 128,
    "vision_num_heads": 4,
    "vision_intermediate_size": 256,
    "vision_fullatt_block_indexes": [1, 3],
}


def demo_config():
    """The `Qwen2_5_VLConfig` of the demo model (real token ids, patching and rotary layout; small widths)."""
    from .offline import tiny_config

    return tiny_config(**DEMO_ARCHITECTURE)


def export_asset(state_dict: dict[str, torch.Tensor], embed_ids: list[int], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write the compact asset: float16 weights without the embedding, plus the embedding rows `embed_ids`."""
    import torch
    from safetensors.torch import save_file

    ids = torch.tensor(sorted(set(embed_ids)), dtype=torch.int64)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items()
               if k != EMBED_KEY and k != "lm_head.weight"}  # fmt: skip
    tensors["embed_ids"] = ids
    tensors["embed_rows"] = state_dict[EMBED_KEY].detach()[ids].to(torch.float16).contiguous()
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def load_asset(path: str | os.PathLike = ASSET) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The full float32 state dict of the demo model (zero embedding rows outside the task's tokens), and the
    asset's metadata."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the demo model asset is missing: {path} (reinstall qwen-prunevid)")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    ids, rows = tensors.pop("embed_ids"), tensors.pop("embed_rows")
    config = demo_config()
    embed = torch.zeros(config.text_config.vocab_size, config.text_config.hidden_size, dtype=torch.float32)
    embed[ids] = rows.float()
    state = {k: v.float() for k, v in tensors.items()}
    state[EMBED_KEY] = embed
    state["lm_head.weight"] = embed  # tied, as in the config
    return state, metadata


def cache_dir() -> Path:
    """Where the demo checkpoint and generated clips are written: `$QWEN_PRUNEVID_CACHE`, else
    `$XDG_CACHE_HOME/qwen-prunevid`, else `~/.cache/qwen-prunevid`."""
    explicit = os.environ.get("QWEN_PRUNEVID_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwen-prunevid"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def checkpoint_path(cache: str | os.PathLike | None = None, asset: str | os.PathLike = ASSET) -> Path:
    """A standard Qwen2.5-VL checkpoint folder of the demo model, written from the asset on first use.

    The folder is `<cache>/demo-model-<digest of the asset>` (default cache: `cache_dir()`); it is built in a
    temporary folder and renamed into place, so an interrupted first use never leaves half a checkpoint.
    """
    asset = Path(asset)
    root = Path(cache) if cache is not None else cache_dir()
    target = root / f"demo-model-{_digest(asset)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=root))
    try:
        _write_checkpoint(staging, asset)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_checkpoint(folder: Path, asset: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from .offline import build_processor

    state, metadata = load_asset(asset)
    config = demo_config()
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    with quiet_progress(hf_logging):
        model.save_pretrained(folder)
    build_processor().save_pretrained(folder)
    (folder / "demo_model.json").write_text(json.dumps({"asset": asset.name, **metadata}, indent=2) + "\n")


class quiet_progress:
    """Context manager: transformers' progress bars off (loading a tiny model needs none), restored after."""

    def __init__(self, hf_logging: Any) -> None:
        self.hf_logging = hf_logging

    def __enter__(self) -> None:
        self.was_enabled = self.hf_logging.is_progress_bar_enabled()
        self.hf_logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        if self.was_enabled:
            self.hf_logging.enable_progress_bar()
