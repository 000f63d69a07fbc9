#!/usr/bin/env python3
"""GPU probe for issue 20, target 4 (a vision tower near its floor): which compiled form of the varlen tower's
blocks is fastest (7B architecture, random bf16 weights; one process, variants interleaved round by round, medians).

Variants (each the `block(blk)` callable of the tower's `VisionVarlenAttention`, set on the instance, with the
`vision-mlp-padded` hook on or off):

* `compiled`: every block through `torch.compile(dynamic=True)`, the MLP hook off: the compiled tower before the
  hook (inductor pads the MLP's 3420 intermediate units to 3424 around the GEMMs itself, and copies the activation
  into its padded buffer once per block);
* `padded_mlp_varlen`: the same with the hook on: the MLP padded to 3424 in the graph (`padded_mlp`), so the
  activation is written padded once; every block's attention through the varlen kernel (backend "varlen");
* `padded_mlp`: `vision_attention="varlen_compiled"` before the rotation moved into the kernel: the same with the
  windowed blocks' attention through the Triton kernel of modeling/integration/window_attention.py (backend
  "auto"), given q and k rotated (upstream's rotation, one fused pointwise kernel in the graph);
* `padded_mlp_rotary_inside`: the same with that kernel rotating q and k itself as it loads them
  (`VisionVarlenAttention.rotary_in_kernel = True`, the default now): the rotated copies are never written;
* `equal_segments_sdpa`: the same with the full-attention blocks' segments (a video's frame pairs, one length)
  attended by `sdpa` as a batch, cuDNN's kernel on Hopper (`VisionVarlenAttention.equal_segments_sdpa = True`, the
  default now); the variants before it run those blocks through the varlen kernel;
* `residual_in_gemm`: the same with the MLP's residual added inside `down_proj`'s GEMM (the `vision-mlp-residual`
  hook, `VisionVarlenAttention.residual_in_gemm = True`, the default since the twenty-first step); every other
  variant adds it after;
* `nopad`: inductor's `shape_padding` off, the hook off (unaligned GEMMs);
* `*_cdt`: with inductor's `coordinate_descent_tuning` (pointwise / reduction kernels tuned).

Variants other than `padded_mlp*` attend through the varlen kernel in every block, as the tower did when they were
measured.

The committed results (docs/bench/h200-2026-12-04-tower/probe_tower.json) came from the script before the hook
existed, whose `padded_mlp` wrote the block's forward out with the same padding (this version, `--variants compiled
padded_mlp --repeats 2`: 102.4 / 93.7 ms of kernels against 94.7 / 86.2, `probe_tower_hook.json`). A first probe
(2026-12-04, H200, `probe_tower_first.json`) also tried the gate and up projections as one GEMM (no gain: 40.8 ms
against 26.5 + 14.1) and `mode="max-autotune-no-cudagraphs"` (113 s to compile, cuBLAS kept, 100.0 against 101.0
ms).

The tower runs without its CUDA graph here (`tower_graphs = False`: a replayed graph is keyed by the settings, not
by a variant's block callable). For each: the first call (compile), the steady time, the kernels of one call by
total time, the relative error against the stock bf16 tower (as `tools/bench.py` reports it), and the compiled code
of `compiled` (`tower_code.py`).

    python3 tools/probe_tower.py --frames 64 --long 256 [--out DIR] [--repeats 5] [--variants NAME ...]
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
from probe_prefill import kernel_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--long", type=int, default=0, help="also time every variant at this many frames")
    ap.add_argument("--variants", nargs="+", help="a subset of the variants (default: all)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-tower"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    import functools

    import torch
    from torch._inductor.utils import run_and_get_code

    from modeling import PruneVidConfig

    torch._dynamo.config.recompile_limit = 64
    b = bench.probe_bench(args.out)
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv]), "variants": {}}

    def save():
        (args.out / "probe_tower.json").write_text(json.dumps(report, indent=1, default=str))

    inputs = bench.make_inputs(b.processor, args.frames, 448, b.device, b.dtype)
    stock, stock_s = b.tower(inputs, "stock")
    stock = stock.double()
    report["stock_s"] = stock_s
    b.set_prunevid(PruneVidConfig.disabled().replace(vision_attention="varlen_compiled"))
    vision = b.model.model.visual._prunevid_vision
    vision.tower_graphs = False  # (a replayed graph is keyed by the settings, not by the variant's block callable)

    tower = b.model.model.visual

    def runner(fn, options):
        compiled = torch.compile(fn, **options)
        return lambda blk: functools.partial(compiled, blk)

    # one lambda per variant: each compiled function gets a code object, so a cache of its own
    cdt = {"coordinate_descent_tuning": True}
    nopad = {"shape_padding": False}
    variants = {  # name: (the `block` callable, the MLP hook on, the attention backend)
        "compiled": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), False, "varlen"),
        "compiled_cdt": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": cdt}), False,
                         "varlen"),
        "nopad": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": nopad}), False, "varlen"),
        "nopad_cdt": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": {**nopad, **cdt}}),
                      False, "varlen"),
        "padded_mlp_varlen": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), True, "varlen"),
        "padded_mlp": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), True, "auto"),
        "padded_mlp_rotary_inside": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), True, "auto"),
        "equal_segments_sdpa": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), True, "auto"),
        "padded_mlp_cdt": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": cdt}), True,
                           "auto"),
        "residual_in_gemm": (runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True}), True, "auto"),
    }
    names = args.variants or list(variants)
    unknown = sorted(set(names) - set(variants))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(variants)}")

    def use(name):
        vision.block, pad, vision.backend = variants[name]
        vision.rotary_in_kernel = name in ("padded_mlp_rotary_inside", "equal_segments_sdpa", "residual_in_gemm")
        vision.equal_segments_sdpa = name in ("equal_segments_sdpa", "residual_in_gemm")
        type(vision).residual_in_gemm = name == "residual_in_gemm"
        for block in tower.blocks:
            block.mlp._prunevid_vision = block._prunevid_vision = vision if pad else None

    def call():
        with torch.no_grad():
            out = b.model.model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            )
        return out.pooler_output[0]

    def compile_variant(name):
        use(name)
        t0 = b.clock.now()
        if name == "compiled":
            out, codes = run_and_get_code(call)
            (args.out / "tower_code.py").write_text("\n\n# ---- next graph ----\n\n".join(codes)[:400_000])
        else:
            out = call()
        first = b.clock.now() - t0
        err = float((out.double() - stock).norm() / stock.norm())
        report["variants"][name] = {"first_call_s": round(first, 2), "rel_err": round(err, 5)}
        print(f"{name}: first call {first:.1f} s, rel err {err:.5f}", flush=True)
        save()

    def measure(names, key):
        times = {name: [] for name in names}
        for r in range(args.repeats + 1):
            for name in names:
                use(name)
                t0 = b.clock.now()
                call()
                if r:
                    times[name].append(b.clock.now() - t0)
        for name in names:
            use(name)
            call()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            busy, top = kernel_table(prof, 16)
            rec = report["variants"][name].setdefault(key, {})
            rec.update(steady_s=round(statistics.median(times[name]), 5), rounds=times[name],
                       kernels_ms=round(busy, 2), kernels=top)
            print(f"[{key}] {name}: {1e3 * rec['steady_s']:.1f} ms ({busy:.1f} ms kernels)", flush=True)
            for row in top[:10]:
                print("   ", row, flush=True)
            save()

    for name in names:
        compile_variant(name)
    measure(names, f"{args.frames}f")
    if args.long:
        inputs = bench.make_inputs(b.processor, args.long, 448, b.device, b.dtype)
        measure(names, f"{args.long}f")
    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
