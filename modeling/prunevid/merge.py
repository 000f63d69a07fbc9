"""Stage 1 of PruneVid: spatial-temporal token merging of one video (Sec. 3.2 of the paper).

PruneVid (Huang, Zhou, Han, Findings of ACL 2025, arXiv 2412.16117), Sec. 3.2: the video is cut into temporal
segments of similar frames; inside a segment, tokens whose location hardly changes over time ("static") are
averaged over the segment and then merged spatially, while the remaining ("dynamic") tokens are merged spatially
frame by frame. Both spatial merges use DPC-KNN (:mod:`.dpc_knn`).

For Qwen2.5-VL a "frame" is one temporal patch (two video frames) after the 2x2 spatial merger, so the grid passed
here is ``(grid_t, grid_h // 2, grid_w // 2)``.

Decisions (beyond the paper's text):

* Temporal segmentation is made contiguous exactly as the authors' code does it (:func:`contiguous_segments`).
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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .dpc_knn import _cluster_means, dpc_knn

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
        num_groups: ``group.max() + 1`` as a host int (None: not known on the host; the caller reads it back).
    """

    features: Tensor
    source: Tensor
    group: Tensor
    is_static: Tensor
    assignment: Tensor
    segments: list[tuple[int, int]]
    static_mask: Tensor
    num_groups: int | None = None


def contiguous_segments(labels: list[int] | Tensor) -> list[tuple[int, int]]:
    """Turn per-frame cluster labels into contiguous temporal segments (PruneVid Sec. 3.2).

    The rule of the authors' ``refine_clusters`` + ``segment_lengths``, step by step:

    a. for each label, every run of consecutive frames as long as that label's longest run is kept (several runs
       can tie and all stay); its shorter runs become unlabelled;
    b. a label whose longest run is a single frame is removed entirely (all its frames unlabelled);
    c. the maximal unlabelled stretches are filled from left to right, each with the label of the longer
       neighbouring run, measured in the array as filled so far (a left run that has just absorbed orphans counts
       with them; a right run is still as in step a); ties go to the left; with one neighbour, that one; with none
       (no label survived), label 0;
    d. segments are cut wherever the filled label changes, so two kept runs of one label that meet after filling
       are one segment, and the segment count can differ from the cluster count.

    Examples: ``[0,0,1,1,0,0] -> (0,2),(2,4),(4,6)``; ``[0,1,1,0,2,2,2] -> (0,4),(4,7)``; ``[0,1,0,1] -> (0,4)``.

    Works on the host (``T`` small integers, one read-back for a tensor): plain Python over the runs.

    Args:
        labels: ``T`` integer labels (list or ``LongTensor[T]``).

    Returns:
        ``[start, end)`` ranges covering ``0..T`` in order.
    """
    lab = labels.reshape(-1).tolist() if isinstance(labels, Tensor) else [int(v) for v in labels]
    if not lab:
        return []
    runs: list[list[int]] = []  # [label, length] of the maximal runs
    for v in lab:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    longest: dict[int, int] = {}
    for v, n in runs:
        longest[v] = max(longest.get(v, 0), n)
    # a.+b.: unlabelled (None) unless a longest run of more than one frame; adjacent unlabelled runs are one stretch
    blocks: list[list] = []
    for v, n in runs:
        label = v if n == longest[v] > 1 else None
        if blocks and label is None and blocks[-1][0] is None:
            blocks[-1][1] += n
        else:
            blocks.append([label, n])
    # c.: `filled` holds the maximal runs of the array filled so far, left to right
    filled: list[list[int]] = []
    for i, (label, n) in enumerate(blocks):
        if label is None:
            left = filled[-1] if filled else None
            right = blocks[i + 1] if i + 1 < len(blocks) else None  # labelled: unlabelled stretches are maximal
            if left is not None and (right is None or left[1] >= right[1]):
                label = left[0]
            else:
                label = right[0] if right is not None else 0
        if filled and filled[-1][0] == label:
            filled[-1][1] += n
        else:
            filled.append([label, n])
    # d.
    segments, start = [], 0
    for _, n in filled:
        segments.append((start, start + n))
        start += n
    return segments


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
    return contiguous_segments(labels.tolist())  # the one device-to-host read of the segmentation


def _segment_static(
    tokens: Tensor, seg_of_frame: Tensor, num_segments: int, tau: float, width: Tensor | None = None
) -> Tensor:
    """Static decision per (segment, location): mean off-diagonal pairwise cosine similarity ``> tau``.

    Batched over segments with the identity ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2`` on the
    L2-normalised tokens ``u`` (a zero token has cosine similarity 0 with everything), so no ``w x w`` Gram matrix
    is formed. Segments of length 1 are all dynamic. ``width`` (``LongTensor[S]``, the segment lengths) may be given
    to save the ``bincount`` (a host sync on CUDA). Returns ``BoolTensor[S, L]``.
    """
    n_frames, n_loc, channels = tokens.shape
    unit = F.normalize(tokens.float(), dim=-1)
    seg_sum = torch.zeros(num_segments, n_loc, channels, device=tokens.device)
    seg_sum.index_add_(0, seg_of_frame, unit)
    self_sq = torch.zeros(num_segments, n_loc, device=tokens.device)
    self_sq.index_add_(0, seg_of_frame, unit.square().sum(-1))
    if width is None:
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

    # 1. temporal segments (one device-to-host read: the T frame labels); segment bookkeeping stays on the host
    segments = temporal_segments(frames.mean(dim=1), temporal_segment_ratio, k)
    n_seg = len(segments)
    seg_len_h = [e - s for s, e in segments]
    seg_info = _to_device([i for i, n in enumerate(seg_len_h) for _ in range(n)] + seg_len_h, device)
    seg_of_frame, seg_len = seg_info[:n_frames], seg_info[n_frames:]

    # 2. static / dynamic
    static_seg = _segment_static(frames, seg_of_frame, n_seg, tau, width=seg_len)  # [S, L]
    static_tl = static_seg[seg_of_frame]  # [T, L]

    # 3.+4. one batched clustering: rows 0..S-1 = segment means (static), rows S..S+T-1 = frames (dynamic)
    seg_mean = torch.zeros(n_seg, n_loc, channels, device=device).index_add_(0, seg_of_frame, frames)
    seg_mean = seg_mean / seg_len[:, None, None].float()
    rows = torch.cat([seg_mean, frames], dim=0)
    valid = torch.cat([static_seg, ~static_tl], dim=0)
    n_rows = n_seg + n_frames
    # The second (and last) device-to-host read: the valid count of every row. Cluster counts as dpc_knn clamps
    # them: max(1, floor(n * cluster_ratio)) above the threshold, else n (an empty row stays at 0).
    counts = [
        min(max(math.floor(n * cluster_ratio), 1), n) if n > min_tokens_to_cluster else n
        for n in valid.sum(dim=1).tolist()
    ]
    c_max = max(counts)

    # 5. output order: each segment's static block (row s) before its frames' dynamic blocks (rows S+t), time order
    #    overall. The (row, cluster) slot of every output token, its base token index and group are host-known.
    base = [s * n_loc for s, _ in segments] + [t * n_loc for t in range(n_frames)]
    slot, slot_base, slot_group, out_idx = [], [], [], [-1] * (n_rows * c_max)
    for r in (r for s, (a, e) in enumerate(segments) for r in (s, *range(n_seg + a, n_seg + e))):
        c = counts[r]
        if c == 0:  # empty block: no group id
            continue
        out_idx[r * c_max : r * c_max + c] = range(len(slot), len(slot) + c)
        slot_group.extend([slot_group[-1] + 1 if slot_group else 0] * c)
        slot.extend(range(r * c_max, r * c_max + c))
        slot_base.extend([base[r]] * c)
    n_out = len(slot)
    host = _to_device(counts + slot + slot_base + slot_group + out_idx, device)
    n_clusters, slot = host[:n_rows], host[n_rows : n_rows + n_out]
    slot_base = host[n_rows + n_out : n_rows + 2 * n_out]
    group, out_idx = host[n_rows + 2 * n_out : n_rows + 3 * n_out], host[n_rows + 3 * n_out :]

    dpc = dpc_knn(rows, n_clusters, k, valid, max_clusters=c_max)
    merged = _cluster_means(rows, dpc.labels, c_max)  # [R, Cmax, C] float32
    out_features = merged.reshape(n_rows * c_max, channels)[slot].to(features.dtype)
    source = dpc.centers.reshape(-1)[slot] + slot_base
    is_static = slot < n_seg * c_max  # the static rows come first in the batch

    # assignment: output row of each input token's (row, cluster)
    token_row = torch.where(static_tl, seg_of_frame[:, None], n_seg + torch.arange(n_frames, device=device)[:, None])
    token_label = dpc.labels.reshape(-1)[token_row * n_loc + torch.arange(n_loc, device=device)]  # [T, L]
    assignment = out_idx[token_row * c_max + token_label].reshape(-1)

    return MergeResult(
        features=out_features,
        source=source,
        group=group,
        is_static=is_static,
        assignment=assignment,
        segments=segments,
        static_mask=static_tl,
        num_groups=slot_group[-1] + 1 if slot_group else 0,
    )


def _to_device(values: list[int], device: torch.device) -> Tensor:
    """A host list of ints as a LongTensor on ``device``: one copy, not waited for (no host sync)."""
    host = torch.tensor(values, dtype=torch.long)
    return host.to(device, non_blocking=True) if host.device != torch.device(device) else host
