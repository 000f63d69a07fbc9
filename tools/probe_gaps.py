#!/usr/bin/env python3
"""GPU probe for issue 20: where the GPU waits for the host in one time-to-first-token call (7B architecture, random
bf16 weights).

For `fast` and `stock_compiled` (the same compiled tower), after warm-up: one `generate(max_new_tokens=1)` from
pixels under torch.profiler (CPU and CUDA activity). Reported per config: wall time, GPU-busy time (kernel intervals
merged), the idle intervals of the GPU longer than `--min-gap-us`, and for each the host operations that ran during
it (overlap by name): which host work the GPU waits for. Where no operation covers a gap, the host ran plain Python
there. (The committed probe_gaps.json came from a first version that also asked for Python stacks: torch gave none
for these ops, and the stack tracing slowed plain Python down: the largest gap, upstream's `get_rope_index`, read
6.4 and 24.7 ms at 64 and 256 frames with it, 3.4 and 9.9 ms without.)

    python3 tools/probe_gaps.py --frames 64 [--out DIR]
    python3 tools/probe_gaps.py --frames 64 --gpu-only --min-gap-us 20   # the GPU alone: every wait, in order
    python3 tools/probe_gaps.py --frames 64 --phases          # the GPU alone: busy / idle per phase of the call
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402


def gpu_gaps(prof, min_gap_us=100.0, limit=25):
    """(GPU-busy ms, first-to-last kernel span ms, [gap rows]) of one profiled call; each row: start (ms from the
    first kernel), length (ms), the host ops overlapping the gap (name, overlap ms; nested ops count in each of their
    parents too)."""
    events = list(prof.events())
    found = bench.idle_intervals(events)
    if found is None:
        return 0.0, 0.0, []
    origin, busy, last_end, idle = found
    cpu = [e for e in events if e.device_type.name == "CPU"]
    gaps = [(a, b) for a, b, _, _ in idle if b - a >= min_gap_us]
    gaps.sort(key=lambda g: g[0] - g[1])
    rows = []
    for start, end in gaps[:limit]:
        overlap = {}
        for e in cpu:
            o = min(e.time_range.end, end) - max(e.time_range.start, start)
            if o > 0:
                overlap[e.name] = overlap.get(e.name, 0.0) + o
        top = sorted(overlap.items(), key=lambda kv: -kv[1])[:8]
        rows.append({
            "at_ms": round((start - origin) / 1e3, 3), "gap_ms": round((end - start) / 1e3, 3),
            "host_ops": [(name[:70], round(o / 1e3, 3)) for name, o in top],
        })  # fmt: skip
    return busy / 1e3, (last_end - origin) / 1e3, rows


def kernel_gaps(prof, min_gap_us=20.0, device="CUDA"):
    """Without host events (`--gpu-only`: the profiler traces the GPU alone, the host runs at its own speed): the
    GPU's idle intervals of at least `min_gap_us`, in time order, each with the kernels that end before and start
    after it (where in the model the GPU waited), their total and the first-to-last kernel span."""
    found = bench.idle_intervals(prof.events(), device)
    if found is None:
        return {"gaps": [], "idle_ms": 0.0, "span_ms": 0.0}
    origin, _, last_end, idle = found
    waits = [(a, b, before, after) for a, b, before, after in idle if b - a >= min_gap_us]
    rows = [{"at_ms": round((a - origin) / 1e3, 3), "gap_ms": round((b - a) / 1e3, 3), "before": before[:90],
             "after": after[:90]} for a, b, before, after in waits]  # fmt: skip
    return {"gaps": rows, "idle_ms": round(sum(b - a for a, b, _, _ in waits) / 1e3, 3),
            "span_ms": round((last_end - origin) / 1e3, 3)}  # fmt: skip


PHASES = ("before the tower", "tower", "tower -> language model", "language model", "after it")
MARKER = {"CUDA": "spin_kernel", "CPU": "probe_gaps_marker"}  # in the names of torch.cuda._sleep's kernel; a CPU range


def mark_phases(model, device):
    """Hooks that put a marker on the device's timeline before and after the vision tower and the language model
    (on CUDA a 1-cycle `torch.cuda._sleep`, one tiny kernel); returns their handles."""
    import torch

    def marker(*_):
        if device.type == "cuda":
            torch.cuda._sleep(1)
        else:
            with torch.profiler.record_function(MARKER["CPU"]):
                pass

    return [hook(marker) for module in (model.model.visual, model.model.language_model)
            for hook in (module.register_forward_pre_hook, module.register_forward_hook)]  # fmt: skip


def phase_table(events, device="CUDA", small_us=20.0):
    """Per phase of one profiled call (between the markers of `mark_phases`): its span on the device's timeline, the
    kernels' busy time (merged), the idle time, the part of it in gaps shorter than `small_us` (launch-bound
    stretches: many tiny kernels) and the kernel count, in ms. None unless exactly four markers were seen."""
    kernels = [e for e in events if e.device_type.name == device]
    marks = sorted(e.time_range.start for e in kernels if MARKER[device] in e.name)
    found = bench.idle_intervals(kernels, device)
    if len(marks) != 4 or found is None:
        return None
    origin, _, last_end, idle = found
    bounds = [origin, *marks, last_end]
    table = {}
    for phase, lo, hi in zip(PHASES, bounds, bounds[1:]):
        parts = [(min(b, hi) - max(a, lo), b - a) for a, b, _, _ in idle if b > lo and a < hi]
        idle_us = sum(part for part, _ in parts)
        table[phase] = {
            "span_ms": round((hi - lo) / 1e3, 3), "busy_ms": round((hi - lo - idle_us) / 1e3, 3),
            "idle_ms": round(idle_us / 1e3, 3),
            "idle_in_small_gaps_ms": round(sum(part for part, gap in parts if gap < small_us) / 1e3, 3),
            "kernels": sum(1 for e in kernels if lo <= e.time_range.start < hi and MARKER[device] not in e.name),
        }  # fmt: skip
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64])
    ap.add_argument("--min-gap-us", type=float, default=100.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-gaps"))
    ap.add_argument("--gpu-only", action="store_true",
                    help="trace the GPU alone (no host events, no host slow-down): gaps in time order, kernel names")
    ap.add_argument("--phases", action="store_true",
                    help="(implies --gpu-only) busy and idle time per phase (before the tower, tower, tower -> language "
                         "model, language model, after it), from marker kernels the probe puts on the timeline")
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args()
    args.gpu_only = args.gpu_only or args.phases  # (the phases come from the GPU's own timeline)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    b = bench.probe_bench(args.out, args.quick)
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv])}
    configs = {name: b.configs[name] for name in ("fast", "stock_compiled")}
    for frames in args.frames:
        inputs = bench.make_inputs(b.processor, frames, b.args.size, b.device, b.dtype)
        rec = report[f"{frames}f"] = {}
        for _ in range(3):  # warm-up: compile, graphs, attention plans
            for cfg in configs.values():
                b.model.prunevid = cfg
                b.generate(inputs, 1)
        handles = mark_phases(b.model, b.device) if args.phases else []
        for name, cfg in configs.items():
            b.model.prunevid = cfg  # the plain technique: no timers inside
            if args.phases:
                b.generate(inputs, 1)  # (right after a call of the same config, with the markers on)
            activities = [torch.profiler.ProfilerActivity.CUDA]
            if not args.gpu_only or not torch.cuda.is_available():  # (on the CPU: the smoke test's host events)
                activities.insert(0, torch.profiler.ProfilerActivity.CPU)
            with torch.profiler.profile(activities=activities) as prof:
                t0 = b.clock.now()
                b.generate(inputs, 1)
                wall = b.clock.now() - t0
            if args.gpu_only:
                dev = "CUDA" if torch.cuda.is_available() else "CPU"
                rec[name] = {"wall_ms": round(1e3 * wall, 2), **kernel_gaps(prof, args.min_gap_us, device=dev)}
                if args.phases:
                    rec[name]["phases"] = phase_table(prof.events(), dev)
                    for phase, row in (rec[name]["phases"] or {}).items():
                        print(f"   {phase:24s} {row}", flush=True)
                print(f"[{frames}f] {name}: wall {1e3 * wall:.1f} ms, GPU idle {rec[name]['idle_ms']} ms in "
                      f"{len(rec[name]['gaps'])} gaps >= {args.min_gap_us:.0f} us", flush=True)
                for r in rec[name]["gaps"]:
                    print(f"   +{r['at_ms']:8.2f} ms  gap {r['gap_ms']:6.3f}  {r['before'][:50]} -> {r['after'][:50]}")
                continue
            busy, span, rows = gpu_gaps(prof, args.min_gap_us)
            idle = sum(r["gap_ms"] for r in rows)
            rec[name] = {"wall_ms": round(1e3 * wall, 2), "gpu_busy_ms": round(busy, 2),
                         "kernel_span_ms": round(span, 2), "listed_gaps_ms": round(idle, 2), "gaps": rows}
            print(f"[{frames}f] {name}: wall {1e3 * wall:.1f} ms (profiled), GPU busy {busy:.1f} ms over a span of "
                  f"{span:.1f} ms; {len(rows)} gaps >= {args.min_gap_us:.0f} us listed, {idle:.1f} ms", flush=True)
            for r in rows[:12]:
                print(f"   +{r['at_ms']:8.2f} ms  gap {r['gap_ms']:6.2f} ms  {r['host_ops'][:4]}", flush=True)
        for handle in handles:
            handle.remove()
        (args.out / "probe_gaps.json").write_text(json.dumps(report, indent=1, default=str))
        del inputs
        b.free()


if __name__ == "__main__":
    main()
