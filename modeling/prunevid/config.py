"""`PruneVidConfig`: the knobs of PruneVid (Huang, Zhou, Han, ACL 2025 Findings, arXiv 2412.16117).

A frozen dataclass, no transformers import. Values are validated on construction: a value of the wrong type raises
``TypeError`` and a value out of range ``ValueError``, both naming the field, the value and what is allowed; numpy
and 0-dim torch numbers are accepted and stored as plain Python ``int`` / ``float`` (so ``to_dict()`` is JSON). A
config cannot be changed in place (``config.keep_ratio = 0.3`` raises): ``config.replace(keep_ratio=0.3)`` gives a
validated copy, and ``model.prunevid = model.prunevid.replace(...)`` applies it to a model, where the pruning layer
is checked against the model's depth.

Names in the earlier PruneVid-on-Qwen2.5-VL package (a wrapper around a hand-edited modeling file) and here:
``enable_stage1/2`` -> ``enable_stage1/2``; ``enable_cache_compression`` -> ``enable_stage3``; ``tau``,
``cluster_ratio``, ``temporal_segment_ratio``, ``dpc_knn_k``, ``keep_ratio``, ``pruning_layer``,
``attention_aggregation`` keep their names. Its "conservative" preset pruned *more* and "aggressive" *less*; here
the names mean what they say: ``conservative()`` keeps more tokens, ``aggressive()`` keeps fewer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import struct
import warnings
from dataclasses import dataclass
from typing import Any


CHOICES = {
    "selection_query": ("after_video", "last"),
    "attention_aggregation": ("max", "mean"),
    "selection_scope": ("grouped", "global"),
    "vision_attention": ("stock", "varlen", "varlen_compiled"),
    "rope_index": ("stock", "vectorized"),
    "keep_rounding": ("floor", "ceil"),
}

INT_MAX = 2**31 - 1
"""Largest accepted integer setting (``dpc_knn_k``, ``min_tokens_to_cluster``, ``pruning_layer``): far beyond any
real use (``k`` is clamped to the points available, the layer to the model's depth), and safe for int32 kernels."""


@dataclass(frozen=True)
class PruneVidConfig:
    """PruneVid settings. Defaults are the paper's (``PruneVidConfig.paper()``).

    A frozen dataclass, validated on construction (a value of the wrong type raises ``TypeError``, one out of range
    ``ValueError``, naming the field, the value and what is allowed; numpy / torch scalars are stored as plain
    numbers). Change a config with ``config.replace(...)``; ``from_dict`` ignores unknown keys with a warning, or
    raises with ``strict=True``; a pruning layer beyond the model's depth is caught when the config is set on a model.

    | field | default | allowed |
    |---|---|---|
    | ``enable_stage1`` | ``True`` | bool |
    | ``enable_stage2`` | ``True`` | bool |
    | ``enable_stage3`` | ``None`` | bool or None (None follows ``enable_stage2``) |
    | ``tau`` | ``0.8`` | [-1, 1] |
    | ``temporal_segment_ratio`` | ``0.25`` | (0, 1] |
    | ``cluster_ratio`` | ``0.5`` | (0, 1] |
    | ``dynamic_cluster_ratio`` | ``None`` | None or (0, 1] (None: ``cluster_ratio``) |
    | ``dpc_knn_k`` | ``7`` | integer >= 1 (the earlier package used 5; the authors' code 7) |
    | ``min_tokens_to_cluster`` | ``14`` | integer >= 0 |
    | ``keep_ratio`` | ``0.4`` | (0, 1] |
    | ``keep_rounding`` | ``"floor"`` | "floor", "ceil" |
    | ``pruning_layer`` | ``None`` | None or integer 0..depth-2 |
    | ``selection_query`` | ``"after_video"`` | "after_video", "last" |
    | ``attention_aggregation`` | ``"max"`` | "max", "mean" |
    | ``selection_scope`` | ``"grouped"`` | "grouped", "global" |
    | ``include_images`` | ``False`` | bool |
    | ``vision_attention`` | ``"stock"`` | "stock", "varlen", "varlen_compiled" |
    | ``cuda_graphs`` | ``False`` | bool |
    | ``layer_graphs`` | ``False`` | bool |
    | ``rope_index`` | ``"stock"`` | "stock", "vectorized" |

    Stage switches: ``enable_stage1`` (merging), ``enable_stage2`` (selection) and ``enable_stage3`` (the earlier
    ``enable_cache_compression``), below.

    Stage 1 (Sec. 3.2, spatial-temporal token merging, before the LLM):
        tau: cosine-similarity threshold above which a location is static within a segment, in [-1, 1].
        temporal_segment_ratio: temporal clusters per temporal patch (DPC-KNN over frame features), in (0, 1].
        cluster_ratio: share of static / dynamic tokens kept by spatial DPC-KNN merging, in (0, 1].
        dynamic_cluster_ratio: the same for each frame's dynamic tokens only; ``None`` (the paper): ``cluster_ratio``.
            ``1.0`` keeps every dynamic token (no spatial merging of what moves), which won clearly on the
            moving-shapes benchmark (docs/accuracy: 107 questions won, 16 lost at 3-16%); not the authors'
            algorithm.
        dpc_knn_k: neighbours for the DPC-KNN density, >= 1.
        min_tokens_to_cluster: spatial clustering only runs on more than this many tokens (authors: 14).
    Stage 2 (Sec. 3.3, attention-based selection at LLM layer ``pruning_layer``):
        keep_ratio: share (alpha) of the candidate visual tokens kept, per group, in (0, 1].
        keep_rounding: quota of a group of n, "floor" (``floor(alpha * n)``, the authors' ``int(alpha * n)``: a
            group of 1-2 tokens keeps none at alpha 0.4) or "ceil" (every non-empty group keeps at least one).
        pruning_layer: 0-indexed layer M after which tokens are dropped; ``None``: the paper's M = 10 (of PLLaVA's
            32 layers) kept as 10 for the 28-layer Qwen2.5-VL-7B and scaled to other depths, ``round(10 * depth /
            28)`` clamped to 0..depth-2. Must be <= depth - 2.
        selection_query: "after_video" (every text token after the last video: question, options, answer
            template; the paper) or "last" (the last token only; FastV).
        attention_aggregation: reduction over heads and then over queries, "max" (paper) or "mean".
        selection_scope: "grouped" keeps alpha per static segment block and per dynamic frame (paper); "global"
            keeps alpha of all candidates of a sample (FastV).
        include_images: also select among image tokens (each image its own group). Stage 1 never merges images.
    Stage 3 (Sec. 3.4): enable_stage3 cuts the KV cache of layers 0..pruning_layer to the kept tokens, so every
        layer caches the same set and decoding attends only to it. ``None`` (default) follows ``enable_stage2``;
        ``True`` without Stage 2 is turned off with a warning (there is no selection to cut the cache to).
    vision_attention: "stock" (upstream vision tower), "varlen" (opt-in fused windowed attention, through a Triton
        kernel for the windowed blocks where Triton imports, and the patch embedding as one matmul, GPU only; it
        also runs with every stage off, e.g.
        ``PruneVidConfig.disabled().replace(vision_attention="varlen")``) or
        "varlen_compiled" (the same, each vision block through ``torch.compile(dynamic=True)``: one compile on the
        first call, 18 s for the 7B tower on an H200, then any video length without recompiling; on CUDA the whole
        tower is then replayed as one CUDA graph per video grid, recorded at the grid's second call, whose scratch
        memory stays reserved).
    cuda_graphs: run Stage 1 and the Stage-2 scoring as recorded CUDA graphs (CUDA only; elsewhere, with autograd
        on or inside ``torch.compile`` they run eagerly): the same kernels replayed with one launch, so the same
        results as eager, without the host cost of a few hundred small launches. A video shape (frames,
        resolution, temporal segments) or prompt length runs eagerly the first time and is recorded when it comes
        again (about twice an eager call, once); at most 8 graphs are kept per model, in one memory pool
        (``modeling.prunevid.graphs``).
    layer_graphs: replay the pruned prefill's decoder layers as CUDA graphs, padded at the end to one of 16
        lengths per octave (from 256 tokens on at most 1/16 more; the pads come after every real token, so causal
        attention keeps them out of the real tokens' results). The other kernel shapes change the rounding, not the
        function: not bit for bit the eager layers (``modeling.integration.layer_graphs``: where it applies, how it
        is tested). Same recording rule and CUDA-only fallbacks as ``cuda_graphs``, at most 6 graphs per model.
    rope_index: "stock" (upstream's ``get_rope_index``) or "vectorized": the prompt's 3-D positions computed as
        upstream computes them, with the runs of token types found in one vectorised pass instead of upstream's
        token-by-token ``itertools.groupby`` (2-3 ms per 64-frame prompt, 7-10 ms at 256 frames on the lent H200
        hosts); the same positions, element for element, checked once per process against the installed release's
        own method (``modeling.integration.rope_index``). Like ``vision_attention`` it also runs with every stage
        off.

    Presets: ``paper()`` (the default), ``fast()`` (``paper()`` with the compiled fused vision tower, ``cuda_graphs``,
    ``layer_graphs`` and the vectorised ``rope_index``),
    ``conservative()`` (keeps more), ``aggressive()`` (keeps fewer),
    ``stage1_only()``, ``fastv()`` (the FastV baseline: no merging, layer 2, 50% by the last token's attention,
    chosen globally) and ``disabled()`` (the stock model); by name through ``preset(name)`` (``PRESETS``; "off" is
    ``disabled``). A model saves its config in ``config.json`` under ``"prunevid"`` and ``from_pretrained`` restores
    it; checkpoints saved by ``Qwen2_5_VLPruneVid`` load in the stock class. ``model.prunevid =
    PruneVidConfig.disabled()`` switches at runtime.
    """

    enable_stage1: bool = True
    enable_stage2: bool = True
    enable_stage3: bool | None = None
    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    dynamic_cluster_ratio: float | None = None
    dpc_knn_k: int = 7
    min_tokens_to_cluster: int = 14
    keep_ratio: float = 0.4
    keep_rounding: str = "floor"
    pruning_layer: int | None = None
    selection_query: str = "after_video"
    attention_aggregation: str = "max"
    selection_scope: str = "grouped"
    include_images: bool = False
    vision_attention: str = "stock"
    cuda_graphs: bool = False
    layer_graphs: bool = False
    rope_index: str = "stock"

    def __post_init__(self) -> None:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name in ("enable_stage1", "enable_stage2", "include_images", "cuda_graphs", "layer_graphs"):
            values[name] = _check_bool(name, values[name])
        if values["enable_stage3"] is not None:
            values["enable_stage3"] = _check_bool("enable_stage3", values["enable_stage3"])
        values["tau"] = _check_real("tau", values["tau"], -1.0, 1.0, low_open=False)
        for name in ("temporal_segment_ratio", "cluster_ratio", "keep_ratio"):
            values[name] = _check_real(name, values[name], 0.0, 1.0, low_open=True)
        if values["dynamic_cluster_ratio"] is not None:
            values["dynamic_cluster_ratio"] = _check_real(
                "dynamic_cluster_ratio", values["dynamic_cluster_ratio"], 0.0, 1.0, low_open=True
            )
        values["dpc_knn_k"] = _check_int("dpc_knn_k", values["dpc_knn_k"], 1)
        values["min_tokens_to_cluster"] = _check_int("min_tokens_to_cluster", values["min_tokens_to_cluster"], 0)
        if values["pruning_layer"] is not None:
            values["pruning_layer"] = _check_int("pruning_layer", values["pruning_layer"], 0)
        for name, allowed in CHOICES.items():
            if not isinstance(values[name], str):
                raise TypeError(_wrong_type(name, values[name], f"one of {allowed}"))
            if values[name] not in allowed:
                raise ValueError(f"PruneVidConfig.{name}={values[name]!r} is not one of {allowed}")
        if values["enable_stage3"] is None:
            values["enable_stage3"] = values["enable_stage2"]
        elif values["enable_stage3"] and not values["enable_stage2"]:
            # Stage 3 compresses the cache to Stage 2's selection; without a selection it has nothing to do.
            warnings.warn(
                "PruneVidConfig: enable_stage3=True is turned off because enable_stage2=False (Stage 3 cuts the KV "
                "cache to Stage 2's selection)",
                UserWarning,
                stacklevel=3,
            )
            values["enable_stage3"] = False
        for name, value in values.items():  # normalised values (plain Python types) into the frozen instance
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------------------------------- state
    @property
    def is_active(self) -> bool:
        """True when any stage (or an opt-in path: the vision attention, the rope index) changes the computation."""
        opt_in = self.vision_attention != "stock" or self.rope_index != "stock"
        return self.enable_stage1 or self.enable_stage2 or opt_in

    def resolve_pruning_layer(self, num_layers: int) -> int:
        """The 0-indexed selection layer M (Sec. 3.3) for a model of ``num_layers`` layers.

        ``pruning_layer=None`` scales layer 10 of the 28-layer Qwen2.5-VL-7B (the paper's M = 10, of PLLaVA's 32
        layers) to the depth, ``round(10 * depth / 28)`` (Python's half-to-even ``round``), clamped to
        ``0..depth-2`` so every model of two or more layers gets a valid layer. An explicit ``pruning_layer``
        outside ``0..depth-2`` raises: tokens are dropped after layer M, so M cannot be the last layer. Stage 2
        needs ``depth >= 2``; a 1-layer model raises here (the caller only asks when Stage 2 is on).
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        num_layers = int(num_layers)
        if num_layers < 2:
            raise ValueError(
                f"PruneVid Stage 2 needs a model of at least 2 layers (tokens are dropped after a layer that is not "
                f"the last), got {num_layers}; use enable_stage2=False"
            )
        if self.pruning_layer is None:
            return min(max(round(10 * num_layers / 28), 0), num_layers - 2)
        if not 0 <= self.pruning_layer <= num_layers - 2:
            raise ValueError(
                f"PruneVidConfig.pruning_layer={self.pruning_layer} is out of range for a model with {num_layers} "
                f"layers: allowed 0..{num_layers - 2} (tokens are dropped after this layer, so it cannot be the last)"
            )
        return self.pruning_layer

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = False) -> "PruneVidConfig":
        """A config from :meth:`to_dict` output, e.g. a checkpoint's ``config.json["prunevid"]``.

        Unknown keys (settings of a newer version) are ignored with one warning naming them, so newer checkpoints
        still load; ``strict=True`` raises ``ValueError`` instead. Known keys are validated as in the constructor.
        """
        if not isinstance(values, dict):
            raise TypeError(f"PruneVidConfig.from_dict expects a dict, got {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown and strict:
            raise ValueError(f"unknown PruneVidConfig field(s): {unknown}")
        if unknown:
            warnings.warn(f"PruneVidConfig.from_dict: ignoring unknown field(s) {unknown}", UserWarning, stacklevel=2)
        return cls(**{name: value for name, value in values.items() if name in known})

    def replace(self, **changes: Any) -> "PruneVidConfig":
        """A validated copy with ``changes`` applied (a config is immutable).

        Turning Stage 2 off without naming ``enable_stage3`` turns Stage 3 off with it (no warning).
        """
        if "enable_stage2" in changes and "enable_stage3" not in changes and not changes["enable_stage2"]:
            changes["enable_stage3"] = None
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------------------------------------------- presets
    @classmethod
    def paper(cls, **overrides: Any) -> "PruneVidConfig":
        """The paper's defaults: tau 0.8, segments 0.25, clusters 0.5, k 7, alpha 0.4 (floor), layer 10 of 28."""
        return cls(**overrides)

    @classmethod
    def fast(cls, **overrides: Any) -> "PruneVidConfig":
        """The fastest correct setting: the paper's pruning with the fused, compiled vision tower
        (``vision_attention="varlen_compiled"``), Stage 1 and the Stage-2 scoring replayed as CUDA graphs
        (``cuda_graphs=True``) and the pruned prefill's decoder layers replayed as CUDA graphs at bucketed lengths
        (``layer_graphs=True``: 40.9 instead of 44.5 ms for the prefill call at 64 frames, the same at 256, on an H200,
        docs/bench/h200-2026-12-05-layers; no gain on the faster lent H100s, docs/bench/h100-2026-12-06-twentysecond,
        15 ms on a slower one: time to first token 130.5 instead of 145.9 ms at 64 frames, 435 instead of 450 at
        256, docs/bench/h100-2026-12-06-twentythird; they save host time; a new clip's second call records them;
        the layers compute the same function on a few padded rows, so their bf16 results differ by rounding, and
        equal the eager layers in fp32 within 1e-4), and the prompt's
        3-D positions found without upstream's token-by-token grouping (``rope_index="vectorized"``: the same
        positions, 2-3 ms less before the tower at 64 frames). The pruning is ``paper()``'s and
        the Stage-1/2 graphs replay its eager kernels; the tower computes
        the stock function with other kernels, so its bf16 features differ by rounding (relative error 0.017 against
        the stock bf16 tower's output on an H200, 0.015 for the uncompiled varlen tower), and Stage 1's clusters can
        differ a little with them (an earlier H200 run: 3,821 tokens after Stage 1 at 256 frames instead of 3,678;
        the same 3,678 in the runs of docs/bench/h200-2026-12-04-padded-mlp*). Its one-time costs: compiling the
        vision blocks on the first video (7-28 s for the 7B tower on an H200; none later for other lengths), and
        recording graphs for the lengths that come (the pruned lengths follow the clip's content: Stage 1's graphs
        are shared by the clips of one shape; a new length's layer runs replay a recorded bucket up to 1/4 longer,
        or run eagerly, and are recorded at their bucket's second call; on an H100 at 64 frames a stream of new
        clips gained 2.42x over stock's best, as much as a repeated clip, docs/bench/h100-2026-12-06-thirteenth).
        Where the fused kernel cannot run (CPU, fp32, old torch) the stock tower runs, uncompiled, with a warning; on
        the CPU the graphs are not used."""
        return cls(**{"vision_attention": "varlen_compiled", "cuda_graphs": True, "layer_graphs": True,
                      "rope_index": "vectorized", **overrides})  # fmt: skip

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
        """A preset by name: paper, fast, conservative, aggressive, stage1_only, fastv, off (= disabled)."""
        presets = {
            "paper": cls.paper,
            "fast": cls.fast,
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


PRESETS = ("paper", "fast", "conservative", "aggressive", "stage1_only", "fastv", "off")


def _immutable(self: PruneVidConfig, name: str, value: Any = None) -> None:
    raise dataclasses.FrozenInstanceError(
        f"PruneVidConfig is immutable (cannot set {name!r}): use config.replace({name}=...), and for a model "
        f"model.prunevid = model.prunevid.replace({name}=...)"
    )


# The dataclass's own frozen __setattr__ says only "cannot assign to field"; say what to do instead.
PruneVidConfig.__setattr__ = _immutable  # type: ignore[method-assign]
PruneVidConfig.__delattr__ = _immutable  # type: ignore[method-assign]


def _scalar(value: Any) -> Any:
    """A 0-dim numpy / torch value as its Python scalar (``np.int64(3)``, ``torch.tensor(3)``); else as is.

    A float32 / float16 value becomes the shortest decimal that rounds to it (``np.float32(0.4)`` -> ``0.4``, not
    ``0.4000000059604645``), so a ratio means what was written and quotas like ``ceil(0.4 * 5)`` stay exact.
    """
    if isinstance(value, str) or getattr(value, "ndim", None) != 0 or not callable(getattr(value, "item", None)):
        return value
    plain = value.item()
    fmt = {"float32": "f", "float16": "e"}.get(str(getattr(value, "dtype", "")).removeprefix("torch."))
    if fmt is not None and isinstance(plain, float) and math.isfinite(plain):
        target = struct.pack(fmt, plain)
        for digits in range(1, 18):
            candidate = float(f"{plain:.{digits}g}")
            try:
                if struct.pack(fmt, candidate) == target:
                    return candidate
            except OverflowError:
                continue
    return plain


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong_type(name: str, value: Any, expected: str) -> str:
    return f"PruneVidConfig.{name}={_show(value)} has the wrong type {type(value).__name__}: expected {expected}"


def _check_bool(name: str, value: Any) -> bool:
    plain = _scalar(value)
    if not isinstance(plain, bool):
        raise TypeError(_wrong_type(name, value, "a bool"))
    return plain


def _check_real(name: str, value: Any, low: float, high: float, *, low_open: bool) -> float:
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Real):
        raise TypeError(_wrong_type(name, value, "a real number"))
    try:
        number = float(plain)
    except OverflowError:
        number = math.inf
    ok = math.isfinite(number) and (low < number if low_open else low <= number) and number <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"PruneVidConfig.{name}={_show(value)} is out of range: allowed {bracket}{low}, {high}]")
    return number


def _check_int(name: str, value: Any, minimum: int) -> int:
    plain = _scalar(value)
    if isinstance(plain, bool) or not isinstance(plain, numbers.Integral):
        raise TypeError(_wrong_type(name, value, "an integer"))
    if not minimum <= int(plain) <= INT_MAX:
        raise ValueError(f"PruneVidConfig.{name}={_show(value)} is out of range: allowed integers {minimum}..{INT_MAX}")
    return int(plain)


__all__ = ["CHOICES", "INT_MAX", "PRESETS", "PruneVidConfig"]
