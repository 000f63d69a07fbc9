"""Stage-1 ablations (`modeling.eval.ablations.Stage1Ablation`, PruneVid Sec. 3.2): the defaults are the paper's
`merge_video` bit for bit, each switch does what it says, every variant keeps `MergeResult`'s contract, and every
variant runs `generate` on the trained demo model (CPU).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from conftest import make_video
from modeling import PruneVidConfig
from modeling.eval.ablations import CURVE_VARIANTS, VARIANTS, Stage1Ablation, factory
from modeling.prunevid.merge import MergeResult, merge_video


CONFIG = PruneVidConfig.paper()
SWITCHES = [dict(average_static=a, merged_feature=f, merge_dynamic=d)
            for a, f, d in itertools.product((True, False), ("mean", "centre"), (True, False))]  # fmt: skip


# (features, grid): a moving square (clustered static and dynamic blocks), a small dynamic region (not clustered),
# three scenes, all-dynamic single frame, a tiny two-frame grid, random tokens (every block dynamic)
VIDEOS = {
    "square": (make_video(6, [4, 4], 8, 8, (slice(2, 6), slice(1, 6))), (8, 8, 8)),
    "small_region": (make_video(7, [4, 4], 6, 6, (slice(1, 4), slice(2, 5))), (8, 6, 6)),
    "three_scenes": (make_video(3, [3, 2, 4], 5, 6, (slice(0, 5), slice(3, 6)), c=16), (9, 5, 6)),
    "one_frame": (torch.randn(16, 8, generator=torch.Generator().manual_seed(8)), (1, 4, 4)),
    "tiny": (make_video(9, [2], 3, 4, (slice(0, 1), slice(0, 2)), c=8), (2, 3, 4)),
    "noise": (torch.randn(6 * 20, 12, generator=torch.Generator().manual_seed(4)), (6, 4, 5)),
}


def paper(features: torch.Tensor, grid: tuple[int, int, int]) -> MergeResult:
    return merge_video(features, grid, tau=CONFIG.tau, temporal_segment_ratio=CONFIG.temporal_segment_ratio,
                       cluster_ratio=CONFIG.cluster_ratio, k=CONFIG.dpc_knn_k,
                       min_tokens_to_cluster=CONFIG.min_tokens_to_cluster)  # fmt: skip


def reduced(n: int) -> int:
    """The paper's cluster count of a block of n tokens."""
    return max(1, int(n * CONFIG.cluster_ratio)) if n > CONFIG.min_tokens_to_cluster else n


def expected_count(res: MergeResult, average_static: bool, merge_dynamic: bool) -> int:
    total = 0
    for s, e in res.segments:
        n_static = int(res.static_mask[s].sum())
        total += reduced(n_static) * (1 if average_static else e - s)
        for t in range(s, e):
            n_dyn = int((~res.static_mask[t]).sum())
            total += reduced(n_dyn) if merge_dynamic else n_dyn
    return total


def check_contract(x: torch.Tensor, grid: tuple[int, int, int], res: MergeResult, switches: dict) -> None:
    """`MergeResult`'s documented contract, and the switches' effect on counts, members and features."""
    n_frames, h, w = grid
    n_loc = h * w
    m = res.features.shape[0]
    assert res.features.dtype == x.dtype and res.features.shape[1] == x.shape[1]
    assert res.source.shape == res.group.shape == res.is_static.shape == (m,)
    assert res.is_static.dtype == torch.bool and res.static_mask.shape == (n_frames, n_loc)
    assert m == expected_count(res, switches["average_static"], switches["merge_dynamic"])
    # segments tile the video; the static decision is constant within a segment
    assert res.segments[0][0] == 0 and res.segments[-1][1] == n_frames
    assert all(a[1] == b[0] for a, b in zip(res.segments, res.segments[1:]))
    for s, e in res.segments:
        assert (res.static_mask[s:e] == res.static_mask[s]).all()
    # assignment covers every input token; every output row has members; the source is a member of its own row
    assert res.assignment.shape == (n_frames * n_loc,)
    assert res.assignment.min() >= 0 and res.assignment.max() < m
    assert bool((torch.bincount(res.assignment, minlength=m) > 0).all())
    assert res.source.min() >= 0 and res.source.max() < n_frames * n_loc
    assert torch.equal(res.assignment[res.source], torch.arange(m))
    static_tok = res.static_mask.reshape(-1)
    assert torch.equal(static_tok[res.source], res.is_static)
    # groups: consecutive from 0 in output order, one per block; a block is static or dynamic throughout
    assert res.group[0] == 0 and res.num_groups == int(res.group.max()) + 1
    assert set((res.group[1:] - res.group[:-1]).tolist()) <= {0, 1}
    tok_frame = torch.arange(n_frames * n_loc) // n_loc
    seg_of = {t: (s, e) for s, e in res.segments for t in range(s, e)}
    src_frame = res.source // n_loc
    for g in range(res.num_groups):
        rows = (res.group == g).nonzero().flatten()
        assert bool((res.is_static[rows] == res.is_static[rows[0]]).all())
        members = torch.isin(res.assignment, rows).nonzero().flatten()
        frames = set(tok_frame[members].tolist())
        if res.is_static[rows[0]] and switches["average_static"]:  # all frames of one segment
            s, e = seg_of[int(src_frame[rows[0]])]
            assert frames == set(range(s, e)) and bool((src_frame[rows] == s).all())
        else:  # one frame: the sources' frame
            assert frames == {int(src_frame[rows[0]])} and bool((src_frame[rows] == src_frame[rows[0]]).all())
        assert bool((static_tok[members] == res.is_static[rows[0]]).all())
    # features: the members' mean, or the centre's own (with the averaging, its location's mean over the segment)
    xf = x.float()
    for j in range(m):
        members = res.assignment == j
        if switches["merged_feature"] == "mean":
            ref = xf[members].mean(0)
        elif res.is_static[j] and switches["average_static"]:
            s, e = seg_of[int(src_frame[j])]
            ref = xf.reshape(n_frames, n_loc, -1)[s:e, int(res.source[j]) % n_loc].mean(0)
        else:
            assert torch.equal(res.features[j], x[res.source[j]]), "a centre is a real token, bit for bit"
            continue
        torch.testing.assert_close(res.features[j].float(), ref.to(x.dtype).float(), atol=1e-4, rtol=1e-4)


def assert_same(a: MergeResult, b: MergeResult) -> None:
    for field in ("features", "source", "group", "is_static", "assignment", "static_mask"):
        ta, tb = getattr(a, field), getattr(b, field)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), field
    assert a.segments == b.segments and a.num_groups == b.num_groups


# ------------------------------------------------------------------------------------------------ synthetic videos
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("video", list(VIDEOS))
def test_defaults_are_the_paper_bit_for_bit(video, dtype):
    x, grid = VIDEOS[video]
    x = x.to(dtype)
    assert_same(Stage1Ablation(CONFIG).merge(x, grid), paper(x, grid))


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: Stage1Ablation(**s).name)
@pytest.mark.parametrize("video", list(VIDEOS))
def test_every_variant_keeps_the_contract(video, switches):
    x, grid = VIDEOS[video]
    check_contract(x, grid, Stage1Ablation(CONFIG, **switches).merge(x, grid), switches)


def test_contract_in_bfloat16():
    x, grid = VIDEOS["square"]
    for switches in SWITCHES:
        check_contract(x.bfloat16(), grid, Stage1Ablation(CONFIG, **switches).merge(x.bfloat16(), grid), switches)


@pytest.mark.parametrize("video", list(VIDEOS))
def test_centre_replaces_only_the_spatial_mean(video):
    x, grid = VIDEOS[video]
    ref, res = paper(x, grid), Stage1Ablation(CONFIG, merged_feature="centre").merge(x, grid)
    for field in ("source", "group", "is_static", "assignment", "static_mask"):  # same clusters, counts, positions
        assert torch.equal(getattr(res, field), getattr(ref, field)), field
    dyn = ~res.is_static
    assert torch.equal(res.features[dyn], x[res.source[dyn]])  # a dynamic merged token is one input token
    singletons = torch.bincount(res.assignment, minlength=res.features.shape[0]) == 1
    assert torch.equal(res.features[dyn & singletons], ref.features[dyn & singletons])  # unmerged: unchanged
    n_frames, h, w = grid
    if res.is_static.any():  # static: the centre location averaged over its segment, as the paper averages it
        frames = x.reshape(n_frames, h * w, -1)
        seg = {t: (s, e) for s, e in res.segments for t in range(s, e)}
        for j in res.is_static.nonzero().flatten().tolist():
            s, e = seg[int(res.source[j]) // (h * w)]
            torch.testing.assert_close(res.features[j], frames[s:e, int(res.source[j]) % (h * w)].mean(0))
    if video == "square":  # where clusters have several members, the centre differs from the mean
        assert not torch.equal(res.features, ref.features)


@pytest.mark.parametrize("merged_feature", ["mean", "centre"])
@pytest.mark.parametrize("video", list(VIDEOS))
def test_without_static_averaging_no_token_mixes_frames(video, merged_feature):
    x, grid = VIDEOS[video]
    n_frames, h, w = grid
    ref = paper(x, grid)
    res = Stage1Ablation(CONFIG, average_static=False, merged_feature=merged_feature).merge(x, grid)
    assert torch.equal(res.static_mask, ref.static_mask) and res.segments == ref.segments  # the paper's static test
    assert res.features.shape[0] >= ref.features.shape[0]
    tok_frame = torch.arange(n_frames * h * w) // (h * w)
    frame_of_row = torch.full((res.features.shape[0],), -1).scatter_reduce(0, res.assignment, tok_frame, "amax")
    first_of_row = torch.full_like(frame_of_row, n_frames).scatter_reduce(0, res.assignment, tok_frame, "amin")
    assert torch.equal(frame_of_row, first_of_row) and torch.equal(frame_of_row, res.source // (h * w))
    if merged_feature == "centre":  # every output token is an input token, bit for bit: none is a temporal average
        assert torch.equal(res.features, x[res.source])
    n_static = int(ref.static_mask.sum())
    if n_static:  # the drifting static tokens: the paper averages them over time, this variant does not
        ref_frames = torch.full((ref.features.shape[0],), -1).scatter_reduce(0, ref.assignment, tok_frame, "amax")
        ref_first = torch.full_like(ref_frames, n_frames).scatter_reduce(0, ref.assignment, tok_frame, "amin")
        assert bool((ref_frames[ref.is_static] > ref_first[ref.is_static]).all())
        assert res.features.shape[0] > ref.features.shape[0]
        assert int(res.is_static.sum()) >= int(ref.is_static.sum())
        static_x = x[ref.static_mask.reshape(-1)]
        if merged_feature == "centre":  # no static output equals a paper (time-averaged) static token
            averaged = ref.features[ref.is_static]
            assert not (res.features[res.is_static][:, None] == averaged[None]).all(-1).any()
            assert (res.features[res.is_static][:, None] == static_x[None]).all(-1).any(1).all()


@pytest.mark.parametrize("video", list(VIDEOS))
def test_without_dynamic_merging_every_dynamic_token_stays(video):
    x, grid = VIDEOS[video]
    ref, res = paper(x, grid), Stage1Ablation(CONFIG, merge_dynamic=False).merge(x, grid)
    dyn_in = ~res.static_mask.reshape(-1)
    assert int((~res.is_static).sum()) == int(dyn_in.sum())
    assert torch.equal(torch.sort(res.source[~res.is_static]).values, dyn_in.nonzero().flatten())
    assert torch.equal(res.features[~res.is_static], x[res.source[~res.is_static]])
    for field in ("features", "source"):  # the static blocks are the paper's
        assert torch.equal(getattr(res, field)[res.is_static], getattr(ref, field)[ref.is_static]), field
    assert torch.equal(res.static_mask, ref.static_mask) and res.segments == ref.segments
    assert res.features.shape[0] >= ref.features.shape[0]
    if video == "square":  # 20 dynamic tokens per frame: the paper clusters them to 10
        assert res.features.shape[0] == ref.features.shape[0] + 8 * 10


def test_names_switches_and_factory():
    assert Stage1Ablation().name == "stage1_ablation(paper)" and Stage1Ablation().config == PruneVidConfig.paper()
    config = PruneVidConfig.paper(keep_ratio=0.3)
    technique = Stage1Ablation(config, merged_feature="centre")
    assert technique.name == "stage1_ablation(centre)" and technique.config is config
    both = Stage1Ablation(config, average_static=False, merge_dynamic=False)
    assert both.name == "stage1_ablation(no_static_average+no_dynamic_merge)"
    assert "merge_dynamic=False" in repr(both)
    for variant, switches in VARIANTS.items():
        made = factory(variant)(config)
        assert isinstance(made, Stage1Ablation) and made.config is config
        assert made.name == f"stage1_ablation({variant})" == Stage1Ablation(config, **switches).name
    for method, (description, make) in CURVE_VARIANTS.items():  # the curves' factories: one per single switch
        assert method == make(config).name.replace("stage1_ablation(", "stage1_").rstrip(")") and description
    assert sorted(CURVE_VARIANTS) == sorted(f"stage1_{v}" for v in VARIANTS if v != "paper")
    with pytest.raises(ValueError, match="merged_feature"):
        Stage1Ablation(config, merged_feature="median")
    with pytest.raises(TypeError, match="average_static"):
        Stage1Ablation(config, average_static=0)
    with pytest.raises(TypeError, match="PruneVidConfig"):
        Stage1Ablation({"keep_ratio": 0.3})
    with pytest.raises(ValueError, match="unknown Stage-1 ablation"):
        factory("mean")


# ------------------------------------------------------------------------------------------------ end to end
def test_every_variant_generates_on_the_demo_model():
    """Each variant set through `prunevid_override` (and `model.prunevid = technique`) runs `generate` on the trained
    demo model and the bundled clip, with any Stage-2 keep ratio; the stats name it; counts follow the switches."""
    from modeling import MediaOptions, VideoQA
    from modeling.demo import DEMO_CLIP, DEMO_FPS, DEMO_PIXELS, checkpoint_path, demo_question

    qa = VideoQA.from_pretrained(checkpoint_path(), PruneVidConfig.paper(), device="cpu")
    options = MediaOptions(fps=DEMO_FPS, min_pixels=DEMO_PIXELS, max_pixels=DEMO_PIXELS)
    inputs = qa.prepare(demo_question()["question"], [str(DEMO_CLIP)], options=options)
    model = qa.model

    def generate() -> list[int]:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    answer = generate()
    (paper_row,) = model.prunevid_stats
    assert paper_row.technique == "prunevid"
    with model.prunevid_override(Stage1Ablation(PruneVidConfig.paper())):  # the defaults: the paper's tokens
        assert generate() == answer
        assert model.prunevid_stats == [dataclasses.replace(paper_row, technique="stage1_ablation(paper)")]
    config = PruneVidConfig.paper(keep_ratio=0.3)  # a Stage-2 ratio as the equal-retention curves set it
    rows = {}
    for variant in VARIANTS.keys() - {"paper"}:
        technique = factory(variant)(config)
        with model.prunevid_override(technique):
            generate()
            (rows[variant],) = model.prunevid_stats
        row = rows[variant]
        assert row.technique == technique.name == f"stage1_ablation({variant})"
        assert row.visual_tokens == paper_row.visual_tokens and 0 < row.after_stage2 < row.after_stage1
        assert row.cached_visual_tokens == row.after_stage2
    assert rows["centre"].after_stage1 == paper_row.after_stage1  # same clusters
    assert rows["centre"].after_stage2 < paper_row.after_stage2  # keep_ratio 0.3 < 0.4
    assert rows["no_static_average"].after_stage1 > paper_row.after_stage1
    assert rows["no_dynamic_merge"].after_stage1 >= paper_row.after_stage1  # this clip: <= 14 dynamic per frame
    both = Stage1Ablation(config, average_static=False, merged_feature="centre", merge_dynamic=False)
    model.prunevid = both
    generate()
    assert model.prunevid_stats[0].technique == "stage1_ablation(no_static_average+centre+no_dynamic_merge)"
    assert model.prunevid_technique is both


# ------------------------------------------------------------------------------ the option: dynamic_cluster_ratio
def with_dynamic_ratio(x: torch.Tensor, grid: tuple[int, int, int], ratio: float | None) -> MergeResult:
    return merge_video(x, grid, tau=CONFIG.tau, temporal_segment_ratio=CONFIG.temporal_segment_ratio,
                       cluster_ratio=CONFIG.cluster_ratio, k=CONFIG.dpc_knn_k,
                       min_tokens_to_cluster=CONFIG.min_tokens_to_cluster, dynamic_cluster_ratio=ratio)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("video", list(VIDEOS))
def test_dynamic_cluster_ratio_one_is_the_no_dynamic_merge_ablation_bit_for_bit(video, dtype):
    """`PruneVidConfig(dynamic_cluster_ratio=1.0)`, the option the ablation won as, is that ablation exactly;
    `None` and the paper's own ratio are the paper exactly."""
    x, grid = VIDEOS[video]
    x = x.to(dtype)
    assert_same(with_dynamic_ratio(x, grid, 1.0), Stage1Ablation(CONFIG, merge_dynamic=False).merge(x, grid))
    assert_same(with_dynamic_ratio(x, grid, None), paper(x, grid))
    assert_same(with_dynamic_ratio(x, grid, CONFIG.cluster_ratio), paper(x, grid))


@pytest.mark.parametrize("video", list(VIDEOS))
def test_dynamic_cluster_ratio_changes_only_the_dynamic_blocks(video):
    x, grid = VIDEOS[video]
    ref, res = paper(x, grid), with_dynamic_ratio(x, grid, 0.25)
    for field in ("features", "source"):  # the static blocks are the paper's
        assert torch.equal(getattr(res, field)[res.is_static], getattr(ref, field)[ref.is_static]), field
    expected = 0
    for s, e in res.segments:
        expected += reduced(int(res.static_mask[s].sum()))
        for t in range(s, e):
            n = int((~res.static_mask[t]).sum())
            expected += max(1, int(n * 0.25)) if n > CONFIG.min_tokens_to_cluster else n
    assert res.features.shape[0] == expected
    assert torch.equal(res.assignment[res.source], torch.arange(expected))  # each output's source is its member


def test_dynamic_cluster_ratio_reaches_the_model_through_the_config():
    model_config = CONFIG.replace(dynamic_cluster_ratio=1.0)
    x, grid = VIDEOS["square"]
    from modeling.integration.controller import PruneVidController

    assert_same(PruneVidController(model_config).merge(x, grid), with_dynamic_ratio(x, grid, 1.0))
    assert_same(PruneVidController(CONFIG).merge(x, grid), paper(x, grid))
    for bad, error in ((0.0, ValueError), (1.5, ValueError), ("1", TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match="dynamic_cluster_ratio"):
            PruneVidConfig(dynamic_cluster_ratio=bad)
