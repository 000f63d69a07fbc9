"""Stage 1 of PruneVid: spatial-temporal token merging of one video (Sec. 3.2 of the paper).

PruneVid (Huang, Zhou, Han, Findings of ACL 2025, arXiv 2412.16117), Sec. 3.2: the video is cut into temporal
segments of similar frames; inside a segment, tokens whose location hardly changes over time ("static") are
averaged over the segment and then merged spatially, while the remaining ("dynamic") tokens are merged spatially
frame by frame. Both spatial merges use DPC-KNN (:mod:`.dpc_knn`).

For Qwen2.5-VL a "frame" is one temporal patch (two video frames) after the 2x2 spatial merger, so the grid passed
here is ``(grid_t, grid_h // 2, grid_w // 2)``.

Decisions (beyond the paper's text):

* Temporal segmentation is made contiguous with the rule of :func:`contiguous_segments`.
* A segment of a single frame has no off-diagonal pairs: all its tokens are dynamic (the authors' code divides by
  zero there). ``T == 1`` therefore gives one segment whose tokens are all dynamic and clustered per frame.
* A block with ``n <= min_tokens_to_cluster`` tokens is kept as it is; otherwise it is clustered to
  ``max(1, int(n * cluster_ratio))`` tokens.
* Inside every block, merged tokens are in raster order of their DPC-KNN centres (the authors order by centre
  score). A merged token carries the index (:attr:`MergeResult.source`) of its centre, for static tokens the
  centre location at the segment's first frame, so the caller can give it that real token's 3-D position.
* All static and per-frame dynamic clusterings of the video run as one batched :func:`dpc_knn` call with
  validity masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .dpc_knn import dpc_knn, merge_by_labels

__all__ = ["MergeResult", "merge_video", "temporal_segments", "contiguous_segments", "static_mask"]


@dataclass(frozen=True)
class MergeResult:
    """Output of :func:`merge_video` for one video of ``T*H*W`` raster-ordered tokens, ``M`` merged tokens.

    Attributes:
        features: ``Tensor[M, C]`` merged tokens, in the input dtype, in output order (per segment: static block,
            then the dynamic blocks frame by frame; clusters in raster order of their centres inside a block).
        source: ``LongTensor[M]`` index into the flattened input tokens of the real token whose 3-D position the
            merged token carries (its centre; static tokens: the centre location at the segment's first frame).
        group: ``LongTensor[M]`` Stage-2 (Sec. 3.3) selection group, consecutive from 0 in output order: one per
            segment's static block and one per frame's dynamic block (empty blocks get no id).
        is_static: ``BoolTensor[M]``.
        assignment: ``LongTensor[T*H*W]`` output row each input token was merged into.
        segments: ``[start, end)`` frame ranges of the temporal segments, in time order.
        static_mask: ``BoolTensor[T, H*W]`` whether each input token is static (constant within a segment).
    """

    features: Tensor
    source: Tensor
    group: Tensor
    is_static: Tensor
    assignment: Tensor
    segments: list[tuple[int, int]]
    static_mask: Tensor


def contiguous_segments(labels: list[int] | Tensor) -> list[tuple[int, int]]:
    """Turn per-frame cluster labels into contiguous temporal segments (PruneVid Sec. 3.2).

    Rule: each label keeps only its longest run of consecutive frames (ties -> the earliest run); labels whose
    longest run has length 1 are dropped; every maximal stretch of the remaining ("orphaned") frames joins the
    neighbouring kept run that is longer (ties -> the left one; the only neighbour if there is one). Segments are
    the kept runs so extended. If no run is kept (every label's longest run is a single frame), the whole video is
    one segment.

    Args:
        labels: ``T`` integer labels (list or ``LongTensor[T]``).

    Returns:
        ``[start, end)`` ranges covering ``0..T`` in order.
    """
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    n_frames = lab.numel()
    if n_frames == 0:
        return []
    run_label, run_len = torch.unique_consecutive(lab, return_counts=True)
    n_runs = run_label.numel()
    run_idx = torch.arange(n_runs)
    # Longest run of each label, ties -> earliest: a key unique per run, larger = preferred.
    key = run_len * (n_runs + 1) + (n_runs - run_idx)
    _, label_id = torch.unique(run_label, return_inverse=True)
    best = torch.zeros(int(label_id.max()) + 1, dtype=torch.long).scatter_reduce(
        0, label_id, key, reduce="amax", include_self=False
    )
    kept = (key == best[label_id]) & (run_len > 1)
    if not bool(kept.any()):
        return [(0, n_frames)]
    kept_len = run_len[kept]
    n_kept = kept_len.numel()
    run_of_frame = torch.repeat_interleave(run_idx, run_len)
    kept_ordinal = torch.cumsum(kept.long(), 0) - 1
    frame_seg = torch.where(kept[run_of_frame], kept_ordinal[run_of_frame], -1)  # -1 = orphan
    # Nearest kept run to the left (cummax) and to the right (reverse cummin) of every frame.
    left = torch.cummax(frame_seg, 0).values
    right_src = torch.where(frame_seg >= 0, frame_seg, n_kept).flip(0)
    right = torch.cummin(right_src, 0).values.flip(0)
    left_len = torch.where(left >= 0, kept_len[left.clamp_min(0)], -1)
    right_len = torch.where(right < n_kept, kept_len[right.clamp_max(n_kept - 1)], -1)
    join = torch.where(left_len >= right_len, left, right)
    frame_seg = torch.where(frame_seg >= 0, frame_seg, join)
    _, seg_len = torch.unique_consecutive(frame_seg, return_counts=True)
    ends = torch.cumsum(seg_len, 0)
    return list(zip((ends - seg_len).tolist(), ends.tolist()))


def temporal_segments(frame_features: Tensor, ratio: float, k: int) -> list[tuple[int, int]]:
    """Temporal segmentation of a video (PruneVid Sec. 3.2).

    DPC-KNN over the frame-level features with ``max(1, int(T * ratio))`` clusters and ``min(k, T)``
    neighbours, then :func:`contiguous_segments`. ``T == 1`` is one segment.

    Args:
        frame_features: ``Tensor[T, C]``, e.g. the mean of each frame's tokens.
        ratio: temporal segment ratio (paper default 0.25).
        k: DPC-KNN neighbours (paper default 7).
    """
    n_frames = frame_features.shape[0]
    if n_frames <= 1:
        return [(0, n_frames)] if n_frames == 1 else []
    n_clusters = max(1, int(n_frames * ratio))
    labels = dpc_knn(frame_features[None], n_clusters, min(k, n_frames)).labels[0]
    return contiguous_segments(labels)


def _segment_static(tokens: Tensor, seg_of_frame: Tensor, num_segments: int, tau: float) -> Tensor:
    """Static decision per (segment, location): mean off-diagonal pairwise cosine similarity ``> tau``.

    Batched over segments with the identity ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2`` on the
    L2-normalised tokens ``u`` (a zero token has cosine similarity 0 with everything), so no ``w x w`` Gram matrix
    is formed. Segments of length 1 are all dynamic. Returns ``BoolTensor[S, L]``.
    """
    n_frames, n_loc, channels = tokens.shape
    unit = F.normalize(tokens.float(), dim=-1)
    seg_sum = torch.zeros(num_segments, n_loc, channels, device=tokens.device)
    seg_sum.index_add_(0, seg_of_frame, unit)
    self_sq = torch.zeros(num_segments, n_loc, device=tokens.device)
    self_sq.index_add_(0, seg_of_frame, unit.square().sum(-1))
    width = torch.bincount(seg_of_frame, minlength=num_segments).to(tokens.device)
    pairs = (width * (width - 1)).clamp_min(1).float()
    mean_sim = (seg_sum.square().sum(-1) - self_sq) / pairs[:, None]
    return (mean_sim > tau) & (width >= 2)[:, None]


def static_mask(tokens: Tensor, tau: float) -> Tensor:
    """Static locations of one segment (PruneVid Sec. 3.2).

    Args:
        tokens: ``Tensor[w, L, C]``, the segment's ``w`` frames.
        tau: similarity threshold (paper default 0.8).

    Returns:
        ``BoolTensor[L]``: mean pairwise cosine similarity of the location's ``w`` tokens over all off-diagonal
        pairs ``> tau``; all False when ``w == 1``.
    """
    seg_of_frame = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    return _segment_static(tokens, seg_of_frame, 1, tau)[0]


def merge_video(
    features: Tensor,
    grid: tuple[int, int, int],
    *,
    tau: float,
    temporal_segment_ratio: float,
    cluster_ratio: float,
    k: int,
    min_tokens_to_cluster: int = 14,
) -> MergeResult:
    """Spatial-temporal token merging of one video (PruneVid Sec. 3.2).

    Steps: (1) :func:`temporal_segments` over the frame means; (2) per segment, static locations by mean pairwise
    cosine similarity ``> tau``; (3) static tokens averaged over the segment, then DPC-KNN to
    ``max(1, int(n * cluster_ratio))`` if ``n > min_tokens_to_cluster``; (4) per frame, the dynamic tokens
    likewise; (5) output per segment: static block, then dynamic blocks frame by frame. Steps 3 and 4 run as one
    batched DPC-KNN over ``S + T`` rows (one per segment, one per frame) with validity masks; an unclustered
    block is DPC-KNN with as many clusters as points, which keeps every token as it is.

    Args:
        features: ``Tensor[T*H*W, C]`` the video's tokens in raster order (t, then h, then w).
        grid: ``(T, H, W)``.
        tau: static threshold.
        temporal_segment_ratio: clusters for the temporal segmentation per frame.
        cluster_ratio: fraction of tokens kept by each spatial clustering.
        k: DPC-KNN neighbours (clamped to the points available).
        min_tokens_to_cluster: blocks with at most this many tokens are not clustered (authors: 14).

    Returns:
        :class:`MergeResult`.
    """
    n_frames, height, width = (int(v) for v in grid)
    n_loc = height * width
    if features.dim() != 2 or features.shape[0] != n_frames * n_loc:
        raise ValueError(f"features must be [T*H*W, C] for grid {grid}, got {tuple(features.shape)}")
    if n_frames < 1 or n_loc < 1:
        raise ValueError(f"empty grid {grid}")
    device = features.device
    channels = features.shape[1]
    frames = features.reshape(n_frames, n_loc, channels).float()

    # 1. temporal segments
    segments = temporal_segments(frames.mean(dim=1), temporal_segment_ratio, k)
    n_seg = len(segments)
    seg_start = torch.tensor([s for s, _ in segments], dtype=torch.long, device=device)
    seg_len = torch.tensor([e - s for s, e in segments], dtype=torch.long, device=device)
    seg_of_frame = torch.repeat_interleave(torch.arange(n_seg, device=device), seg_len)
    frame_idx = torch.arange(n_frames, device=device)

    # 2. static / dynamic
    static_seg = _segment_static(frames, seg_of_frame, n_seg, tau)  # [S, L]
    static_tl = static_seg[seg_of_frame]  # [T, L]

    # 3.+4. one batched clustering: rows 0..S-1 = segment means (static), rows S..S+T-1 = frames (dynamic)
    seg_mean = torch.zeros(n_seg, n_loc, channels, device=device).index_add_(0, seg_of_frame, frames)
    seg_mean = seg_mean / seg_len[:, None, None].float()
    rows = torch.cat([seg_mean, frames], dim=0)
    valid = torch.cat([static_seg, ~static_tl], dim=0)
    n_valid = valid.sum(dim=1)
    n_reduced = torch.floor(n_valid.double() * cluster_ratio).long().clamp_min(1)
    n_clusters = torch.where(n_valid > min_tokens_to_cluster, n_reduced, n_valid)
    dpc = dpc_knn(rows, n_clusters, k, valid)
    c_max = dpc.centers.shape[1]
    merged = merge_by_labels(rows, dpc.labels, c_max)  # [R, Cmax, C] float32

    # 5. output order: segment static block (key 2*start) before its frames (key 2*t+1), time order overall
    order = torch.argsort(torch.cat([2 * seg_start, 2 * frame_idx + 1]), stable=True)
    n_rows = n_seg + n_frames
    slot = torch.arange(c_max, device=device)[None, :] < dpc.num_clusters[:, None]  # [R, Cmax]
    slot_o = slot[order]
    out_features = merged[order][slot_o].to(features.dtype)
    base = torch.cat([seg_start, frame_idx]) * n_loc
    source = (base[:, None] + dpc.centers)[order][slot_o]
    is_static = (order < n_seg)[:, None].expand(n_rows, c_max)[slot_o]
    group_of_row = torch.cumsum((dpc.num_clusters[order] > 0).long(), 0) - 1
    group = group_of_row[:, None].expand(n_rows, c_max)[slot_o]

    # assignment: output row of (row, cluster), then looked up per input token
    n_out = int(slot_o.sum().item())
    out_idx_o = torch.full((n_rows, c_max), -1, dtype=torch.long, device=device)
    out_idx_o[slot_o] = torch.arange(n_out, device=device)
    out_idx = torch.empty_like(out_idx_o)
    out_idx[order] = out_idx_o
    token_row = torch.where(static_tl, seg_of_frame[:, None], n_seg + frame_idx[:, None])  # [T, L]
    loc = torch.arange(n_loc, device=device)[None, :].expand(n_frames, n_loc)
    token_label = dpc.labels[token_row, loc]
    assignment = out_idx[token_row, token_label].reshape(-1)

    return MergeResult(
        features=out_features,
        source=source,
        group=group,
        is_static=is_static,
        assignment=assignment,
        segments=segments,
        static_mask=static_tl,
    )
