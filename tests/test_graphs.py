"""`PruneVidConfig(cuda_graphs=True)`: Stage 1 and the Stage-2 scoring as recorded CUDA graphs.

On the CPU: the recorded steps have every shape fixed by their inputs and read nothing back (they run on the meta
device, where a data-dependent op raises), the runner falls back to eager, and a model with `cuda_graphs` gives the
eager model's tokens. On a GPU (`pytest -m gpu`): a replay equals the eager call bit for bit, one graph per
signature, bounded, and `generate` gives the same tokens and Stage 1 counts.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from conftest import make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration.controller import _score_and_keep, _stage2_sizes
from modeling.prunevid.graphs import CudaGraphs, ReplayingLengths, bucket, eager
from modeling.prunevid.merge import _frame_labels, _merge_segments, cluster_bound, merge_video, segment_slots

SETTINGS = dict(tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7, min_tokens_to_cluster=14)


def video(seed: int, frames: int = 8, h: int = 6, w: int = 6, c: int = 16, device: str = "cpu",
          scenes: int = 2) -> torch.Tensor:  # fmt: skip
    """`scenes` scenes of noisy static backgrounds with a moving block of fresh tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for scene in range(scenes):
        bg = torch.randn(h, w, c, generator=g)
        for t in range(frames // scenes):
            f = bg + 0.05 * torch.randn(h, w, c, generator=g)
            f[t % h, :] = torch.randn(w, c, generator=g)
            out.append(f)
    return torch.stack(out).reshape(-1, c).to(device)


# ---------------------------------------------------------------------------------------------------------- CPU
def test_recorded_steps_have_fixed_shapes() -> None:
    """On the meta device a host read (`.item()`, `.tolist()`) or a data-dependent shape (`nonzero`, boolean
    indexing) raises: the steps run there, so they record as CUDA graphs; their output shapes follow the inputs."""
    t, h, w, c, s = 6, 4, 5, 8, 2
    features = torch.empty(t * h * w, c, device="meta")
    (labels,) = _frame_labels(torch.empty(1, t, c, device="meta"), n_clusters=2, k=7)
    assert labels.shape == (t,)
    seg_info = torch.empty(t + s, dtype=torch.long, device="meta")
    out = _merge_segments(features, seg_info, grid=(t, h * w), n_seg=s, tau=0.8, cluster_ratio=0.5, k=7,
                          min_tokens_to_cluster=14)  # fmt: skip
    bound = cluster_bound(h * w, 0.5, 14)
    assert [tuple(o.shape) for o in out] == [((s + t) * bound, c), (t * h * w,), (3, t * h * w), (t * h * w,),
                                            (t, h * w), (3,)]  # fmt: skip
    # `dynamic_cluster_ratio` (its own share for the dynamic rows) records too; its bound covers both ratios
    out = _merge_segments(features, seg_info, grid=(t, h * w), n_seg=s, tau=0.8, cluster_ratio=0.5, k=7,
                          min_tokens_to_cluster=14, dynamic_cluster_ratio=1.0)  # fmt: skip
    assert tuple(out[0].shape) == ((s + t) * h * w, c) and tuple(out[1].shape) == (t * h * w,)

    from modeling.demo.offline import tiny_config
    from modeling.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    layer = Qwen2_5_VLTextModel(tiny_config().text_config).layers[3].to("meta")
    hidden = torch.empty(2, 30, layer.self_attn.q_proj.in_features, device="meta")
    rows = torch.empty(2, 30, dtype=torch.bool, device="meta")
    mask = torch.empty(2, 30, dtype=torch.long, device="meta")
    group = torch.empty(2, 30, dtype=torch.long, device="meta")
    (kept,) = _score_and_keep(hidden, rows, mask, group, layer=layer, n_query=5, reduce="max", keep_ratio=0.4,
                              rounding="floor")  # fmt: skip
    assert kept.shape == (2, 30) and kept.dtype == torch.bool
    for predict in (True, False):  # the question rows and the predicted length after Stage 2, read back together
        (sizes,) = _stage2_sizes(rows, group, mask, keep_ratio=0.4, rounding="ceil", predict=predict)
        assert sizes.shape == (1 + predict,)


def test_stage2_steps_on_padded_tokens() -> None:
    """Pads at the end (no key, no question, no candidate), as the controller adds them for a recording runner:
    Stage 2's sizes are the same integers and its selection (fp32, the CPU) the same mask, the pads kept."""
    from modeling.demo.offline import tiny_config
    from modeling.integration.controller import _pad_tokens
    from modeling.integration.layer_graphs import bucket, pad_rows
    from modeling.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    torch.manual_seed(0)
    layer = Qwen2_5_VLTextModel(tiny_config().text_config).layers[1].eval()
    length = 75
    padded = bucket(length)
    hidden = torch.randn(2, length, layer.self_attn.q_proj.in_features)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :5] = 0  # a left-padded row
    group = torch.full((2, length), -1, dtype=torch.long)
    group[:, 5:55] = torch.arange(50) // 10  # five groups of ten candidates
    query = torch.zeros(2, length, dtype=torch.bool)
    query[0, 60:70] = True
    query[1, 66:73] = True  # fewer question rows than the other row
    options = dict(keep_ratio=0.4, rounding="floor")
    with torch.no_grad():
        (a,) = _score_and_keep(hidden, query, mask, group, layer=layer, n_query=10, reduce="max", **options)
        padded_inputs = (pad_rows(hidden, padded), _pad_tokens(query, padded, False), _pad_tokens(mask, padded, 0),
                         _pad_tokens(group, padded, -1))  # fmt: skip
        (b,) = _score_and_keep(*padded_inputs, layer=layer, n_query=10, reduce="max", **options)
    assert padded > length and b.shape == (2, padded)
    assert torch.equal(b[:, :length], a) and bool(b[:, length:].all())
    assert not bool(a[:, 5:55].all())  # (something was dropped)
    for predict in (True, False):
        (exact,) = _stage2_sizes(query, group, mask, predict=predict, **options)
        (sizes,) = _stage2_sizes(*(padded_inputs[1], padded_inputs[3], padded_inputs[2]), predict=predict, **options)
        assert torch.equal(sizes, exact)


class _Counting:
    """An eager runner that counts replays as `CudaGraphs(record_after=2)` would: a call replays from the second
    call of its padded length on; `lengths` records the padded length of every call."""

    def __init__(self):
        self.replayed, self.lengths = 0, []

    def __call__(self, fn, inputs, *, fixed=(), **options):
        self.replayed += inputs[0].shape[-1] in self.lengths
        self.lengths.append(inputs[0].shape[-1])
        return eager(fn, inputs, fixed=fixed, **options)


def test_replaying_lengths_pad_to_a_longer_replaying_one() -> None:
    """A length whose bucket has no graph replaying is padded to the shortest longer one that replays, within
    `reuse_longer`; otherwise to its own bucket; a runner without a `replayed` count always to its own; a length
    that stopped replaying (a graph the runner dropped) is forgotten; copies and pickles keep the settings only."""
    runner = _Counting()
    lengths = ReplayingLengths(reuse_longer=0.25)

    def call(length, kind="a", runner=runner, lengths=lengths):
        (out,) = lengths.run(runner, _sum, kind, length, lambda n: (torch.ones(1, n), torch.ones(1, n)))
        return out.shape[-1]

    assert [call(500), call(500)] == [512, 512]  # (its second call replays)
    assert call(430) == 512 and lengths.longer == 1  # bucket 432: 512 is at most 1/4 longer
    assert call(400) == 400  # 512 is more than 1/4 longer
    assert runner.replayed == 2 and call(420, kind="b") == 432  # another kind: its own bucket
    lengths.learn("a", 512, replayed=False)  # (the runner dropped it)
    assert call(430) == 432
    assert ReplayingLengths(0).pick("a", 432) == 432
    assert call(430, runner=eager) == 432  # (a runner that counts nothing: its own bucket)
    for twin in (copy.deepcopy(lengths), pickle.loads(pickle.dumps(lengths))):
        assert twin.reuse_longer == 0.25 and twin.pick("a", 400) == 400 and twin.longer == 0
    for bad in (-1, True, "0.25", float("nan")):
        with pytest.raises(ValueError, match="reuse_longer"):
            ReplayingLengths(bad)
    assert bucket(1412) == 1472


def test_cluster_bound_is_the_largest_count() -> None:
    for n_loc in (1, 5, 14, 15, 16, 29, 64, 257):
        for ratio in (0.01, 0.07, 0.3, 0.5, 1.0):
            for m in (0, 3, 14, 40):
                counts = [min(max(int(n * ratio), 1), n) if n > m else n for n in range(n_loc + 1)]
                assert cluster_bound(n_loc, ratio, m) == max(counts), (n_loc, ratio, m)


def test_runner_is_eager_on_cpu() -> None:
    runner = CudaGraphs()
    x = video(0)
    a = merge_video(x, (8, 6, 6), **SETTINGS)
    b = merge_video(x, (8, 6, 6), **SETTINGS, runner=runner)
    for name in ("features", "source", "group", "is_static", "assignment", "static_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.segments == b.segments and a.num_groups == b.num_groups
    assert runner.recorded == runner.replayed == 0
    assert runner.eager_runs == {"_frame_labels": 1, "_merge_segments": 1}  # each step of Stage 1, by name
    assert not runner.record(_affine, (torch.ones(2),), scale=2.0)  # (nothing to record on the CPU)
    assert eager(lambda x, y, *, z: (x + y * z,), (torch.ones(2), torch.ones(2)), z=3)[0].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="max_graphs"):
        CudaGraphs(0)
    with pytest.raises(ValueError, match="record_after"):
        CudaGraphs(record_after=0)


def _sum(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
    return (x + y,)


def test_one_tensor_passed_twice_is_its_own_signature() -> None:
    """Inputs that are one tensor twice key another graph than two tensors of the same shapes: the recording
    gives such a call one buffer for both (as a compiled function inside saw it, see `_aliases`), which must not
    serve a call of two different tensors."""
    a, b = torch.ones(3), torch.zeros(3)
    assert CudaGraphs._key(_sum, (a, a), (), {}) != CudaGraphs._key(_sum, (a, b), (), {})
    assert CudaGraphs._key(_sum, (a, b), (), {}) == CudaGraphs._key(_sum, (b, a), (), {})
    assert CudaGraphs._key(_sum, (a, a, b), (), {})[3] == (0, 0, 2)


def test_padded_segment_count_changes_nothing() -> None:
    """Under a recording runner `merge_video` pads the segment count to a power of two with empty segments (so that
    clips of one shape share their graphs): the outputs are those of the exact count, bit for bit."""
    assert [segment_slots(s, 32) for s in (1, 2, 3, 4, 5, 8, 9, 17, 32)] == [1, 2, 4, 4, 8, 8, 16, 32, 32]
    assert [segment_slots(s, 6) for s in (3, 5, 6)] == [4, 6, 6]  # never more than the frames
    seen = set()
    for seed in range(12):
        scenes = 3 + seed % 6  # 3..8 scenes of 4 frames: 2..6 segments, most not powers of two
        x = video(seed, frames=4 * scenes, h=4, w=5, scenes=scenes)
        grid = (4 * scenes, 4, 5)
        a = merge_video(x, grid, **SETTINGS)
        b = merge_video(x, grid, **SETTINGS, runner=CudaGraphs())  # (on the CPU it runs eagerly, padded)
        assert a.segments == b.segments and a.num_groups == b.num_groups
        for name in ("features", "source", "group", "is_static", "assignment", "static_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (seed, name)
        seen.add(len(a.segments))
    assert {3, 5, 6} <= seen, seen  # counts that were padded


def test_merge_keeps_autograd() -> None:
    """With autograd on (the runner then runs eagerly), merged tokens are differentiable means of their members."""
    x = video(1).requires_grad_()
    res = merge_video(x, (8, 6, 6), **SETTINGS, runner=CudaGraphs())
    res.features.sum().backward()
    members = torch.bincount(res.assignment, minlength=res.features.shape[0]).float()
    torch.testing.assert_close(x.grad[:, 0], (1.0 / members)[res.assignment])


def test_config_and_model(checkpoints, processor, media) -> None:
    """`cuda_graphs` is a validated setting, part of `fast()`; a model keeps one runner across settings, copies
    and pickles without its graphs, and on the CPU answers as eager."""
    assert PruneVidConfig.fast().cuda_graphs and not PruneVidConfig.paper().cuda_graphs
    with pytest.raises(TypeError, match="cuda_graphs"):
        PruneVidConfig(cuda_graphs="yes")
    inputs = make_inputs(processor, media, "video")
    model = Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], prunevid=PruneVidConfig.paper()).eval()
    with torch.no_grad():
        ref = model.generate(**inputs, do_sample=False, max_new_tokens=6)
        model.prunevid = PruneVidConfig.paper(cuda_graphs=True)
        runner = model.prunevid_technique.runner
        assert isinstance(runner, CudaGraphs)
        out = model.generate(**inputs, do_sample=False, max_new_tokens=6)
    assert torch.equal(ref, out)
    model.prunevid = PruneVidConfig.paper(cuda_graphs=True, keep_ratio=0.3)
    assert model.prunevid_technique.runner is runner  # graphs are the model's, not one setting's
    copied, unpickled = copy.deepcopy(runner), pickle.loads(pickle.dumps(runner))
    assert copied is not runner and (unpickled.max_graphs, unpickled.record_after) == (8, 2)



# ---------------------------------------------------------------------------------------------------------- GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()  # with autograd on, the runner runs eagerly (a recorded graph has no backward)
def test_merge_replay_equals_eager(dtype) -> None:
    runner = CudaGraphs(max_graphs=2, record_after=1)
    cases = [(0, (8, 6, 6)), (0, (8, 6, 6)), (1, (12, 4, 7)), (0, (8, 6, 6)), (2, (2, 3, 4)), (1, (12, 4, 7))]
    for i, (seed, grid) in enumerate(cases):
        x = video(seed, frames=grid[0], h=grid[1], w=grid[2], device="cuda").to(dtype)
        a = merge_video(x, grid, **SETTINGS)
        b = merge_video(x, grid, **SETTINGS, runner=runner)
        assert a.segments == b.segments and a.num_groups == b.num_groups
        for name in ("features", "source", "group", "is_static", "assignment", "static_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (i, name)  # bit for bit: no float atomics
        if i == 1:
            assert runner.recorded == 2  # the same video again: both steps replayed, nothing recorded
    assert runner.replayed == 2 * len(cases)  # every step of every call ran as a replay
    assert len(runner._graphs) == 2  # least recently used first out
    assert runner.warmups == runner.recorded  # recorded at first sight: each warmed up on a side stream first


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_clips_of_one_shape_share_the_merge_graph() -> None:
    """Clips of one shape cut into 3 and 4 segments replay one merge graph (4 slots), 5 another (8), each equal to
    its eager result bit for bit: a new clip of a known shape replays Stage 1."""
    runner = CudaGraphs(max_graphs=8, record_after=1)
    for scenes, seed, n_segments in ((3, 1, 3), (4, 0, 4), (6, 0, 5), (3, 1, 3)):
        x = video(seed, frames=24, h=4, w=5, scenes=scenes, device="cuda")
        a = merge_video(x, (24, 4, 5), **SETTINGS)
        b = merge_video(x, (24, 4, 5), **SETTINGS, runner=runner)
        assert len(a.segments) == n_segments and a.segments == b.segments and a.num_groups == b.num_groups
        for name in ("features", "source", "group", "is_static", "assignment", "static_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (scenes, seed, name)
    assert runner.recorded == 1 + 2 and runner.replayed == 2 * 4  # the frame labels' graph, two merge graphs
    assert not runner.eager_runs  # (recorded at the first call: nothing ran eagerly)
    twice = CudaGraphs(record_after=2)
    for _ in range(3):
        merge_video(video(0, frames=24, h=4, w=5, scenes=3, device="cuda"), (24, 4, 5), **SETTINGS, runner=twice)
    assert twice.eager_runs == {"_frame_labels": 1, "_merge_segments": 1} and twice.replayed == 2 * 2


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_dynamic_cluster_ratio_replays_its_own_graph() -> None:
    """The ratio is one of the recording's options: each ratio gets its own graph, equal to its eager result."""
    runner = CudaGraphs(max_graphs=4, record_after=1)
    x = video(3, device="cuda")
    for ratio in (1.0, None, 0.25, 1.0, None):
        a = merge_video(x, (8, 6, 6), **SETTINGS, dynamic_cluster_ratio=ratio)
        b = merge_video(x, (8, 6, 6), **SETTINGS, dynamic_cluster_ratio=ratio, runner=runner)
        for name in ("features", "source", "group", "is_static", "assignment"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (ratio, name)
    paper = merge_video(x, (8, 6, 6), **SETTINGS)
    assert merge_video(x, (8, 6, 6), **SETTINGS, dynamic_cluster_ratio=1.0).features.shape[0] > paper.features.shape[0]
    # every call replays its two steps; recorded: the one segmentation graph, one merge graph per ratio (None = 0.5)
    assert runner.replayed == 2 * 5 and runner.recorded == 1 + 3


@pytest.mark.gpu
@gpu
def test_generate_with_graphs_equals_eager(checkpoints, processor) -> None:
    """The same tokens and Stage 1 / Stage 2 counts, first call (recording) and later calls (replays), for a
    left-padded batch of two clips of different lengths (frame arrays: no video codec needed on the GPU host)."""
    from modeling.demo.clips import clip_frames

    texts, videos, metadata = [], [], []
    for i, n in enumerate((16, 10)):
        videos.append(clip_frames(frames=n, size=(112, 112), squares=2, scene_cut_at=n // 2, seed=i))
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        metadata.append({"fps": 2.0, "total_num_frames": n, "frames_indices": list(range(n))})
    inputs = processor(text=texts, videos=videos, return_tensors="pt", do_sample_frames=False,
                       video_metadata=metadata, padding=True, padding_side="left").to("cuda")  # fmt: skip
    model = Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], prunevid=PruneVidConfig.paper()).cuda().eval()
    with torch.no_grad():
        ref = model.generate(**inputs, do_sample=False, max_new_tokens=8)
        ref_stats = model.prunevid_stats
        model.prunevid = PruneVidConfig.paper(cuda_graphs=True)
        runner = model.prunevid_technique.runner
        for call in range(3):
            out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
            assert torch.equal(ref, out)
            assert [s.to_dict() for s in model.prunevid_stats] == [s.to_dict() for s in ref_stats]
            if call == 0:  # a signature's first call runs eagerly; its second records it
                assert runner.recorded == runner.replayed == 0
    assert runner.recorded > 0 and runner.replayed == 2 * runner.recorded
    assert runner.warmups == 0  # each signature ran eagerly before its recording: no second warm-up run


@pytest.mark.gpu
@gpu
def test_runner_is_eager_with_autograd() -> None:
    runner = CudaGraphs()
    x = video(0, device="cuda").requires_grad_()
    res = merge_video(x, (8, 6, 6), **SETTINGS, runner=runner)
    assert runner.recorded == 0 and res.features.requires_grad


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_a_tensor_passed_twice_is_recorded_with_one_buffer() -> None:
    """The recording keeps its call's aliasing (one buffer for a tensor passed twice), and a later call with two
    tensors records its own graph and replays right."""
    runner = CudaGraphs()
    x, y = torch.arange(4.0, device="cuda"), torch.full((4,), 10.0, device="cuda")
    for _ in range(3):
        assert runner(_sum, (x, x))[0].tolist() == [0.0, 2.0, 4.0, 6.0]
    (entry,) = runner._graphs.values()
    assert entry.inputs[0] is entry.inputs[1]
    for _ in range(3):
        assert runner(_sum, (x, y))[0].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert (runner.recorded, runner.replayed) == (2, 4)
    assert runner(_sum, (y, y))[0].tolist() == [20.0] * 4


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_recording_keeps_the_allocator_cache() -> None:
    """A recording does not hand the allocator's cached blocks back to the driver (`torch.cuda.graph` does, so that
    the rest of a prefill allocated them anew with `cudaMalloc`); `flush_before_capture` restores that. Replays on
    later inputs are right either way."""
    try:
        for flush in (False, True):
            CudaGraphs.flush_before_capture = flush
            runner = CudaGraphs(record_after=1)
            block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
            del block  # a cached, unused 256 MiB block
            reserved = torch.cuda.memory_reserved()
            for seed in range(3):
                x = torch.randn(4096, generator=torch.Generator().manual_seed(seed)).cuda()
                (y,) = runner(_affine, (x,), scale=3.0)
                assert torch.equal(y, x * 3.0 + 1)
            assert runner.recorded == 1 and runner.replayed == 3
            assert (torch.cuda.memory_reserved() >= reserved) != flush, flush
    finally:
        CudaGraphs.flush_before_capture = False


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_record_ahead_while_the_gpu_is_busy() -> None:
    """`record` captures a signature without running it, here while other kernels still run on the stream (as
    the vision tower's do when `LayerGraphs.record_pending` records); its calls then replay, right."""
    runner = CudaGraphs()
    x = torch.randn(4096, device="cuda")
    _affine(x, scale=2.0)  # (the signature ran eagerly once: its lazy initialisations are done)
    torch.cuda._sleep(50_000_000)  # keeps the GPU busy while the host records
    assert runner.record(_affine, (torch.empty_like(x),), scale=2.0)
    assert runner.record(_affine, (torch.empty_like(x),), scale=2.0)  # (held already: nothing recorded again)
    assert runner.recorded == 1 and runner.replayed == 0
    for seed in range(2):
        y = torch.randn(4096, generator=torch.Generator().manual_seed(seed)).cuda()
        assert torch.equal(runner(_affine, (y,), scale=2.0)[0], y * 2.0 + 1)
    assert runner.recorded == 1 and runner.replayed == 2
    assert not runner.record(_affine, (x.cpu(),), scale=2.0)  # what cannot be recorded is not


def _affine(x: torch.Tensor, *, scale: float) -> tuple[torch.Tensor]:
    return (x * scale + 1,)
