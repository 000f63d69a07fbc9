"""Pictures of what PruneVid did to a video: the fate of every token, and the token budget per stage.

[`render_fates`] draws the frames the model saw, one panel per temporal patch (the first of its two frames), with
every 28x28-pixel token cell tinted by its fate:

* **dynamic, kept** (orange): not static; the token it was merged into (Stage 1's spatial clustering) survived
  Stage 2's selection;
* **static, kept** (blue): merged over its temporal segment by Stage 1 (so the same token in every panel of the
  segment), and that token survived Stage 2;
* **dropped by Stage 2** (darkened: dark brown when dynamic, dark blue when static): the token it ended up in was not selected;
* **carrier** (white dot): the real token whose 3-D (t, h, w) position a kept token carries into the LLM.

Panels are framed in the colour of their temporal segment, and a red bar marks where a new segment starts.
[`render_budget_chart`] draws the tokens per stage of the stock model next to PruneVid's.

Both use Matplotlib's Agg backend and write the format the file name says (`.png`, `.svg`, `.pdf`), of an exact,
predictable size ([`fates_layout`]). Short clips get a picture at least [`MIN_WIDTH`] pixels wide, so the title,
header and legend always fit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    from ..integration.stats import PruneVidStats


__all__ = [
    "MIN_WIDTH",
    "FatesLayout",
    "fates_layout",
    "frames_from_inputs",
    "render_budget_chart",
    "render_fates",
    "video_grid",
]

_DPI = 100
_PANEL_WIDTH = 200  # px per temporal-patch panel
_MAX_COLUMNS = 8
_MARGIN, _GAP, _PANEL_TITLE, _HEADER, _LEGEND = 12, 10, 18, 78, 34  # px
#: Narrowest picture (px): the header's lines and the one-row legend need it, whatever the number of panels.
MIN_WIDTH = 1000
_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

# RGBA tints of the four fates (alpha = weight of the tint over the frame).
_KEPT_DYNAMIC = (1.0, 0.55, 0.0, 0.45)
_KEPT_STATIC = (0.25, 0.6, 1.0, 0.62)
_DROPPED_DYNAMIC = (0.22, 0.07, 0.0, 0.78)
_DROPPED_STATIC = (0.0, 0.06, 0.32, 0.75)
_SEGMENT_COLOURS = ("#2b8a3e", "#862e9c", "#1864ab", "#c92a2a", "#e67700", "#0b7285")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FatesLayout:
    """Pixel layout of a [`render_fates`] picture: `rows` x `cols` panels of `panel_width` x `panel_height`."""

    rows: int
    cols: int
    panel_width: int
    panel_height: int
    width: int
    height: int


def fates_layout(patches: int, frame_height: int, frame_width: int) -> FatesLayout:
    """The layout [`render_fates`] uses for `patches` temporal patches of `frame_height` x `frame_width` frames.

    Up to 8 panels per row, 200 px wide each (height by the frame's aspect ratio), 10 px apart, 12 px margins, an
    18 px title above each panel, a 78 px header and a 34 px legend; at least [`MIN_WIDTH`] px wide (the panels
    then start at the left margin).
    """
    if patches < 1 or frame_height < 1 or frame_width < 1:
        raise ValueError(f"need >= 1 temporal patch and a frame size, got {patches} of {frame_height}x{frame_width}")
    cols = min(patches, _MAX_COLUMNS)
    rows = math.ceil(patches / cols)
    panel_height = round(_PANEL_WIDTH * frame_height / frame_width)
    width = max(MIN_WIDTH, 2 * _MARGIN + cols * _PANEL_WIDTH + (cols - 1) * _GAP)
    height = _HEADER + rows * (_PANEL_TITLE + panel_height) + (rows - 1) * _GAP + _LEGEND + _MARGIN
    return FatesLayout(rows, cols, _PANEL_WIDTH, panel_height, width, height)


def frames_from_inputs(
    inputs: dict[str, Any],
    video: int = 0,
    image_mean: Sequence[float] = _CLIP_MEAN,
    image_std: Sequence[float] = _CLIP_STD,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> np.ndarray:
    """The frames the model saw, recovered from the processor's `pixel_values_videos`.

    Undoes the Qwen2-VL video processor: the rows are patches in (t, h-block, w-block, h-in-block, w-in-block) order
    and each row is (channel, frame-in-patch, y, x); values are normalised with the CLIP mean/std.

    Args:
        inputs: Processor output with `pixel_values_videos` and `video_grid_thw` (batch of one conversation).
        video: Which video of the inputs.
        image_mean, image_std: The processor's normalisation (`processor.video_processor.image_mean` / `image_std`).
        patch_size, merge_size, temporal_patch_size: The processor's patching (14, 2, 2 for Qwen2.5-VL).

    Returns:
        `uint8` array `[grid_t * temporal_patch_size, H, W, 3]` (RGB), H and W as resized by qwen-vl-utils.
    """
    grids = inputs["video_grid_thw"].tolist()
    t, h, w = grids[video]
    start = sum(a * b * c for a, b, c in grids[:video])
    rows = inputs["pixel_values_videos"][start : start + t * h * w].float().cpu().numpy()
    m, p, tp = merge_size, patch_size, temporal_patch_size
    x = rows.reshape(t, h // m, w // m, m, m, 3, tp, p, p)
    x = x.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5).reshape(t * tp, h * p, w * p, 3)
    x = x * np.asarray(image_std, dtype=np.float32) + np.asarray(image_mean, dtype=np.float32)
    return (x * 255).round().clip(0, 255).astype(np.uint8)


def video_grid(grid_thw: Sequence[int], merge_size: int = 2) -> tuple[int, int, int]:
    """The LLM-token grid (temporal patches, rows, columns) of one `video_grid_thw` row (14-px patches)."""
    t, h, w = (int(v) for v in grid_thw)
    return t, h // merge_size, w // merge_size


def render_fates(
    frames: np.ndarray,
    fates: dict[str, Any] | None,
    stats: PruneVidStats | None,
    out_path: str | os.PathLike,
    *,
    title: str = "PruneVid",
    seconds_per_patch: float | None = None,
    grid: tuple[int, int, int] | None = None,
) -> FatesLayout:
    """Draw every token's fate over the frames the model saw, and save the picture.

    Args:
        frames: `[T * 2, H, W, 3]` uint8 frames (two per temporal patch, e.g. [`frames_from_inputs`]) or `[T, H, W, 3]`
            (one per temporal patch); H and W are multiples of 28 (one LLM token = 28x28 pixels).
        fates: One entry of `model.prunevid_video_fates()`: `grid` (t, h, w), `segments`, and `[t, h*w]` bool
            tensors `static`, `kept`, `carrier`. None (PruneVid off) draws every token as kept.
        stats: The video's row of `model.prunevid_stats`, for the header; None leaves the counts out.
        out_path: File to write; its extension picks the format: `.png`, `.svg` or `.pdf`.
        title: First line of the header.
        seconds_per_patch: Seconds per temporal patch (`second_per_grid_ts`), to label the panels with times.
        grid: The video's (t, h, w) LLM-token grid ([`video_grid`]), needed to tell two frames per temporal patch
            from one when `fates` is None; by default one LLM token per 28x28 pixels, and `[T * 2, ...]` frames when
            `fates` is None and T is even.

    Returns:
        The [`FatesLayout`] of the picture (its `width` x `height` is the PNG size).

    Raises:
        ValueError: The extension is not one of the formats, or the frames do not fit the grid.
    """
    import matplotlib.pyplot as plt

    fmt = _format(out_path)
    fig, layout = _fates_figure(frames, fates, stats, title=title, seconds_per_patch=seconds_per_patch, grid=grid)
    try:
        fig.savefig(out_path, dpi=_DPI, format=fmt, facecolor="white")
    finally:
        plt.close(fig)
    return layout


def _format(out_path: str | os.PathLike) -> str:
    suffix = os.path.splitext(os.fspath(out_path))[1].lower()
    if suffix not in _FORMATS:
        raise ValueError(f"cannot tell the picture format of {os.fspath(out_path)!r}: use {', '.join(_FORMATS)}")
    return _FORMATS[suffix]


def _fates_figure(
    frames: np.ndarray,
    fates: dict[str, Any] | None,
    stats: PruneVidStats | None,
    *,
    title: str,
    seconds_per_patch: float | None,
    grid: tuple[int, int, int] | None,
):
    """The figure of [`render_fates`] (the caller closes it) and its layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    frames = np.asarray(frames)
    if fates is not None:
        t, gh, gw = (int(v) for v in fates["grid"])
    elif grid is not None:
        t, gh, gw = (int(v) for v in grid)
    else:
        t, gh, gw = frames.shape[0], frames.shape[1] // 28, frames.shape[2] // 28
    if frames.shape[0] == 2 * t:
        frames = frames[::2]  # the first frame of each temporal patch
    if frames.shape[0] != t:
        raise ValueError(f"expected {t} or {2 * t} frames for a grid of {t} temporal patches, got {frames.shape[0]}")
    if fates is None:
        fates = _all_kept(t, gh * gw)
    static = np.asarray(fates["static"], dtype=bool).reshape(t, gh, gw)
    kept = np.asarray(fates["kept"], dtype=bool).reshape(t, gh, gw)
    carrier = np.asarray(fates["carrier"], dtype=bool).reshape(t, gh, gw)
    segments = [tuple(int(v) for v in s) for s in fates["segments"]]

    layout = fates_layout(t, frames.shape[1], frames.shape[2])
    fig = plt.figure(figsize=(layout.width / _DPI, layout.height / _DPI), dpi=_DPI)
    fig.patch.set_facecolor("white")
    _header(fig, layout, title, stats, (t, gh, gw), segments)

    segment_of = np.zeros(t, dtype=int)
    for k, (s, e) in enumerate(segments):
        segment_of[s:e] = k
    starts = {s for s, _ in segments[1:]}
    for i in range(t):
        row, col = divmod(i, layout.cols)
        left = _MARGIN + col * (layout.panel_width + _GAP)
        top = _HEADER + row * (_PANEL_TITLE + layout.panel_height + _GAP) + _PANEL_TITLE
        ax = fig.add_axes(_box(fig, layout, left, top, layout.panel_width, layout.panel_height))
        ax.imshow(_tinted(frames[i], static[i], kept[i], layout), interpolation="nearest",
                  extent=(0, gw, gh, 0))  # fmt: skip
        ys, xs = np.nonzero(carrier[i])
        ax.scatter(xs + 0.5, ys + 0.5, s=14, c="white", edgecolors="black", linewidths=0.6, zorder=3)
        colour = _SEGMENT_COLOURS[segment_of[i] % len(_SEGMENT_COLOURS)]
        ax.add_patch(Rectangle((0, 0), gw, gh, fill=False, edgecolor=colour, linewidth=2.5, clip_on=False))
        ax.set_xlim(0, gw), ax.set_ylim(gh, 0), ax.set_axis_off()
        label = f"S{segment_of[i] + 1} · patch {i} · frames {2 * i}-{2 * i + 1}"
        if seconds_per_patch is not None:
            label += f" · {i * seconds_per_patch:.1f}s"
        fig.text(_fx(layout, left), _fy(layout, top - 3), label, fontsize=7.5, color=colour, va="bottom")
        if i in starts:  # red bar in the gap before the first panel of a new segment
            bar_left = left - _GAP / 2 - 2 if col > 0 else left - _MARGIN / 2 - 2
            fig.add_artist(Rectangle((_fx(layout, bar_left), _fy(layout, top + layout.panel_height)),
                                     4 / layout.width, layout.panel_height / layout.height,
                                     transform=fig.transFigure, color="#e03131", zorder=5))  # fmt: skip

    handles = [
        Patch(color=_KEPT_DYNAMIC[:3], label="dynamic, kept"),
        Patch(color=_KEPT_STATIC[:3], label="static (merged over its segment), kept"),
        Patch(color=(0.3, 0.12, 0.02), label="dynamic, dropped by Stage 2"),
        Patch(color=(0.05, 0.12, 0.38), label="static, dropped by Stage 2"),
        plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black",
                   label="carrier (its 3-D position)"),
        Patch(color="#e03131", label="new segment"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7.5, frameon=False,
               bbox_to_anchor=(0.5, _MARGIN / 2 / layout.height), handlelength=1.4, columnspacing=1.2)  # fmt: skip
    return fig, layout


def render_budget_chart(
    stock_stats: PruneVidStats,
    prunevid_stats: PruneVidStats,
    out_path: str | os.PathLike,
    *,
    labels: tuple[str, str] = ("stock", "PruneVid"),
) -> None:
    """Bar chart of the tokens per stage, the stock model beside PruneVid; saved as an 800x450 picture.

    Args:
        stock_stats, prunevid_stats: The runs' `PruneVidStats` (one batch row each).
        out_path: File to write (`.png`, `.svg` or `.pdf`).
        labels: Legend names of the two runs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _format(out_path)
    keys = ("visual_tokens", "after_stage1", "after_stage2", "kv_cache_tokens")
    names = ("visual tokens\n(into the LLM)", "after Stage 1\n(merging)", "after Stage 2\n(selection)",
             "KV cache\n(prompt tokens)")  # fmt: skip
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=_DPI)
    for offset, stats, label, colour in ((-0.2, stock_stats, labels[0], "#868e96"), (0.2, prunevid_stats, labels[1], "#1c7ed6")):
        values = [getattr(stats, k) for k in keys]
        bars = ax.bar(x + offset, values, width=0.4, label=label, color=colour)
        ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xticks(x, names, fontsize=9)
    ax.set_ylabel("tokens")
    ax.set_title("Token budget per stage")
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.12)
    ax.legend(frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(out_path, dpi=_DPI, format=_format(out_path), facecolor="white")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------- helpers
def _all_kept(t: int, cells: int) -> dict[str, Any]:
    ones = np.ones((t, cells), dtype=bool)
    return {"static": ~ones, "kept": ones, "carrier": ones, "segments": [(0, t)]}


def _tinted(frame: np.ndarray, static: np.ndarray, kept: np.ndarray, layout: FatesLayout) -> np.ndarray:
    """The frame resized to the panel, each token cell blended with the colour of its fate; faint cell lines."""
    from PIL import Image

    gh, gw = static.shape
    image = np.asarray(Image.fromarray(frame).resize((layout.panel_width, layout.panel_height), Image.BILINEAR))
    image = image.astype(np.float32) / 255
    tint = np.zeros((gh, gw, 4), dtype=np.float32)
    for colour, where in (
        (_KEPT_DYNAMIC, ~static & kept),
        (_KEPT_STATIC, static & kept),
        (_DROPPED_DYNAMIC, ~static & ~kept),
        (_DROPPED_STATIC, static & ~kept),
    ):
        tint[where] = colour
    rows = np.minimum(np.arange(layout.panel_height) * gh // layout.panel_height, gh - 1)
    cols = np.minimum(np.arange(layout.panel_width) * gw // layout.panel_width, gw - 1)
    cell = tint[rows[:, None], cols[None, :]]
    out = image * (1 - cell[..., 3:]) + cell[..., :3] * cell[..., 3:]
    edge_r = np.diff(rows, prepend=-1) > 0
    edge_c = np.diff(cols, prepend=-1) > 0
    out[edge_r, :] *= 0.75
    out[:, edge_c] *= 0.75
    return out.clip(0, 1)


def _header(fig, layout: FatesLayout, title: str, stats: PruneVidStats | None, grid, segments) -> None:
    t, gh, gw = grid
    fig.text(_fx(layout, _MARGIN), _fy(layout, 8), title, fontsize=11, weight="bold", va="top")
    if stats is not None:
        layer = stats.pruning_layer
        counts = (
            f"visual tokens {stats.visual_tokens}  →  after Stage 1 (merging) {stats.after_stage1}"
            f"  →  after Stage 2 (selection{'' if layer is None else f' at layer {layer}'}) "
            f"{stats.after_stage2}   |   KV cache {stats.kv_cache_tokens} prompt tokens"
        )
        fig.text(_fx(layout, _MARGIN), _fy(layout, 30), counts, fontsize=8.5, va="top")
    spans = "  ".join(f"S{k + 1}=[{s},{e})" for k, (s, e) in enumerate(segments))
    detail = f"grid {t}×{gh}×{gw} tokens (28×28 px, 2 frames per patch)   |   segments (patches): {spans}"
    if stats is not None:
        detail += f"   |   static {stats.static_ratio:.0%}"
    fig.text(_fx(layout, _MARGIN), _fy(layout, 48), detail, fontsize=8.5, va="top", color="#495057")


def _fx(layout: FatesLayout, px: float) -> float:
    return px / layout.width


def _fy(layout: FatesLayout, px_from_top: float) -> float:
    return 1 - px_from_top / layout.height


def _box(fig, layout: FatesLayout, left: float, top: float, width: float, height: float) -> list[float]:
    return [left / layout.width, 1 - (top + height) / layout.height, width / layout.width, height / layout.height]
