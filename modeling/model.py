"""`Qwen2_5_VLPruneVid`: the drop-in class. Everything but the PruneVid switch is inherited from the vendored,
patched `Qwen2_5_VLForConditionalGeneration`; with every stage off its forward is upstream's, line for line."""

from __future__ import annotations

from typing import Any

from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from .integration import PruneVidController
from .modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from .prunevid.config import PruneVidConfig
from .vision_attention import vision_attention_for


class Qwen2_5_VLPruneVid(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with PruneVid (Huang, Zhou, Han, ACL 2025 Findings) inside the forward.

    Loads the released checkpoints and saves checkpoints that the stock class loads. The PruneVid settings live in
    `model.prunevid` (reassignable at runtime) and are saved in `config.json` under `"prunevid"`.

    Example:
        >>> model = Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=PruneVidConfig.paper())
        >>> model.generate(**inputs)  # pruned prefill, compressed cache
        >>> model.prunevid_stats      # tokens per stage of the last prefill
    """

    def __init__(self, config, prunevid: PruneVidConfig | dict | None = None) -> None:
        super().__init__(config)
        if prunevid is None:
            saved = getattr(config, "prunevid", None)
            prunevid = PruneVidConfig.from_dict(saved) if isinstance(saved, dict) else PruneVidConfig.paper()
        self.prunevid = prunevid

    @classmethod
    def from_pretrained(cls, *args: Any, prunevid: PruneVidConfig | dict | None = None, **kwargs: Any):
        """`from_pretrained` of the stock class; `prunevid` (if given) replaces the saved/default settings."""
        model = super().from_pretrained(*args, **kwargs)
        if prunevid is not None:
            model.prunevid = prunevid
        return model

    @property
    def prunevid(self) -> PruneVidConfig:
        return self._prunevid_config

    @prunevid.setter
    def prunevid(self, value: PruneVidConfig | dict) -> None:
        if isinstance(value, dict):
            value = PruneVidConfig.from_dict(value)
        if not isinstance(value, PruneVidConfig):
            raise TypeError(f"prunevid must be a PruneVidConfig or a dict, got {type(value).__name__}")
        controller = PruneVidController(value, self.config) if value.is_active else None  # validates the layer
        self._prunevid_config = value
        self.config.prunevid = value.to_dict()
        self.model._prunevid = controller
        self.model.language_model._prunevid = controller
        self.model.visual._prunevid_vision = vision_attention_for(value)

    @property
    def prunevid_stats(self) -> dict[str, Any] | None:
        """Token counts of the last prefill: `visual_tokens`, `after_stage1`, `after_stage2`, `kv_cache_tokens`,
        `static_ratio`, `segments`, `pruning_layer` (per-sample lists when batched); None when nothing was pruned."""
        controller = self.model._prunevid
        return controller.stats() if controller is not None else None

    def prunevid_video_fates(self) -> list[dict[str, Any]]:
        """Per video of the last prefill: which tokens were merged as static, kept, or dropped (see
        `PruneVidController.video_fates`)."""
        controller = self.model._prunevid
        return controller.video_fates() if controller is not None else []


# The released checkpoints store `model.layers.*` / `visual.*`; transformers renames them on load only for its own
# classes (a class outside `transformers.` counts as custom code), so give ours the stock class's mapping.
register_checkpoint_conversion_mapping(
    Qwen2_5_VLPruneVid.__name__,
    get_checkpoint_conversion_mapping("Qwen2_5_VLForConditionalGeneration"),
    overwrite=True,
)
