#!/usr/bin/env python3
# Copyright 2025 The qwen-prunevid authors. Licensed under the Apache License, Version 2.0.
"""GPU benchmark of PruneVid's decoding (issue 21) on Qwen2.5-VL-7B (random bf16 weights at the released shapes).

    python3 tools/bench_decode.py --out docs/bench/decode                      # every phase (about 15 minutes)
    python3 tools/bench_decode.py --phases concurrency b1 --out A              # or in parts, each under 10 minutes:
    python3 tools/bench_decode.py --phases e2e batch --resume A/decode.json --out B
    python3 tools/bench_decode.py --quick --out /tmp/decode-quick              # CPU smoke test, tiny model

One process, one model; the settings are switched by assigning the same objects to `model.prunevid` (a compiled
step is specialised to the controller object it met, so a fresh one per call would recompile). Inputs as in
tools/bench.py (synthetic 448x448 clips at 2 fps, one question). Every timer is CUDA-synchronised; the decoding
steps are timed between `generate`'s stopping-criteria calls (one per token); configs alternate round by round
after a warm-up round (which also compiles). Phases:

* `b1` (targets 2 and 4): one 64-frame video, 64 new tokens, from the tower's output (`mm_encoder_outputs`):
  stock and paper, each with the dynamic cache (eager) and with `cache_implementation="static"` (`generate`
  compiles the step; `CompileConfig(fullgraph=True)`, otherwise transformers' defaults: inductor,
  "reduce-overhead"). Reported: median ms per decoding step, the first compiled call's extra time, the host time of
  `prepare_inputs_for_generation` per step, and whether static and dynamic decode the same tokens (random weights:
  bf16 rounding can flip a near-tie, so stock's own static-vs-dynamic agreement is given beside paper's).
* `e2e` (target 4): pixels in, text out, 64 new tokens, timed as whole calls (no per-step synchronisation): stock as
  shipped (sdpa tower, dynamic cache, eager), stock's best (the compiled varlen tower and the compiled static
  decode) and `PruneVidConfig.fast()` with the compiled static decode.
* `batch` (target 3): 32 copies of the 64-frame video, 32 new tokens, stock vs paper, dynamic and static: decode
  tokens per second (batch / median step) and host time per step.
* `concurrency` (target 5): serving-style, 128-frame conversations prefilled one at a time, then decoded together.
  One conversation is prefilled (dynamic cache); N conversations' caches are held in one batch cache (copies of the
  first one's: the memory is real, the contents identical); with them resident one more conversation is prefilled
  (its transient), then the batch decodes 4 tokens with the stock forward, given each conversation's positions
  (the unpruned numbering PruneVid's prefill returns, `PrefillState.next_position`), as a serving engine would. The
  largest N that fits (a prediction from the free memory and the bytes per conversation, then bisection, catching
  OOM), stock vs paper.

Outputs under --out: decode.json (every number) and decode.md (tables and the targets).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import bench as base  # noqa: E402  (tools/bench.py: the model, the inputs, the clock)

PHASES = ("b1", "e2e", "batch", "concurrency")
DECODE_CONFIGS = ("stock_dynamic", "stock_static", "paper_dynamic", "paper_static")
E2E_CONFIGS = ("stock_shipped", "stock_best", "fast_static")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--out", type=Path, default=base.ROOT / "docs" / "bench" / "decode")
    parser.add_argument("--resume", type=Path, help="decode.json of an earlier run: its phases are kept")
    parser.add_argument("--frames", type=int, default=64, help="frames of the video (phases b1 and batch)")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens at batch 1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batch-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency-frames", type=int, default=128)
    parser.add_argument("--max-attempts", type=int, default=6, help="batch sizes tried per config (concurrency)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up round")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--model", default="7b", choices=("7b", "3b", "32b"))
    parser.add_argument("--budget-s", type=float, default=570.0, help="wall-clock budget; later work is skipped")
    parser.add_argument("--quick", action="store_true", help="tiny random model on the CPU (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def log(message):
    print(f"[decode {time.strftime('%H:%M:%S')}] {message}", flush=True)


class DecodeBench:
    def __init__(self, args):
        import torch

        self.args, self.torch = args, torch
        self.t_start = time.perf_counter()
        self.device = torch.device("cpu" if args.quick else "cuda")
        self.dtype = torch.float32 if args.quick else torch.bfloat16
        self.clock = base.Clock(self.device)
        self.results: dict[str, Any] = {"skipped": [], "notes": []}
        if args.resume is not None:
            self.results = json.loads(Path(args.resume).read_text())
            self.results.pop("targets", None)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def left(self):
        return self.args.budget_s - (time.perf_counter() - self.t_start)

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self):
        torch = self.torch
        from transformers import CompileConfig

        from modeling import PruneVidConfig, PruneVidController
        from modeling.demo.offline import build_processor

        for name in ("recompile_limit", "cache_size_limit"):  # one entry per setting and batch shape
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        t = time.perf_counter()
        self.model, self.config = base.build_model(self.args, self.device, self.dtype)
        self.processor = build_processor()
        # one object per setting, kept: compiled steps are specialised to the controller object they met
        self.settings = {
            "stock": PruneVidConfig.disabled(),
            "paper": PruneVidController(PruneVidConfig.paper()),
            "fast": PruneVidController(PruneVidConfig.fast()),
            "stock_compiled": PruneVidController(PruneVidConfig.disabled().replace(vision_attention="varlen_compiled")),
        }
        if self.args.quick:
            self.compile = CompileConfig(fullgraph=True, backend="eager")
            self.compile._compile_all_devices = True
        else:
            self.compile = CompileConfig(fullgraph=True)
        import transformers

        env = {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu",
            "model": "tiny (quick)" if self.args.quick
            else f"Qwen2.5-VL-{self.args.model.upper()} architecture, random weights",
            "dtype": str(self.dtype).removeprefix("torch."), "model_build_s": round(time.perf_counter() - t, 2),
            "compile_config": {k: v for k, v in self.compile.to_dict().items() if k != "backend"}
            | {"backend": str(self.compile.backend)},
        }  # fmt: skip
        self.results.setdefault("env", {}).update(env)
        self.results.setdefault("commands", []).append(" ".join(["python3", "tools/bench_decode.py", *sys.argv[1:]]))
        self.prepare_s: list[float] = []
        original = self.model.prepare_inputs_for_generation

        @functools.wraps(original)
        def timed_prepare(*a, **k):  # host time of the per-step input preparation (PruneVid's masks live here)
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.prepare_s.append(time.perf_counter() - t0)

        self.model.prepare_inputs_for_generation = timed_prepare
        log(f"setup: {env}")

    def use(self, name):
        self.model.prunevid = self.settings[name]

    def free(self):
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def video(self, frames):
        """(processor inputs, the stock tower's output) of a `frames`-frame clip."""
        inputs = base.make_inputs(self.processor, frames, self.args.size, self.device, self.dtype, self.args.seed)
        self.use("stock")
        with self.torch.no_grad():
            pooled = self.model.model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            ).pooler_output[0]
        return inputs, pooled

    # ------------------------------------------------------------------------------------------------ one call
    def generate(self, inputs, new_tokens, static=False, decode_text=False, stamps=True, **extra):
        """Wall seconds (pixels/ids in, text out when `decode_text`), per-step seconds, host prepare seconds per
        step, the output."""
        torch = self.torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        stamp_times, clock = [], self.clock

        class Stamp(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stamp_times.append(clock.now())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        if static:
            extra.update(cache_implementation="static", compile_config=self.compile)
        self.prepare_s = []
        t0 = clock.now()
        call = functools.partial(
            self.model.generate, **inputs, **extra, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, return_dict_in_generate=True, pad_token_id=151643,
        )  # fmt: skip
        with torch.no_grad():
            try:
                out = call(stopping_criteria=StoppingCriteriaList([Stamp()] if stamps else []))
            except torch._dynamo.exc.TorchDynamoException as error:  # e.g. a graph break under fullgraph=True
                if not (static and self.compile.fullgraph):
                    raise
                self.results["notes"].append(f"fullgraph compile failed, compiled without it: {error!r:.500}")
                log(f"fullgraph compile failed: {error!r:.300}; retrying with fullgraph=False")
                from transformers import CompileConfig

                self.compile = CompileConfig(**{**self.compile.to_dict(), "fullgraph": False})
                torch._dynamo.reset()
                return self.generate(inputs, new_tokens, static, decode_text, stamps, **extra)
        if decode_text:
            self.processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        wall = clock.now() - t0
        steps = [b - a for a, b in zip(stamp_times, stamp_times[1:])]
        return wall, steps, self.prepare_s[1:], out  # (the first preparation is the prefill's)

    # ------------------------------------------------------------------------------------------------ phases
    def decode_round(self, configs, inputs, new_tokens, enc, rounds):
        """{config: {"steps": [...], "prepare": [...], "calls": [...], "sequences": first timed output}}."""
        runs = {name: {"steps": [], "prepare": [], "calls": [], "first_call_s": None} for name in configs}
        for r in range(rounds + 1):
            if r == 1:
                graphs_after_warmup = self.graphs()
            for name in configs:
                setting, cache = name.rsplit("_", 1)
                self.use(setting)
                wall, steps, prepare, out = self.generate(
                    inputs, new_tokens, static=cache == "static", mm_encoder_outputs=base.encoder_outputs(*enc)
                )
                if r == 0:
                    runs[name]["first_call_s"] = wall
                else:
                    runs[name]["steps"] += steps
                    runs[name]["prepare"] += prepare
                    runs[name]["calls"].append(wall)
                    runs[name].setdefault("sequences", out.sequences.cpu())
                del out
                self.free()
            times = (f"{n} {1e3 * base.median(v['steps'] or [0]):.2f} ms" for n, v in runs.items())
            log(f"  round {r}: " + ", ".join(times))
        self.results.setdefault("graphs_compiled_in_timed_rounds", []).append(self.graphs() - graphs_after_warmup)
        return runs

    def graphs(self) -> int:
        """Graphs dynamo has compiled so far in this process."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    @staticmethod
    def summarise(runs, batch, prompt_len):
        rec = {}
        for name, run in runs.items():
            step = base.median(run["steps"])
            rec[name] = {
                "ms_per_step": 1e3 * step, "ms_per_step_mean": 1e3 * sum(run["steps"]) / len(run["steps"]),
                "tokens_per_s": batch / step, "host_prepare_ms_per_step": 1e3 * base.median(run["prepare"]),
                "call_s": base.median(run["calls"]), "first_call_s": run["first_call_s"],
                "first_call_extra_s": run["first_call_s"] - base.median(run["calls"]),
            }  # fmt: skip
        for setting in ("stock", "paper"):
            a, b = runs.get(f"{setting}_static"), runs.get(f"{setting}_dynamic")
            if a and b:
                x, y = a["sequences"][:, prompt_len:], b["sequences"][:, prompt_len:]
                same = (x == y).cumprod(dim=1).sum(dim=1)  # tokens equal before the first difference, per row
                rec[f"{setting}_static"]["same_tokens_as_dynamic"] = same.tolist()
                rec[f"{setting}_static"]["new_tokens"] = int(x.shape[1])
        return rec

    def phase_b1(self):
        args = self.args
        inputs, pooled = self.video(args.frames)
        text = base.text_inputs(inputs)
        prompt_len = int(inputs["input_ids"].shape[1])
        log(f"[b1] {args.frames} frames, prompt {prompt_len} tokens")
        runs = self.decode_round(DECODE_CONFIGS, text, args.new_tokens, (pooled, 1), args.repeats)
        rec = {"frames": args.frames, "prompt_tokens": prompt_len, "new_tokens": args.new_tokens,
               "configs": self.summarise(runs, 1, prompt_len)}  # fmt: skip
        self.use("paper")
        self.generate(text, 2, mm_encoder_outputs=base.encoder_outputs(pooled))
        rec["paper_stats"] = base._stats_summary(self.model.prunevid_stats)
        self.results["b1"] = rec
        self.save()

    def phase_e2e(self):
        """Pixels in, text out; no per-step timing (its synchronisation would stall the host's lead on the GPU)."""
        args = self.args
        inputs, _ = self.video(args.frames)
        log(f"[e2e] {args.frames} frames, {args.new_tokens} new tokens")
        e2e = {name: [] for name in E2E_CONFIGS}
        first = {}
        plan = {"stock_shipped": ("stock", False), "stock_best": ("stock_compiled", True),
                "fast_static": ("fast", True)}  # fmt: skip
        for r in range(args.repeats + 2):
            for name in E2E_CONFIGS:
                setting, static = plan[name]
                self.use(setting)
                wall, _, _, out = self.generate(inputs, args.new_tokens, static=static, decode_text=True, stamps=False)
                del out
                self.free()
                (e2e[name].append(wall) if r else first.__setitem__(name, wall))
            log(f"  e2e round {r}: " + ", ".join(f"{n} {base.median(v or [0]):.3f}s" for n, v in e2e.items()))
        self.results["e2e"] = {"frames": args.frames, "new_tokens": args.new_tokens, "configs": {
            name: {"s": base.median(v), "runs": v, "first_call_s": first[name]} for name, v in e2e.items()}}
        self.save()

    def phase_batch(self):
        args = self.args
        inputs, pooled = self.video(args.frames)
        text = base.text_inputs(inputs, args.batch)
        prompt_len = int(inputs["input_ids"].shape[1])
        log(f"[batch] {args.batch} x {args.frames} frames")
        rounds = max(1, args.repeats - 1)
        runs = self.decode_round(DECODE_CONFIGS, text, args.batch_new_tokens, (pooled, args.batch), rounds)
        self.results["batch"] = {"frames": args.frames, "batch": args.batch, "new_tokens": args.batch_new_tokens,
                                 "configs": self.summarise(runs, args.batch, prompt_len)}  # fmt: skip
        self.save()

    # ------------------------------------------------------------------------------------------------ concurrency
    def one_prefill(self, setting, inputs, pooled):
        """(cache, next token [1, 1]) of one conversation's prefill (dynamic cache)."""
        from modeling.integration.compat import cache_of

        self.use(setting)
        with self.torch.no_grad():
            out = self.model.generate(**base.text_inputs(inputs), mm_encoder_outputs=base.encoder_outputs(pooled),
                                      max_new_tokens=1, do_sample=False, return_dict_in_generate=True,
                                      pad_token_id=151643)  # fmt: skip
        return cache_of(out), out.sequences[:, -1:]

    def next_position(self, inputs, pooled):
        """[3, 1, 1]: the position of the first new token, in the unpruned numbering (the same for every setting:
        what a serving engine keeps per conversation), from a pruned prefill's `PrefillState.next_position`."""
        self.use("paper")
        with self.torch.no_grad():
            self.model(**base.text_inputs(inputs), mm_encoder_outputs=base.encoder_outputs(pooled), use_cache=False)
        return self.settings["paper"].state.next_position.view(1, 1, 1).expand(3, 1, 1).clone()

    def attempt(self, setting, inputs, pooled, template, token, position, n):
        """Hold `n` conversations' caches, prefill one more, decode 4 tokens at batch n; True when it all fits."""
        torch = self.torch
        from transformers import DynamicCache

        from modeling.integration.compat import with_cache

        cache = None
        try:
            cache = DynamicCache()
            for i, layer in enumerate(template.layers):
                keys = layer.keys.expand(n, -1, -1, -1).contiguous()
                values = layer.values.expand(n, -1, -1, -1).contiguous()
                cache.update(keys, values, i)
            extra, _ = self.one_prefill(setting, inputs, pooled)  # the next conversation's prefill, on top
            del extra
            self.use("stock")  # decoding: the stock forward with the engine's positions
            ids, pos = token.expand(n, 1), position.expand(3, n, 1)
            with torch.no_grad():
                for step in range(4):
                    logits = self.model(input_ids=ids, position_ids=pos + step, use_cache=True, **with_cache(cache),
                                        logits_to_keep=1).logits  # fmt: skip
                    ids = logits[:, -1].argmax(dim=-1, keepdim=True)
            ok = True
        except torch.cuda.OutOfMemoryError:
            ok = False
        finally:
            del cache
            self.free()
        peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None
        log(f"  concurrency {setting} {n}: {'fits' if ok else 'OOM'}")
        return ok, peak

    def phase_concurrency(self):
        torch = self.torch
        args = self.args
        frames = args.concurrency_frames
        inputs, pooled = self.video(frames)
        inputs = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
        res = {"frames": frames, "configs": {}}
        position = self.next_position(inputs, pooled)
        for setting in ("stock", "paper"):
            template, token = self.one_prefill(setting, inputs, pooled)
            per = base.cache_bytes(template)
            self.free()
            if self.device.type == "cuda":
                free = torch.cuda.mem_get_info()[0]
            else:
                free = (8 if setting == "stock" else 40) * per  # quick: a pretend card; the numbers mean nothing
            guess = max(1, int(0.9 * free / per))
            lo, hi, tries = 0, None, []
            candidate = guess
            for _ in range(args.max_attempts):
                if self.left() < 30:
                    self.results["skipped"].append(f"concurrency {setting}: out of time at {candidate}")
                    break
                if args.quick and candidate > free // per:
                    ok, peak = False, None
                else:
                    ok, peak = self.attempt(setting, inputs, pooled, template, token, position, candidate)
                tries.append({"n": candidate, "fits": ok, "peak_GiB": base._gib(peak)})
                if ok:
                    lo = candidate
                else:
                    hi = candidate
                if hi is not None and hi - lo <= max(1, lo // 50):  # within 2%
                    break
                candidate = (lo + hi) // 2 if hi is not None else int(lo * 1.1) + 1
            res["configs"][setting] = {"max_conversations": lo, "first_failing": hi, "kv_bytes_per_conversation": per,
                                       "free_bytes_before": free, "tries": tries}  # fmt: skip
            del template
            self.free()
        stock, paper = res["configs"]["stock"], res["configs"]["paper"]
        res["ratio"] = paper["max_conversations"] / stock["max_conversations"] if stock["max_conversations"] else None
        self.results["concurrency"] = res
        self.save()

    # ------------------------------------------------------------------------------------------------ driver
    def run(self):
        self.setup()
        for phase in self.args.phases:
            if self.left() < 60:
                self.results["skipped"].append(f"{phase} ({self.left():.0f}s left)")
                continue
            try:
                getattr(self, f"phase_{phase}")()
            except Exception as error:  # noqa: BLE001 - keep the other phases' numbers
                self.results["skipped"].append(f"{phase} failed: {type(error).__name__}: {error}")
                log(f"{phase} failed: {error!r}")
                self.free()
        self.results["targets"] = targets(self.results)
        self.save(final=True)
        return self.results

    def save(self, final=False):
        (self.out / "decode.json").write_text(json.dumps(self.results, indent=1, default=base._json_default))
        if final:
            (self.out / "decode.md").write_text(markdown(self.results))


# ---------------------------------------------------------------------------------------------------- reports
def _get(results, *keys):
    value = results
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def targets(results):
    """Issue 21's targets from the phases' numbers; `goal` None: reported only."""
    out = []

    def add(*row):
        out.append(base.target_row(*row))

    b1 = lambda *k: _get(results, "b1", "configs", *k)  # noqa: E731
    ratio = base._ratio
    add("static_decode_vs_stock_b1", ratio(b1("paper_static", "ms_per_step"), b1("stock_static", "ms_per_step")), 1.05,
        "lower", "2. paper / stock ms per token, both static cache + compiled step, batch 1, 64 frames")
    add("static_decode_ms_b1", b1("paper_static", "ms_per_step"), 12.0, "lower",
        f"2. paper ms per token, static compiled, batch 1 (stock: "
        f"{base._fmt(b1('stock_static', 'ms_per_step'), '.2f')})")
    def same(setting):
        equal = b1(f"{setting}_static", "same_tokens_as_dynamic")
        return None if equal is None else min(equal) / b1(f"{setting}_static", "new_tokens")

    add("static_same_tokens_b1", same("paper"), None, "higher",
        f"2. share of paper's tokens that static decodes as dynamic does, before the first difference (stock's own: "
        f"{base._fmt(same('stock'), '.2f')}; random weights: bf16 rounding flips near-ties)")
    add("dynamic_decode_vs_stock_b1", ratio(b1("paper_dynamic", "ms_per_step"), b1("stock_dynamic", "ms_per_step")),
        None, "lower", "paper / stock ms per token, dynamic cache (eager), batch 1")
    bt = lambda *k: _get(results, "batch", "configs", *k)  # noqa: E731
    batch = _get(results, "batch", "batch")
    add("batch_static_throughput", ratio(bt("paper_static", "tokens_per_s"), bt("stock_static", "tokens_per_s")), 1.5,
        "higher", f"3. paper / stock decode tokens/s, static compiled, batch {batch}, 64 frames")
    def best(setting):
        return max(bt(f"{setting}_static", "tokens_per_s") or 0, bt(f"{setting}_dynamic", "tokens_per_s") or 0)

    add("batch_best_throughput", ratio(best("paper"), best("stock")), None, "higher",
        f"3. paper / stock decode tokens/s, each with its faster cache, batch {batch}")
    add("batch_dynamic_throughput", ratio(bt("paper_dynamic", "tokens_per_s"), bt("stock_dynamic", "tokens_per_s")),
        1.0, "higher", f"3. paper / stock decode tokens/s, dynamic cache, batch {batch}")
    add("host_prepare_ms_b1", b1("paper_static", "host_prepare_ms_per_step"), None, "lower",
        f"3. host time per step in prepare_inputs_for_generation, paper static, batch 1 (stock: "
        f"{base._fmt(b1('stock_static', 'host_prepare_ms_per_step'), '.3f')}; batch {batch}: paper "
        f"{base._fmt(bt('paper_static', 'host_prepare_ms_per_step'), '.3f')}, stock "
        f"{base._fmt(bt('stock_static', 'host_prepare_ms_per_step'), '.3f')})")
    e2e = lambda name: _get(results, "e2e", "configs", name, "s")  # noqa: E731
    add("e2e_vs_shipped", ratio(e2e("stock_shipped"), e2e("fast_static")), 3.5, "higher",
        "4. stock as shipped / fast() + static compiled decode, pixels in, text out, 64 new tokens, 64 frames")
    add("e2e_vs_stock_best", ratio(e2e("stock_best"), e2e("fast_static")), None, "higher",
        "4. stock's best (compiled tower + static compiled decode) / the same PruneVid run")
    add("concurrency_ratio", _get(results, "concurrency", "ratio"), 6.0, "higher",
        f"5. paper / stock conversations of {_get(results, 'concurrency', 'frames')} frames prefilled one at a time "
        "and decoded together")
    return out  # fmt: skip


def markdown(results):
    env = results.get("env", {})
    lines = [f"# PruneVid decoding benchmark: {env.get('device')} ({env.get('model')})", "",
             f"torch {env.get('torch')}, transformers {env.get('transformers')}, {env.get('dtype')}; "
             f"compile config {env.get('compile_config')}", "",
             *[f"    {c}" for c in results.get("commands", [])], "", "## Targets", "",
             "| target | measured | goal | met | definition |", "|---|---|---|---|---|"]  # fmt: skip
    for t in results.get("targets", []):
        met = {True: "yes", False: "no", None: ""}[t["met"]]
        lines.append(f"| {t['target']} | {base._fmt(t['measured'], '.3f')} | {base._fmt(t['goal'], 'g')} | {met} | "
                     f"{t['definition']} |")  # fmt: skip
    for phase, title in (("b1", "Batch 1"), ("batch", "Batch")):
        rec = results.get(phase)
        if not rec:
            continue
        lines += ["", f"## {title}: {rec.get('batch', 1)} x {rec['frames']} frames, {rec['new_tokens']} new tokens", "",
                  "| config | ms/step (median) | mean | tokens/s | host prepare ms/step | call s | first call s | "
                  "same tokens as dynamic |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, c in rec["configs"].items():
            same = c.get("same_tokens_as_dynamic")
            same = "" if same is None else f"{min(same)}/{c['new_tokens']}"
            lines.append(f"| {name} | {c['ms_per_step']:.2f} | {c['ms_per_step_mean']:.2f} | {c['tokens_per_s']:.1f} | "
                         f"{c['host_prepare_ms_per_step']:.3f} | {c['call_s']:.3f} | {c['first_call_s']:.1f} | "
                         f"{same} |")  # fmt: skip
        if phase == "b1" and results.get("e2e"):
            e2e = results["e2e"]
            lines += ["", f"End to end (pixels in, text out; {e2e['frames']} frames, {e2e['new_tokens']} new tokens):",
                      "",
                      "| config | s (median) | runs | first call s |", "|---|---|---|---|"]  # fmt: skip
            lines += [f"| {n} | {e['s']:.3f} | {', '.join(f'{x:.3f}' for x in e['runs'])} | {e['first_call_s']:.1f} |"
                      for n, e in e2e["configs"].items()]  # fmt: skip
    conc = results.get("concurrency")
    if conc:
        lines += ["", f"## Concurrency: {conc['frames']}-frame conversations", "",
                  "| config | conversations | first failing | KV MiB each | tries |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, c in conc["configs"].items():
            tries = ", ".join(f"{t['n']}{'' if t['fits'] else ' OOM'}" for t in c["tries"])
            lines.append(f"| {name} | {c['max_conversations']} | {c['first_failing']} | "
                         f"{c['kv_bytes_per_conversation'] / 2**20:.1f} | {tries} |")  # fmt: skip
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(results["skipped"])]
    if results.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in results["notes"]]]
    if "graphs_compiled_in_timed_rounds" in results:
        lines += [f"- graphs compiled during the timed rounds (per decode phase run): "
                  f"{results['graphs_compiled_in_timed_rounds']}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.frames, args.size, args.new_tokens = 8, 112, 6
        args.batch, args.batch_new_tokens, args.concurrency_frames = 3, 4, 8
        args.repeats, args.max_attempts = 1, 3
    results = DecodeBench(args).run()
    for t in results["targets"]:
        log(f"target {t['target']}: {base._fmt(t['measured'], '.3f')} (goal {t['goal']}, met {t['met']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
