#!/usr/bin/env python3
"""GPU probe for issue 20 (target 3): DPC-KNN's k nearest distances (`modeling/prunevid/dpc_knn.py`, step 1) as
`torch.topk(..., largest=False, sorted=True).values` (today) or `torch.sort(...).values[..., :k]`: the same values
bit for bit (both are the k smallest, ascending), so the faster one can replace the other without changing a token.

Shapes: the batched rows of Stage 1 at 448x448 pixels (16 x 16 = 256 tokens per frame): one row per static segment
and per frame of dynamic tokens, `[rows, 256, 256]` float32 distances with invalid columns at +inf (about 80% of
a row's points are outside its cluster set, as in the bench). Timed interleaved, CUDA-synchronised, medians.

    python3 tools/probe_topk.py [--out DIR] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-topk"))
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--k", type=int, default=7)
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "k": args.k, "shapes": []}  # fmt: skip

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def topk(d):
        return torch.topk(d, args.k, dim=-1, largest=False, sorted=True).values

    def sort(d):
        return torch.sort(d, dim=-1).values[..., : args.k]

    for rows in (40, 80, 160, 320):  # 64 frames: about 40 rows; 256 frames: about 160
        d = torch.rand(rows, 256, 256, device=device, generator=gen)
        d = torch.where(torch.rand(rows, 1, 256, device=device, generator=gen) < 0.8, torch.inf, d)
        same = torch.equal(topk(d), sort(d))
        times = {"topk": [], "sort": []}
        for r in range(args.repeats + 3):
            for name, fn in (("topk", topk), ("sort", sort)):
                sync()
                t0 = time.perf_counter()
                fn(d)
                sync()
                if r >= 3:
                    times[name].append(time.perf_counter() - t0)
        row = {"rows": rows, "equal": same, **{f"{n}_ms": 1e3 * statistics.median(t) for n, t in times.items()}}
        report["shapes"].append(row)
        print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_topk.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
