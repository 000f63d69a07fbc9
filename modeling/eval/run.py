"""The accuracy table and the accuracy-retention curves: PruneVid and its alternatives on the held-out moving-shapes
questions.

    python -m modeling.eval --configs stock,paper,random --limit 150 --json OUT.json
    python -m modeling.eval --curves --limit 300 --device cuda --workers 8      # writes docs/accuracy/curves.*

Every question goes through the released model's input path (the clip as an mp4 file, read with decord at the
benchmark's `MEDIA` options, the chat template, the processor) into `Qwen2_5_VLPruneVid` loaded with
`from_pretrained` from a checkpoint folder (default: the trained demo model, `modeling.demo.checkpoint_path()`), and
is answered by greedy `generate`; the answer is correct when its first letter is the option's letter.

Retention is `PruneVidStats.retention`, what stays for decoding: visual tokens held in the KV cache after the prefill
/ visual tokens of the unpruned input (for fewer frames: of the input with every frame). In the table the baselines
run at the paper preset's achieved retention, per question: the same number of visual tokens as `paper` kept for
that question (random and EVS dropping), or the even frame count closest to the same share of frames (uniform
temporal downsampling, `nframes`).

`--curves` runs every method of `modeling.eval.curves` at matched budgets (default 3, 6, 10, 16, 25 and 50% of the
visual tokens, `--budgets`) and writes `curves.json`, `curves.md` and `curves.png` into `--out` (default
`docs/accuracy`), reporting the retention each method achieves: PruneVid's, Stage 2 alone's and FastV's keep ratio is
set per question so that the tokens kept come closest to the budget (PruneVid moves to Stage-1 settings that keep
more where its Stage 1 alone keeps less), random and EVS dropping keep `round(b * n)` tokens, fewer frames the even
frame count closest to the budget's share (at least 2); `modeling.eval.curves` has the details. `--device cuda` runs the
model (float32) on the GPU; `--workers N` splits the questions into contiguous chunks run by N spawned processes,
each with its own model on that device, merged back in question order (also for the table). `--write-clips` only
writes the clips of the chosen questions into `--clip-cache` (it needs PyAV; a clip already there is read, never
rewritten), so that they can be made on one machine and read on another. `--benchmark-version` picks the generator's
version (`modeling.eval.benchmark`; default its `DEFAULT_VERSION`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any


__all__ = ["CONFIGS", "Evaluation", "Outcome", "main", "run_sharded", "score", "summarise", "wilson_interval"]

#: name -> what it is (the table's legend); `BASELINES` need `paper` first (they use its per-question budget).
CONFIGS: dict[str, str] = {
    "stock": "every stage off: the stock model",
    "paper": "PruneVid, the paper's settings (keep floor(alpha * n) per group)",
    "paper_ceil": "paper with keep_rounding='ceil' (keeps ceil(alpha * n) per group)",
    "conservative": "PruneVid preset that keeps more",
    "aggressive": "PruneVid preset that keeps fewer",
    "stage1_only": "PruneVid Stage 1 (merging) only",
    "fastv": "FastV: layer 2, 50% by the last token's attention",
    "random": "random token dropping before the LLM, at paper's retention (seeded)",
    "evs": "EVS: drop the tokens least changed from the previous temporal patch, at paper's retention",
    "uniform_frames": "uniform temporal downsampling (fewer frames) to paper's retention",
    "paper_sysprompt": "negative control: paper with Stage 2 scored by the system prompt, not the question",
    "stage2": "PruneVid Stage 2 alone (no merging) keeping 6.25% (4 of each temporal patch's 64 tokens)",
    "stage2_sysprompt": "negative control: stage2 scored by the system prompt, not the question",
}
#: Stage 2 alone, what `stage2` and its control `stage2_sysprompt` run: 4 of each temporal patch's 64 tokens, about
#: the share the paper's full settings keep here. Below the 10 tokens of the paper's 16% because there the budget
#: covers most clips' two or three moving shapes, so a question-blind choice keeps the named one too (docs/accuracy).
STAGE2_ALONE = {"enable_stage1": False, "keep_ratio": 0.0625}
BASELINES = ("random", "evs", "uniform_frames")
DEFAULT_CONFIGS = tuple(CONFIGS)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)  # exact at the ends (no 0.9999999999999999)
    return (low, high)


@dataclass
class Outcome:
    """One question under one config."""

    id: str
    kind: str
    answer: str
    predicted: str
    visual_tokens: int
    kept_visual_tokens: int
    setting: dict[str, Any] | None = None  # what a curve method set for this question (`modeling.eval.curves`)

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer


@dataclass
class Evaluation:
    """Runs configs over items on one model (see the module docstring)."""

    model: Any
    processor: Any
    items: Sequence[Any]
    clip_cache: Path | None = None
    max_new_tokens: int = 4
    progress: bool = True
    device: str = "cpu"

    @classmethod
    def from_pretrained(cls, path: str | Path, items: Sequence[Any], device: str = "cpu", **kwargs: Any) -> Evaluation:
        """The model of checkpoint folder `path` in float32 on `device`, and its processor."""
        import torch
        from transformers import AutoProcessor

        from ..integration.model import Qwen2_5_VLPruneVid
        from ..prunevid.config import PruneVidConfig

        model = Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=PruneVidConfig.disabled(), dtype=torch.float32)
        return cls(model.to(device).eval(), AutoProcessor.from_pretrained(path), items, device=device, **kwargs)

    # ------------------------------------------------------------------------------------------------ inputs
    def inputs(self, item: Any, nframes: int | None = None) -> dict:
        """Model inputs of `item`: mp4 -> decord -> chat template -> processor (`nframes`: uniform downsampling)."""
        from ..app.inputs import build_messages, prepare_inputs
        from .benchmark import MEDIA

        options = MEDIA if nframes is None else MEDIA.replace(fps=None, nframes=nframes)
        messages = build_messages(item.question, videos=[str(item.video_path(self.clip_cache))], options=options)
        inputs = prepare_inputs(self.processor, messages)
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}

    # ------------------------------------------------------------------------------------------------ running
    def run(self, configs: Sequence[str]) -> dict[str, list[Outcome]]:
        """Every config on every item. Items are the outer loop, so one item's inputs are in memory at a time
        (decoded once, shared by the configs); `paper` runs before the baselines that use its budget."""
        from tqdm.auto import tqdm

        unknown = [c for c in configs if c not in CONFIGS]
        if unknown:
            raise ValueError(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
        order = list(dict.fromkeys(configs))
        if any(c in BASELINES for c in order) and "paper" not in order:
            order.insert(0, "paper")  # the baselines' budgets
        order.sort(key=lambda c: c in BASELINES)  # stable: paper (and the rest) before the baselines
        outcomes: dict[str, list[Outcome]] = {name: [] for name in order}
        for item in tqdm(self.items, desc="questions", disable=not self.progress, file=sys.stderr):
            full = self.inputs(item)
            done: dict[str, Outcome] = {}
            for name in order:
                done[name] = self._run_one(name, item, full, done.get("paper"))
                outcomes[name].append(done[name])
        return outcomes

    def technique(self, name: str, paper: Outcome | None = None) -> Any:
        """What `model.prunevid` is set to for config `name`: a `PruneVidConfig`, or a technique (a
        `PruneVidController`) for the baselines; `paper` is this question's `paper` outcome (the budget)."""
        from ..prunevid.config import PruneVidConfig
        from .baselines import SystemPromptQuery, TokenDrop

        if name in ("random", "evs"):
            return TokenDrop(name, budget=max(1, paper.kept_visual_tokens), seed=0)
        if name == "paper_sysprompt":
            return SystemPromptQuery(PruneVidConfig.paper())
        if name in ("stage2", "stage2_sysprompt"):
            config = PruneVidConfig.paper(**STAGE2_ALONE)
            return config if name == "stage2" else SystemPromptQuery(config)
        if name in ("stock", "uniform_frames"):
            return PruneVidConfig.disabled()
        if name == "paper_ceil":
            return PruneVidConfig.paper(keep_rounding="ceil")
        return PruneVidConfig.preset(name)

    def _run_one(self, name: str, item: Any, full: dict, paper: Outcome | None) -> Outcome:
        inputs = full
        if name == "uniform_frames":
            share = paper.kept_visual_tokens / paper.visual_tokens
            inputs = self.inputs(item, nframes=max(2, 2 * round(item.frames * share / 2)))
        with self.model.prunevid_override(self.technique(name, paper)):
            return self.answer(item, inputs, full)

    def answer(self, item: Any, inputs: dict, full: dict) -> Outcome:
        """Greedy answer to `item` from `inputs` under the model's current settings; `full` is the item's input
        with every frame (the retention's denominator)."""
        import torch

        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt = inputs["input_ids"].shape[1]
        text = self.processor.batch_decode(output[:, prompt:], skip_special_tokens=True)[0].strip()
        (stats,) = self.model.prunevid_stats
        visual = stats.visual_tokens
        if inputs is not full:  # fewer frames: the budget is a share of the video with every frame
            visual = int((full["input_ids"] == self.model.config.video_token_id).sum())
        return Outcome(item.id, item.kind, item.answer, text[:1].upper(), visual, stats.cached_visual_tokens)


# ------------------------------------------------------------------------------------------------ reporting
def score(results: Sequence[Outcome]) -> dict[str, Any]:
    """Accuracy, its 95% Wilson interval, retention (sum of kept / sum of visual tokens), n, accuracy per kind."""
    correct = sum(o.correct for o in results)
    n = len(results)
    kinds: dict[str, list[bool]] = {}
    for o in results:
        kinds.setdefault(o.kind, []).append(o.correct)
    visual = sum(o.visual_tokens for o in results)
    return {
        "accuracy": round(correct / n, 4) if n else 0.0,
        "ci95": [round(v, 4) for v in wilson_interval(correct, n)],
        "retention": round(sum(o.kept_visual_tokens for o in results) / visual, 4) if visual else 0.0,
        "n": n,
        "per_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())},
    }


def summarise(outcomes: dict[str, list[Outcome]]) -> list[dict[str, Any]]:
    """One row per config: accuracy, 95% interval, retention, n, accuracy per kind."""
    return [{"config": name, **score(results), "description": CONFIGS[name]} for name, results in outcomes.items()]


def markdown(rows: list[dict[str, Any]], header: str = "") -> str:
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    lines = [header] if header else []
    lines += [
        "| config | accuracy | 95% interval | retention | n | " + " | ".join(kinds) + " |",
        "|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for r in rows:
        per = " | ".join(f"{100 * r['per_kind'].get(k, 0):.1f}" for k in kinds)
        lo, hi = r["ci95"]
        lines.append(f"| `{r['config']}` | {100 * r['accuracy']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f} | "
                     f"{100 * r['retention']:.1f}% | {r['n']} | {per} |")  # fmt: skip
    lines += ["", "Configs:"] + [f"- `{r['config']}`: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for r in rows:
        lo, hi = r["ci95"]
        x, y = 100 * r["retention"], 100 * r["accuracy"]
        ax.errorbar(x, y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", capsize=3)
        ax.annotate(r["config"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("retention: visual tokens in the KV cache (%)")
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_title("Moving-shapes test split, trained demo Qwen2.5-VL")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ workers
#: The evaluation a worker process of `run_sharded` loads once (its model), given each chunk's items in turn.
_WORKER: Evaluation | None = None


def run_sharded(job: Callable[[Evaluation], dict[Any, list[Outcome]]], model_path: str | Path, items: Sequence[Any],
                workers: int = 1, threads: int | None = None, progress: bool = True,
                **options: Any) -> dict[Any, list[Outcome]]:  # fmt: skip
    """`job(evaluation)` over `items`: in this process (`workers=1`), or split into contiguous chunks (four per
    worker, so a slow chunk does not hold up the rest) run by `workers` spawned processes, each with its own model
    (`Evaluation.from_pretrained(model_path, ..., **options)`, `threads` torch threads: default the CPU cores shared
    out). The job returns outcomes per key in item order; the chunks' lists are joined in item order. A job run in a
    worker must be picklable (a module-level function, or a `functools.partial` of one)."""
    if workers == 1:
        return job(Evaluation.from_pretrained(model_path, items, progress=progress, **options))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    size = max(1, math.ceil(len(items) / (4 * workers)))
    chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    initargs = (str(model_path), threads, options)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=initargs) as pool:
        futures = {pool.submit(_run_chunk, job, chunk): len(chunk) for chunk in chunks}
        try:
            with tqdm(total=len(items), desc=f"questions, {workers} workers", disable=not progress,
                      file=sys.stderr) as bar:  # fmt: skip
                for future in as_completed(futures):
                    future.result()  # raises a worker's error
                    bar.update(futures[future])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # the chunks not started yet are dropped
            raise
        parts = [future.result() for future in futures]  # submission order: item order
    merged: dict[Any, list[Outcome]] = {}
    for part in parts:
        for key, outcomes in part.items():
            merged.setdefault(key, []).extend(outcomes)
    return merged


def _start_worker(model_path: str, threads: int, options: dict[str, Any]) -> None:
    import torch

    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Evaluation.from_pretrained(model_path, [], progress=False, **options)


def _run_chunk(job: Callable[[Evaluation], dict[Any, list[Outcome]]], items: list[Any]) -> dict[Any, list[Outcome]]:
    return job(replace(_WORKER, items=items))


def _table(configs: list[str], evaluation: Evaluation) -> dict[str, list[Outcome]]:
    return evaluation.run(configs)


# ------------------------------------------------------------------------------------------------ command line
#: Options of one mode only (argparse dest -> flag): the table's, the curves', and what --write-clips takes.
TABLE_ONLY = {"configs": "--configs", "json_out": "--json", "markdown": "--markdown", "plot": "--plot"}
CURVES_ONLY = {"methods": "--methods", "budgets": "--budgets", "out": "--out"}
DEFAULT_OUT = Path("docs") / "accuracy"


def _parser() -> argparse.ArgumentParser:
    from .curves import BUDGETS, METHODS

    parser = argparse.ArgumentParser(prog="python -m modeling.eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    add = parser.add_argument
    add("--configs", default=None, help=f"the table's configs, comma-separated, from: {', '.join(CONFIGS)} "
                                        "(default: all)")  # fmt: skip
    add("--curves", action="store_true", help="accuracy against retention at matched budgets (modeling.eval.curves) "
                                              "instead of the table")  # fmt: skip
    add("--methods", default=None, help=f"with --curves: comma-separated, from: {', '.join(METHODS)} (default: all; "
                                        "stock always runs)")  # fmt: skip
    add("--budgets", default=None, help="with --curves: comma-separated shares of the visual tokens in (0, 1] "
                                        f"(default: {','.join(f'{b:g}' for b in BUDGETS)})")  # fmt: skip
    add("--out", default=None, help=f"with --curves: folder for curves.json, curves.md, curves.png (default: "
                                    f"{DEFAULT_OUT}, from the repository root)")  # fmt: skip
    add("--limit", type=int, default=None, help="first N questions of the split (default: all)")
    add("--split", default="test", choices=("test", "val"))
    add("--benchmark-version", type=int, default=None, help="version of the moving-shapes generator "
                                                            "(default: benchmark.DEFAULT_VERSION)")  # fmt: skip
    add("--model", default=None, help="checkpoint folder (default: the trained demo model)")
    add("--json", dest="json_out", default=None, help="write the table's results here")
    add("--markdown", default=None, help="write the table here")
    add("--plot", default=None, help="write the table's accuracy vs retention here (PNG)")
    add("--clip-cache", default=None, help="folder for the generated clips (default: user cache)")
    add("--write-clips", action="store_true", help="only write the clips of the questions into --clip-cache (PyAV)")
    add("--device", default="cpu", help="torch device of the model, e.g. cuda (default: cpu; float32 either way)")
    add("--workers", type=int, default=1, help="processes, each with its own model on --device (default: 1)")
    add("--threads", type=int, default=None, help="torch CPU threads (per worker; default: the cores shared out)")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with code 2 and one line on bad input, before anything is loaded; sets the parsed lists on `args`."""
    from .curves import parse_budgets, parse_methods

    def fail(message: str) -> None:
        parser.exit(2, f"python -m modeling.eval: error: {message}\n")

    if args.write_clips and args.curves:
        fail("--write-clips only writes the clips: not with --curves")
    given = [dest for dest in (*TABLE_ONLY, *CURVES_ONLY) if getattr(args, dest) is not None]
    if args.write_clips:
        clash, hint = given, "--write-clips only writes the clips: not with"
    elif args.curves:
        clash, hint = [d for d in given if d in TABLE_ONLY], "--curves writes curves.* into --out: not with"
    else:
        clash, hint = [d for d in given if d in CURVES_ONLY], "only with --curves:"
    if clash:
        fail(f"{hint} {', '.join({**TABLE_ONLY, **CURVES_ONLY}[d] for d in clash)}")
    if args.limit is not None and args.limit < 1:
        fail("--limit must be >= 1")
    if args.workers < 1:
        fail("--workers must be >= 1")
    if args.threads is not None and args.threads < 1:
        fail("--threads must be >= 1")
    configs = [c.strip() for c in (args.configs or ",".join(DEFAULT_CONFIGS)).split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        fail(f"--configs: unknown {unknown or 'empty'}; choose from {', '.join(CONFIGS)}")
    args.configs = configs
    try:
        args.methods, args.budgets = parse_methods(args.methods), parse_budgets(args.budgets)
    except ValueError as error:
        fail(str(error))
    if args.curves:
        args.out = Path(args.out) if args.out is not None else DEFAULT_OUT
        if not args.out.is_dir():
            fail(f"--out: the folder {args.out} does not exist")
    for out in (args.json_out, args.markdown, args.plot):
        if out is not None and not Path(out).resolve().parent.is_dir():
            fail(f"the folder of {out} does not exist")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)

    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.exit(2, f"python -m modeling.eval: error: --device: {error}\n")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "python -m modeling.eval: error: --device cuda: CUDA is not available\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    items = _items(parser, args)
    if args.write_clips:
        return _write_clips(items, args.clip_cache, progress=not args.quiet)
    if args.model is None:
        from ..demo import checkpoint_path

        model_path = checkpoint_path()
    else:
        model_path = Path(args.model)
    options = {"clip_cache": args.clip_cache, "device": args.device}
    run = {"workers": args.workers, "threads": args.threads, "progress": not args.quiet, **options}
    start = time.time()
    if args.curves:
        from .curves import run_curves

        outcomes = run_sharded(partial(run_curves, args.methods, args.budgets), model_path, items, **run)
        _report_curves(args, outcomes, items, model_path, time.time() - start)
    else:
        outcomes = run_sharded(partial(_table, args.configs), model_path, items, **run)
        _report_table(args, outcomes, items, model_path, time.time() - start)
    return 0


def _items(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Any]:
    """The questions: the first `--limit` of `--split`, in `--benchmark-version` (exit 2 on an unknown version)."""
    from . import benchmark

    if args.benchmark_version is None:
        return benchmark.load_split(args.split, limit=args.limit)
    versions = getattr(benchmark, "VERSIONS", (getattr(benchmark, "VERSION", 1),))
    if args.benchmark_version not in versions:
        parser.exit(2, f"python -m modeling.eval: error: --benchmark-version: choose from {versions}\n")
    return benchmark.load_split(args.split, limit=args.limit, version=args.benchmark_version)


def _write_clips(items: Sequence[Any], cache: str | None, progress: bool) -> int:
    from tqdm.auto import tqdm

    paths = [item.video_path(cache) for item in tqdm(items, desc="clips", disable=not progress, file=sys.stderr)]
    print(f"{len(paths)} clips in {paths[0].parent if paths else cache}")
    return 0


def _report_table(args: argparse.Namespace, outcomes: dict[str, list[Outcome]], items: Sequence[Any],
                  model_path: Path, seconds: float) -> None:  # fmt: skip
    import torch

    configs = args.configs
    rows = [r for r in summarise(outcomes) if r["config"] in configs]
    where = f"{torch.get_num_threads()} CPU threads" if args.workers == 1 else f"{args.workers} workers"
    header = (f"{len(items)} questions of the {args.split} split, model {model_path.name}, "
              f"{seconds:.0f} s on {where}" + ("" if args.device == "cpu" else f" ({args.device})"))  # fmt: skip
    print(markdown(rows, header))
    if args.json_out:
        payload = {
            "results": rows,
            "split": args.split,
            "items": [it.id for it in items],
            "model": str(model_path),
            "seconds": round(seconds, 1),
            "predictions": {name: [o.predicted for o in outcomes[name]] for name in configs},
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, header))
    if args.plot:
        plot(rows, args.plot)


def curve_point(budget: float, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """One point of a curve: the target budget, `score` (achieved retention, accuracy, interval, n, per kind) and per
    question the prediction, the kept visual tokens and the method's setting."""
    return {
        "budget": budget,
        **score(outcomes),
        "predictions": [o.predicted for o in outcomes],
        "kept_visual_tokens": [o.kept_visual_tokens for o in outcomes],
        "settings": [o.setting for o in outcomes],
    }


def _report_curves(args: argparse.Namespace, outcomes: dict[tuple, list[Outcome]], items: Sequence[Any],
                   model_path: Path, seconds: float) -> None:  # fmt: skip
    """Prints the curves' markdown and writes `curves.json`, `curves.md`, `curves.png` into `args.out`."""
    from .curves import METHODS, STOCK, curves_markdown, plot_curves

    points: dict[str, list[dict[str, Any]]] = {}
    for (name, budget), results in outcomes.items():
        points.setdefault(name, []).append(curve_point(budget, results))
    stock = outcomes[(STOCK, 1.0)]
    payload = {
        "benchmark_version": items[0].version,
        "split": args.split,
        "n": len(items),
        "items": [it.id for it in items],
        "answers": [it.answer for it in items],
        "chance": round(sum(1 / len(it.options) for it in items) / len(items), 4),
        "model": str(model_path),
        "device": args.device,
        "workers": args.workers,
        "seconds": round(seconds, 1),
        "budgets": args.budgets,
        "methods": {name: METHODS[name].description for name in args.methods},
        "visual_tokens": [o.visual_tokens for o in stock],
        "stock": points.pop(STOCK)[0],
        "curves": points,
    }
    (args.out / "curves.json").write_text(json.dumps(payload, indent=1) + "\n")
    table = curves_markdown(payload)
    (args.out / "curves.md").write_text(table)
    plot_curves(payload, args.out / "curves.png")
    print(table)
