"""A/B of DPC-KNN's distance kernel on one GPU, in one process: ``torch.cdist`` (non-matmul kernel, used until
commit 0ca1589) against the float64 Gram matmul of :func:`modeling.prunevid.dpc_knn.pairwise_distances`.

Times ``merge_video`` at 64 frames (the synthetic input of ``tools/profile_overhead.py``) and ``generate`` of one
token on the Qwen2.5-VL-7B architecture (random bf16 weights, the 64-frame bench clip, tower output given), stock
and both variants interleaved over 5 timed rounds. Results of the 2026-11-23 H100 run: docs/bench/ab_distances.txt.

Usage (GPU): ``PYTHONPATH=. python3 tools/ab_distances.py``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.prunevid import dpc_knn as D  # noqa: E402
from modeling.prunevid.merge import merge_video  # noqa: E402
from tools import bench as B  # noqa: E402
from tools.profile_overhead import stage1_inputs  # noqa: E402

GRAM = D.pairwise_distances


def cdist(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist")


def timeit(fn, n: int = 7) -> float:
    """Median milliseconds of ``fn`` over ``n`` synchronised calls after one warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    scratch = torch.zeros(8, device=dev)

    def tiny():
        for _ in range(1000):
            scratch.add_(1)

    print(f"host: 1000 tiny ops {timeit(tiny):.2f} ms")
    feats, grid = stage1_inputs(torch.bfloat16)
    feats = feats.to(dev)
    settings = dict(tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7, min_tokens_to_cluster=14)
    for name, fn in (("cdist", cdist), ("gram", GRAM), ("cdist", cdist), ("gram", GRAM)):
        D.pairwise_distances = fn
        print(f"merge_video T=32 {name}: {timeit(lambda: merge_video(feats, grid, **settings)):.2f} ms")

    bench = B.Bench(B.parse_args(["--frames", "64", "--no-concurrency"]))
    bench.setup()
    inputs = B.make_inputs(bench.processor, 64, 448, bench.device, bench.dtype)
    pooled, _ = bench.tower(inputs, False)
    text = B.text_inputs(inputs)

    def generate():
        bench.model.generate(
            **text, mm_encoder_outputs=B.encoder_outputs(pooled), max_new_tokens=1, min_new_tokens=1,
            do_sample=False, pad_token_id=151643,
        )  # fmt: skip

    results: dict[str, list[float]] = {}
    for r in range(6):  # round 0 is the warm-up
        for name, cfg, fn in (("stock", "stock", GRAM), ("paper/cdist", "paper", cdist), ("paper/gram", "paper", GRAM)):
            D.pairwise_distances = fn
            B.set_prunevid(bench.model, bench.configs[cfg])
            t = timeit(generate, 1)
            if r:
                results.setdefault(name, []).append(t)
    D.pairwise_distances = GRAM
    for name, times in results.items():
        times.sort()
        print(f"generate(1 token) {name}: median {times[len(times) // 2]:.1f} ms  {[f'{t:.1f}' for t in times]}")


if __name__ == "__main__":
    main()
