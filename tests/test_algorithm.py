"""Tests of the PruneVid algorithm kernels (arXiv 2412.16117, Sec. 3.2 and 3.3) against loop references."""

from __future__ import annotations

import itertools
import math
import weakref
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_video
from modeling.prunevid.dpc_knn import dpc_knn, merge_by_labels, pairwise_distances
from modeling.prunevid.merge import contiguous_segments, merge_video, static_mask, temporal_segments
from modeling.prunevid.select import attention_importance, grouped_topk, kept_counts


# ----------------------------------------------------------------------------------------------------------------
# DPC-KNN
# ----------------------------------------------------------------------------------------------------------------
def ref_dpc(x: np.ndarray, c: int, k: int, valid: np.ndarray) -> tuple[list[int], list[int]]:
    """Loop reference of DPC-KNN on one row (float64): returns (labels over all N, centres in raster order)."""
    n_all, channels = x.shape
    idx = [i for i in range(n_all) if valid[i]]
    n = len(idx)
    labels = [-1] * n_all
    if n == 0:
        return labels, []
    pts = x[idx].astype(np.float64)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = math.sqrt(float(((pts[i] - pts[j]) ** 2).sum())) / math.sqrt(channels)
    kk = min(k, n)
    rho = [math.exp(-float(np.mean(np.sort(d[i])[:kk] ** 2))) for i in range(n)]

    def denser(j: int, i: int) -> bool:
        return rho[j] > rho[i] or (rho[j] == rho[i] and j < i)

    delta = []
    for i in range(n):
        cand = [d[i, j] for j in range(n) if denser(j, i)]
        delta.append(min(cand) if cand else max(d[i]))
    score = [rho[i] * delta[i] for i in range(n)]
    cb = min(max(c, 1), n)
    centres = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:cb])
    for i in range(n):
        if i in centres:
            lab = centres.index(i)
        else:
            best = None
            for j, cj in enumerate(centres):
                if best is None or d[i, cj] < d[i, centres[best]]:
                    best = j
            lab = best
        labels[idx[i]] = lab
    return labels, [idx[c_] for c_ in centres]


def check_dpc(x: torch.Tensor, c, k: int, valid: torch.Tensor | None) -> None:
    res = dpc_knn(x, c, k, valid)
    batch, n, _ = x.shape
    v = torch.ones(batch, n, dtype=torch.bool) if valid is None else valid
    for b in range(batch):
        cb = int(c[b]) if isinstance(c, torch.Tensor) else c
        labels, centres = ref_dpc(x[b].float().numpy(), cb, k, v[b].numpy())
        assert res.labels[b].tolist() == labels, (b, res.labels[b].tolist(), labels)
        got_c = [i for i in res.centers[b].tolist() if i >= 0]
        assert got_c == centres
        assert int(res.num_clusters[b]) == len(centres)
        assert all(i == -1 for i in res.centers[b].tolist()[len(centres):])
        for j, cj in enumerate(centres):
            assert res.labels[b, cj] == j


@pytest.mark.parametrize("seed", range(6))
def test_dpc_matches_reference_random(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch = [1, 2, 3, 4, 2, 3][seed]
    n = int(torch.randint(2, 30, (1,), generator=g))
    channels = int(torch.randint(1, 9, (1,), generator=g))
    k = int(torch.randint(1, 9, (1,), generator=g))
    x = torch.randn(batch, n, channels, generator=g)
    check_dpc(x, int(torch.randint(1, n + 3, (1,), generator=g)), k, None)
    valid = torch.rand(batch, n, generator=g) < 0.6
    valid[0, :] = False
    valid[0, :1] = True  # one row with a single valid point
    if batch > 1:
        valid[1] = False  # a row with no valid point
    c = torch.randint(0, n + 2, (batch,), generator=g)
    check_dpc(x, c, k, valid)


def test_dpc_tie_breaks() -> None:
    # Integer grid with k = 1: every density is exp(0) = 1, so the index decides density, scores tie and many
    # points are equidistant to two centres.
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
    grid = torch.stack([ys.flatten(), xs.flatten()], -1)[None]
    for c in (1, 2, 3, 5, 8, 20):
        for k in (1, 2, 3, 6):
            check_dpc(grid, c, k, None)
    # Duplicated points (exact density ties and zero distances); more clusters than distinct points.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 3, generator=g)
    dup = base[torch.tensor([0, 1, 1, 2, 0, 3, 3, 3, 4, 2, 0])][None].repeat(2, 1, 1)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 1] = False
    for c in (1, 3, 5, 7, 11):
        for k in (1, 2, 4, 11):
            check_dpc(dup, c, k, valid)
    res = dpc_knn(dup, 11, 2)
    assert res.labels[0].tolist() == list(range(11))  # every duplicate is its own centre


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pairwise_distances(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = (5 * torch.randn(3, 40, 3584, generator=g)).to(dtype)
    x[0, 7] = x[0, 3]  # duplicates
    x[1, 10:13] = x[1, 2]
    x[2, 5] = 0.0  # a zero vector, twice
    x[2, 6] = 0.0
    d = pairwise_distances(x)
    assert d.dtype == torch.float32 and d.shape == (3, 40, 40)
    assert torch.equal(d, d.transpose(1, 2))  # exactly symmetric
    assert torch.all(d.diagonal(dim1=1, dim2=2) == 0)
    assert d[0, 3, 7] == 0 and torch.all(d[1, 2, 10:13] == 0) and torch.all(d[1, 10:13, 10:13] == 0)
    assert d[2, 5, 6] == 0
    ref = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    distinct = ref > 0
    assert torch.all(d[~distinct] == 0)
    rel = (d.double() - ref).abs()[distinct] / ref[distinct]
    assert float(rel.max()) < 1e-6  # float32 rounding of the exact distance; distinct points never snapped to 0


def test_dpc_deterministic_and_blobs() -> None:
    g = torch.Generator().manual_seed(1)
    means = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    truth = torch.randint(0, 4, (60,), generator=g)
    x = means[truth] + torch.randn(60, 2, generator=g)
    a = dpc_knn(x[None], 4, 5)
    b = dpc_knn(x[None], 4, 5)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    lab = a.labels[0]
    # recovered exactly (up to naming): same partition as the truth
    pairs_truth = truth[:, None] == truth[None, :]
    pairs_got = lab[:, None] == lab[None, :]
    assert torch.equal(pairs_truth, pairs_got)
    # clusters are numbered in raster order of the centres
    assert a.centers[0].tolist() == sorted(a.centers[0].tolist())


def test_merge_by_labels() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 4, generator=g)
    labels = torch.tensor([[0, 1, 0, 2, -1, 1, 0, 2, 2], [1, 1, 0, -1, -1, 0, 1, 1, 0]])
    out = merge_by_labels(x, labels, 4)
    for b in range(2):
        for j in range(4):
            m = labels[b] == j
            ref = x[b][m].mean(0) if m.any() else torch.zeros(4)
            torch.testing.assert_close(out[b, j], ref)
    assert merge_by_labels(x.bfloat16(), labels, 4).dtype == torch.bfloat16


def test_cluster_means_are_index_add_sums_bit_for_bit() -> None:
    """The cluster sums are taken in point order from 0, as `index_add_` into zeros makes them on the CPU, whatever
    the number of non-members (they fill several spare slots here: 3 rows x 100 points, 80% of them non-members)."""
    from modeling.prunevid.dpc_knn import _SPARE_ROWS, _cluster_means

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 100, 16, generator=g) * torch.logspace(-3, 3, 100)[None, :, None]
    labels = torch.randint(0, 7, (3, 100), generator=g)
    labels[torch.rand(3, 100, generator=g) < 0.8] = -1
    assert int((labels < 0).sum()) > 2 * _SPARE_ROWS
    out = _cluster_means(x, labels, 7)
    for b in range(3):
        member = labels[b] >= 0
        sums = torch.zeros(7, 16).index_add_(0, labels[b][member], x[b][member])
        counts = torch.bincount(labels[b][member], minlength=7).clamp_min(1)
        assert torch.equal(out[b], sums / counts[:, None].float())


# ----------------------------------------------------------------------------------------------------------------
# Temporal segmentation and static mask
# ----------------------------------------------------------------------------------------------------------------
def ref_contiguous(labels: list[int]) -> list[tuple[int, int]]:
    """The authors' contiguity rule, frame by frame, straight from its text (reference doc, Stage 1 step 1 a-d)."""
    n = len(labels)
    runs = []  # (label, start, end) of the maximal runs
    s = 0
    for t in range(1, n + 1):
        if t == n or labels[t] != labels[s]:
            runs.append((labels[s], s, t))
            s = t
    longest = {lab: max(e - s for l2, s, e in runs if l2 == lab) for lab in labels}
    out = [-1] * n
    for lab, s, e in runs:  # a. every run as long as the label's longest stays; b. longest run 1 -> removed
        if e - s == longest[lab] and longest[lab] > 1:
            for t in range(s, e):
                out[t] = lab
    t = 0
    while t < n:  # c. fill the unlabelled stretches left to right, measuring the array as filled so far
        if out[t] != -1:
            t += 1
            continue
        e = t
        while e < n and out[e] == -1:
            e += 1
        left = out[t - 1] if t > 0 else None
        right = out[e] if e < n else None
        left_len = 0
        while left is not None and t - 1 - left_len >= 0 and out[t - 1 - left_len] == left:
            left_len += 1
        right_len = 0
        while right is not None and e + right_len < n and out[e + right_len] == right:
            right_len += 1
        if left is None and right is None:
            fill = 0
        elif right is None:
            fill = left
        elif left is None:
            fill = right
        else:
            fill = left if left_len >= right_len else right
        for u in range(t, e):
            out[u] = fill
        t = e
    segs = []  # d. cut wherever the label changes
    s = 0
    for t in range(1, n + 1):
        if t == n or out[t] != out[s]:
            segs.append((s, t))
            s = t
    return segs


def test_contiguous_segments_crafted() -> None:
    cases = {
        (0, 0, 1, 1, 0, 0): [(0, 2), (2, 4), (4, 6)],  # tied longest runs of a label all stay
        (0, 1, 1, 0, 2, 2, 2): [(0, 4), (4, 7)],  # the left run counts the orphan it absorbed: 3 vs 3 -> left
        (0, 0, 1, 1, 0, 0, 1, 1): [(0, 2), (2, 4), (4, 6), (6, 8)],  # A A B B A A B B: 4 segments
        (0, 0, 1, 0, 0, 2, 2, 2): [(0, 5), (5, 8)],  # both runs of 0 stay; the orphan joins them into one
        (0, 0, 0, 1, 1, 1): [(0, 3), (3, 6)],
        (0, 1, 0, 1): [(0, 4)],  # every longest run is 1: no label survives -> label 0, one segment
        (0, 1, 2, 0, 1, 2): [(0, 6)],
        (0, 0, 1, 2, 2): [(0, 3), (3, 5)],  # orphan between equal runs -> left
        (0, 0, 1, 2, 2, 2): [(0, 2), (2, 6)],  # orphan joins the longer (right) run
        (0, 0, 0, 1, 2, 2, 2, 2): [(0, 3), (3, 8)],  # 3 vs 4: the orphan joins the right run
        (1, 0, 0): [(0, 3)],  # orphan with a single neighbour
        (0, 0, 1): [(0, 3)],
        (5,): [(0, 1)],
        (3, 3, 3, 3): [(0, 4)],
        (): [],
    }
    for labels, expected in cases.items():
        assert contiguous_segments(list(labels)) == expected, labels
        assert ref_contiguous(list(labels)) == expected, labels
        assert contiguous_segments(torch.tensor(labels, dtype=torch.long)) == expected


def test_contiguous_segments_exhaustive() -> None:
    # every label sequence of length 1..10 over 3 labels (88,572 sequences) against the rule's text
    for n in range(1, 11):
        for labels in itertools.product(range(3), repeat=n):
            labels = list(labels)
            got = contiguous_segments(labels)
            assert got == ref_contiguous(labels), labels
            assert got[0][0] == 0 and got[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(got, got[1:]))


def test_temporal_segments_three_scenes() -> None:
    g = torch.Generator().manual_seed(4)
    scenes = torch.randn(3, 32, generator=g) * 5
    # scenes at least k = 7 frames long, so each scene's kNN densities stay inside it
    lengths = [8, 10, 9]
    frames = torch.cat([scenes[i] + 0.1 * torch.randn(n, 32, generator=g) for i, n in enumerate(lengths)])
    assert temporal_segments(frames, 0.12, 7) == [(0, 8), (8, 18), (18, 27)]
    # shorter scenes with k = 3
    short = torch.cat([frames[:4], frames[8:14], frames[18:23]])
    assert temporal_segments(short, 0.2, 3) == [(0, 4), (4, 10), (10, 15)]
    assert temporal_segments(frames[:1], 0.25, 7) == [(0, 1)]
    assert temporal_segments(frames[:2], 0.25, 7) == [(0, 2)]  # int(2 * 0.25) = 0 -> 1 cluster


def ref_mean_cos(tokens: torch.Tensor) -> list[float]:
    w, n_loc, _ = tokens.shape
    out = []
    t = tokens.double()
    for loc in range(n_loc):
        sims = []
        for i in range(w):
            for j in range(w):
                if i != j:
                    a, b = t[i, loc], t[j, loc]
                    sims.append(float(a @ b / (a.norm() * b.norm())))
        out.append(sum(sims) / len(sims) if sims else float("nan"))
    return out


def test_static_mask_reference() -> None:
    g = torch.Generator().manual_seed(5)
    for w in (2, 3, 5):
        base = torch.randn(1, 40, 16, generator=g)
        noise = torch.rand(1, 40, 1, generator=g) * 2.0  # locations from near-static to very dynamic
        tokens = base + noise * torch.randn(w, 40, 16, generator=g)
        ref = ref_mean_cos(tokens)
        got = static_mask(tokens, 0.8)
        checked = 0
        for loc, r in enumerate(ref):
            if abs(r - 0.8) > 1e-5:
                assert bool(got[loc]) == (r > 0.8)
                checked += 1
        assert checked >= 38 and 0 < int(got.sum()) < 40
    assert not static_mask(torch.randn(1, 7, 4), -1.0).any()  # w == 1: all dynamic


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: merge_video
# ----------------------------------------------------------------------------------------------------------------
def expected_count(res, h: int, w: int, ratio: float, min_tokens: int = 14) -> int:
    def reduced(n: int) -> int:
        return max(1, int(n * ratio)) if n > min_tokens else n

    total = 0
    for s, e in res.segments:
        total += reduced(int(res.static_mask[s].sum()))
        for t in range(s, e):
            total += reduced(int((~res.static_mask[t]).sum()))
    return total


def check_merge(features: torch.Tensor, grid: tuple[int, int, int], res, ratio: float) -> None:
    n_frames, h, w = grid
    n_loc = h * w
    m = res.features.shape[0]
    assert res.features.dtype == features.dtype
    assert res.source.shape == res.group.shape == res.is_static.shape == (m,)
    assert m == expected_count(res, h, w, ratio)
    # segments tile the video; static decision constant within a segment
    assert res.segments[0][0] == 0 and res.segments[-1][1] == n_frames
    for s, e in res.segments:
        assert (res.static_mask[s:e] == res.static_mask[s]).all()
    # assignment covers every input and features are member means (segment-averaged for static)
    assert res.assignment.shape == (n_frames * n_loc,)
    assert res.assignment.min() >= 0 and res.assignment.max() < m
    assert torch.equal(torch.bincount(res.assignment, minlength=m) > 0, torch.ones(m, dtype=torch.bool))
    feats = features.float()
    for j in range(m):
        ref = feats[res.assignment == j].mean(0)
        torch.testing.assert_close(res.features[j].float(), ref.to(features.dtype).float(), atol=1e-4, rtol=1e-4)
    # source: a real token of the right frame, member of its own output row, static flag agrees
    frame_of_src = res.source // n_loc
    assert torch.equal(res.assignment[res.source], torch.arange(m))
    assert torch.equal(res.static_mask.reshape(-1)[res.source], res.is_static)
    seg_start = {t: s for s, e in res.segments for t in range(s, e)}
    for j in range(m):
        if res.is_static[j]:
            assert int(frame_of_src[j]) in {s for s, _ in res.segments}
    # static members of a static row come from all frames of one segment
    static_tokens = res.static_mask.reshape(-1)
    tok_frame = torch.arange(n_frames * n_loc) // n_loc
    for j in range(m):
        members = (res.assignment == j).nonzero().flatten()
        assert bool((static_tokens[members] == res.is_static[j]).all())
        if res.is_static[j]:
            assert {seg_start[int(t)] for t in tok_frame[members]} == {int(frame_of_src[j])}
        else:
            assert bool((tok_frame[members] == frame_of_src[j]).all())
    # output order: blocks keyed (2*segment start for static, 2*t+1 for dynamic), raster order inside a block
    key = torch.where(res.is_static, 2 * frame_of_src, 2 * frame_of_src + 1)
    assert bool((key[1:] >= key[:-1]).all())
    same = key[1:] == key[:-1]
    assert bool((res.source[1:][same] > res.source[:-1][same]).all())
    # group ids: consecutive from 0, one per block
    assert res.group[0] == 0
    diff = res.group[1:] - res.group[:-1]
    assert torch.equal(diff, (~same).long())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_video_moving_square(dtype: torch.dtype) -> None:
    h = w = 8
    dyn = (slice(2, 6), slice(1, 6))  # 20 dynamic locations (> 14: clustered); 44 static (clustered)
    x32 = make_video(6, [4, 4], h, w, dyn)
    x = x32.to(dtype)
    grid = (8, h, w)
    res = merge_video(x, grid, tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert res.segments == [(0, 4), (4, 8)]
    expected_static = torch.ones(h, w, dtype=torch.bool)
    expected_static[dyn] = False
    assert torch.equal(res.static_mask, expected_static.reshape(1, -1).expand(8, -1))
    assert res.features.shape[0] == 2 * (22 + 4 * 10)
    check_merge(x, grid, res, 0.5)
    if dtype == torch.bfloat16:  # computed in float32 from the same values, then cast back
        ref = merge_video(x.float(), grid, tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
        assert torch.equal(ref.assignment, res.assignment) and torch.equal(ref.source, res.source)
        assert torch.equal(ref.features.to(dtype), res.features)


def test_merge_video_small_dynamic_region_not_clustered() -> None:
    h = w = 6
    dyn = (slice(1, 4), slice(2, 5))  # 9 dynamic locations (<= 14: kept), 27 static -> 13
    grid = (6, h, w)
    x = make_video(7, [3, 3], h, w, dyn)
    res = merge_video(x, grid, tau=0.8, temporal_segment_ratio=0.34, cluster_ratio=0.5, k=7)
    assert res.segments == [(0, 3), (3, 6)]
    assert res.features.shape[0] == 2 * (13 + 3 * 9)
    check_merge(x, grid, res, 0.5)
    dyn_rows = ~res.is_static
    torch.testing.assert_close(res.features[dyn_rows], x[res.source[dyn_rows]])


def test_merge_video_edge_cases() -> None:
    g = torch.Generator().manual_seed(8)
    # T == 1: one segment, all dynamic, clustered per frame (16 > 14 -> 8)
    x = torch.randn(16, 8, generator=g)
    res = merge_video(x, (1, 4, 4), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert res.segments == [(0, 1)] and not res.static_mask.any() and res.features.shape[0] == 8
    check_merge(x, (1, 4, 4), res, 0.5)
    # tiny grid (H*W <= 14) with T == 1: identity
    x = torch.randn(12, 8, generator=g)
    res = merge_video(x, (1, 3, 4), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert torch.equal(res.features, x) and torch.equal(res.source, torch.arange(12))
    assert torch.equal(res.assignment, torch.arange(12)) and torch.equal(res.group, torch.zeros(12, dtype=torch.long))
    # the "> 14" rule: 14 tokens are kept as they are, 15 are clustered to int(15 * 0.5) = 7
    x = torch.randn(14, 8, generator=g)
    res = merge_video(x, (1, 2, 7), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert torch.equal(res.features, x) and torch.equal(res.source, torch.arange(14))
    x = torch.randn(15, 8, generator=g)
    res = merge_video(x, (1, 3, 5), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert res.features.shape[0] == 7
    check_merge(x, (1, 3, 5), res, 0.5)
    # T == 2, tiny grid: one segment; static tokens averaged (not clustered), dynamic kept per frame
    x = make_video(9, [2], 3, 4, (slice(0, 1), slice(0, 2)), c=8)
    res = merge_video(x, (2, 3, 4), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    assert res.segments == [(0, 2)]
    assert int(res.static_mask[0].sum()) == 10
    assert res.features.shape[0] == 10 + 2 * 2
    assert res.group.tolist() == [0] * 10 + [1, 1, 2, 2]
    check_merge(x, (2, 3, 4), res, 0.5)
    # bfloat16 tiny grid
    xb = x.bfloat16()
    res = merge_video(xb, (2, 3, 4), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)
    check_merge(xb, (2, 3, 4), res, 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: attention importance and grouped top-k
# ----------------------------------------------------------------------------------------------------------------
def ref_importance(q, k, qmask, kmask, scaling, head_reduce, query_reduce):
    batch, hq, nq, _ = q.shape
    hk, n_keys = k.shape[1], k.shape[2]
    rep = hq // hk
    out = np.zeros((batch, n_keys))
    for b in range(batch):
        keys = [j for j in range(n_keys) if kmask[b, j]]
        per_query = []
        for i in range(nq):
            if not qmask[b, i]:
                continue
            per_head = []
            for h in range(hq):
                kh = k[b, h // rep].double()
                logits = np.array([float(q[b, h, i].double() @ kh[j]) * scaling for j in keys])
                p = np.exp(logits - logits.max())
                p /= p.sum()
                row = np.zeros(n_keys)
                row[keys] = p
                per_head.append(row)
            per_head = np.stack(per_head)
            per_query.append(per_head.max(0) if head_reduce == "max" else per_head.mean(0))
        if per_query:
            pq = np.stack(per_query)
            out[b] = pq.max(0) if query_reduce == "max" else pq.mean(0)
    return out


@pytest.mark.parametrize("head_reduce,query_reduce", [("max", "max"), ("mean", "max"), ("max", "mean")])
def test_attention_importance_reference(head_reduce: str, query_reduce: str) -> None:
    g = torch.Generator().manual_seed(10)
    batch, hq, hk, nq, n_keys, d = 3, 6, 2, 5, 17, 8
    q = torch.randn(batch, hq, nq, d, generator=g)
    k = torch.randn(batch, hk, n_keys, d, generator=g)
    qmask = torch.rand(batch, nq, generator=g) < 0.7
    qmask[:, 0] = True
    kmask = torch.rand(batch, n_keys, generator=g) < 0.6
    kmask[:, 0] = True
    scaling = d**-0.5
    got = attention_importance(
        q.bfloat16(), k.bfloat16(), query_mask=qmask, key_mask=kmask, scaling=scaling,
        head_reduce=head_reduce, query_reduce=query_reduce,
    )
    assert got.dtype == torch.float32 and got.shape == (batch, n_keys)
    ref = ref_importance(q.bfloat16().float(), k.bfloat16().float(), qmask, kmask, scaling, head_reduce, query_reduce)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6, rtol=1e-5)
    assert (got[~kmask] == 0).all()
    # changing masked queries or masked keys changes nothing
    q2, k2 = q.clone(), k.clone()
    q2[~qmask[:, None, :, None].expand_as(q2)] = 100.0
    k2[~kmask[:, None, :, None].expand_as(k2)] = 100.0
    got2 = attention_importance(
        q2.bfloat16(), k2.bfloat16(), query_mask=qmask, key_mask=kmask, scaling=scaling,
        head_reduce=head_reduce, query_reduce=query_reduce,
    )
    assert torch.equal(got, got2)


def test_attention_importance_gqa_head_mapping() -> None:
    # Only key head 1 points at key 3: the query heads using it are 2 and 3 (h // 2 == 1), as repeat_kv.
    q = torch.zeros(1, 4, 1, 2)
    q[0, 2, 0] = torch.tensor([10.0, 0.0])
    k = torch.zeros(1, 2, 5, 2)
    k[0, 1, 3] = torch.tensor([1.0, 0.0])
    ones = torch.ones(1, 5, dtype=torch.bool)
    s = attention_importance(q, k, query_mask=ones[:, :1], key_mask=ones, scaling=1.0)
    assert int(s.argmax()) == 3 and s[0, 3] > 0.9
    q2 = torch.zeros(1, 4, 1, 2)
    q2[0, 1, 0] = torch.tensor([10.0, 0.0])  # head 1 uses key head 0: uniform
    s2 = attention_importance(q2, k, query_mask=ones[:, :1], key_mask=ones, scaling=1.0, head_reduce="mean")
    torch.testing.assert_close(s2, torch.full((1, 5), 0.2))


def _importance_inputs(seed: int, batch: int, hq: int, hk: int, nq: int, n_keys: int, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, nq, d, generator=g) * 3
    k = torch.randn(batch, hk, n_keys, d, generator=g)
    qmask = torch.rand(batch, nq, generator=g) < 0.6
    kmask = torch.rand(batch, n_keys, generator=g) < 0.7
    qmask[0] = False
    qmask[0, : nq // 3] = True  # samples with different question lengths (left part valid only)
    if batch > 2:
        qmask[2] = False  # a sample without any question token
        kmask[1] = False  # a sample without any valid key
    return q, k, qmask, kmask


@pytest.mark.parametrize("hk", [1, 2, 6])
@pytest.mark.parametrize("head_reduce,query_reduce", [("max", "max"), ("mean", "mean")])
def test_attention_importance_chunked_is_bitwise(hk: int, head_reduce: str, query_reduce: str) -> None:
    q, k, qmask, kmask = _importance_inputs(20 + hk, 4, 6, hk, 75, 29)
    for dtype in (torch.float32, torch.bfloat16):
        kwargs = dict(query_mask=qmask, key_mask=kmask, scaling=8**-0.5, head_reduce=head_reduce,
                      query_reduce=query_reduce)
        full = attention_importance(q.to(dtype), k.to(dtype), query_chunk=None, **kwargs)
        rows = [0, 2, 3]  # the reference needs a valid key
        ref = ref_importance(q[rows].to(dtype).float(), k[rows].to(dtype).float(), qmask[rows], kmask[rows], 8**-0.5,
                             head_reduce, query_reduce)
        np.testing.assert_allclose(full[rows].numpy(), ref, atol=1e-6, rtol=1e-5)
        assert (full[2] == 0).all() and (full[1] == 0).all() and (full[~kmask] == 0).all()
        for chunk in (1, 17, 48, 75, 1000):  # rounded up to multiples of 16: 16, 32, 48, 80, 1008
            got = attention_importance(q.to(dtype), k.to(dtype), query_chunk=chunk, **kwargs)
            assert torch.equal(got, full), (chunk, dtype, (got - full).abs().max())
    assert torch.equal(attention_importance(q, k, query_chunk=None, **kwargs),
                       attention_importance(q, k, **kwargs))  # default chunk
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="query_chunk"):
            attention_importance(q, k, query_chunk=bad, **kwargs)
    with pytest.raises(ValueError, match="head_reduce"):
        attention_importance(q, k, query_mask=qmask, key_mask=kmask, scaling=1.0, head_reduce="median")
    with pytest.raises(ValueError, match="query_mask"):
        attention_importance(q, k, query_mask=qmask[:, 1:], key_mask=kmask, scaling=1.0)


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of the tensor storages created inside the mode that are alive, and their peak.

    Storages are tracked through their (preserved, weak-referenceable) Python objects, so a storage counts from the
    op that created it until its last tensor is gone. Storages alive before entering are not counted."""

    def __init__(self, *existing: torch.Tensor) -> None:
        super().__init__()
        self.known = {id(t.untyped_storage()) for t in existing}
        self.live = self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        self.known.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in self.known:
                storage = t.untyped_storage()
                self.known.add(id(storage))
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, id(storage), storage.nbytes())
                self.peak = max(self.peak, self.live)
        return out


def test_attention_importance_memory_bounded_by_chunk() -> None:
    # Peak of the scoring's own allocations: O(B * Hq * Nq * L) unchunked, O(B * Hq * chunk * L) chunked,
    # whatever the question length.
    batch, hq, hk, n_keys, chunk = 2, 4, 2, 512, 32
    block = batch * hq * chunk * n_keys * 4  # one float32 [B, Hq, chunk, L] block
    peaks = {}
    for nq in (64, 512):
        q, k, qmask, kmask = _importance_inputs(30, batch, hq, hk, nq, n_keys)
        for query_chunk in (None, chunk):
            for reduce in ("max", "mean"):
                with _LiveBytes(q, k, qmask, kmask) as mode:
                    attention_importance(q, k, query_mask=qmask, key_mask=kmask, scaling=0.3, head_reduce=reduce,
                                         query_reduce=reduce, query_chunk=query_chunk)
                peaks[nq, query_chunk, reduce] = mode.peak
                assert mode.live <= batch * n_keys * 4 * 2  # nothing but small leftovers stays alive
    for reduce in ("max", "mean"):
        assert peaks[512, None, reduce] >= batch * hq * 512 * n_keys * 4  # the tracker sees the full block
        small = batch * (hq * 512 * 8 + 4 * n_keys) * 4  # q copy and [B, L] accumulators
        assert peaks[512, chunk, reduce] <= 3 * block + small, peaks
        assert peaks[512, chunk, reduce] <= peaks[64, chunk, reduce] + small  # independent of the question length


def ref_grouped_topk(scores: torch.Tensor, group: torch.Tensor, ratio: float, rounding: str) -> torch.Tensor:
    keep = torch.zeros_like(group, dtype=torch.bool)
    for b in range(scores.shape[0]):
        for gid in set(group[b].tolist()) - {-1}:
            idx = [i for i in range(scores.shape[1]) if group[b, i] == gid]
            exact = Fraction(str(ratio)) * len(idx)  # the quota of the exact (decimal) ratio
            quota = math.floor(exact) if rounding == "floor" else math.ceil(exact)
            for i in sorted(idx, key=lambda i: (-float(scores[b, i]), i))[:quota]:
                keep[b, i] = True
    return keep


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_grouped_topk_reference(rounding: str) -> None:
    g = torch.Generator().manual_seed(11)
    for ratio in (0.1, 0.29, 0.4, 0.5, 0.7, 1.0):
        for _ in range(20):
            batch, length = 3, int(torch.randint(1, 40, (1,), generator=g))
            scores = torch.randint(0, 4, (batch, length), generator=g).float()  # many ties
            group = torch.randint(-1, 6, (batch, length), generator=g)
            got = grouped_topk(scores, group, ratio, rounding=rounding)
            assert torch.equal(got, ref_grouped_topk(scores, group, ratio, rounding))
            assert not got[group < 0].any()


def test_grouped_topk_quota_rounding() -> None:
    scores = torch.arange(16.0)[None]
    group = torch.tensor([[0] * 10 + [1] * 5 + [2]])
    for rounding in ("floor", "ceil"):  # no float error either way: 0.7 * 10 = 7, 0.4 * 5 = 2, 0.3 * 10 = 3
        assert grouped_topk(scores, group, 0.7, rounding=rounding)[0, :10].sum() == 7
        assert grouped_topk(scores, group, 0.3, rounding=rounding)[0, :10].sum() == 3
        assert grouped_topk(scores, group, 0.4, rounding=rounding)[0, 10:15].sum() == 2
    # 0.29 * 100 is 28.999999999999996 in floats (Python's int() gives 28); the exact quota is 29
    assert grouped_topk(torch.arange(100.0)[None], torch.zeros(1, 100, dtype=torch.long), 0.29).sum() == 29
    # floor is the default (the authors' int(alpha * n)): a group of 1 or 2 keeps nothing at alpha 0.4
    assert grouped_topk(scores, group, 0.4)[0].tolist() == [False] * 6 + [True] * 4 + [False] * 3 + [True] * 2 + [False]
    small = torch.tensor([[0, 0, 1, 2, 2]])
    assert not grouped_topk(torch.rand(1, 5), small, 0.4).any()  # every quota 0: the sample keeps nothing
    assert grouped_topk(torch.rand(1, 5), small, 0.4, rounding="ceil").sum() == 3  # one per group
    assert grouped_topk(scores, group, 0.01, rounding="ceil")[0].tolist() == (
        [False] * 9 + [True] + [False] * 4 + [True, True]
    )
    with pytest.raises(ValueError, match="rounding"):
        grouped_topk(scores, group, 0.4, rounding="round")


def test_grouped_topk_one_group_is_topk() -> None:
    g = torch.Generator().manual_seed(12)
    scores = torch.randn(4, 50, generator=g)
    keep = grouped_topk(scores, torch.zeros(4, 50, dtype=torch.long), 0.3)
    idx = torch.topk(scores, 15, dim=1).indices
    ref = torch.zeros_like(keep).scatter_(1, idx, True)
    assert torch.equal(keep, ref)
    with pytest.raises(ValueError):
        grouped_topk(scores, torch.zeros(4, 50, dtype=torch.long), 0.0)


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_kept_counts_is_what_the_selection_keeps(rounding):
    """`kept_counts` (the length after Stage 2, predicted from the groups alone, read back after Stage 1) equals the
    count of what `grouped_topk` keeps plus the non-candidates, among the valid tokens, for any scores: random rows
    with padding, sparse and large group ids, every ratio's rounding edge."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch, length = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 60, (1,), generator=g))
        spread = int(torch.randint(1, 50, (1,), generator=g))
        group = torch.randint(-1, 8, (batch, length), generator=g) * spread
        valid = torch.rand(batch, length, generator=g) > 0.2
        group = torch.where(valid, group, -1)
        scores = torch.rand(batch, length, generator=g)
        for ratio in (0.1, 0.29, 0.4, 0.7, 1.0):
            kept = (grouped_topk(scores, group, ratio, rounding=rounding) | (group < 0)) & valid
            assert torch.equal(kept_counts(group, valid, ratio, rounding=rounding), kept.sum(dim=1))
