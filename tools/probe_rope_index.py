#!/usr/bin/env python3
"""Probe for issue 20: upstream's `get_rope_index` against `rope_index="vectorized"` on the benchmark's prompts
(64 and 256 frames, 448x448, the inputs on the GPU as `generate` has them): equal outputs, and the host time of each
(synchronised, median of `--repeats`, interleaved). The model is the demo's tiny one (`tiny_config`: the released
vision config's merge size and `tokens_per_second`, all the function reads of it).

    python3 tools/probe_rope_index.py [--frames 64 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-rope"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
    from modeling.demo.offline import build_processor, tiny_config
    from modeling.integration import rope_index as rope

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = tiny_config()  # the released vision config's merge size and tokens_per_second
    model = Qwen2_5_VLPruneVid(config, prunevid=PruneVidConfig.disabled().replace(rope_index="vectorized"))
    model = model.to(device).eval()
    inner = model.model
    processor = build_processor()
    rule = rope.resolve_rule(inner)
    report = {"torch": torch.__version__, "device": str(device), "rule": rule}
    keys = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts",
            "attention_mask")  # fmt: skip

    def stock(**kw):
        return rope.upstream_rope_index(inner, **kw)

    def timed(fn, kw):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(**kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    for frames in args.frames:
        inputs = bench.make_inputs(processor, frames, 448, device, torch.bfloat16)
        kw = {k: inputs.get(k) for k in keys}
        times = {"stock": [], "vectorized": []}
        for r in range(args.repeats + 2):
            for name, fn in (("stock", stock), ("vectorized", inner.get_rope_index)):
                sec, out = timed(fn, kw)
                if r >= 2:
                    times[name].append(sec)
                if name == "stock":
                    expected = out
                else:
                    equal = all(torch.equal(a, b) for a, b in zip(out, expected))
        row = {"prompt_tokens": int(kw["input_ids"].shape[1]), "equal": equal,
               **{f"{name}_ms": round(1e3 * statistics.median(v), 3) for name, v in times.items()},
               **{f"{name}_min_ms": round(1e3 * min(v), 3) for name, v in times.items()}}  # fmt: skip
        report[f"{frames}f"] = row
        print(f"[{frames} frames] {row}", flush=True)
    (args.out / "probe_rope_index.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
