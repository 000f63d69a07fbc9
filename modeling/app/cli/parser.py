"""The `qwen-prunevid` argument parser: flags, their help, and the one-line usage errors.

Flags that set a field of `MediaOptions` (`--fps`, `--max-frames`, `--min-pixels`, `--max-pixels`) or of
`PruneVidConfig` (`--tau`, `--keep-ratio`, ...) are only parsed here (a number that fits); the objects validate
their ranges once, and `name_flags` puts the flag's name into their messages. Importing this module imports neither
torch nor transformers.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ...prunevid.config import CHOICES, PRESETS


__all__ = ["DEFAULT_QUESTION", "MAX_NEW_TOKENS", "MEDIA_FLAGS", "PROG", "UsageError", "build_parser", "name_flags",
           "one_line"]  # fmt: skip

PROG = "qwen-prunevid"
DEFAULT_QUESTION = "What happens in this video? Describe the moving objects."
#: Largest `--max-new-tokens`.
MAX_NEW_TOKENS = 32768
#: Largest value of any integer flag (seeds: 2**63 - 1).
MAX_INT = 2**31 - 1


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
    ("--dynamic-cluster-ratio", "dynamic_cluster_ratio", _finite,
     "the same for each frame's dynamic tokens only (default: --cluster-ratio; 1 keeps every moving token)"),
    ("--dpc-knn-k", "dpc_knn_k", _bounded_int, "neighbours of the DPC-KNN density, >= 1"),
    ("--min-tokens-to-cluster", "min_tokens_to_cluster", _bounded_int, "cluster only blocks of more tokens than this"),
    ("--keep-ratio", "keep_ratio", _finite, "Stage 2: share of candidate visual tokens kept, in (0, 1]"),
    ("--pruning-layer", "pruning_layer", _bounded_int, "Stage 2: 0-indexed LLM layer after which tokens are dropped"),
    ("--selection-query", "selection_query", CHOICES["selection_query"], "Stage 2 query tokens"),
    ("--attention-aggregation", "attention_aggregation", CHOICES["attention_aggregation"], "over heads, queries"),
    ("--selection-scope", "selection_scope", CHOICES["selection_scope"], "keep-ratio per group or global"),
    ("--vision-attention", "vision_attention", CHOICES["vision_attention"], "vision tower attention kernel"),
    ("--rope-index", "rope_index", CHOICES["rope_index"],
     "the prompt's 3-D positions: upstream's, or the same found without its per-token Python"),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("stage1", "enable_stage1", "Stage 1: spatial-temporal token merging before the LLM"),
    ("stage2", "enable_stage2", "Stage 2: attention-based token selection inside the LLM"),
    ("stage3", "enable_stage3", "Stage 3: KV cache compressed to the selected tokens (needs Stage 2)"),
    ("include-images", "include_images", "Stage 2 also selects among image tokens"),
    ("cuda-graphs", "cuda_graphs", "replay Stage 1 and the Stage-2 scoring as CUDA graphs (CUDA only)"),
    ("layer-graphs", "layer_graphs", "replay the pruned prefill's decoder layers as CUDA graphs (CUDA only)"),
)


# (flag, MediaOptions field, argparse type, help)
MEDIA_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--fps", "fps", _finite, "frames per second sampled from each video, > 0 (qwen-vl-utils default 2; the bundled "
     "demo clip is read at 2)"),
    ("--max-frames", "max_frames", _bounded_int, "most frames sampled per video, >= 2 (frames come in pairs, one "
     "temporal patch)"),
    ("--max-pixels", "max_pixels", _bounded_int, "most pixels per frame / image, >= 784 = one 28x28 token (e.g. "
     "50176 = 224x224)"),
    ("--min-pixels", "min_pixels", _bounded_int, "fewest pixels per frame / image, <= --max-pixels"),
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
    for flag, name, kind, text in MEDIA_FLAGS:
        io.add_argument(flag, dest=name, type=kind, default=None, help=text)

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


def name_flags(message: str) -> str:
    """A config's or the media options' error message, with each field named by its flag as well."""
    names = [(flag, f"PruneVidConfig.{name}") for flag, name, *_ in _OVERRIDES]
    names += [(f"--{flag}", f"PruneVidConfig.{name}") for flag, name, _ in _SWITCHES]
    names += [(flag, f"MediaOptions.{name}") for flag, name, *_ in MEDIA_FLAGS]
    for flag, field in names:
        message = message.replace(f"{field}=", f"{flag} ({field})=")
    return message


def one_line(error: BaseException | Warning | str) -> str:
    return " ".join(str(error).split())
