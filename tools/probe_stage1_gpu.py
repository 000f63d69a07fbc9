#!/usr/bin/env python3
"""GPU probe: one Stage 1 merge (`merge_video`) eagerly and replayed as CUDA graphs, and its kernels by time.

Synthetic 16x16-token frames of width 3584 (Qwen2.5-VL-7B), four scenes, half the locations dynamic; 32 and 128
temporal patches (64 and 256 frames). No model is built: about 30 s on an H200.

    python3 tools/probe_stage1_gpu.py
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


def inputs(t: int, h: int = 16, w: int = 16, c: int = 3584, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(4, h * w, c, generator=g)
    scene_of_frame = torch.arange(t) * 4 // t
    dynamic = torch.rand(h * w, generator=g) < 0.5
    noise = torch.where(dynamic, 1.5, 0.1)[None, :, None]
    frames = scenes[scene_of_frame] + noise * torch.randn(t, h * w, c, generator=g)
    return frames.reshape(t * h * w, c).bfloat16().cuda(), (t, h, w)


def main() -> None:
    torch.set_grad_enabled(False)  # (with autograd on, the runner runs eagerly)
    for t in (32, 128):
        x, grid = inputs(t)
        for name, run in (("eager", {}), ("graphs", {"runner": CudaGraphs()})):
            for _ in range(3):
                merge_video(x, grid, **SETTINGS, **run)
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                start = time.perf_counter()
                res = merge_video(x, grid, **SETTINGS, **run)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            print(f"T={t} {name}: {1e3 * sorted(times)[2]:.2f} ms; segments {len(res.segments)}, "
                  f"out {res.features.shape[0]}")  # fmt: skip
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            merge_video(x, grid, **SETTINGS)
            torch.cuda.synchronize()
        total, top = kernel_table(prof, 22)
        print(f"T={t} eager kernels: {total:.2f} ms")
        for kernel, spent, count in top:
            print(f"   {spent:7.3f} ms {count:4d}  {kernel}")


if __name__ == "__main__":
    main()
