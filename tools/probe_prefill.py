#!/usr/bin/env python3
"""GPU probe for issue 20: where a `fast()` time to first token goes (7B architecture, random bf16 weights).

One process, configs interleaved round by round (medians):

* PruneVid's own time (Stage 1 = `before_language_model` of the prefill, Stage 2 scoring = `select`), paper eagerly,
  with `cuda_graphs=True` and with `layer_graphs=True` too, and the whole prefill call given the tower's output;
* the prefill's GPU busy time (sum of kernel times under torch.profiler) against its wall time: how host-bound the
  pruned prefill is;
* the compiled varlen tower's kernels by total time (top 25): what is left above its floor.

    python3 tools/probe_prefill.py --frames 64 [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402


def kernel_table(prof, limit=25):
    rows = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        rows.setdefault(e.name, [0.0, 0])
        rows[e.name][0] += e.device_time
        rows[e.name][1] += 1
    total = sum(v[0] for v in rows.values())
    top = sorted(rows.items(), key=lambda kv: -kv[1][0])[:limit]
    return total / 1e3, [(name[:90], round(t / 1e3, 3), n) for name, (t, n) in top]


def profiled_call(b, call, limit=12, **kwargs):
    """One `call(**kwargs)` under the CUDA profiler: (wall seconds, synchronised; GPU kernel ms; its `limit` top
    kernels)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof, torch.no_grad():
        t0 = b.clock.now()
        call(**kwargs)
        wall = b.clock.now() - t0
    busy, top = kernel_table(prof, limit)
    return wall, busy, top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch._dynamo.config.recompile_limit = 64
    from modeling import PruneVidConfig

    b = bench.probe_bench(args.out)
    report = {"env": b.results["env"]}
    for frames in args.frames:
        inputs = bench.make_inputs(b.processor, frames, 448, b.device, b.dtype)
        text = bench.text_inputs(inputs)
        rec = report[f"{frames}f"] = {}
        # the compiled tower: warm up (compile), time, profile by kernel
        for _ in range(2):
            pooled, sec = b.tower(inputs, "varlen_compiled")
        secs = [b.tower(inputs, "varlen_compiled")[1] for _ in range(3)]
        rec["tower_compiled_s"] = statistics.median(secs)
        b.set_prunevid(PruneVidConfig.disabled().replace(vision_attention="varlen_compiled"))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof, torch.no_grad():
            b.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
            torch.cuda.synchronize()
        rec["tower_kernels_ms"], rec["tower_kernels"] = kernel_table(prof)
        print(f"[{frames}f] tower {rec['tower_compiled_s']:.4f} s; kernels {rec['tower_kernels_ms']:.1f} ms",
              flush=True)
        for row in rec["tower_kernels"]:
            print("   ", row, flush=True)

        cfgs = {
            "stock": PruneVidConfig.disabled(),
            "paper": PruneVidConfig.paper(),
            "paper_graphs": PruneVidConfig.paper(cuda_graphs=True),
            "paper_layers": PruneVidConfig.paper(cuda_graphs=True, layer_graphs=True),  # + the layers replayed
        }
        runs = {name: {"call": [], "stage1": [], "select": [], "lm": []} for name in cfgs}
        for r in range(args.repeats + 2):
            for name, cfg in cfgs.items():
                b.set_prunevid(cfg)
                sec, _, out, _, timers = b.generate(text, 1, mm_encoder_outputs=bench.encoder_outputs(pooled))
                del out
                if r >= 2:
                    runs[name]["call"].append(sec)
                    runs[name]["stage1"].append(sum(timers.get("stage1", [0.0])))
                    runs[name]["select"].append(sum(timers.get("select", [0.0])))
                    runs[name]["lm"].append(sum(timers.get("language_model", [0.0])))
        rec["prefill"] = {n: {k: round(1e3 * statistics.median(v), 3) for k, v in d.items()} for n, d in runs.items()}
        print(f"[{frames}f] prefill ms (median): {json.dumps(rec['prefill'])}", flush=True)
        graphs = b.model._prunevid_graphs
        rec["graphs"] = {"recorded": graphs.recorded, "replayed": graphs.replayed}
        layers = b.model._prunevid_layer_graphs
        rec["layer_graphs"] = {"recorded": layers.runner.recorded, "replayed": layers.runner.replayed,
                               "runs": layers.replayed_runs}  # fmt: skip
        # busy vs wall of one prefill call per config (no timers inside: the technique is the plain one)
        for name, cfg in cfgs.items():
            b.model.prunevid = cfg
            with torch.no_grad():
                b.model.generate(**text, mm_encoder_outputs=bench.encoder_outputs(pooled), max_new_tokens=1,
                                 do_sample=False, pad_token_id=151643)
            torch.cuda.synchronize()
            wall, busy, top = profiled_call(b, b.model.generate, **text, max_new_tokens=1, do_sample=False,
                                            mm_encoder_outputs=bench.encoder_outputs(pooled), pad_token_id=151643)
            rec.setdefault("busy", {})[name] = {"wall_ms": round(1e3 * wall, 2), "gpu_busy_ms": round(busy, 2),
                                                "top": top}
            print(f"[{frames}f] {name}: wall {1e3 * wall:.1f} ms (profiled), GPU kernels {busy:.1f} ms", flush=True)
            for row in top[:8]:
                print("   ", row, flush=True)
        b.set_prunevid(PruneVidConfig.disabled())
        del inputs, text, pooled
        b.free()
    (args.out / "probe.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
