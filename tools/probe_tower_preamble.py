#!/usr/bin/env python3
"""Probe for issue 20: the host time of the vision tower's preamble (before its first block), 7B vision config.

`tools/probe_gaps.py` found the GPU idle for 1.2-5.9 ms (depending on the host) before the tower's first kernel,
while the host ran an `aten::index` (docs/bench/h200-2026-12-05-rounds/probe_gaps.json). Timed here, each alone,
synchronised, median of `--repeats`, on the GPU's `grid_thw` as the tower gets it (64 and 256 frames at 448x448):
upstream's `get_vision_position_ids`, `get_vision_attention_seqlens`, `get_vision_window_index`, `get_max_seqlen`,
and the three `permute_input_for_window_attn` gathers (hidden states and the rotary tables, by the host's window
index); each with torch's default CPU threads and with one.

    python3 tools/probe_tower_preamble.py [--out DIR]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-preamble"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from modeling.demo.offline import real_config

    try:
        from transformers.utils.generic import get_max_seqlen
        from transformers.vision_utils import (
            get_vision_attention_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )
    except ImportError as error:
        print(f"this transformers has no vision_utils ({error})")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vision = real_config("7b").vision_config  # (hidden 1280; transformers' default config has 3584)
    merge, window, patch = vision.spatial_merge_size, vision.window_size, vision.patch_size
    unit = merge**2

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    report = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(), "frames": {}}
    default_threads = torch.get_num_threads()
    for frames in args.frames:
        grid = torch.tensor([[frames // 2, 32, 32]], device=device)
        tokens = int(grid.prod())
        hidden = torch.randn(tokens, vision.hidden_size, device=device, dtype=torch.bfloat16)
        table = torch.randn(tokens, 40, device=device, dtype=torch.bfloat16)
        window_index, cu_window = get_vision_window_index(grid, merge, window, patch)

        def permute(x):
            return x.reshape(tokens // unit, unit, -1)[window_index, :, :].reshape(tokens, -1)

        steps = {
            "position_ids": lambda: get_vision_position_ids(grid, merge),
            "attention_seqlens": lambda: get_vision_attention_seqlens(grid, vision),
            "window_index": lambda: get_vision_window_index(grid, merge, window, patch),
            "max_window_seqlen": lambda: get_max_seqlen(cu_window, vision),
            "three_permutes": lambda: (permute(hidden), permute(table), permute(table)),
        }
        rows = {}
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            for name, fn in steps.items():
                for _ in range(3):
                    fn()
                times = []
                for _ in range(args.repeats):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times.append(time.perf_counter() - t0)
                rows[f"{name}@{threads}"] = round(1e3 * statistics.median(times), 3)
        torch.set_num_threads(default_threads)
        rows["total@default"] = round(sum(v for k, v in rows.items() if k.endswith(f"@{default_threads}")), 3)
        report["frames"][str(frames)] = rows
        print(f"[{frames} frames, {tokens} patches] ms: {rows}", flush=True)
    (args.out / "probe_tower_preamble.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
