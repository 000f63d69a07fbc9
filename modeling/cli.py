"""`qwen-prunevid` / `python -m modeling`: ask Qwen2.5-VL (with PruneVid) about videos and images.

Without `--model` it runs offline: a small random-weight model and the bundled clip `modeling/assets/demo_clip.mp4`,
comparing the stock model with the paper preset (`make demo`). See docs/cli.md for the reference.

Exit codes: 0 success, 1 an unexpected error, 2 bad input (missing or undecodable media, unknown preset, out-of-range
setting, a model path that is not a Qwen2.5-VL checkpoint). Errors print one line on stderr; `--verbose` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from .prunevid.config import CHOICES, PRESETS, PruneVidConfig


__all__ = ["DEFAULT_QUESTION", "DEMO_CLIP", "JSON_SCHEMA", "build_parser", "main"]

PROG = "qwen-prunevid"
DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo_clip.mp4"
#: 32 frames at 8 fps: sample every frame (16 temporal patches) rather than qwen-vl-utils' default 2 fps.
DEMO_FPS = 8.0
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
JSON_SCHEMA = "qwen-prunevid.result/v1"
_RANDOM_NOTE = (
    "Offline demo: a small RANDOM-WEIGHT Qwen2.5-VL (no download). Its answers are meaningless; the run shows the "
    "pipeline, the token budget per stage and the timing. Pass --model Qwen/Qwen2.5-VL-7B-Instruct (or a local "
    "checkpoint) for real answers."
)

# (flag, PruneVidConfig field, argparse type / choices, help)
_OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--tau", "tau", float, "Stage 1 static threshold (cosine similarity), in [-1, 1]"),
    ("--temporal-segment-ratio", "temporal_segment_ratio", float, "temporal segments per temporal patch, in (0, 1]"),
    ("--cluster-ratio", "cluster_ratio", float, "share of tokens kept by Stage 1 spatial clustering, in (0, 1]"),
    ("--dpc-knn-k", "dpc_knn_k", int, "neighbours of the DPC-KNN density, >= 1"),
    ("--min-tokens-to-cluster", "min_tokens_to_cluster", int, "cluster only blocks of more tokens than this"),
    ("--keep-ratio", "keep_ratio", float, "Stage 2: share of candidate visual tokens kept, in (0, 1]"),
    ("--pruning-layer", "pruning_layer", int, "Stage 2: 0-indexed LLM layer after which tokens are dropped"),
    ("--selection-query", "selection_query", CHOICES["selection_query"], "Stage 2 query tokens"),
    ("--attention-aggregation", "attention_aggregation", CHOICES["attention_aggregation"], "over heads, queries"),
    ("--selection-scope", "selection_scope", CHOICES["selection_scope"], "keep-ratio per group or global"),
    ("--vision-attention", "vision_attention", CHOICES["vision_attention"], "vision tower attention kernel"),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("stage1", "enable_stage1", "Stage 1: spatial-temporal token merging before the LLM"),
    ("stage2", "enable_stage2", "Stage 2: attention-based token selection inside the LLM"),
    ("stage3", "enable_stage3", "Stage 3: KV cache compressed to the selected tokens"),
    ("include-images", "include_images", "Stage 2 also selects among image tokens"),
)


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask Qwen2.5-VL with PruneVid visual-token pruning about videos and images. Without --model, "
        "runs an offline demo (random-weight model, bundled clip) that compares the stock model with PruneVid.",
    )
    io = parser.add_argument_group("input")
    io.add_argument("--video", action="append", default=[], metavar="PATH|URL", help="video (repeatable)")
    io.add_argument("--image", action="append", default=[], metavar="PATH|URL", help="image (repeatable)")
    io.add_argument("--question", default=None, help=f"question (default: {DEFAULT_QUESTION!r})")
    io.add_argument("--fps", type=float, default=None,
                    help="frames per second sampled from each video (qwen-vl-utils default 2; the demo clip: 8)")
    io.add_argument("--max-frames", type=int, default=None, help="most frames sampled per video")
    io.add_argument("--max-pixels", type=int, default=None, help="most pixels per frame / image (e.g. 50176 = 224x224)")
    io.add_argument("--min-pixels", type=int, default=None, help="fewest pixels per frame / image")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="Qwen2.5-VL checkpoint directory or Hub id (default: offline random-weight demo model)")
    model.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    model.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="weights dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    model.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3"),
                       help="attention implementation (default: sdpa)")
    model.add_argument("--max-new-tokens", type=int, default=None,
                       help="most tokens to generate (default: 64, the offline demo 16)")
    model.add_argument("--seed", type=int, default=0, help="seed of the demo model's weights and of sampling (default: 0)")
    model.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                       help="an untimed one-token run first, so that the timed runs do not pay one-off start-up costs (default: on)")

    prune = parser.add_argument_group("PruneVid (a preset, then overrides of its fields)")
    prune.add_argument("--preset", default="paper", choices=PRESETS, help="PruneVid preset (default: paper; off = the stock model)")
    for flag, name, kind, text in _OVERRIDES:
        if isinstance(kind, tuple):
            prune.add_argument(flag, dest=name, choices=kind, default=None, help=text)
        else:
            prune.add_argument(flag, dest=name, type=kind, default=None, help=text)
    for flag, name, text in _SWITCHES:
        prune.add_argument(f"--{flag}", dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)

    out = parser.add_argument_group("output")
    out.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                     help="also run the stock model (PruneVid off) on the same weights and input, side by side "
                     "(default: on for the offline demo, off with --model)")
    out.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    out.add_argument("--visualize", metavar="OUT.png", default=None,
                     help="draw every video token's fate (one PNG per video: OUT.png, OUT_2.png, ...); with "
                     "--compare also OUT_budget.png, the tokens per stage")
    out.add_argument("--verbose", action="store_true", help="tracebacks on errors, transformers' warnings")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 unexpected error, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, message already on stderr)
        return int(exit_.code or 0)
    try:
        return _run(args)
    except UsageError as error:
        _fail(str(error), args.verbose)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - one line for the user, the traceback with --verbose
        _fail(f"{type(error).__name__}: {error}", args.verbose, hint=True)
        return 1


# -------------------------------------------------------------------------------------------------- the run
def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = sys.stderr if args.json else sys.stdout  # human-readable text; with --json stdout holds only the JSON
    config = _prunevid_config(args)
    demo = args.model is None
    videos, images = list(args.video), list(args.image)
    question = args.question or DEFAULT_QUESTION
    fps = args.fps
    if not videos and not images:
        videos = [str(DEMO_CLIP)]
        fps = DEMO_FPS if fps is None else fps
    compare = demo if args.compare is None else args.compare
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else (16 if demo else 64)
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")

    import torch

    from .inputs import build_messages, check_media
    from .pipeline import VideoQA, check_checkpoint

    _quiet_libraries(args.verbose)
    try:  # fail fast on bad media and bad checkpoints, before loading anything big
        check_media(build_messages(question, videos=videos, images=images))
        if not demo:
            check_checkpoint(args.model)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    if demo:
        print(_RANDOM_NOTE, file=sys.stderr)
        qa = _with_progress("Building the offline demo model", lambda: VideoQA.offline_demo(
            seed=args.seed, device=args.device, attn_implementation=args.attn))  # fmt: skip
    else:
        qa = _with_progress(f"Loading {args.model}", lambda: VideoQA.from_pretrained(
            args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn))  # fmt: skip
    load_s = time.perf_counter() - started
    _set_prunevid(qa, config)

    inputs = _with_progress(
        f"Reading and processing {_media_summary(videos, images)}",
        lambda: qa.prepare(question, videos, images, fps=fps, max_frames=args.max_frames,
                           max_pixels=args.max_pixels, min_pixels=args.min_pixels),
    )  # fmt: skip
    if args.warmup:
        _with_progress("Warming up", lambda: qa.run(inputs=inputs, max_new_tokens=1))
    runs: dict[str, Any] = {}
    if compare:
        qa.model.prunevid = PruneVidConfig.disabled()
        torch.manual_seed(args.seed)
        runs["stock"] = _with_progress("Generating (stock)", lambda: qa.run(inputs=inputs, max_new_tokens=max_new_tokens))
        _set_prunevid(qa, config)
    torch.manual_seed(args.seed)
    runs["prunevid"] = _with_progress(f"Generating (PruneVid {args.preset})",
                                      lambda: qa.run(inputs=inputs, max_new_tokens=max_new_tokens))  # fmt: skip

    pictures = _visualize(args.visualize, runs, inputs, qa, args.preset, videos) if args.visualize else []
    meta = {
        "model": args.model or "offline-demo (random weights)",
        "offline_demo": demo,
        "question": question,
        "videos": videos,
        "images": images,
        "preset": args.preset,
        "device": str(qa.model.device),
        "dtype": str(qa.model.dtype).removeprefix("torch."),
        "load_s": round(load_s, 3),
        "grids": [list(g) for g in inputs["video_grid_thw"].tolist()] if "video_grid_thw" in inputs else [],
    }
    if args.json:
        print(json.dumps(_json_result(meta, runs, pictures), indent=2))
    else:
        _print_report(meta, runs, pictures, log)
    return 0


def _prunevid_config(args: argparse.Namespace) -> PruneVidConfig:
    """The preset with the override flags applied; an out-of-range value is a usage error naming the flag."""
    overrides = {name: getattr(args, name) for _, name, _, _ in _OVERRIDES if getattr(args, name) is not None}
    overrides |= {name: getattr(args, name) for _, name, _ in _SWITCHES if getattr(args, name) is not None}
    try:
        return PruneVidConfig.preset(args.preset, **overrides)
    except ValueError as error:
        raise UsageError(_name_flags(str(error))) from error


def _set_prunevid(qa: Any, config: PruneVidConfig) -> None:
    try:
        qa.model.prunevid = config  # checks the pruning layer against the model's depth
    except ValueError as error:
        raise UsageError(_name_flags(str(error))) from error


def _name_flags(message: str) -> str:
    for flag, name, *_ in (*_OVERRIDES, *((f"--{f}", n) for f, n, _ in _SWITCHES)):
        message = message.replace(f"PruneVidConfig.{name}=", f"{flag} (PruneVidConfig.{name})=")
    return message


def _visualize(out: str, runs: dict[str, Any], inputs: dict[str, Any], qa: Any, preset: str, videos: list[str]):
    from .visualize import frames_from_inputs, render_budget_chart, render_fates

    out_path = Path(out)
    if out_path.parent and not out_path.parent.exists():
        raise UsageError(f"--visualize: the folder {out_path.parent} does not exist")
    result = runs["prunevid"]
    processor = qa.processor.video_processor
    written = []
    grids = inputs["video_grid_thw"].tolist() if "video_grid_thw" in inputs else []
    seconds = inputs.get("second_per_grid_ts")
    for k in range(len(grids)):
        path = out_path if k == 0 else out_path.with_name(f"{out_path.stem}_{k + 1}{out_path.suffix}")
        frames = frames_from_inputs(inputs, k, processor.image_mean, processor.image_std)
        fates = result.video_fates[k] if k < len(result.video_fates) else None
        name = Path(videos[k]).name if k < len(videos) else f"video {k + 1}"
        title = f"PruneVid '{preset}' on {name}" + ("  (random-weight demo model)" if qa.offline_demo else "")
        render_fates(frames, fates, result.stats, path, title=title,
                     seconds_per_patch=float(seconds[k]) if seconds is not None else None)  # fmt: skip
        written.append(str(path))
    if not grids:
        print(f"{PROG}: note: no video in the input, so --visualize has nothing to draw", file=sys.stderr)
    if "stock" in runs:
        budget = out_path.with_name(f"{out_path.stem}_budget{out_path.suffix}")
        render_budget_chart(runs["stock"].stats, result.stats, budget, labels=("stock", f"PruneVid ({preset})"))
        written.append(str(budget))
    return written


# ------------------------------------------------------------------------------------------------ reporting
def _json_result(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str]) -> dict[str, Any]:
    """Schema `qwen-prunevid.result/v1`: meta fields, then the PruneVid run's fields at the top level (answer,
    new_tokens, token_ids, prompt_tokens, stats, prunevid, timings, memory); with --compare also `stock` (the same
    run fields) and `answers_agree`; `pictures` lists the PNGs written."""
    result = {"schema": JSON_SCHEMA, **meta, **runs["prunevid"].to_dict()}
    if "stock" in runs:
        result["stock"] = runs["stock"].to_dict()
        result["answers_agree"] = runs["stock"].answer.strip() == runs["prunevid"].answer.strip()
    result["pictures"] = pictures
    return result


def _print_report(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str], out: TextIO) -> None:
    p = runs["prunevid"]
    print(f"Model:    {meta['model']} on {meta['device']} ({meta['dtype']}), loaded in {meta['load_s']:.1f} s", file=out)
    media = meta["videos"] + meta["images"]
    grids = "; ".join(f"{t} x {h // 2} x {w // 2} tokens" for t, h, w in meta["grids"])
    print(f"Media:    {', '.join(media)}" + (f"  ({grids}, t x h x w)" if grids else ""), file=out)
    print(f"Question: {meta['question']}", file=out)
    if meta["offline_demo"]:
        print("Note:     random weights: the answers are meaningless; look at the tokens and the timing.", file=out)
    print(file=out)
    columns = [("stock", runs["stock"])] if "stock" in runs else []
    columns.append((f"PruneVid ({meta['preset']})", p))
    rows = [
        ("visual tokens", lambda r: _count(r.stats["visual_tokens"])),
        ("after Stage 1 (merging)", lambda r: _count(r.stats["after_stage1"])),
        ("after Stage 2 (selection)", lambda r: _count(r.stats["after_stage2"])),
        ("KV cache (prompt tokens)", lambda r: _count(r.stats["kv_cache_tokens"])),
        ("prefill / first token (s)", lambda r: f"{r.prefill_s:.3f}"),
        ("decode (tokens/s)", lambda r: "-" if r.decode_tokens_per_s is None else f"{r.decode_tokens_per_s:.1f}"),
        ("new tokens", lambda r: str(r.new_tokens)),
        (_memory_label(p.peak_memory_kind), lambda r: f"{r.peak_memory_bytes / 2**20:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    col = max(14, *(len(name) + 2 for name, _ in columns))
    print(" " * width + "".join(name.rjust(col) for name, _ in columns), file=out)
    for name, value in rows:
        print(name.ljust(width) + "".join(value(r).rjust(col) for _, r in columns), file=out)
    print(file=out)
    for name, r in columns:
        print(f"Answer, {name}: {r.answer!r}", file=out)
    if "stock" in runs:
        agree = runs["stock"].answer.strip() == p.answer.strip()
        print(f"Answers agree: {'yes' if agree else 'no'}", file=out)
    for path in pictures:
        print(f"Wrote {path}", file=out)


def _count(value: Any) -> str:
    return f"{int(sum(value)) if isinstance(value, list) else int(value):,}"


def _memory_label(kind: str) -> str:
    return "peak GPU memory (MiB)" if kind.startswith("cuda") else "peak process RSS (MiB)"


def _media_summary(videos: list[str], images: list[str]) -> str:
    parts = [f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in ((len(videos), "video"), (len(images), "image")) if n]
    return " and ".join(parts) or "the question"


def _with_progress(description: str, work):
    """Run `work()` under a one-step tqdm bar on stderr (elapsed time shown; hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    with tqdm(total=1, desc=description, file=sys.stderr, leave=False, disable=None,
              bar_format="{desc}: {elapsed}") as bar:  # fmt: skip
        result = work()
        bar.update(1)
    return result


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("qwen_vl_utils").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _fail(message: str, verbose: bool, hint: bool = False) -> None:
    if verbose:
        traceback.print_exc()
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint and not verbose:
        print(f"{PROG}: run again with --verbose for the traceback", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
