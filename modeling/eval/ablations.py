"""Stage-1 ablations: where PruneVid's spatial-temporal merging (Sec. 3.2) loses answers.

PruneVid (Huang, Zhou, Han, Findings of ACL 2025, arXiv 2412.16117), Sec. 3.2, makes three choices in Stage 1 that
this module switches one at a time, as one technique (kvpress style, like `modeling.eval.baselines.TokenDrop`):
`Stage1Ablation(config, **switches)`, a `PruneVidController` that overrides `merge` only, so Stage 2 (Sec. 3.3, with
the config's `keep_ratio`) and Stage 3 (Sec. 3.4) run unchanged on its `MergeResult`.

* `average_static=False`: static tokens are not averaged over the segment's frames. The static test is the paper's
  (mean pairwise cosine > `tau` per segment and location), but every frame keeps its own static-location tokens as
  its own static block, spatially merged by DPC-KNN with the paper's rule (like that frame's dynamic tokens, in a
  separate block). Each such block is one Stage-2 group, in output order just before its frame's dynamic block. Only
  the averaging over time changes: no output token mixes frames, and Stage 1 keeps more tokens (about `w` times the
  static tokens of a segment of `w` frames).
* `merged_feature="centre"`: a merged token is the feature of its DPC-KNN centre instead of the mean of its cluster:
  a real token of that frame for dynamic blocks (and for static blocks without the averaging); for static blocks with
  the averaging, the centre location's average over the segment (only the spatial mean is replaced). Token counts,
  clusters, positions and groups are the paper's.
* `merge_dynamic=False`: dynamic tokens are not clustered in space: every dynamic token stays as it is, in its own
  frame's block; static tokens are merged as in the paper.

With every switch at its default the result is `merge_video`'s, bit for bit (`tests/test_ablations.py`). The
variants keep different shares of the video in Stage 1; to compare them at equal retention, set Stage 2's
`keep_ratio` per question from the measured Stage-1 share (the technique takes any `PruneVidConfig`, so a factory
`config -> technique` such as `functools.partial(Stage1Ablation, merged_feature="centre")` or `factory("centre")`
fits). An evaluation tool: it runs eagerly (also under `cuda_graphs=True`) and is checked on the CPU.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor

from ..integration.controller import PruneVidController
from ..prunevid.config import PruneVidConfig
from ..prunevid.dpc_knn import _cluster_means, dpc_knn
from ..prunevid.merge import (MergeResult, _merge_result, _output_layout, _row_counts, _segment_sum, _split_static,
                              _to_device, temporal_segments)


__all__ = ["CURVE_VARIANTS", "FEATURES", "VARIANTS", "Stage1Ablation", "factory"]

#: The values of `merged_feature`: the cluster mean (paper) or the DPC-KNN centre's own feature.
FEATURES = ("mean", "centre")

#: The single-switch variants by name (the name's part inside `Stage1Ablation.name`), and the paper (no switch).
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "no_static_average": {"average_static": False},
    "centre": {"merged_feature": "centre"},
    "no_dynamic_merge": {"merge_dynamic": False},
}


class Stage1Ablation(PruneVidController):
    """PruneVid with Stage 1 (Sec. 3.2) changed by switches whose defaults are the paper's: overrides `merge`.

    Args:
        config: The PruneVid settings (default: the paper's); Stage 1 uses its `tau`, `temporal_segment_ratio`,
            `cluster_ratio`, `dpc_knn_k` and `min_tokens_to_cluster`, Stage 2 and 3 everything else.
        average_static: Average each static location over its segment's frames (paper). False: every frame keeps
            its static tokens as its own static block (merged in space per frame, one Stage-2 group per frame).
        merged_feature: `"mean"`: a merged token is its cluster's mean (paper); `"centre"`: its DPC-KNN centre's
            feature (with `average_static`, a static token is the centre location's average over the segment).
        merge_dynamic: Merge each frame's dynamic tokens in space (paper). False: every dynamic token stays.

    `name` (in `PruneVidStats.technique`) lists the switches that differ from the paper, e.g.
    `"stage1_ablation(centre)"`, `"stage1_ablation(no_static_average+no_dynamic_merge)"`, and
    `"stage1_ablation(paper)"` with none.
    """

    def __init__(
        self,
        config: PruneVidConfig | None = None,
        *,
        average_static: bool = True,
        merged_feature: str = "mean",
        merge_dynamic: bool = True,
    ) -> None:
        for flag, value in (("average_static", average_static), ("merge_dynamic", merge_dynamic)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {value!r}")
        if merged_feature not in FEATURES:
            raise ValueError(f"merged_feature must be one of {FEATURES}, got {merged_feature!r}")
        super().__init__(config)
        self.average_static = average_static
        self.merged_feature = merged_feature
        self.merge_dynamic = merge_dynamic
        parts = [part for part, off in (("no_static_average", not average_static),
                                        ("centre", merged_feature == "centre"),
                                        ("no_dynamic_merge", not merge_dynamic)) if off]  # fmt: skip
        self.name = f"stage1_ablation({'+'.join(parts) or 'paper'})"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.config!r}, average_static={self.average_static}, "
                f"merged_feature={self.merged_feature!r}, merge_dynamic={self.merge_dynamic})")  # fmt: skip

    def merge(self, features: Tensor, grid: tuple[int, int, int]) -> MergeResult:
        """Stage 1 of one video's `[T*H*W, C]` tokens (Sec. 3.2) under the switches; `grid` is (T, H, W).

        The steps of `modeling.prunevid.merge.merge_video` (temporal segments over the frame means, static test,
        one batched DPC-KNN over every block, output order per segment: static, then dynamic frame by frame), with
        the blocks, cluster counts and merged features the switches choose. Runs eagerly.
        """
        cfg = self.config
        n_frames, height, width = (int(v) for v in grid)
        n_loc = height * width
        if features.dim() != 2 or features.shape[0] != n_frames * n_loc:
            raise ValueError(f"features must be [T*H*W, C] for grid {grid}, got {tuple(features.shape)}")
        if n_frames < 1 or n_loc < 1:
            raise ValueError(f"empty grid {grid}")
        frame_means = features.reshape(n_frames, n_loc, features.shape[1]).mean(dim=1, dtype=torch.float32)
        segments = temporal_segments(frame_means, cfg.temporal_segment_ratio, cfg.dpc_knn_k)
        seg_len = [e - s for s, e in segments]
        seg_info = _to_device([i for i, n in enumerate(seg_len) for _ in range(n)] + seg_len, features.device)
        outputs = _ablated_segments(
            features, seg_info, grid=(n_frames, n_loc), n_seg=len(segments), tau=float(cfg.tau),
            cluster_ratio=float(cfg.cluster_ratio), k=int(cfg.dpc_knn_k),
            min_tokens_to_cluster=int(cfg.min_tokens_to_cluster), average_static=self.average_static,
            centre=self.merged_feature == "centre", merge_dynamic=self.merge_dynamic,
        )  # fmt: skip
        return _merge_result(features, segments, *outputs)


def factory(variant: str) -> Callable[[PruneVidConfig], Stage1Ablation]:
    """`config -> Stage1Ablation` for a named single-switch variant of `VARIANTS` (e.g. `factory("centre")`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Stage-1 ablation {variant!r}; choose one of {tuple(VARIANTS)}")
    return partial(Stage1Ablation, **VARIANTS[variant])


#: The variants the accuracy-retention curves run (`modeling.eval.curves.register_ablations`): method name ->
#: (description, `config -> technique`); Stage 2's keep ratio is matched per question like `prunevid`'s.
CURVE_VARIANTS: dict[str, tuple[str, Callable[[PruneVidConfig], Stage1Ablation]]] = {
    "stage1_no_static_average": ("PruneVid, static tokens not averaged over time (one static block per frame); "
                                 "keep ratio matched per question", factory("no_static_average")),
    "stage1_centre": ("PruneVid, a merged token is its DPC-KNN centre's feature, not its cluster's mean; keep ratio "
                      "matched per question", factory("centre")),
    "stage1_no_dynamic_merge": ("PruneVid, dynamic tokens not merged in space (every one stays); keep ratio matched "
                                "per question", factory("no_dynamic_merge")),
}  # fmt: skip


def _ablated_segments(
    features: Tensor,
    seg_info: Tensor,
    *,
    grid: tuple[int, int],
    n_seg: int,
    tau: float,
    cluster_ratio: float,
    k: int,
    min_tokens_to_cluster: int,
    average_static: bool,
    centre: bool,
    merge_dynamic: bool,
) -> tuple[Tensor, ...]:
    """Steps 2-5 of Stage 1 (Sec. 3.2) under the switches; `modeling.prunevid.merge._merge_segments` with the
    defaults (the same arithmetic on the same values, so the same bits), and its inputs and outputs.

    One batched DPC-KNN over ``R = P + T`` rows: ``P`` static rows (the ``S`` segment means, or without the averaging
    the ``T`` frames, each valid at its static locations), then the ``T`` frames valid at their dynamic locations.
    A row's block is keyed ``2 * (its first frame)`` when static and ``2 * t + 1`` when dynamic; output order is by
    key, clusters in raster order of their centres inside a block.
    """
    n_frames, n_loc = grid
    channels = features.shape[1]
    # 2. static / dynamic: the paper's test, per segment and location
    frames, seg_of_frame, seg_len, seg_start, static_seg, static_tl = _split_static(features, seg_info, grid, n_seg,
                                                                                    tau)  # fmt: skip
    frame_idx = torch.arange(n_frames, device=features.device)

    # 3.+4. the static rows (segment means, or the frames themselves), then the frames' dynamic tokens
    if average_static:
        static_rows = _segment_sum(frames, seg_len) / seg_len[:, None, None].float()
        static_valid, static_first, row_of_frame = static_seg, seg_start, seg_of_frame
    else:
        static_rows, static_valid, static_first, row_of_frame = frames, static_tl, frame_idx, frame_idx
    rows = torch.cat([static_rows, frames], dim=0)
    valid = torch.cat([static_valid, ~static_tl], dim=0)
    # without dynamic merging every dynamic token is its own cluster: the dynamic ratio 1.0 (as many clusters as points)
    counts, c_bound = _row_counts(valid.sum(dim=1), static_rows.shape[0], n_loc, cluster_ratio,
                                  None if merge_dynamic else 1.0, min_tokens_to_cluster)  # fmt: skip
    dpc = dpc_knn(rows, counts, k, valid, max_clusters=c_bound)
    if centre:  # the centre's own row feature ([R, Cb, C]; -1 padding reads point 0 and is never output)
        index = dpc.centers.clamp_min(0)[:, :, None].expand(-1, -1, channels)
        merged = rows.gather(1, index).reshape(-1, channels)
    else:
        merged = _cluster_means(rows, dpc.labels, c_bound).reshape(-1, channels)  # [R*Cb, C] float32

    # 5. output order: a static block (key 2 * its first frame) before the dynamic blocks (key 2*t+1) it precedes
    layout = _output_layout(counts, dpc.centers, dpc.labels, static_first=static_first, row_of_frame=row_of_frame,
                            static_tl=static_tl, c_bound=c_bound, grid=grid)  # fmt: skip
    return merged, *layout
