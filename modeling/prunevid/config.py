"""`PruneVidConfig`: the knobs of PruneVid (Huang, Zhou, Han, ACL 2025 Findings, arXiv 2412.16117).

Plain dataclass, no transformers import. Values are validated on construction; the pruning layer is checked
against the model's depth when the config is attached to a model (`Qwen2_5_VLPruneVid.prunevid = ...`).

Mapping from the earlier PruneVid-on-Qwen2.5-VL package (see README, "Migrating"):
``enable_stage1/2`` -> ``enable_stage1/2``; ``enable_cache_compression`` -> ``enable_stage3``; ``tau``,
``cluster_ratio``, ``temporal_segment_ratio``, ``dpc_knn_k``, ``keep_ratio``, ``pruning_layer``,
``attention_aggregation`` keep their names. Its "conservative" preset pruned *more* and "aggressive" *less*; here
the names mean what they say: ``conservative()`` keeps more tokens, ``aggressive()`` keeps fewer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


CHOICES = {
    "selection_query": ("after_video", "last"),
    "attention_aggregation": ("max", "mean"),
    "selection_scope": ("grouped", "global"),
    "vision_attention": ("stock", "varlen"),
}


@dataclass
class PruneVidConfig:
    """PruneVid settings. Defaults are the paper's (``PruneVidConfig.paper()``).

    Stage 1 (Sec. 3.2, spatial-temporal token merging, before the LLM):
        tau: cosine-similarity threshold above which a location is static within a segment, in [-1, 1].
        temporal_segment_ratio: temporal clusters per temporal patch (DPC-KNN over frame features), in (0, 1].
        cluster_ratio: share of static / dynamic tokens kept by spatial DPC-KNN merging, in (0, 1].
        dpc_knn_k: neighbours for the DPC-KNN density, >= 1.
        min_tokens_to_cluster: spatial clustering only runs on more than this many tokens (authors: 14).
    Stage 2 (Sec. 3.3, attention-based selection at LLM layer ``pruning_layer``):
        keep_ratio: share (alpha) of the candidate visual tokens kept, per group, in (0, 1].
        pruning_layer: 0-indexed layer after which tokens are dropped; ``None`` scales the paper's 10-of-28
            to the model depth (``round(10 * depth / 28)``). Must be <= depth - 2.
        selection_query: "after_video" (every text token after the last video: question, options, answer
            template; the paper) or "last" (the last token only; FastV).
        attention_aggregation: reduction over heads and then over queries, "max" (paper) or "mean".
        selection_scope: "grouped" keeps alpha per static segment block and per dynamic frame (paper); "global"
            keeps alpha of all candidates of a sample (FastV).
        include_images: also select among image tokens (each image its own group). Stage 1 never merges images.
    Stage 3 (Sec. 3.4): enable_stage3 cuts the KV cache of layers 0..pruning_layer to the kept tokens, so every
        layer caches the same set and decoding attends only to it.
    vision_attention: "stock" (upstream vision tower) or "varlen" (opt-in fused windowed attention, GPU only).
    """

    enable_stage1: bool = True
    enable_stage2: bool = True
    enable_stage3: bool = True
    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    dpc_knn_k: int = 7
    min_tokens_to_cluster: int = 14
    keep_ratio: float = 0.4
    pruning_layer: int | None = None
    selection_query: str = "after_video"
    attention_aggregation: str = "max"
    selection_scope: str = "grouped"
    include_images: bool = False
    vision_attention: str = "stock"

    def __post_init__(self) -> None:
        for name in ("enable_stage1", "enable_stage2", "enable_stage3", "include_images"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PruneVidConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _check_range("tau", self.tau, -1.0, 1.0, low_open=False)
        for name in ("temporal_segment_ratio", "cluster_ratio", "keep_ratio"):
            _check_range(name, getattr(self, name), 0.0, 1.0, low_open=True)
        _check_int("dpc_knn_k", self.dpc_knn_k, minimum=1)
        _check_int("min_tokens_to_cluster", self.min_tokens_to_cluster, minimum=0)
        if self.pruning_layer is not None:
            _check_int("pruning_layer", self.pruning_layer, minimum=0)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"PruneVidConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.enable_stage3 and not self.enable_stage2:
            # Stage 3 compresses the cache to Stage 2's selection; without a selection it has nothing to do.
            self.enable_stage3 = False

    # ----------------------------------------------------------------------------------------------------- state
    @property
    def is_active(self) -> bool:
        """True when any stage (or the opt-in vision attention) changes the computation."""
        return self.enable_stage1 or self.enable_stage2 or self.vision_attention != "stock"

    def resolve_pruning_layer(self, num_layers: int) -> int:
        """The 0-indexed selection layer for a model of `num_layers` layers; raises if it is out of range."""
        layer = self.pruning_layer if self.pruning_layer is not None else round(10 * num_layers / 28)
        if not 0 <= layer <= num_layers - 2:
            raise ValueError(
                f"PruneVidConfig.pruning_layer={layer} is out of range for a model with {num_layers} layers: "
                f"allowed 0..{num_layers - 2} (tokens are dropped after this layer, so it cannot be the last)"
            )
        return layer

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PruneVidConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PruneVidConfig field(s): {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "PruneVidConfig":
        """A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------------------------------------------- presets
    @classmethod
    def paper(cls, **overrides: Any) -> "PruneVidConfig":
        """The paper's defaults: tau 0.8, segments 0.25, clusters 0.5, k 7, alpha 0.4, layer 10 of 28."""
        return cls(**overrides)

    @classmethod
    def conservative(cls, **overrides: Any) -> "PruneVidConfig":
        """Prunes less than the paper: stricter static test, more clusters, more tokens kept."""
        return cls(**{"tau": 0.9, "cluster_ratio": 0.75, "keep_ratio": 0.6, **overrides})

    @classmethod
    def aggressive(cls, **overrides: Any) -> "PruneVidConfig":
        """Prunes more than the paper: looser static test, fewer clusters, fewer tokens kept."""
        return cls(**{"tau": 0.7, "cluster_ratio": 0.35, "keep_ratio": 0.25, **overrides})

    @classmethod
    def stage1_only(cls, **overrides: Any) -> "PruneVidConfig":
        """Only the token merging before the LLM."""
        return cls(**{"enable_stage2": False, "enable_stage3": False, **overrides})

    @classmethod
    def fastv(cls, **overrides: Any) -> "PruneVidConfig":
        """FastV baseline (Chen et al., 2024): no merging; after layer 2 keep 50% of the visual tokens by the last
        token's attention (mean over heads), chosen globally. Scored pre-RoPE without a causal mask like Stage 2."""
        values = {
            "enable_stage1": False,
            "pruning_layer": 2,
            "keep_ratio": 0.5,
            "selection_query": "last",
            "attention_aggregation": "mean",
            "selection_scope": "global",
        }
        return cls(**{**values, **overrides})

    @classmethod
    def disabled(cls) -> "PruneVidConfig":
        """Every stage off: the model is the stock model."""
        return cls(enable_stage1=False, enable_stage2=False, enable_stage3=False)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PruneVidConfig":
        """A preset by name: paper, conservative, aggressive, stage1_only, fastv, off (= disabled)."""
        presets = {
            "paper": cls.paper,
            "conservative": cls.conservative,
            "aggressive": cls.aggressive,
            "stage1_only": cls.stage1_only,
            "fastv": cls.fastv,
            "off": lambda **kw: cls.disabled().replace(**kw),
            "disabled": lambda **kw: cls.disabled().replace(**kw),
        }
        if name not in presets:
            raise ValueError(f"unknown PruneVid preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)


PRESETS = ("paper", "conservative", "aggressive", "stage1_only", "fastv", "off")


def _check_range(name: str, value: Any, low: float, high: float, *, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"PruneVidConfig.{name}={value!r} is out of range: allowed {bracket}{low}, {high}]")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"PruneVidConfig.{name}={value!r} is out of range: allowed integers >= {minimum}")


__all__ = ["CHOICES", "PRESETS", "PruneVidConfig"]
