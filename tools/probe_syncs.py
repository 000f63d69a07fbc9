#!/usr/bin/env python3
"""GPU probe for issue 20: every point where the host waits for the GPU in one time-to-first-token call (7B
architecture, random bf16 weights), in order, with where in the code it happens.

For `fast` and `stock_compiled` (the same compiled tower), after warm-up: one `generate(max_new_tokens=1)` from
pixels under `torch.cuda.set_sync_debug_mode("warn")`, each synchronising operation recorded with the host's time
since the call began (ms) and the innermost frames of this project or transformers that led to it; the host's
times at the tower's and the language model's entry and exit are listed among them. After a sync the GPU has
nothing queued, so the host's work up to its next launch is GPU idle time: the syncs after the tower is queued
mark where `fast()` makes the GPU wait.

    python3 tools/probe_syncs.py --frames 64 [--out DIR]
    python3 tools/probe_syncs.py --frames 64 --cprofile   # instead: cProfile of the host from the tower's exit
    python3 tools/probe_syncs.py --quick        # tiny model on the CPU: the hooks' rows only (no CUDA syncs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402

OURS = ("/modeling/", "/transformers/")


def where(stack, depth=3):
    """The innermost `depth` frames of this project or transformers (or, where none is, the innermost frame: e.g.
    the bench's own clock), innermost first, as `file:line function`."""
    frames = [f for f in stack if any(part in f.filename for part in OURS)][-depth:] or stack[-1:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def trace_call(b, inputs, cuda):
    """Rows (host ms since the call began, what) of one `generate(max_new_tokens=1)`."""
    import torch

    rows, t0 = [], [0.0]

    def now():
        return round(1e3 * (time.perf_counter() - t0[0]), 3)

    def show(message, category, filename, lineno, file=None, line=None):
        rows.append((now(), f"sync  {where(traceback.extract_stack()[:-1])}"))

    def hook(label):
        return lambda *_: rows.append((now(), f"----  {label}"))

    handles = [reg(hook(f"{label} {side}")) for label, module in (("tower", b.model.model.visual),
               ("language model", b.model.model.language_model))
               for side, reg in (("enter", module.register_forward_pre_hook), ("exit", module.register_forward_hook))]
    try:
        with warnings.catch_warnings():  # (restores `showwarning` on exit)
            warnings.simplefilter("always")
            warnings.showwarning = show
            t0[0] = time.perf_counter()
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            b.generate(inputs, 1, timed=False)
            rows.append((now(), "----  generate returned"))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        for h in handles:
            h.remove()
    return rows


def profile_after_tower(b, inputs, rows=40):
    """cProfile of the host's work in one `generate(max_new_tokens=1)` from the moment the tower's forward returns
    (its kernels queued) to the end of the call, no sync debugging: where the host spends the time that the GPU, once
    the tower is done, may wait for. The wait for the tower itself shows as the first read-back's own time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    started = []

    def start(*_):
        if not started:
            started.append(True)
            prof.enable()

    handle = b.model.model.visual.register_forward_hook(start)
    try:
        b.generate(inputs, 1, timed=False)
    finally:
        prof.disable()
        handle.remove()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(rows)
    stats.sort_stats("tottime").print_stats(rows)
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64])
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-syncs"))
    ap.add_argument("--cprofile", action="store_true",
                    help="instead of the syncs: cProfile of the host from the tower's exit to the end of the call")
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    b = bench.probe_bench(args.out, args.quick)
    cuda = b.device.type == "cuda"
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv])}
    for frames in args.frames:
        inputs = bench.make_inputs(b.processor, frames, b.args.size, b.device, b.dtype)
        for _ in range(3):  # warm-up: compile, graphs, attention plans
            for name in ("fast", "stock_compiled"):
                b.model.prunevid = b.configs[name]  # the plain technique
                b.generate(inputs, 1, timed=False)
        for name in ("fast", "stock_compiled"):
            b.model.prunevid = b.configs[name]  # the plain technique
            b.generate(inputs, 1, timed=False)  # (right after a call of the same config)
            if args.cprofile:
                text = profile_after_tower(b, inputs)
                report[f"{frames}f {name} cprofile"] = text
                print(f"[{frames}f] {name}: cProfile from the tower's exit\n{text}", flush=True)
                continue
            rows = trace_call(b, inputs, cuda)
            report[f"{frames}f {name}"] = rows
            syncs = sum(1 for _, what in rows if what.startswith("sync"))
            print(f"[{frames}f] {name}: {syncs} syncs", flush=True)
            for t, what in rows:
                print(f"   {t:9.3f} ms  {what[:200]}", flush=True)
        (args.out / "probe_syncs.json").write_text(json.dumps(report, indent=1))
        del inputs
        b.free()
    if cuda:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
