"""`qwen-prunevid` / `python -m modeling`: ask Qwen2.5-VL (with PruneVid) about videos and images.

Without `--model` it runs offline: a small demo model and the bundled clip `modeling/assets/demo_clip.mp4`, comparing
the stock model with the paper preset (`make demo`). See docs/cli.md for the reference.

A run goes in three steps, so that bad input is reported before anything slow happens:

1. every argument, that the local media files exist, the `--visualize` output path, the `--model` checkpoint's files
   (config, weights, processor files; a Hub id is looked up once, without retries) and the `--device` are checked:
   nothing is loaded, and neither torch (except to check a `--device`) nor transformers is imported;
2. every video and image is read and resized completely (decord, PIL), as the model will see it;
3. only then the model is loaded and run.

Exit codes: 0 success; 2 bad input, reported as one line on stderr (`qwen-prunevid: error: ...`) with nothing written;
1 an unexpected error (also one line; `--verbose` adds the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .prunevid.config import CHOICES, PRESETS, PruneVidConfig


__all__ = ["DEFAULT_QUESTION", "DEMO_CLIP", "JSON_SCHEMA", "PICTURE_FORMATS", "build_parser", "main"]

PROG = "qwen-prunevid"
DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo_clip.mp4"
#: The bundled clip's question and correct answer (a held-out moving-shapes item, `modeling.eval.benchmark`).
DEMO_QUESTION_FILE = DEMO_CLIP.with_suffix(".json")
#: The bundled clip is read as the demo model was trained: 2 fps (every frame), 224x224 (8x8 tokens per patch).
DEMO_FPS = 2.0
DEMO_PIXELS = 224 * 224
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
JSON_SCHEMA = "qwen-prunevid.result/v1"
#: File types `--visualize` writes (Matplotlib's writers); the extension picks the format.
PICTURE_FORMATS = (".png", ".svg", ".pdf")
#: Largest `--max-new-tokens`.
MAX_NEW_TOKENS = 32768
#: Largest value of any integer flag (seeds: 2**63 - 1).
MAX_INT = 2**31 - 1
_DEMO_NOTE = (
    "Offline demo: a small Qwen2.5-VL trained here on moving-shapes questions (no download); it answers questions "
    "about clips like the bundled one. Pass --model Qwen/Qwen2.5-VL-7B-Instruct (or a local checkpoint) for a real "
    "model."
)


def demo_question() -> dict[str, Any]:
    """The bundled clip's question, options and correct answer (`{"question", "answer", "answer_text", ...}`)."""
    return json.loads(DEMO_QUESTION_FILE.read_text())


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def _number(low: float, *, low_open: bool = False, integer: bool = False, high: float = math.inf):
    """An argparse `type`: a finite number (or an integer) in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        finite = value is not None and (integer or math.isfinite(value))
        ok = finite and (value > low if low_open else value >= low) and value <= high
        if not ok:
            kind, (lo, hi) = ("an integer", (int(low), int(high) if high != math.inf else high)) if integer else (
                "a finite number", (low, high))  # fmt: skip
            bound = f"> {lo}" if low_open else f">= {lo}" if hi == math.inf else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be {kind} {bound}, got {_shown(text)}")
        return value

    return parse


def _bounded_int(text: str) -> int:
    """An argparse `type` for the integer config overrides: any integer that fits 32 bits (the config checks the
    lower bound and names the field)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {_shown(text)}") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be an integer of at most {MAX_INT}, got {_shown(text)}")
    return value


def _finite(text: str) -> float:
    """An argparse `type` for the float config overrides: finite (the config checks the range)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_shown(text)}")
    return value


def _shown(text: str, limit: int = 40) -> str:
    """A value as quoted in an error line, shortened when long."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# (flag, PruneVidConfig field, argparse type / choices, help)
_OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--tau", "tau", _finite, "Stage 1 static threshold (cosine similarity), in [-1, 1]"),
    ("--temporal-segment-ratio", "temporal_segment_ratio", _finite, "temporal segments per temporal patch, in (0, 1]"),
    ("--cluster-ratio", "cluster_ratio", _finite, "share of tokens kept by Stage 1 spatial clustering, in (0, 1]"),
    ("--dpc-knn-k", "dpc_knn_k", _bounded_int, "neighbours of the DPC-KNN density, >= 1"),
    ("--min-tokens-to-cluster", "min_tokens_to_cluster", _bounded_int, "cluster only blocks of more tokens than this"),
    ("--keep-ratio", "keep_ratio", _finite, "Stage 2: share of candidate visual tokens kept, in (0, 1]"),
    ("--pruning-layer", "pruning_layer", _bounded_int, "Stage 2: 0-indexed LLM layer after which tokens are dropped"),
    ("--selection-query", "selection_query", CHOICES["selection_query"], "Stage 2 query tokens"),
    ("--attention-aggregation", "attention_aggregation", CHOICES["attention_aggregation"], "over heads, queries"),
    ("--selection-scope", "selection_scope", CHOICES["selection_scope"], "keep-ratio per group or global"),
    ("--vision-attention", "vision_attention", CHOICES["vision_attention"], "vision tower attention kernel"),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("stage1", "enable_stage1", "Stage 1: spatial-temporal token merging before the LLM"),
    ("stage2", "enable_stage2", "Stage 2: attention-based token selection inside the LLM"),
    ("stage3", "enable_stage3", "Stage 3: KV cache compressed to the selected tokens (needs Stage 2)"),
    ("include-images", "include_images", "Stage 2 also selects among image tokens"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as a `UsageError`) instead of the usage text and an exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Ask Qwen2.5-VL with PruneVid visual-token pruning about videos and images. Without --model, "
        "runs an offline demo (small model, bundled clip) that compares the stock model with PruneVid.",
    )
    io = parser.add_argument_group("input")
    io.add_argument("--video", action="append", default=[], metavar="PATH|URL", help="video (repeatable)")
    io.add_argument("--image", action="append", default=[], metavar="PATH|URL", help="image (repeatable)")
    io.add_argument("--question", default=None, help=f"question, not empty (default: {DEFAULT_QUESTION!r})")
    io.add_argument("--fps", type=_number(0, low_open=True), default=None,
                    help="frames per second sampled from each video, > 0 (qwen-vl-utils default 2; the bundled demo clip is read at 2)")
    io.add_argument("--max-frames", type=_number(2, integer=True, high=MAX_INT), default=None,
                    help="most frames sampled per video, >= 2 (frames come in pairs, one temporal patch)")
    io.add_argument("--max-pixels", type=_number(28 * 28, integer=True, high=MAX_INT), default=None,
                    help="most pixels per frame / image, >= 784 = one 28x28 token (e.g. 50176 = 224x224)")
    io.add_argument("--min-pixels", type=_number(1, integer=True, high=MAX_INT), default=None,
                    help="fewest pixels per frame / image, <= --max-pixels")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="Qwen2.5-VL checkpoint directory or Hub id (default: the offline demo model)")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    model.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="weights dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    model.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3"),
                       help="attention implementation (default: sdpa)")
    model.add_argument("--max-new-tokens", type=_number(1, integer=True, high=MAX_NEW_TOKENS), default=None,
                       help=f"most tokens to generate, 1..{MAX_NEW_TOKENS} (default: 64, the offline demo 16)")
    model.add_argument("--seed", type=_number(0, integer=True, high=2**63 - 1), default=0,
                       help="torch seed set before each run: matters only where the generation config samples (default: 0)")
    model.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                       help="an untimed one-token run first, so that the timed runs do not pay one-off start-up costs (default: on)")

    prune = parser.add_argument_group("PruneVid (a preset, then overrides of its fields)")
    prune.add_argument("--preset", default=None, choices=PRESETS,
                       help="PruneVid preset; off = the stock model (default: the settings saved with the --model "
                       "checkpoint, else paper)")
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
                     help="draw every video token's fate (one picture per video: OUT.png, OUT_2.png, ...; .png, .svg "
                     "or .pdf); with --compare also OUT_budget.png, the tokens per stage")
    out.add_argument("--verbose", action="store_true", help="tracebacks on errors, libraries' warnings")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 unexpected error, 2 bad input, 130 interrupted)."""
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except UsageError as error:
        _fail(str(error), verbose)
        return 2
    with warnings.catch_warnings(), _quiet_libraries(enabled=not args.verbose):
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
@dataclass
class _Plan:
    """Everything a run needs, checked before anything is loaded."""

    question: str
    videos: list[str]
    images: list[str]
    fps: float | None
    demo: bool
    config: PruneVidConfig
    preset: str  # the preset's name, or "saved" (the checkpoint's settings)
    compare: bool
    max_new_tokens: int
    device: str | None
    picture: Path | None
    checkpoint: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    expected: dict[str, Any] | None = None  # the bundled clip's correct answer, when its question is asked


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = _plan(args)  # 1. arguments, output path, checkpoint files, device: nothing loaded
    from .inputs import MediaError, read_media
    from .pipeline import VideoQA

    messages_args = (plan.question, plan.videos, plan.images, plan.fps, args.max_frames, args.max_pixels,
                     args.min_pixels)  # fmt: skip
    try:  # 2. every video and image read and resized, as the model will see it
        media = _with_progress(f"Reading {_media_summary(plan.videos, plan.images)}",
                               lambda: read_media(VideoQA.messages(*messages_args)))  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(_one_line(error)) from error

    import torch

    from .pipeline import CheckpointError

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    try:  # 3. the model
        if plan.demo:
            qa = _with_progress("Building the offline demo model", lambda: VideoQA.offline_demo(
                seed=args.seed, device=plan.device, dtype=args.dtype, attn_implementation=args.attn))  # fmt: skip
        else:
            qa = _with_progress(f"Loading {args.model}", lambda: VideoQA.from_pretrained(
                args.model, prunevid=plan.config, dtype=args.dtype, device=plan.device,
                attn_implementation=args.attn))  # fmt: skip
    except CheckpointError as error:
        raise UsageError(_one_line(error)) from error
    load_s = time.perf_counter() - started
    _set_prunevid(qa, plan.config)
    try:
        inputs = _with_progress("Processing the inputs", lambda: qa.prepare(*messages_args, media=media))
    except (MediaError, ValueError) as error:
        raise UsageError(_one_line(error)) from error

    if args.warmup:
        _with_progress("Warming up", lambda: qa.run(inputs=inputs, max_new_tokens=1))
    runs: dict[str, Any] = {}
    if plan.compare:
        qa.model.prunevid = PruneVidConfig.disabled()
        torch.manual_seed(args.seed)
        runs["stock"] = _with_progress("Generating (stock)",
                                       lambda: qa.run(inputs=inputs, max_new_tokens=plan.max_new_tokens))  # fmt: skip
        _set_prunevid(qa, plan.config)
    torch.manual_seed(args.seed)
    runs["prunevid"] = _with_progress(f"Generating (PruneVid {plan.preset})",
                                      lambda: qa.run(inputs=inputs, max_new_tokens=plan.max_new_tokens))  # fmt: skip

    pictures = _visualize(plan, runs, inputs, qa) if plan.picture else []
    meta = {
        "model": args.model or "offline-demo",
        "offline_demo": plan.demo,
        "question": plan.question,
        "videos": plan.videos,
        "images": plan.images,
        "preset": plan.preset,
        "device": str(qa.model.device),
        "dtype": str(qa.model.dtype).removeprefix("torch."),
        "load_s": round(load_s, 3),
        "grids": [list(g) for g in inputs["video_grid_thw"].tolist()] if "video_grid_thw" in inputs else [],
        "correct_answer": plan.expected["answer"] if plan.expected else None,
        "correct_answer_text": plan.expected["answer_text"] if plan.expected else None,
    }
    if plan.demo and qa.offline_demo:
        plan.notes.insert(0, _DEMO_NOTE)
    for note in plan.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(_json_result(meta, runs, pictures), indent=2))
    else:
        _print_report(meta, runs, pictures, sys.stdout)
    return 0


def _plan(args: argparse.Namespace) -> _Plan:
    """Step 1: check every argument, the output path, the checkpoint's files and the device; load nothing."""
    if args.question is not None and not args.question.strip():
        raise UsageError("--question must not be empty (leave it out for the default question)")
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        raise UsageError(f"--min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")
    demo = args.model is None
    videos, images, fps = list(args.video), list(args.image), args.fps
    expected = None
    if not videos and not images:
        videos = [str(DEMO_CLIP)]
        fps = DEMO_FPS if fps is None else fps
        if args.min_pixels is None and args.max_pixels is None:
            args.min_pixels = args.max_pixels = DEMO_PIXELS
        if args.question is None:
            expected = demo_question()
            args.question = expected["question"]
    from .inputs import check_files
    from .pipeline import VideoQA, check_checkpoint  # neither imports torch nor transformers

    try:  # every local media file exists (step 2 reads them)
        check_files(VideoQA.messages(args.question or DEFAULT_QUESTION, videos, images, fps, args.max_frames,
                                     args.max_pixels, args.min_pixels))  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(_one_line(error)) from error
    picture = _check_picture_path(args.visualize) if args.visualize is not None else None
    checkpoint = None
    if not demo:

        if Path(args.model).expanduser().exists():  # transformers does not expand "~"
            args.model = str(Path(args.model).expanduser())
        try:
            checkpoint = check_checkpoint(args.model)
        except ValueError as error:
            raise UsageError(_one_line(error)) from error
    notes: list[str] = []
    config, preset = _prunevid_config(args, checkpoint, notes)
    if (checkpoint is not None or demo) and config.is_active:
        from .demo import DEMO_ARCHITECTURE
        from .pipeline import checkpoint_depth

        depth = checkpoint_depth(checkpoint) if checkpoint is not None else DEMO_ARCHITECTURE["num_hidden_layers"]
        if depth is not None:
            try:
                config.resolve_pruning_layer(depth)
            except ValueError as error:
                raise UsageError(_name_flags(_one_line(error))) from error
    return _Plan(
        question=args.question or DEFAULT_QUESTION,
        videos=videos,
        images=images,
        fps=fps,
        demo=demo,
        config=config,
        preset=preset,
        compare=demo if args.compare is None else args.compare,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else (16 if demo else 64),
        device=_check_device(args.device, args.attn),
        picture=picture,
        checkpoint=checkpoint,
        notes=notes,
        expected=expected,
    )


def _prunevid_config(
    args: argparse.Namespace, checkpoint: dict[str, Any] | None, notes: list[str]
) -> tuple[PruneVidConfig, str]:
    """The preset (or the checkpoint's saved settings) with the override flags applied, and its name; a bad value is
    a usage error naming the flag. Warnings of the config (e.g. unknown saved keys) become notes."""
    overrides = {name: getattr(args, name) for _, name, _, _ in _OVERRIDES if getattr(args, name) is not None}
    switches = {name: getattr(args, name) for _, name, _ in _SWITCHES if getattr(args, name) is not None}
    if switches.get("enable_stage2") is False:
        if switches.get("enable_stage3"):
            raise UsageError("--stage3 needs Stage 2: it compresses the KV cache to Stage 2's selection (drop --stage3 "
                             "or --no-stage2)")  # fmt: skip
        switches["enable_stage3"] = False  # --no-stage2 turns Stage 3 off with it
    saved = checkpoint.get("prunevid") if checkpoint is not None and args.preset is None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(saved, dict):
                base, name = PruneVidConfig.from_dict(saved), "saved"
                config = base.replace(**overrides, **switches) if overrides or switches else base
            else:
                name = args.preset or "paper"
                config = PruneVidConfig.preset(name, **overrides, **switches)
        except (TypeError, ValueError) as error:
            where = f"the PruneVid settings saved in {args.model}/config.json: " if isinstance(saved, dict) else ""
            raise UsageError(where + _name_flags(_one_line(error))) from error
    notes.extend(_one_line(w.message) for w in caught)
    return config, name


def _check_device(device: str | None, attn: str) -> str | None:
    """The device to run on (None: CUDA when available, decided when the model is built); a malformed or unavailable
    one is a usage error. Imports torch only when there is something to check, never transformers."""
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UsageError(f"--device {device!r} is not a device: allowed cpu, cuda, cuda:N, mps")
    if device is None and not attn.startswith("flash_attention"):
        return None
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA GPU(s) found" if count else "no CUDA GPU is available"
            raise UsageError(f"--device {device}: {found} (use --device cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine (use --device cpu)")
    if attn.startswith("flash_attention") and not device.startswith("cuda"):
        raise UsageError(f"--attn {attn} needs a CUDA GPU, and the device is {device} (use --attn sdpa)")
    if attn == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UsageError("--attn flash_attention_2 needs the flash-attn package, which is not installed")
    return device


def _check_picture_path(value: str) -> Path:
    """The `--visualize` path, checked to be writable (by creating and removing it when it does not exist)."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"--visualize {value} is a directory; give a file name such as {path / 'fates.png'}")
    if path.suffix.lower() not in PICTURE_FORMATS:
        raise UsageError(f"--visualize {value}: the file name must end in {', '.join(PICTURE_FORMATS)}")
    if not path.parent.is_dir():
        raise UsageError(f"--visualize {value}: the folder {path.parent} does not exist")
    try:
        if path.exists():
            if not path.is_file() or not os.access(path, os.W_OK):
                raise PermissionError(13, "not a writable file")
        else:
            path.open("xb").close()
            path.unlink()
    except OSError as error:
        raise UsageError(f"--visualize {value}: cannot write there ({error.strerror or error})") from error
    return path


def _set_prunevid(qa: Any, config: PruneVidConfig) -> None:
    try:
        qa.model.prunevid = config  # checks the pruning layer against the model's depth
    except ValueError as error:
        raise UsageError(_name_flags(_one_line(error))) from error


def _name_flags(message: str) -> str:
    for flag, name, *_ in (*_OVERRIDES, *((f"--{f}", n) for f, n, _ in _SWITCHES)):
        message = message.replace(f"PruneVidConfig.{name}=", f"{flag} (PruneVidConfig.{name})=")
    return message


def _one_line(error: BaseException | Warning | str) -> str:
    return " ".join(str(error).split())


def _visualize(plan: _Plan, runs: dict[str, Any], inputs: dict[str, Any], qa: Any) -> list[str]:
    """Draw the pictures: one per video, and with --compare the token budget. Each is written through a temporary
    file and renamed, so a failure leaves no picture behind."""
    from functools import partial

    from .visualize import frames_from_inputs, render_budget_chart, render_fates, video_grid

    out = plan.picture
    result = runs["prunevid"]
    processor = qa.processor.video_processor
    grids = inputs["video_grid_thw"].tolist() if "video_grid_thw" in inputs else []
    seconds = inputs.get("second_per_grid_ts")
    jobs = []
    for k, grid in enumerate(grids):
        name = Path(plan.videos[k]).name if k < len(plan.videos) else f"video {k + 1}"
        draw = partial(
            render_fates,
            frames_from_inputs(inputs, k, processor.image_mean, processor.image_std),
            result.video_fates[k] if k < len(result.video_fates) else None,  # None: PruneVid off, all kept
            result.stats,
            title=f"PruneVid '{plan.preset}' on {name}" + ("  (demo model)" if qa.offline_demo else ""),
            grid=video_grid(grid),
            seconds_per_patch=float(seconds[k]) if seconds is not None else None,
        )
        jobs.append((out if k == 0 else out.with_name(f"{out.stem}_{k + 1}{out.suffix}"), draw))
    if not grids:
        plan.notes.append("no video in the input, so --visualize has nothing to draw")
    if "stock" in runs:
        labels = ("stock", f"PruneVid ({plan.preset})")
        draw = partial(render_budget_chart, runs["stock"].stats, result.stats, labels=labels)
        jobs.append((out.with_name(f"{out.stem}_budget{out.suffix}"), draw))
    written: list[Path] = []
    try:
        for path, draw in jobs:
            temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
            try:
                draw(temporary)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return [str(path) for path in written]


# ------------------------------------------------------------------------------------------------ reporting
def _json_result(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str]) -> dict[str, Any]:
    """Schema `qwen-prunevid.result/v1`: meta fields, then the PruneVid run's fields at the top level (answer,
    new_tokens, token_ids, prompt_tokens, stats, prunevid, timings, memory); with --compare also `stock` (the same
    run fields) and `answers_agree`; `pictures` lists the pictures written."""
    result = {"schema": JSON_SCHEMA, **meta, **runs["prunevid"].to_dict()}
    if "stock" in runs:
        result["stock"] = runs["stock"].to_dict()
        result["answers_agree"] = runs["stock"].answer.strip() == runs["prunevid"].answer.strip()
    result["pictures"] = pictures
    return result


def _print_report(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str], out: TextIO) -> None:
    p = runs["prunevid"]
    print(f"Model:    {meta['model']} on {meta['device']} ({meta['dtype']}), loaded in {meta['load_s']:.1f} s", file=out)
    saved = "  (the settings saved with the checkpoint)" if meta["preset"] == "saved" else ""
    print(f"PruneVid: {meta['preset']}{saved}", file=out)
    media = meta["videos"] + meta["images"]
    grids = "; ".join(f"{t} x {h // 2} x {w // 2} tokens" for t, h, w in meta["grids"])
    print(f"Media:    {', '.join(media)}" + (f"  ({grids}, t x h x w)" if grids else ""), file=out)
    print(f"Question: {meta['question']}", file=out)
    if meta.get("correct_answer"):
        print(f"Correct:  {meta['correct_answer']} ({meta['correct_answer_text']})", file=out)
    print(file=out)
    columns = [("stock", runs["stock"])] if "stock" in runs else []
    columns.append((f"PruneVid ({meta['preset']})", p))
    rows = [
        ("visual tokens", lambda r: _count(r.stats["visual_tokens"])),
        ("after Stage 1 (merging)", lambda r: _count(r.stats["after_stage1"])),
        ("after Stage 2 (selection)", lambda r: _count(r.stats["after_stage2"])),
        ("KV cache (prompt tokens)", lambda r: _count(r.stats["kv_cache_tokens"])),
        ("prefill / first token (s)", lambda r: "-" if r.prefill_s is None else f"{r.prefill_s:.3f}"),
        ("decode (tokens/s)", lambda r: "-" if r.decode_tokens_per_s is None else f"{r.decode_tokens_per_s:.1f}"),
        ("new tokens", lambda r: str(r.new_tokens)),
        (_memory_label(p.peak_memory_kind), lambda r: f"{r.peak_memory_bytes / 2**20:,.0f}"),
    ]
    if any(r.stats.get("image_tokens") for _, r in columns):  # images are never merged; Stage 2 may select them
        rows[1:1] = [
            ("image tokens", lambda r: _count(r.stats["image_tokens"])),
            ("image tokens after Stage 2", lambda r: _count(r.stats["image_tokens_after_stage2"])),
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
    if meta.get("correct_answer"):
        right = [name for name, r in columns if r.answer.strip()[:1].upper() == meta["correct_answer"]]
        print(f"Answered correctly ({meta['correct_answer']}): {', '.join(right) if right else 'neither'}", file=out)
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


@contextlib.contextmanager
def _quiet_libraries(enabled: bool) -> Iterator[None]:
    """Keep the output to what the user asked for: no library warnings or info logs (`--verbose` keeps them). Call
    inside `warnings.catch_warnings()`; the loggers' levels are restored afterwards."""
    if not enabled:
        yield
        return
    import logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    loggers = [logging.getLogger(name) for name in ("qwen_vl_utils", "huggingface_hub", "transformers", "httpx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _fail(message: str, verbose: bool, hint: bool = False) -> None:
    """One line on stderr (with --verbose, the traceback before it)."""
    if verbose:
        traceback.print_exc()
    line = _one_line(message)
    if hint and not verbose:
        line += " (run again with --verbose for the traceback)"
    print(f"{PROG}: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
