#!/usr/bin/env python3
"""GPU probe: one Stage 1 merge (`merge_video`) eagerly and replayed as CUDA graphs, and its kernels by time.

Synthetic 16x16-token frames of width 3584 (Qwen2.5-VL-7B), four scenes, half the locations dynamic; 32 and 128
temporal patches (64 and 256 frames). No model is built: about 30 s on an H200. With ``--model``: the features of
the bench's clip from the 7B random-weight bench model's tower instead, and first `fast()`'s Stage 1 inside whole
prefills (timed as in tools/bench.py, and its kernels). With ``--compiled``: also the two fixed-shape steps
compiled by inductor (``torch.compile``, then replayed as CUDA graphs like the eager ones), their time, and whether
their outputs equal the eager steps' bit for bit (an experiment: PruneVid records the eager steps).

    python3 tools/probe_stage1_gpu.py [--model] [--compiled]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from modeling.prunevid.graphs import CudaGraphs  # noqa: E402
from modeling.prunevid.merge import merge_video  # noqa: E402
from probe_prefill import kernel_table  # noqa: E402

SETTINGS = dict(tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7, min_tokens_to_cluster=14)


class CompiledSteps:
    """A runner (see modeling/prunevid/graphs.py) that runs each step through ``torch.compile(dynamic=False)``, the
    compiled step replayed as a CUDA graph."""

    def __init__(self) -> None:
        self.graphs = CudaGraphs()
        self.compiled = {}

    def __call__(self, fn, inputs, *, fixed=(), **options):
        if fn not in self.compiled:
            self.compiled[fn] = torch.compile(fn, dynamic=False)
        return self.graphs(self.compiled[fn], inputs, fixed=fixed, **options)


def same(a, b) -> bool:
    """Whether two `MergeResult`s are equal bit for bit."""
    return a.segments == b.segments and all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("features", "source", "group", "is_static", "assignment", "static_mask")
    )


def inputs(t: int, h: int = 16, w: int = 16, c: int = 3584, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(4, h * w, c, generator=g)
    scene_of_frame = torch.arange(t) * 4 // t
    dynamic = torch.rand(h * w, generator=g) < 0.5
    noise = torch.where(dynamic, 1.5, 0.1)[None, :, None]
    frames = scenes[scene_of_frame] + noise * torch.randn(t, h * w, c, generator=g)
    return frames.reshape(t * h * w, c).bfloat16().cuda(), (t, h, w)


def model_inputs(frames_list):
    """The 7B random-weight bench model's (stock tower) features of the bench clip, and the model (bench.Bench)."""
    import bench

    b = bench.probe_bench("/tmp/probe_stage1")
    out = {}
    for frames in frames_list:
        clip = bench.make_inputs(b.processor, frames, 448, b.device, b.dtype)
        pooled, _ = b.tower(clip, "varlen")
        t, h, w = clip["video_grid_thw"][0].tolist()
        out[frames] = (pooled, (t, h // 2, w // 2), clip)
    return b, out


def stage1_of_prefill(b, clip, pooled, repeats=5):
    """`fast()`'s Stage 1 and Stage-2 scoring inside whole prefills (bench's timed technique: synchronised), then
    one Stage 1 under the CUDA profiler: (stage1 ms, select ms, GPU kernel ms of Stage 1, its top kernels)."""
    import bench
    from modeling import PruneVidConfig, PruneVidController

    text = bench.text_inputs(clip)
    b.set_prunevid(PruneVidConfig.fast())
    s1, sel = [], []
    for r in range(repeats + 2):
        _, _, out, _, timers = b.generate(text, 1, mm_encoder_outputs=bench.encoder_outputs(pooled))
        del out
        if r >= 2:
            s1.append(sum(timers.get("stage1", [0.0])))
            sel.append(sum(timers.get("select", [0.0])))
    report = {}

    class Profiled(PruneVidController):
        def before_language_model(self, *args, **kwargs):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                result = super().before_language_model(*args, **kwargs)
                torch.cuda.synchronize()
            report["busy"], report["top"] = kernel_table(prof, 16)
            return result

    with b.model.prunevid_override(Profiled(PruneVidConfig.fast())):
        b.generate(text, 1, mm_encoder_outputs=bench.encoder_outputs(pooled))
    b.set_prunevid(PruneVidConfig.disabled())
    return 1e3 * sorted(s1)[len(s1) // 2], 1e3 * sorted(sel)[len(sel) // 2], report["busy"], report["top"]


def main() -> None:
    torch.set_grad_enabled(False)  # (with autograd on, the runner runs eagerly)
    use_model = "--model" in sys.argv
    if use_model:
        b, feats = model_inputs((64, 256))
    for t in (32, 128):
        if use_model:
            pooled, grid, clip = feats[2 * t]
            x = pooled
            ms1, msel, busy, top = stage1_of_prefill(b, clip, pooled)
            print(f"T={t} fast() in a prefill: Stage 1 {ms1:.2f} ms (GPU kernels {busy:.2f} ms), Stage-2 scoring "
                  f"{msel:.2f} ms")  # fmt: skip
            for kernel, spent, count in top:
                print(f"   {spent:7.3f} ms {count:4d}  {kernel}")
        else:
            x, grid = inputs(t)
        variants = [("eager", {}), ("graphs", {"runner": CudaGraphs()})]
        if "--compiled" in sys.argv:
            variants.append(("compiled", {"runner": CompiledSteps()}))
        reference = merge_video(x, grid, **SETTINGS)
        for name, run in variants:
            start = time.perf_counter()
            for _ in range(3):
                merge_video(x, grid, **SETTINGS, **run)
            torch.cuda.synchronize()
            if name == "compiled":
                print(f"T={t} compiled: warm-up (compiles) {time.perf_counter() - start:.1f} s")
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                start = time.perf_counter()
                res = merge_video(x, grid, **SETTINGS, **run)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            print(f"T={t} {name}: {1e3 * sorted(times)[2]:.2f} ms; segments {len(res.segments)}, "
                  f"out {res.features.shape[0]}; equal to eager: {same(res, reference)}")  # fmt: skip
            if name == "compiled":
                print_kernels(f"T={t} compiled, replayed:", x, grid, run, limit=12)
        print_kernels(f"T={t} eager", x, grid, {}, limit=22)


def print_kernels(label, x, grid, run, limit):
    """One `merge_video` call (with `run`'s runner) under the CUDA profiler: its kernel time and count, and the
    `limit` kernels that took longest."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        merge_video(x, grid, **SETTINGS, **run)
        torch.cuda.synchronize()
    total, top = kernel_table(prof, limit)
    launched = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    print(f"{label} kernels: {total:.2f} ms in {launched} kernels")
    for kernel, spent, count in top:
        print(f"   {spent:7.3f} ms {count:4d}  {kernel}")


if __name__ == "__main__":
    main()
