"""`qwen-prunevid` / `python -m modeling`: ask Qwen2.5-VL (with PruneVid) about videos and images.

Without `--model` it runs offline: a small demo model and the bundled clip `modeling/demo/assets/demo_clip.mp4`, comparing
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
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...demo import DEMO_ARCHITECTURE, DEMO_CLIP, DEMO_FPS, DEMO_PIXELS, demo_question
from ...prunevid.config import PruneVidConfig
from ..options import MediaOptions
from .parser import (
    _OVERRIDES, _SWITCHES, DEFAULT_QUESTION, MEDIA_FLAGS, PROG, UsageError, build_parser, name_flags, one_line,
)  # fmt: skip
from .report import PICTURE_FORMATS, json_result, print_report, write_pictures


__all__ = ["main"]

_DEMO_NOTE = (
    "Offline demo: a small Qwen2.5-VL trained here on moving-shapes questions (no download); it answers questions "
    "about clips like the bundled one. Pass --model Qwen/Qwen2.5-VL-7B-Instruct (or a local checkpoint) for a real "
    "model."
)


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
@dataclass(frozen=True)
class _Plan:
    """Everything a run needs, checked before anything is loaded (the parsed arguments are left as they were)."""

    question: str
    videos: list[str]
    images: list[str]
    options: MediaOptions
    demo: bool
    config: PruneVidConfig
    preset: str  # the preset's name, or "saved" (the checkpoint's settings)
    compare: bool
    max_new_tokens: int
    device: str | None
    picture: Path | None
    model: str | None  # the checkpoint folder (user's "~" expanded) or Hub id; None for the demo model
    notes: list[str] = field(default_factory=list)
    expected: dict[str, Any] | None = None  # the bundled clip's correct answer, when its question is asked


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = _plan(args)  # 1. arguments, output path, checkpoint files, device: nothing loaded
    from ..inputs import MediaError, build_messages, read_media

    messages = build_messages(plan.question, plan.videos, plan.images, plan.options)
    try:  # 2. every video and image read and resized, as the model will see it
        media = _with_progress(f"Reading {_media_summary(plan.videos, plan.images)}", lambda: read_media(messages))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(one_line(error)) from error

    import torch

    from ..checkpoints import CheckpointError
    from ..videoqa import VideoQA

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    load = dict(dtype=args.dtype, device=plan.device, attn_implementation=args.attn)
    try:  # 3. the model
        if plan.demo:
            from transformers.utils import logging as hf_logging

            from ...demo import checkpoint_path, quiet_progress

            def build_demo() -> VideoQA:
                with quiet_progress(hf_logging):  # a tiny model needs no loading bars
                    return VideoQA.from_pretrained(checkpoint_path(), prunevid=plan.config, **load)

            qa = _with_progress("Building the offline demo model", build_demo)
        else:
            qa = _with_progress(f"Loading {plan.model}",
                                lambda: VideoQA.from_pretrained(plan.model, prunevid=plan.config, **load))  # fmt: skip
    except CheckpointError as error:
        raise UsageError(one_line(error)) from error
    load_s = time.perf_counter() - started
    _set_prunevid(qa, plan.config)
    try:
        inputs = _with_progress("Processing the inputs", lambda: qa.prepare(
            plan.question, plan.videos, plan.images, options=plan.options, media=media))  # fmt: skip
    except (MediaError, ValueError) as error:
        raise UsageError(one_line(error)) from error

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

    pictures: list[str] = []
    if plan.picture is not None:
        pictures, notes = write_pictures(plan.picture, runs, inputs, qa.processor, plan.videos, plan.preset,
                                         demo=plan.demo)  # fmt: skip
        plan.notes.extend(notes)
    meta = {
        "model": plan.model or "offline-demo",
        "offline_demo": plan.demo,
        "question": plan.question,
        "videos": plan.videos,
        "images": plan.images,
        "media_options": plan.options.to_dict(),
        "preset": plan.preset,
        "device": str(qa.model.device),
        "dtype": str(qa.model.dtype).removeprefix("torch."),
        "load_s": round(load_s, 3),
        "grids": [list(g) for g in inputs["video_grid_thw"].tolist()] if "video_grid_thw" in inputs else [],
        "correct_answer": plan.expected["answer"] if plan.expected else None,
        "correct_answer_text": plan.expected["answer_text"] if plan.expected else None,
    }
    if plan.demo:
        plan.notes.insert(0, _DEMO_NOTE)
    for note in plan.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(json_result(meta, runs, pictures), indent=2))
    else:
        print_report(meta, runs, pictures, sys.stdout)
    return 0


def _plan(args: argparse.Namespace) -> _Plan:
    """Step 1: check every argument, the output path, the checkpoint's files and the device; load nothing."""
    if args.question is not None and not args.question.strip():
        raise UsageError("--question must not be empty (leave it out for the default question)")
    demo = args.model is None
    videos, images, question = list(args.video), list(args.image), args.question
    media = {name: getattr(args, name) for _, name, *_ in MEDIA_FLAGS if getattr(args, name) is not None}
    expected = None
    if not videos and not images:  # the bundled clip, read as the demo model was trained
        videos = [str(DEMO_CLIP)]
        media.setdefault("fps", DEMO_FPS)
        if "min_pixels" not in media and "max_pixels" not in media:
            media["min_pixels"] = media["max_pixels"] = DEMO_PIXELS
        if question is None:
            expected = demo_question()
            question = expected["question"]
    question = question or DEFAULT_QUESTION
    try:
        options = MediaOptions(**media)
    except (TypeError, ValueError) as error:
        raise UsageError(name_flags(one_line(error))) from error
    from ..checkpoints import check_checkpoint, checkpoint_depth  # neither imports torch nor transformers
    from ..inputs import build_messages, check_files

    try:  # every local media file exists (step 2 reads them)
        check_files(build_messages(question, videos, images, options))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(one_line(error)) from error
    picture = _check_picture_path(args.visualize) if args.visualize is not None else None
    checkpoint, model = None, args.model
    if not demo:
        if Path(model).expanduser().exists():  # transformers does not expand "~"
            model = str(Path(model).expanduser())
        try:
            checkpoint = check_checkpoint(model)
        except ValueError as error:
            raise UsageError(one_line(error)) from error
    notes: list[str] = []
    config, preset = _prunevid_config(args, checkpoint, notes)
    if (checkpoint is not None or demo) and config.is_active:
        depth = checkpoint_depth(checkpoint) if checkpoint is not None else DEMO_ARCHITECTURE["num_hidden_layers"]
        if depth is not None:
            try:
                config.resolve_pruning_layer(depth)
            except ValueError as error:
                raise UsageError(name_flags(one_line(error))) from error
    return _Plan(
        question=question,
        videos=videos,
        images=images,
        options=options,
        demo=demo,
        config=config,
        preset=preset,
        compare=demo if args.compare is None else args.compare,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else (16 if demo else 64),
        device=_check_device(args.device, args.attn),
        picture=picture,
        model=model,
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
            raise UsageError(where + name_flags(one_line(error))) from error
    notes.extend(one_line(w.message) for w in caught)
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
        raise UsageError(name_flags(one_line(error))) from error


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


def _media_summary(videos: list[str], images: list[str]) -> str:
    parts = [f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in ((len(videos), "video"), (len(images), "image")) if n]
    return " and ".join(parts) or "the question"


def _fail(message: str, verbose: bool, hint: bool = False) -> None:
    """One line on stderr (with --verbose, the traceback before it)."""
    if verbose:
        traceback.print_exc()
    line = one_line(message)
    if hint and not verbose:
        line += " (run again with --verbose for the traceback)"
    print(f"{PROG}: error: {line}", file=sys.stderr)
