#!/usr/bin/env python3
"""GPU probe for issue 20 (item 1 of its last note): does compiling the LLM's decoder layers take the host out of
the pruned prefill? (7B architecture, random bf16 weights; one process, configs interleaved round by round, medians.)

For each frame count, given the vision tower's output (`mm_encoder_outputs`, so the tower is not timed): the prefill
call (`generate`, one new token) of stock, `paper` and `paper` with `cuda_graphs`, each with the decoder layers
eager and with every layer's `forward` through `torch.compile(dynamic=True)` (the 28 layers share one compiled code:
torch inlines the modules, their weights are inputs); the one-time compile cost; the GPU-busy vs wall time of one
call; the first token's logits against eager (max abs difference, same token). Nothing here is an option of the
model yet: the probe decides whether one is worth building.

    python3 tools/probe_text_compile.py --frames 64 256 [--out DIR] [--repeats 5]
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
from probe_prefill import profiled_call  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-text-compile"))
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    from torch._dynamo.utils import counters

    from modeling import PruneVidConfig

    torch._dynamo.config.recompile_limit = 64
    b = bench.probe_bench(args.out, args.quick)
    report = {"env": b.results["env"], "command": " ".join(["python3", *sys.argv])}
    layers = list(b.model.model.language_model.layers)
    eager = [layer.forward for layer in layers]
    compiled = [torch.compile(layer.forward, dynamic=True) for layer in layers]

    def use(mode: str) -> None:
        for layer, fn in zip(layers, compiled if mode == "compiled" else eager):
            layer.forward = fn

    def save() -> None:
        (args.out / "probe_text_compile.json").write_text(json.dumps(report, indent=1, default=str))

    cfgs = {
        "stock": PruneVidConfig.disabled(),
        "paper": PruneVidConfig.paper(),
        "paper_graphs": PruneVidConfig.paper(cuda_graphs=True),
    }
    size = 56 if args.quick else 448
    for frames in args.frames:
        inputs = bench.make_inputs(b.processor, frames, size, b.device, b.dtype)
        text = bench.text_inputs(inputs)
        pooled, _ = b.tower(inputs, "stock" if args.quick else "varlen")
        extra = {"mm_encoder_outputs": bench.encoder_outputs(pooled)}
        rec = report[f"{frames}f"] = {"first_call_s": {}, "logits": {}}

        # first calls (compiles), and the first token's logits against eager
        for name, cfg in cfgs.items():
            b.set_prunevid(cfg)
            logits = {}
            for mode in ("eager", "compiled"):
                use(mode)
                t0 = b.clock.now()
                with torch.no_grad():
                    out = b.model.generate(**text, **extra, max_new_tokens=1, do_sample=False, pad_token_id=151643,
                                           output_logits=True, return_dict_in_generate=True)  # fmt: skip
                rec["first_call_s"][f"{name}/{mode}"] = round(b.clock.now() - t0, 3)
                logits[mode] = out.logits[0].float()
            diff = (logits["eager"] - logits["compiled"]).abs().max().item()
            same = bool((logits["eager"].argmax(-1) == logits["compiled"].argmax(-1)).all())
            scale = logits["eager"].abs().max().item()
            rec["logits"][name] = {"max_abs_diff": diff, "max_abs": scale, "same_token": same}
            first = {m: rec["first_call_s"][f"{name}/{m}"] for m in ("eager", "compiled")}
            print(f"[{frames}f] {name}: first calls {first} s, logits diff {diff:.4g} of {scale:.4g}, "
                  f"same token {same}", flush=True)  # fmt: skip
        rec["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "recompiles")}
        save()

        # timed rounds, interleaved: (config, mode) in the same order each round
        runs = {f"{n}/{m}": [] for n in cfgs for m in ("eager", "compiled")}
        for r in range(args.repeats + 1):
            for key in runs:
                name, mode = key.split("/")
                b.set_prunevid(cfgs[name])
                use(mode)
                sec, _, out, _, _ = b.generate(text, 1, **extra)
                del out
                if r >= 1:
                    runs[key].append(sec)
        rec["prefill_ms"] = {k: round(1e3 * statistics.median(v), 2) for k, v in runs.items()}
        rec["compiled_gain"] = {n: round(rec["prefill_ms"][f"{n}/eager"] / rec["prefill_ms"][f"{n}/compiled"], 3)
                                for n in cfgs}  # fmt: skip
        print(f"[{frames}f] prefill ms (median of {args.repeats}): {json.dumps(rec['prefill_ms'])}; eager / compiled: "
              f"{json.dumps(rec['compiled_gain'])}", flush=True)  # fmt: skip
        save()

        # GPU busy vs wall of one call
        if b.device.type == "cuda":
            for key in runs:
                name, mode = key.split("/")
                b.model.prunevid = cfgs[name]
                use(mode)
                wall, busy, top = profiled_call(b, b.model.generate, limit=8, **text, **extra, max_new_tokens=1,
                                                do_sample=False, pad_token_id=151643)  # fmt: skip
                rec.setdefault("busy", {})[key] = {"wall_ms": round(1e3 * wall, 2), "gpu_busy_ms": round(busy, 2),
                                                   "top": top}  # fmt: skip
                print(f"[{frames}f] {key}: wall {1e3 * wall:.1f} ms (profiled), GPU kernels {busy:.1f} ms", flush=True)
            save()
        use("eager")
        b.set_prunevid(PruneVidConfig.disabled())
        del inputs, text, pooled, extra
        b.free()
    save()


if __name__ == "__main__":
    main()
