#!/usr/bin/env python3
"""GPU probe for issue 20: why the rounds from pixels of `fast` spread (7B architecture, random bf16 weights).

At 256 frames `fast`'s times to first token fall in two clusters about 45 ms apart (docs/bench/h200-2026-12-05-*,
`ttft_runs_s`), while tower + prefill call, timed apart, add up to the lower one. Each round here is one
`generate(max_new_tokens=1)` from pixels, with no timer inside, and records beside its wall time:

* the GPU's own account, from CUDA events recorded by hooks (no synchronisation): start -> tower start, the tower,
  tower end -> language model start, the language model, its end -> the first token;
* Python's garbage collections during the round (`gc.callbacks`: generation, milliseconds);
* the CUDA caching allocator's segment allocations and frees (cudaMalloc / cudaFree) and retries during the round;
* the SM clock (min, mean), power and the active clock-limit reasons, sampled every 10 ms by NVML in a thread.

Orders: `alternate` (stock_compiled, fast, as the bench interleaves them), `fast_only` (fast after fast), and
`collected` (alternate, with `gc.collect()` before each round).

    python3 tools/probe_rounds.py --frames 256 64 --rounds 8 [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402


class Sampler(threading.Thread):
    """NVML samples (time, SM MHz, watts, clock-limit reasons) every `period` s; none when NVML is missing."""

    def __init__(self, period=0.01):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # noqa: BLE001 - the probe runs without clocks then
            self.nvml, self.reason = None, repr(exc)

    def run(self):
        n = self.nvml
        while self.nvml is not None and not self.stop.is_set():
            try:
                self.samples.append((
                    time.perf_counter(), n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM),
                    n.nvmlDeviceGetPowerUsage(self.handle) / 1e3,
                    n.nvmlDeviceGetCurrentClocksThrottleReasons(self.handle),
                ))  # fmt: skip
            except Exception:  # noqa: BLE001
                pass
            time.sleep(self.period)

    def window(self, t0, t1):
        rows = [s for s in self.samples if t0 <= s[0] <= t1]
        if not rows:
            return {}
        reasons = 0
        for r in rows:
            reasons |= r[3]
        return {"sm_mhz_min": min(r[1] for r in rows), "sm_mhz_mean": round(statistics.mean(r[1] for r in rows)),
                "watts_mean": round(statistics.mean(r[2] for r in rows)), "limit_reasons": hex(reasons),
                "samples": len(rows)}  # fmt: skip


class HostEvent:
    """`torch.cuda.Event`'s two methods on the host clock (the `--quick` CPU run)."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)


class Marks:
    """CUDA events at the tower's and the language model's first call and return within one `generate`."""

    def __init__(self, model, event):
        self.event, self.events = event, {}
        lm = model.model.language_model
        self.handles = [
            model.model.visual.register_forward_pre_hook(lambda *a: self.mark("tower0")),
            model.model.visual.register_forward_hook(lambda *a: self.mark("tower1")),
            lm.register_forward_pre_hook(lambda *a: self.mark("lm0")),
            lm.register_forward_hook(lambda *a: self.mark("lm1")),
        ]

    def mark(self, name):
        if name not in self.events:
            self.events[name] = self.event(enable_timing=True)
            self.events[name].record()

    def split(self, start, end):
        e = {"start": start, **self.events, "end": end}
        order = [k for k in ("start", "tower0", "tower1", "lm0", "lm1", "end") if k in e]
        return {f"{a}->{b}": round(e[a].elapsed_time(e[b]), 2) for a, b in zip(order, order[1:])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-rounds"))
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    b = bench.probe_bench(args.out, args.quick)
    cuda = b.device.type == "cuda"
    event = torch.cuda.Event if cuda else HostEvent
    memory_stats = torch.cuda.memory_stats if cuda else dict
    sampler = Sampler()
    sampler.start()
    gcs = []
    gc.callbacks.append(lambda phase, info: gcs.append((phase, info["generation"], time.perf_counter())))
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv]),
              "nvml": None if sampler.nvml else sampler.reason}  # fmt: skip

    def one(inputs, name, collect):
        if collect:
            gc.collect()
        b.set_prunevid(b.configs[name])
        marks = Marks(b.model, event)
        stats0 = memory_stats()
        del gcs[:]
        b.clock.sync()
        start, end = event(enable_timing=True), event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        out = b.model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=151643)
        end.record()
        b.clock.sync()
        t1 = time.perf_counter()
        del out
        for h in marks.handles:
            h.remove()
        stats1 = memory_stats()
        starts = {}
        collections = []
        for phase, gen, t in gcs:
            if phase == "start":
                starts[gen] = t
            elif gen in starts:
                collections.append((gen, round(1e3 * (t - starts.pop(gen)), 2)))
        delta = {k: stats1.get(k, 0) - stats0.get(k, 0)
                 for k in ("segment.all.allocated", "segment.all.freed", "num_alloc_retries", "num_device_alloc",
                           "num_device_free")}  # fmt: skip
        return {"config": name, "wall_ms": round(1e3 * (t1 - t0), 2), "gpu": marks.split(start, end),
                "gc": collections, "allocator": delta, "nvml": sampler.window(t0, t1)}  # fmt: skip

    for frames in args.frames:
        inputs = bench.make_inputs(b.processor, frames, b.args.size, b.device, b.dtype)
        rec = report[f"{frames}f"] = {}
        for _ in range(2):
            for name in ("stock_compiled", "fast"):
                one(inputs, name, False)
        orders = {"alternate": (("stock_compiled", "fast"), False), "fast_only": (("fast",), False),
                  "collected": (("stock_compiled", "fast"), True)}  # fmt: skip
        for order, (names, collect) in orders.items():
            rows = rec[order] = []
            for r in range(args.rounds):
                for name in names:
                    row = one(inputs, name, collect)
                    rows.append(row)
                    print(f"[{frames}f {order} {r}] {name:14s} {row['wall_ms']:8.1f} ms gpu {row['gpu']} "
                          f"gc {row['gc']} alloc {row['allocator']} nvml {row['nvml']}", flush=True)
            for name in names:
                walls = [x["wall_ms"] for x in rows if x["config"] == name]
                print(f"[{frames}f {order}] {name}: median {statistics.median(walls):.1f} ms, "
                      f"range {min(walls):.1f}-{max(walls):.1f}", flush=True)
        (args.out / "probe_rounds.json").write_text(json.dumps(report, indent=1, default=str))
        del inputs
        b.free()
    sampler.stop.set()


if __name__ == "__main__":
    main()
