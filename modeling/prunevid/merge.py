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
* The work is two fixed-shape steps (:func:`_frame_labels`, :func:`_merge_segments`) with one read-back
  after each, so that both can be replayed as CUDA graphs (:mod:`.graphs`) with the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .dpc_knn import _cluster_means, dpc_knn
from .graphs import eager

__all__ = ["MergeResult", "merge_video", "temporal_segments", "contiguous_segments", "segment_slots", "static_mask"]


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
        num_static: ``static_mask.sum()`` as a host int (None: not known on the host; the caller reads it back).
    """

    features: Tensor
    source: Tensor
    group: Tensor
    is_static: Tensor
    assignment: Tensor
    segments: list[tuple[int, int]]
    static_mask: Tensor
    num_groups: int | None = None
    num_static: int | None = None


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


def temporal_segments(
    frame_features: Tensor, ratio: float, k: int, runner: Callable[..., tuple[Tensor, ...]] = eager
) -> list[tuple[int, int]]:
    """Temporal segmentation of a video (PruneVid Sec. 3.2).

    DPC-KNN over the frame-level features with ``max(1, int(T * ratio))`` clusters and ``min(k, T)``
    neighbours, then :func:`contiguous_segments`. ``T == 1`` is one segment.

    Args:
        frame_features: ``Tensor[T, C]``, e.g. the mean of each frame's tokens.
        ratio: temporal segment ratio (paper default 0.25).
        k: DPC-KNN neighbours (paper default 7).
        runner: how the fixed-shape clustering step runs (:func:`~.graphs.eager` or a :class:`~.graphs.CudaGraphs`).
    """
    n_frames = frame_features.shape[0]
    if n_frames <= 1:
        return [(0, n_frames)] if n_frames == 1 else []
    (labels,) = runner(_frame_labels, (frame_features[None],), n_clusters=max(1, int(n_frames * ratio)),
                       k=min(k, n_frames))  # fmt: skip
    return contiguous_segments(labels.tolist())  # the one device-to-host read of the segmentation


def _frame_labels(frame_features: Tensor, *, n_clusters: int, k: int) -> tuple[Tensor]:
    """DPC-KNN labels of the frames (``Tensor[1, T, C]`` -> ``(LongTensor[T],)``), a recordable step."""
    return (dpc_knn(frame_features, n_clusters, k).labels[0],)


def _segment_static(
    tokens: Tensor, seg_of_frame: Tensor, num_segments: int, tau: float, width: Tensor | None = None
) -> Tensor:
    """Static decision per (segment, location): mean off-diagonal pairwise cosine similarity ``> tau``.

    Batched over segments with the identity ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2`` on the
    L2-normalised tokens ``u`` (a zero token has cosine similarity 0 with everything), so no ``w x w`` Gram matrix
    is formed. Segments of length 1 are all dynamic. The frames of a segment are contiguous (``seg_of_frame`` is
    non-decreasing), so the sums are segmented sums (:func:`_segment_sum`). ``width`` (``LongTensor[S]``, the
    segment lengths) may be given to save the ``bincount`` (a host sync on CUDA). Returns ``BoolTensor[S, L]``.
    """
    unit = F.normalize(tokens.float(), dim=-1)
    if width is None:
        width = torch.bincount(seg_of_frame, minlength=num_segments).to(tokens.device)
    seg_sum = _segment_sum(unit, width)
    self_sq = _segment_sum(unit.square().sum(-1), width)
    pairs = (width * (width - 1)).clamp_min(1).float()
    mean_sim = (seg_sum.square().sum(-1) - self_sq) / pairs[:, None]
    return (mean_sim > tau) & (width >= 2)[:, None]


def _segment_sum(values: Tensor, lengths: Tensor) -> Tensor:
    """Sums of consecutive runs of ``lengths[s]`` rows of ``values`` (``[T, ...] -> [S, ...]``).

    Each sum is taken in row order from 0, as ``index_add_`` into zeros does on the CPU (bit for bit), and on CUDA
    without the float atomics of ``index_add_`` (deterministic, and faster: Stage 1's three such sums at 256 frames
    took 1.36 ms with ``index_add_`` and take 0.27 ms on an H200, docs/bench/h200-2026-12-04-graphs). ``unsafe=True``
    skips the checks that read ``lengths`` back: they are the segment lengths, made by :func:`merge_video`, which
    sum to ``T``.
    """
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0, unsafe=True)


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
    runner: Callable[..., tuple[Tensor, ...]] = eager,
    dynamic_cluster_ratio: float | None = None,
) -> MergeResult:
    """Spatial-temporal token merging of one video (PruneVid Sec. 3.2).

    Steps: (1) :func:`temporal_segments` over the frame means; (2) per segment, static locations by mean pairwise
    cosine similarity ``> tau``; (3) static tokens averaged over the segment, then DPC-KNN to
    ``max(1, int(n * cluster_ratio))`` if ``n > min_tokens_to_cluster``; (4) per frame, the dynamic tokens
    likewise; (5) output per segment: static block, then dynamic blocks frame by frame. Steps 3 and 4 run as one
    batched DPC-KNN over ``S + T`` rows (one per segment, one per frame) with validity masks; an unclustered
    block is DPC-KNN with as many clusters as points, which keeps every token as it is.

    The work is two fixed-shape steps with one read-back after each: the frame labels of step 1 (the segments are
    made on the host), then steps 2-5 with every output padded to ``T*H*W`` rows, whose output count is read back
    to trim them. ``runner`` runs the two steps: eagerly (default) or recorded as CUDA graphs
    (:class:`~.graphs.CudaGraphs`, the same kernels).

    Args:
        features: ``Tensor[T*H*W, C]`` the video's tokens in raster order (t, then h, then w).
        grid: ``(T, H, W)``.
        tau: static threshold.
        temporal_segment_ratio: clusters for the temporal segmentation per frame.
        cluster_ratio: fraction of tokens kept by each spatial clustering.
        dynamic_cluster_ratio: the fraction for the frames' dynamic blocks (step 4) only; ``None``: ``cluster_ratio``
            (the paper). ``1.0`` keeps every dynamic token as it is.
        k: DPC-KNN neighbours (clamped to the points available).
        min_tokens_to_cluster: blocks with at most this many tokens are not clustered (authors: 14).
        runner: how the fixed-shape steps run, :func:`~.graphs.eager` or a :class:`~.graphs.CudaGraphs`.

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

    # 1. temporal segments over the frame means (read back: the T frame labels); their bookkeeping stays on the host
    frame_means = features.reshape(n_frames, n_loc, features.shape[1]).mean(dim=1, dtype=torch.float32)
    segments = temporal_segments(frame_means, temporal_segment_ratio, k, runner=runner)
    seg_len = [e - s for s, e in segments]
    # a recording runner keys its graphs on the shapes: empty segments pad the count, so clips of one shape share them
    slots = segment_slots(len(segments), n_frames) if getattr(runner, "bucket_shapes", False) else len(segments)
    seg_info = _to_device([i for i, n in enumerate(seg_len) for _ in range(n)] + seg_len + [0] * (slots - len(seg_len)),
                          device)  # fmt: skip

    # 2.-5. one fixed-shape step; read back: the output, group and static-token counts
    outputs = runner(
        _merge_segments, (features, seg_info), grid=(n_frames, n_loc), n_seg=slots, tau=float(tau),
        cluster_ratio=float(cluster_ratio), k=int(k), min_tokens_to_cluster=int(min_tokens_to_cluster),
        dynamic_cluster_ratio=float(cluster_ratio if dynamic_cluster_ratio is None else dynamic_cluster_ratio),
    )  # fmt: skip
    return _merge_result(features, segments, *outputs)


def _merge_result(features: Tensor, segments: list[tuple[int, int]], merged: Tensor, slot: Tensor, longs: Tensor,
                  assignment: Tensor, static_tl: Tensor, totals: Tensor) -> MergeResult:  # fmt: skip
    """The :class:`MergeResult` of a step with :func:`_merge_segments`' outputs: its totals read back (the step's one
    read-back), its outputs copied (a runner's outputs may be its buffers, rewritten by its next call) and trimmed
    to the output count."""
    n_out, n_groups, n_static = totals.tolist()
    longs = longs[:, :n_out].clone()
    return MergeResult(
        features=merged.index_select(0, slot[:n_out]).to(features.dtype),
        source=longs[0],
        group=longs[1],
        is_static=longs[2].bool(),
        assignment=assignment.clone(),
        segments=segments,
        static_mask=static_tl.clone(),
        num_groups=n_groups,
        num_static=n_static,
    )


def segment_slots(n_segments: int, n_frames: int) -> int:
    """The segment count :func:`merge_video` gives its fixed-shape step under a runner that buckets shapes
    (:attr:`~.graphs.CudaGraphs.bucket_shapes`): ``n_segments`` rounded up to a power of two, at most ``n_frames``.
    The extra segments are empty (length 0): they are never static, hold no token and make no output row, so the
    outputs are those of ``n_segments`` (tests/test_graphs.py), while the clips of one shape need at most
    ``log2(T) + 1`` graphs instead of one per segment count (a new clip of a known shape replays Stage 1 instead of
    running it eagerly). The cost: at most ``n_segments - 1`` more rows in the batched DPC-KNN of ``n_segments + T``
    rows."""
    return min(1 << max(0, n_segments - 1).bit_length(), max(n_frames, n_segments))


def cluster_bound(n_loc: int, cluster_ratio: float, min_tokens_to_cluster: int) -> int:
    """The most clusters a block of at most ``n_loc`` tokens gets: ``n`` up to ``min_tokens_to_cluster`` tokens,
    ``min(max(floor(n * cluster_ratio), 1), n)`` above (non-decreasing in ``n``), so the larger of the two ends."""
    above = min(max(math.floor(n_loc * cluster_ratio), 1), n_loc) if n_loc > min_tokens_to_cluster else 0
    return max(min(n_loc, min_tokens_to_cluster), above)


def _merge_segments(
    features: Tensor,
    seg_info: Tensor,
    *,
    grid: tuple[int, int],
    n_seg: int,
    tau: float,
    cluster_ratio: float,
    k: int,
    min_tokens_to_cluster: int,
    dynamic_cluster_ratio: float | None = None,
) -> tuple[Tensor, ...]:
    """Steps 2-5 of :func:`merge_video` for given segments, every shape fixed by ``(T, L, C, S)``: recordable.

    Args:
        features: ``Tensor[T*L, C]``.
        seg_info: ``LongTensor[T + S]``: the segment of every frame, then the segment lengths (the last ones may be
            0: :func:`segment_slots`).

    Returns:
        ``merged`` (``float32 [R*Cb, C]``, the cluster means of the ``R = S + T`` rows, ``Cb`` slots each),
        ``slot`` (``LongTensor[T*L]``: the ``merged`` row of every output token), ``longs`` (``LongTensor[3, T*L]``:
        source, group, is_static of every output token), ``assignment`` (``LongTensor[T*L]``), the static mask
        (``BoolTensor[T, L]``) and ``LongTensor[3]``: the output count ``M``, the group count and the static-token
        count. Rows ``M`` and beyond of the padded outputs are meaningless.
    """
    n_frames, n_loc = grid
    channels = features.shape[1]
    # 2. static / dynamic
    # (the frames are written once, as float32, into the rows clustered below, after room for the segment means)
    rows = features.new_empty((n_seg + n_frames, n_loc, channels), dtype=torch.float32)
    rows[n_seg:] = features.reshape(n_frames, n_loc, channels)
    frames, seg_of_frame, seg_len, seg_start, static_seg, static_tl = _split_static(
        features, seg_info, grid, n_seg, tau, frames=rows[n_seg:]
    )

    # 3.+4. one batched clustering: rows 0..S-1 = segment means (static), rows S..S+T-1 = frames (dynamic)
    seg_mean = _segment_sum(frames, seg_len) / seg_len.clamp_min(1)[:, None, None].float()  # (empty segment: 0)
    if seg_mean.requires_grad:  # autograd saved the frames for the backward: no write into their tensor
        rows = torch.cat([seg_mean, frames], dim=0)
    else:  # in place: no second copy of the frames (a float32 pass over the video's tokens)
        rows[:n_seg] = seg_mean
    valid = torch.cat([static_seg, ~static_tl], dim=0)
    counts, c_bound = _row_counts(valid.sum(dim=1), n_seg, n_loc, cluster_ratio, dynamic_cluster_ratio,
                                  min_tokens_to_cluster)  # fmt: skip
    dpc = dpc_knn(rows, counts, k, valid, max_clusters=c_bound)
    merged = _cluster_means(rows, dpc.labels, c_bound).reshape(-1, channels)  # [R*Cb, C] float32
    layout = _output_layout(counts, dpc.centers, dpc.labels, static_first=seg_start, row_of_frame=seg_of_frame,
                            static_tl=static_tl, c_bound=c_bound, grid=grid)  # fmt: skip
    return merged, *layout


def _split_static(features: Tensor, seg_info: Tensor, grid: tuple[int, int], n_seg: int, tau: float,
                  frames: Tensor | None = None) -> tuple[Tensor, ...]:  # fmt: skip
    """Step 2 of :func:`merge_video` with its bookkeeping: ``frames`` (``float32 [T, L, C]``; given, or made from
    ``features``), the segment of every frame, the segment lengths and first frames (``seg_info`` unpacked), and the
    static mask per segment (``BoolTensor[S, L]``) and per frame (``BoolTensor[T, L]``)."""
    n_frames, n_loc = grid
    if frames is None:
        frames = features.reshape(n_frames, n_loc, features.shape[1]).float()
    seg_of_frame, seg_len = seg_info[:n_frames], seg_info[n_frames:]
    seg_start = torch.cumsum(seg_len, 0) - seg_len
    static_seg = _segment_static(frames, seg_of_frame, n_seg, tau, width=seg_len)  # [S, L]
    return frames, seg_of_frame, seg_len, seg_start, static_seg, static_seg[seg_of_frame]


def _row_counts(n_valid: Tensor, n_static_rows: int, n_loc: int, cluster_ratio: float,
                dynamic_cluster_ratio: float | None, min_tokens_to_cluster: int) -> tuple[Tensor, int]:  # fmt: skip
    """Cluster count of every clustered row (the ``n_static_rows`` static rows with ``cluster_ratio``, then the
    frames' dynamic rows with ``dynamic_cluster_ratio``; ``None``: the same ratio, the paper) and the bound on them."""
    c_bound = cluster_bound(n_loc, cluster_ratio, min_tokens_to_cluster)
    if dynamic_cluster_ratio is None or dynamic_cluster_ratio == cluster_ratio:  # the paper: one ratio for both
        return _cluster_counts(n_valid, cluster_ratio, min_tokens_to_cluster), c_bound
    static = _cluster_counts(n_valid[:n_static_rows], cluster_ratio, min_tokens_to_cluster)
    dynamic = _cluster_counts(n_valid[n_static_rows:], dynamic_cluster_ratio, min_tokens_to_cluster)
    dynamic_bound = cluster_bound(n_loc, dynamic_cluster_ratio, min_tokens_to_cluster)
    return torch.cat([static, dynamic]), max(c_bound, dynamic_bound)


def _cluster_counts(n_valid: Tensor, cluster_ratio: float, min_tokens_to_cluster: int) -> Tensor:
    """Cluster count of each row, as dpc_knn clamps it: ``max(1, floor(n * ratio))`` (float64, as Python) above
    ``min_tokens_to_cluster`` valid points, else ``n``."""
    reduced = torch.minimum(torch.floor(n_valid.double() * cluster_ratio).long().clamp_min(1), n_valid)
    return torch.where(n_valid > min_tokens_to_cluster, reduced, n_valid)


def _output_layout(counts: Tensor, centers: Tensor, labels: Tensor, *, static_first: Tensor, row_of_frame: Tensor,
                   static_tl: Tensor, c_bound: int, grid: tuple[int, int]) -> tuple[Tensor, ...]:  # fmt: skip
    """Step 5 of :func:`merge_video`: where the clusters of the ``R = P + T`` clustered rows go (``P`` static rows,
    then the ``T`` frames' dynamic rows), in fixed shapes.

    Args:
        counts: ``LongTensor[R]`` clusters of every row; ``centers`` / ``labels``: the rows' DPC-KNN output.
        static_first: ``LongTensor[P]`` first frame of every static row; ``row_of_frame``: ``LongTensor[T]`` the
            static row of every frame's static tokens; ``static_tl``: ``BoolTensor[T, L]`` the static mask.

    Returns:
        ``slot``, ``longs``, ``assignment`` and the totals of :func:`_merge_segments`. Each static block (key
        ``2 * its first frame``) comes before the dynamic blocks (key ``2 * t + 1``) of the frames it precedes.
    """
    n_frames, n_loc = grid
    n_static_rows = static_first.shape[0]
    device = counts.device
    frame_idx = torch.arange(n_frames, device=device)
    order = torch.sort(torch.cat([2 * static_first, 2 * frame_idx + 1])).indices  # rows in output order
    c_ord = counts[order]
    end_ord = torch.cumsum(c_ord, 0)
    start_ord = end_ord - c_ord
    offset = torch.empty_like(counts).scatter_(0, order, start_ord)  # first output row of every block
    group_row = torch.empty_like(counts).scatter_(0, order, torch.cumsum(c_ord > 0, 0) - 1)  # empty: no id
    base = torch.cat([static_first, frame_idx]) * n_loc  # token index of each row's first location

    size = n_frames * n_loc  # no more outputs than input tokens
    out = torch.arange(size, device=device)
    at = torch.searchsorted(end_ord, out, right=True).clamp_max(order.shape[0] - 1)  # block of each output row
    row = order[at]
    cluster = (out - start_ord[at]).clamp(0, c_bound - 1)
    slot = row * c_bound + cluster
    source = centers.reshape(-1)[slot] + base[row]
    longs = torch.stack([source, group_row[row], (row < n_static_rows).long()])

    # assignment: output row of each input token's (row, cluster)
    token_row = torch.where(static_tl, row_of_frame[:, None], n_static_rows + frame_idx[:, None])  # [T, L]
    token_label = labels.reshape(-1)[token_row * n_loc + torch.arange(n_loc, device=device)]
    assignment = (offset[token_row] + token_label).reshape(-1)
    totals = torch.stack([end_ord[-1], (counts > 0).sum(), static_tl.sum()])
    return slot, longs, assignment, static_tl, totals


def _to_device(values: list[int], device: torch.device) -> Tensor:
    """A host list of ints as a LongTensor on ``device``: one copy, not waited for (no host sync)."""
    host = torch.tensor(values, dtype=torch.long)
    return host.to(device, non_blocking=True) if host.device != torch.device(device) else host
