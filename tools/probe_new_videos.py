#!/usr/bin/env python3
"""GPU probe for issue 20: the time to first token of videos no call has seen (7B architecture, random weights).

`tools/bench.py`'s headline rounds repeat one video. A stream of different clips of one shape changes what Stage 1
keeps (its output length `L1`, and after Stage 2 `L2`), so whatever is made per shape is made again: CUDA graphs
keyed on those lengths, the replayed layers' buckets, and, in the attention of the language model, any kernel plan
built per sequence length. Here, after a warm-up on the bench clip, each config meets `--videos` new clips (the
bench clip's generator with other seeds), each timed three times in a row (first sight, then twice more), and one
more new clip under torch.profiler (host and GPU), three calls: the host operations that took longest at its first
sight, and those whose host time differs most between its first call and its third (a replay).

    python3 tools/probe_new_videos.py [--frames 64] [--videos 4] [--configs fast stock_compiled] [--out DIR]
    python3 tools/probe_new_videos.py --quick --frames 8 --videos 1   # CPU smoke test

`--sdpa-backends flash efficient` runs every call inside `torch.nn.attention.sdpa_kernel` with those backends only.
`--ab-warm-up`: every other new clip with `CudaGraphs.warm_up_again = True` (the recordings at its second call warm
up with an eager run on a side stream first, as before the eleventh step), the others without. `--ab-flush`: the
same with `CudaGraphs.flush_before_capture = True` (a recording first waits for the device and empties the
allocator's caches, as `torch.cuda.graph` does and as before the twelfth step). `--ab-tower-window`: every other new clip
with `LayerGraphs.record_while_tower_runs = True` (a layer run that ran eagerly is recorded while the next
prefill's tower runs, not at its bucket's second call), the others with False. `--ab-stage2-reuse`: every other
new clip with the Stage-1/2 runner's `lengths.reuse_longer = 0` (Stage 2's steps padded to their own bucket only, as
before the twenty-fifth step), the others with its default (a longer bucket whose graph replays, up to 1/4 longer);
with `--interleave`, `fast` once more as `fast_stage2_own_bucket`, its runner's reuse off, in the same stream.
`--calls-per-clip 1 --graph-slots 6 48` instead: a stream of clips, each called once, once per number of graphs the
replayed layers may keep (`LayerGraphs`' `CudaGraphs(max_graphs=...)`; `fast()` keeps 6), in that order, each with
fresh graphs; `--bucket-shapes 0 1` for each slot count: without and with `CudaGraphs.bucket_shapes` (Stage 1's
segment count and Stage 2's token count padded to buckets: the twelfth step); `--layer-record-after 1 2` for each:
the call of a bucket that records the replayed layers' graph (`fast()`: 2); `--reuse-longer 0 0.25` for each: how
much longer a replaying bucket may be to serve a run whose own bucket has no graph yet (`LayerGraphs.reuse_longer`;
`fast()`: 0.25 since the twelfth step, 0 before); `--tower-window 0 1` for each: without and with the recording of
the runs that ran eagerly while the next prefill's vision tower runs (`LayerGraphs.record_while_tower_runs`; on
in the twelfth step, off since the thirteenth: it made the stream slower).
`--interleave` instead: a stream of `--videos` new clips, each called `--calls-per-clip` times in a row by every
config of `--configs` in turn (the order rotated clip by clip), each config with its own Stage-1/2 and layer graphs
(as fresh as a process that runs only that config: no config replays what another recorded), after a warm-up of
each on the bench clip: the ratios of the medians of the first sights over all clips and over the stream's second
half (the steady state) and of the repeats, what a first sight costs beyond the clip's repeats (the clips keep
different numbers of tokens: the rest of a new clip's time is its content), and what each config recorded.

    python3 tools/probe_new_videos.py --interleave --videos 16 --calls-per-clip 2 --configs stock_compiled fast
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402


def backends_context(names):
    """`sdpa_kernel` with the named backends only (none named: no restriction)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not names:
        return contextlib.nullcontext()
    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip
    return sdpa_kernel([table[n] for n in names])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--configs", nargs="+", default=["fast", "stock_compiled"])
    ap.add_argument("--sdpa-backends", nargs="*", default=[])
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--calls-per-clip", type=int, default=3)
    ap.add_argument("--ab-warm-up", action="store_true")
    ap.add_argument("--ab-flush", action="store_true")
    ap.add_argument("--ab-tower-window", action="store_true")
    ap.add_argument("--ab-stage2-reuse", action="store_true")
    ap.add_argument("--bucket-shapes", type=int, nargs="*", default=[1])
    ap.add_argument("--layer-record-after", type=int, nargs="*", default=[2])
    ap.add_argument("--reuse-longer", type=float, nargs="*", default=[0.25])
    ap.add_argument("--tower-window", type=int, nargs="*", default=[1])
    ap.add_argument("--graph-slots", type=int, nargs="*", default=[])
    ap.add_argument("--interleave", action="store_true", help="configs interleaved on one stream of new clips")
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-new-videos"))
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of the script)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    b = bench.probe_bench(args.out / "bench", args.quick)
    main_clip = bench.make_inputs(b.processor, args.frames, b.args.size, b.device, b.dtype, seed=0)
    report = {"env": b.results["env"], "command": " ".join(["python3", "tools/probe_new_videos.py", *sys.argv[1:]])}
    if args.interleave:
        interleaved_stream(b, args, main_clip, report)
    elif args.graph_slots:
        stream(b, args, main_clip, report)
    else:
        new_clips(b, args, main_clip, report)
    (args.out / "probe_new_videos.json").write_text(json.dumps(report, indent=1))


def new_clips(b, args, main_clip, report):
    """Each config on `--videos` new clips, each called `--calls-per-clip` times, then one more under the profiler."""
    import torch

    from modeling.integration.layer_graphs import LayerGraphs
    from modeling.prunevid.graphs import CudaGraphs

    window_default = LayerGraphs.record_while_tower_runs
    size, seed = b.args.size, args.first_seed
    with backends_context(args.sdpa_backends):
        for name in args.configs:
            for _ in range(3):
                b.ttft(main_clip, name)
            # which padded lengths of Stage 2's steps replay (the runner the warm-up made, for a config with graphs)
            reuse = getattr(getattr(b.model, "_prunevid_graphs", None), "lengths", None)
            reuse_default = None if reuse is None else reuse.reuse_longer
            rows = []
            for i in range(args.videos):
                clip = bench.make_inputs(b.processor, args.frames, size, b.device, b.dtype, seed=seed)
                seed += 1
                CudaGraphs.warm_up_again = args.ab_warm_up and i % 2 == 1
                CudaGraphs.flush_before_capture = args.ab_flush and i % 2 == 1
                LayerGraphs.record_while_tower_runs = window_default if not args.ab_tower_window else i % 2 == 0
                if reuse is not None:
                    reuse.reuse_longer = 0.0 if args.ab_stage2_reuse and i % 2 == 1 else reuse_default
                times, eager = [], []
                for _ in range(args.calls_per_clip):
                    before = eager_steps(b.model)
                    times.append(round(1e3 * b.ttft(clip, name)[0], 1))
                    eager.append(dict(eager_steps(b.model) - before))
                stats = b.model.prunevid_stats
                lengths = (stats[0].after_stage1, stats[0].after_stage2) if stats else None
                rows.append({"seed": seed - 1, "ttft_ms": times, "eager_steps": eager, "after_stage1_stage2": lengths,
                             "warm_up_again": CudaGraphs.warm_up_again,
                             "flush_before_capture": CudaGraphs.flush_before_capture,
                             "record_while_tower_runs": LayerGraphs.record_while_tower_runs,
                             "stage2_reuse_longer": None if reuse is None else reuse.reuse_longer})  # fmt: skip
                print(f"[{name}] new clip (seed {seed - 1}): TTFT ms {times} (first sight, then repeats); "
                      f"Stage-1/2 steps run eagerly by call {eager}; "
                      f"tokens after Stage 1 / 2: {lengths}; warm_up_again {CudaGraphs.warm_up_again}; "
                      f"flush_before_capture {CudaGraphs.flush_before_capture}; record_while_tower_runs "
                      f"{LayerGraphs.record_while_tower_runs}; Stage-2 reuse_longer "
                      f"{None if reuse is None else reuse.reuse_longer}", flush=True)  # fmt: skip
            CudaGraphs.warm_up_again = CudaGraphs.flush_before_capture = False
            if reuse is not None:
                reuse.reuse_longer = reuse_default
            LayerGraphs.record_while_tower_runs = window_default
            clip = bench.make_inputs(b.processor, args.frames, size, b.device, b.dtype, seed=seed)
            seed += 1
            activities = [torch.profiler.ProfilerActivity.CPU]
            if b.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            b.model.prunevid = b.configs[name]  # the plain technique, as bench.ttft
            profiles = []
            for _ in range(3):  # its first sight, the call that records its graphs, a replay
                with torch.profiler.profile(activities=activities) as prof:
                    b.generate(clip, 1, timed=False)
                profiles.append(prof.key_averages())
            table = profiles[0].table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
            print(f"[{name}] one more new clip under the profiler, host operations by self time:\n{table}", flush=True)
            diff = first_sight_diff(profiles[0], profiles[2])
            totals = [round(sum(e.self_cpu_time_total for e in prof) / 1e3, 1) for prof in profiles]
            print(f"[{name}] the same clip's three calls, host self time in all: {totals} ms; its first call against "
                  f"its third, host self time (us) by difference:\n"
                  + "\n".join(f"  {r['op']}: {r['first_us']} / {r['third_us']} us, calls {r['first_calls']} / "
                               f"{r['third_calls']}" for r in diff), flush=True)  # fmt: skip
            report[name] = {"new_clips": rows, "profile_top": table, "host_self_ms": totals,
                            "first_against_third": diff}


def eager_steps(model) -> Counter:
    """The Stage-1/2 steps the model's graph runner has run eagerly so far, by name (`CudaGraphs.eager_runs`; empty
    before a config with `cuda_graphs` made the runner)."""
    return Counter(getattr(getattr(model, "_prunevid_graphs", None), "eager_runs", ()))


def first_sight_diff(first, third, top: int = 20) -> list[dict]:
    """The host operations whose self time (us) differs most between two profiled calls (`key_averages()` of
    each; an operation missing from one counts as 0 there), largest excess of the first call first."""
    a = {e.key: e for e in first}
    c = {e.key: e for e in third}
    rows = []
    for key in a.keys() | c.keys():
        fa, fc = a.get(key), c.get(key)
        rows.append({"op": key, "first_us": round(fa.self_cpu_time_total if fa else 0.0, 1),
                     "third_us": round(fc.self_cpu_time_total if fc else 0.0, 1),
                     "first_calls": fa.count if fa else 0, "third_calls": fc.count if fc else 0})  # fmt: skip
    rows.sort(key=lambda r: r["third_us"] - r["first_us"])
    return rows[:top]


def stream(b, args, main_clip, report):
    """`fast` on a stream of `--videos` new clips, each called once, for each setting (layer graphs kept, ...): the
    same clips (seeds) for each, after a warm-up on the main clip; then `stock_compiled` on them if it is among
    `--configs` (the default), and the ratios of the medians."""
    from modeling.integration.layer_graphs import LayerGraphs
    from modeling.prunevid.graphs import CudaGraphs

    clips = [bench.make_inputs(b.processor, args.frames, b.args.size, b.device, b.dtype, seed=args.first_seed + i)
             for i in range(args.videos)]  # fmt: skip
    settings = itertools.product(args.graph_slots, args.bucket_shapes, args.layer_record_after, args.reuse_longer,
                                 args.tower_window)  # fmt: skip
    for slots, buckets, record_after, reuse, window in settings:
        CudaGraphs.bucket_shapes = bool(buckets)
        b.model._prunevid_layer_graphs = LayerGraphs(runner=CudaGraphs(max_graphs=slots, record_after=record_after),
                                                     reuse_longer=reuse)  # fmt: skip
        b.model._prunevid_layer_graphs.record_while_tower_runs = bool(window)
        b.model._prunevid_graphs = CudaGraphs()
        for _ in range(3):
            b.ttft(main_clip, "fast")
        layers, steps = b.model.prunevid_technique.layer_graphs.runner, b.model.prunevid_technique.runner
        times = [round(1e3 * b.ttft(clip, "fast")[0], 1) for clip in clips]
        graphs = b.model.prunevid_technique.layer_graphs
        row = {"ttft_ms": times, "median_ms": bench.median(times), "recorded": layers.recorded,
               "recorded_in_tower": graphs.recorded_in_tower, "replayed": layers.replayed,
               "longer_runs": graphs.longer_runs, "steps_recorded": steps.recorded,
               "steps_replayed": steps.replayed}  # fmt: skip
        print(f"[fast, {slots} layer graphs recorded at call {record_after}, reuse_longer {reuse}, tower window "
              f"{bool(window)}, bucket_shapes {bool(buckets)}] stream of {len(clips)} new clips: TTFT ms {times}; "
              f"median {row['median_ms']:.1f}; layer graphs recorded {layers.recorded} ({graphs.recorded_in_tower} "
              f"while a tower ran), replayed {layers.replayed} ({graphs.longer_runs} runs on a longer bucket); "
              f"Stage 1/2 graphs recorded {steps.recorded}, replayed {steps.replayed}", flush=True)  # fmt: skip
        report[f"stream_{slots}_buckets{buckets}_record{record_after}_reuse{reuse}_window{window}"] = row
    CudaGraphs.bucket_shapes = True
    if "stock_compiled" in args.configs:  # stock's best on the same clips, for the ratio a stream of clips sees
        for _ in range(3):
            b.ttft(main_clip, "stock_compiled")
        times = [round(1e3 * b.ttft(clip, "stock_compiled")[0], 1) for clip in clips]
        stock = bench.median(times)
        report["stream_stock_compiled"] = {"ttft_ms": times, "median_ms": stock}
        print(f"[stock_compiled] stream of {len(clips)} new clips: TTFT ms {times}; median {stock:.1f}; stock_compiled"
              f" / fast, medians: " + ", ".join(f"{key[7:]} {stock / row['median_ms']:.2f}x" for key, row in
                                                 report.items() if key.startswith("stream_") and "stock" not in key),
              flush=True)  # fmt: skip


def interleaved_stream(b, args, main_clip, report):
    """`bench.Bench.new_clip_stream` (every config of `--configs` on one stream of `--videos` new clips, each clip
    called `--calls-per-clip` times in a row by each config in turn, each config with graphs of its own), printed:
    per config the medians of the first sights over all clips and over the second half and of the repeats, their
    ratios to the first config's, and the median cost of a first sight (first call less the clip's repeats): the
    part of a new clip's time that is not its content (a clip that keeps more tokens is slower on its repeats too)."""
    from modeling.integration.layer_graphs import LayerGraphs
    from modeling.prunevid.graphs import CudaGraphs, ReplayingLengths

    names, runners = list(args.configs), {}
    if args.ab_stage2_reuse:  # `fast` once more, with Stage 2's steps padded to their own bucket only
        b.configs["fast_stage2_own_bucket"] = b.configs["fast"]
        steps = CudaGraphs()
        steps.lengths = ReplayingLengths(reuse_longer=0.0)
        runners["fast_stage2_own_bucket"] = (steps, LayerGraphs())
        names.append("fast_stage2_own_bucket")
    out = b.new_clip_stream(main_clip, args.frames, names, args.videos, args.calls_per_clip,
                            first_seed=args.first_seed, log=True, runners=runners)  # fmt: skip
    ms = {name: ([round(1e3 * t, 1) for t in o["first_s"]],
                 [None if t is None else round(1e3 * t, 1) for t in o["again_s"]]) for name, o in out.items()}
    half = args.videos // 2
    base, base_late = bench.median(ms[names[0]][0]), bench.median(ms[names[0]][0][half:])
    base_again = bench.median(ms[names[0]][1])
    for name in names:
        first, again = ms[name]
        row = {"ttft_ms": first, "median_ms": bench.median(first), "second_half_median_ms": bench.median(first[half:]),
               "repeats_ms": again, "repeats_median_ms": bench.median(again),
               "after_stage1_stage2": out[name]["lengths"], "graphs_recorded_stage12_layers": out[name]["recorded"],
               "eager_steps_first_repeats": out[name]["eager_steps"]}
        row["ratio_first_config"] = base / row["median_ms"]
        row["ratio_first_config_second_half"] = base_late / row["second_half_median_ms"]
        extra = [f - a for f, a in zip(first, again) if a is not None]
        row["first_sight_cost_median_ms"] = bench.median(extra)
        row["ratio_first_config_repeats"] = (
            base_again / row["repeats_median_ms"] if base_again and row["repeats_median_ms"] else None)
        report[f"interleaved_{name}"] = row
        repeats = (f"; repeats {row['repeats_median_ms']:.1f} ms ({row['ratio_first_config_repeats']:.2f}x), a first "
                   f"sight costs {row['first_sight_cost_median_ms']:.1f} ms more" if extra else "")
        print(f"[{name}] {args.videos} new clips, interleaved: first sight {row['median_ms']:.1f} ms "
              f"({row['ratio_first_config']:.2f}x {names[0]}), second half {row['second_half_median_ms']:.1f} ms "
              f"({row['ratio_first_config_second_half']:.2f}x){repeats}; graphs recorded (Stage 1/2, layers) "
              f"{out[name]['recorded']}; Stage-1/2 steps run eagerly (first sights, repeats) {out[name]['eager_steps']}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
