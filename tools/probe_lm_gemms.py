#!/usr/bin/env python3
"""GPU probe for issue 20: how fast are the language model's GEMMs at the row counts a pruned prefill gives them?

`fast()`'s pruned prefill at 256 frames runs its LLM layers at ~464 TFLOP/s, stock's at ~560 (H100, docs/bench/
README.md, seventeenth step): the same layers and kernels, on 3,680 rows before the Stage-2 layer and 1,407 after it
against stock's 32,805. A first suspect is the GEMMs' tiling at few rows (e.g. 1,407 x 3,584 outputs in 256 x 128
tiles are 154 tiles on 132 SMs). Timed here, with the 7B language model's shapes (random bf16 weights and inputs,
CUDA events, medians of `--repeats` after warm-up), for each row count: every projection of a decoder layer as
`F.linear` (q, k, v with bias; o; gate, up; down), their TFLOP/s, and two regroupings that torch's GEMM could run
instead: q/k/v as one GEMM over the concatenated weights, gate/up as one. The layer's GEMM time per row count and its
share of a measured prefill say how much of the gap the GEMMs are, and whether a regrouping (which stock's best would
get too) is worth building.

    python3 tools/probe_lm_gemms.py [--rows 1407 3680 8229 32805] [--out DIR]
    python3 tools/probe_lm_gemms.py --quick     # tiny shapes on the CPU (smoke test of the script)

`--new-rows N` adds what a row count no GEMM of this process has had costs the host. A new clip keeps a new number
of tokens after Stage 1, so every projection of the eager decoder layers meets a new shape; on an H100 a profiled
first sight spent 250 us of host time per `addmm` and 170 per `mm` (docs/bench/h100-2026-12-06-twentythird). Here,
for N row counts drawn from `--new-range` (none of them used before), each projection's host time (device idle
before the call, so the time is the dispatch alone) at its first call with that count and right after, under each
`--blas` library (`torch.backends.cuda.preferred_blas_library`, disjoint row counts each), next to the GEMMs' own
device times at `--rows`: whether a new shape makes the layers host-bound, and what padding the rows to a bucket would save.

    python3 tools/probe_lm_gemms.py --rows 1407 --new-rows 24 --blas cublas cublaslt
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import event_times

HIDDEN, Q_OUT, KV_OUT, INTERMEDIATE = 3584, 3584, 512, 18944  # Qwen2.5-VL-7B's language model
LAYER = ("q", "k", "v", "o", "gate", "up", "down")  # a decoder layer's projections
REGROUPED = ("qkv_fused", "o", "gate_up_fused", "down")  # the same layer with q/k/v and gate/up as one GEMM each


def shapes(hidden: int, q_out: int, kv_out: int, intermediate: int) -> dict[str, tuple[int, int, bool]]:
    """Name -> (in features, out features, bias) of one decoder layer's projections, then the regroupings."""
    return {
        "q": (hidden, q_out, True),
        "k": (hidden, kv_out, True),
        "v": (hidden, kv_out, True),
        "o": (q_out, hidden, False),
        "gate": (hidden, intermediate, False),
        "up": (hidden, intermediate, False),
        "down": (intermediate, hidden, False),
        "qkv_fused": (hidden, q_out + 2 * kv_out, True),
        "gate_up_fused": (hidden, 2 * intermediate, False),
    }


def host_costs(weights: dict, rows_list: list[int], blas: list[str], dev: torch.device, dt: torch.dtype) -> dict:
    """Per `blas` library: the median host time (us) of each projection of `LAYER` as `F.linear` at row counts of
    `rows_list` it has not had before ("first") and at the same count right after ("again"), with the device idle
    before each call; and the sums over a layer's projections. The libraries get disjoint row counts (a cuBLAS
    heuristic cache may be shared between them); the library in use before is restored."""
    out = {}
    before = torch.backends.cuda.preferred_blas_library() if dev.type == "cuda" else None
    for i, library in enumerate(blas):
        if dev.type == "cuda":
            torch.backends.cuda.preferred_blas_library(library)
        times = {name: {"first": [], "again": []} for name in LAYER}
        for rows in rows_list[i :: len(blas)]:
            inputs = {n_in: torch.randn(rows, n_in, device=dev, dtype=dt) for n_in in {w.shape[1] for w, _ in
                      weights.values()}}  # fmt: skip
            for name in LAYER:
                weight, bias = weights[name]
                for phase in ("first", "again"):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    F.linear(inputs[weight.shape[1]], weight, bias)
                    times[name][phase].append((time.perf_counter() - t0) * 1e6)
        rec = {name: {phase: round(statistics.median(v), 1) for phase, v in t.items()} for name, t in times.items()}
        rec["layer"] = {phase: round(sum(rec[n][phase] for n in LAYER), 1) for phase in ("first", "again")}
        out[library] = rec
        print(f"[{library}] host us, first / again: " + ", ".join(f"{k} {v['first']} / {v['again']}"
              for k, v in rec.items()), flush=True)  # fmt: skip
    if before is not None:
        torch.backends.cuda.preferred_blas_library(before)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1407, 3680, 8229, 32805])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--new-rows", type=int, default=0, help="row counts not seen before, to time the host with")
    ap.add_argument("--new-range", type=int, nargs=2, default=[900, 3200])
    ap.add_argument("--blas", nargs="+", default=["cublas"], choices=["cublas", "cublaslt"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-lm-gemms"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (smoke test of the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = not args.quick
    if cuda and not torch.cuda.is_available():
        raise SystemExit("needs CUDA (or --quick)")
    dev, dt = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    dims = (HIDDEN, Q_OUT, KV_OUT, INTERMEDIATE) if cuda else (64, 64, 16, 160)
    rows_list = args.rows if cuda else [7, 33]
    g = torch.Generator(device=dev).manual_seed(0)
    weights = {name: (torch.randn(n_out, n_in, device=dev, dtype=dt, generator=g) * n_in**-0.5,
                      torch.randn(n_out, device=dev, dtype=dt, generator=g) if bias else None)
               for name, (n_in, n_out, bias) in shapes(*dims).items()}  # fmt: skip

    def timed(fn) -> float:
        if cuda:
            return statistics.median(event_times(fn, args.repeats, warmup=3))
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "dims": dims, "repeats": args.repeats, "rows": {}}  # fmt: skip
    for rows in rows_list:
        inputs = {n_in: torch.randn(rows, n_in, device=dev, dtype=dt, generator=g) for n_in, _, _ in
                  shapes(*dims).values()}  # fmt: skip
        rec = {}
        for name, (weight, bias) in weights.items():
            x = inputs[weight.shape[1]]
            ms = timed(lambda: F.linear(x, weight, bias))
            rec[name] = {"ms": round(ms, 4), "tflops": round(2 * rows * weight.numel() / ms / 1e9, 1)}
        layer = sum(rec[n]["ms"] for n in LAYER)
        regrouped = sum(rec[n]["ms"] for n in REGROUPED)
        flops = 2 * rows * sum(weights[n][0].numel() for n in LAYER)
        rec["layer"] = {"ms": round(layer, 4), "tflops": round(flops / layer / 1e9, 1)}
        rec["layer_regrouped"] = {"ms": round(regrouped, 4), "tflops": round(flops / regrouped / 1e9, 1)}
        report["rows"][str(rows)] = rec
        print(f"[{rows} rows] " + ", ".join(f"{k} {v['ms']:.3f} ms ({v['tflops']} TF/s)" for k, v in rec.items()),
              flush=True)  # fmt: skip
        (args.out / "probe_lm_gemms.json").write_text(json.dumps(report, indent=1))
    if args.new_rows:
        lo, hi = args.new_range if cuda else (40, 90)
        fresh = sorted(set(range(lo, hi + 1)) - set(rows_list))
        report["new_rows"] = random.Random(0).sample(fresh, min(args.new_rows, len(fresh)))
        report["host_us"] = host_costs(weights, report["new_rows"], args.blas, dev, dt)
        (args.out / "probe_lm_gemms.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
