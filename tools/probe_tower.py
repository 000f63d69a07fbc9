#!/usr/bin/env python3
"""GPU probe for issue 20, target 4 (a vision tower near its floor): which compiled form of the varlen tower's
blocks is fastest (7B architecture, random bf16 weights; one process, variants interleaved round by round, medians).

Variants (each the `block(blk)` callable of the tower's `VisionVarlenAttention`, set on the instance):

* `compiled`: today's `vision_attention="varlen_compiled"` (every block through `torch.compile(dynamic=True)`);
* `compiled_cdt`: the same with inductor's `coordinate_descent_tuning` (pointwise / reduction kernels tuned);
* `nopad`: inductor's `shape_padding` off (today inductor pads the MLP's 3420 intermediate units to 3424 around the
  GEMMs, which costs a copy of the activation per block);
* `padded_mlp`: the block's forward written out with the MLP padded to 3424 in the graph itself (zero rows / columns:
  the same function), so the activation is written padded once;
* `*_cdt`: with `coordinate_descent_tuning`.

A first probe (2026-12-04, H200) also tried the gate and up projections as one GEMM (no gain: 40.8 ms against
26.5 + 14.1) and `mode="max-autotune-no-cudagraphs"` (113 s to compile, cuBLAS kept, 100.0 against 101.0 ms).

For each: the first call (compile), the steady time, the kernels of one call by total time, the relative error
against the stock bf16 tower (as `tools/bench.py` reports it), and today's compiled code (`tower_code.py`).

    python3 tools/probe_tower.py --frames 64 --long 256 [--out DIR] [--repeats 5]
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


def padded_mlp_block(block, hidden_states, cu_seqlens, position_embeddings=None, **kwargs):
    """`Qwen2_5_VLVisionBlock.forward` with the MLP's intermediate size zero-padded to a multiple of 8 (the same
    function: the padded units are silu(0) * 0 = 0 and meet zero columns of `down_proj`)."""
    import torch.nn.functional as F

    hidden_states = hidden_states + block.attn(
        block.norm1(hidden_states), cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kwargs
    )
    mlp, x = block.mlp, block.norm2(hidden_states)
    pad = -mlp.gate_proj.out_features % 8
    gate = F.linear(x, F.pad(mlp.gate_proj.weight, (0, 0, 0, pad)), F.pad(mlp.gate_proj.bias, (0, pad)))
    up = F.linear(x, F.pad(mlp.up_proj.weight, (0, 0, 0, pad)), F.pad(mlp.up_proj.bias, (0, pad)))
    return hidden_states + F.linear(mlp.act_fn(gate) * up, F.pad(mlp.down_proj.weight, (0, pad)), mlp.down_proj.bias)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--long", type=int, default=0, help="also time every variant at this many frames")
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-tower"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    import functools

    import torch
    from torch._inductor.utils import run_and_get_code

    from modeling import PruneVidConfig

    torch._dynamo.config.recompile_limit = 64
    b = bench.Bench(bench.parse_args(["--out", str(args.out)]))
    b.setup()
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv]), "variants": {}}

    def save():
        (args.out / "probe_tower.json").write_text(json.dumps(report, indent=1, default=str))

    inputs = bench.make_inputs(b.processor, args.frames, 448, b.device, b.dtype)
    stock, stock_s = b.tower(inputs, "stock")
    stock = stock.double()
    report["stock_s"] = stock_s
    b.set_prunevid(PruneVidConfig.disabled().replace(vision_attention="varlen_compiled"))
    vision = b.model.model.visual._prunevid_vision

    def runner(fn, options):
        compiled = torch.compile(fn, **options)
        return lambda blk: functools.partial(compiled, blk)

    same = lambda blk, *a, **k: blk(*a, **k)  # noqa: E731
    cdt = {"coordinate_descent_tuning": True}
    variants = {
        "compiled": runner(same, {"dynamic": True}),
        "compiled_cdt": runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": cdt}),
        "nopad": runner(lambda blk, *a, **k: blk(*a, **k), {"dynamic": True, "options": {"shape_padding": False}}),
        "nopad_cdt": runner(lambda blk, *a, **k: blk(*a, **k),
                            {"dynamic": True, "options": {"shape_padding": False, **cdt}}),
        "padded_mlp": runner(padded_mlp_block, {"dynamic": True}),
        "padded_mlp_cdt": runner(lambda blk, *a, **k: padded_mlp_block(blk, *a, **k), {"dynamic": True, "options": cdt}),
    }

    def call():
        with torch.no_grad():
            out = b.model.model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            )
        return out.pooler_output[0]

    def compile_variant(name):
        vision.block = variants[name]
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
                vision.block = variants[name]
                t0 = b.clock.now()
                call()
                if r:
                    times[name].append(b.clock.now() - t0)
        for name in names:
            vision.block = variants[name]
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

    for name in variants:
        compile_variant(name)
    measure(list(variants), f"{args.frames}f")
    if args.long:
        inputs = bench.make_inputs(b.processor, args.long, 448, b.device, b.dtype)
        measure(list(variants), f"{args.long}f")
    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
