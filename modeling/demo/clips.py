"""Tiny synthetic clips that behave like video, for tests and demos that must run offline.

A clip is a static textured background (smooth colour ramps plus a blocky checker texture, so different locations
look different) with one or more solid-colour squares moving along smooth elliptic paths, and optionally a scene cut
after which background and square colours are completely different. The layout is deterministic given ``seed``, so
[`clip_frames`] and [`square_boxes`] describe exactly what [`make_clip`] encodes: tests can tell which token cells
are static and which are dynamic.

Before a cut, the background uses dark colours (every channel in ``[0, 110]``) and the squares bright ones; after
it, the background uses light colours (every channel in ``[145, 255]``) and the squares dark ones, so every pixel
changes at the cut by at least 35 levels in every channel.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np


__all__ = ["clip_frames", "make_clip", "square_boxes", "write_video"]

# Square colours before / after a scene cut: bright on a dark background, then dark on a light one.
_BRIGHT = np.array([[255, 220, 0], [0, 255, 255], [255, 64, 255], [128, 255, 0]], dtype=np.uint8)
_DARK = np.array([[20, 20, 140], [120, 0, 20], [0, 90, 30], [60, 0, 110]], dtype=np.uint8)
# Per-channel value range of the background before / after a scene cut (disjoint, 35 levels apart).
_DARK_RANGE, _LIGHT_RANGE = (0, 110), (145, 255)
_TEXTURE_CELL = 8  # pixels per checker cell of the background texture


def _check(frames: int, size: tuple[int, int], squares: int, scene_cut_at: int | None) -> None:
    height, width = size
    if frames < 1:
        raise ValueError(f"`frames` must be >= 1, got {frames}.")
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"`size` must be even and at least 16x16 (yuv420p), got {size}.")
    if not 1 <= squares <= len(_BRIGHT):
        raise ValueError(f"`squares` must be in [1, {len(_BRIGHT)}], got {squares}.")
    if scene_cut_at is not None and not 0 < scene_cut_at < frames:
        raise ValueError(f"`scene_cut_at` must be in [1, frames - 1] = [1, {frames - 1}], got {scene_cut_at}.")


def _background(size: tuple[int, int], seed: int, value_range: tuple[int, int]) -> np.ndarray:
    """A static [H, W, 3] uint8 background: per-channel colour ramps in random directions plus a checker texture."""
    height, width = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    angles = rng.uniform(0, 2 * math.pi, size=3)
    ramps = np.stack([np.cos(a) * x + np.sin(a) * y for a in angles], axis=-1)
    ramps = (ramps - ramps.min(axis=(0, 1))) / np.ptp(ramps, axis=(0, 1)).clip(min=1e-6)
    cells = rng.uniform(size=(-(-height // _TEXTURE_CELL), -(-width // _TEXTURE_CELL), 3)).astype(np.float32)
    texture = cells.repeat(_TEXTURE_CELL, axis=0).repeat(_TEXTURE_CELL, axis=1)[:height, :width]
    low, high = value_range
    return (low + (high - low) * (0.6 * ramps + 0.4 * texture)).round().astype(np.uint8)


def square_boxes(
    *, frames: int = 16, size: tuple[int, int] = (112, 112), squares: int = 1, seed: int = 0
) -> np.ndarray:
    """Bounding boxes of the moving squares in every frame.

    Args:
        frames: Number of frames.
        size: Frame size as `(height, width)`.
        squares: Number of squares.
        seed: Seed of the layout (same meaning as in [`make_clip`]).

    Returns:
        `np.ndarray` of shape `[frames, squares, 4]` (int64) holding `(top, left, bottom, right)` pixel boxes, with
        `bottom` and `right` exclusive. A square's side is about 1/6 of the shorter frame edge.
    """
    _check(frames, size, squares, None)
    height, width = size
    side = max(4, round(min(height, width) / 6))
    rng = np.random.default_rng([seed, 1])
    boxes = np.empty((frames, squares, 4), dtype=np.int64)
    for k in range(squares):
        phase = rng.uniform(0, 2 * math.pi) + 2 * math.pi * k / squares
        direction = 1 if k % 2 == 0 else -1
        for t in range(frames):
            # One lap of an ellipse over the clip: smooth, never standing still, always inside the frame.
            angle = phase + direction * 2 * math.pi * t / max(frames, 8)
            cy = (height - side) / 2 * (1 + 0.8 * math.sin(angle))
            cx = (width - side) / 2 * (1 + 0.8 * math.cos(angle))
            top, left = int(round(cy)), int(round(cx))
            boxes[t, k] = (top, left, top + side, left + side)
    return boxes


def clip_frames(
    *,
    frames: int = 16,
    size: tuple[int, int] = (112, 112),
    squares: int = 1,
    scene_cut_at: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The frames [`make_clip`] encodes, as a `[frames, height, width, 3]` uint8 RGB array (no file written).

    Args:
        frames: Number of frames.
        size: Frame size as `(height, width)`; both even and at least 16.
        squares: Number of moving squares (1 to 4).
        scene_cut_at: Index of the first frame of a second, completely different scene, or `None` for no cut.
        seed: Seed of the background texture and of the square paths.
    """
    _check(frames, size, squares, scene_cut_at)
    scenes = [(_background(size, seed, _DARK_RANGE), _BRIGHT)]
    if scene_cut_at is not None:
        scenes.append((_background(size, seed + 7919, _LIGHT_RANGE), _DARK))
    boxes = square_boxes(frames=frames, size=size, squares=squares, seed=seed)
    video = np.empty((frames, *size, 3), dtype=np.uint8)
    for t in range(frames):
        background, colours = scenes[int(scene_cut_at is not None and t >= scene_cut_at)]
        video[t] = background
        for k, (top, left, bottom, right) in enumerate(boxes[t]):
            video[t, top:bottom, left:right] = colours[k]
    return video


def make_clip(
    path: str | Path,
    *,
    frames: int = 16,
    size: tuple[int, int] = (112, 112),
    fps: float = 4.0,
    squares: int = 1,
    scene_cut_at: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic clip (see [`clip_frames`]) to an mp4 file.

    The video is H.264 (libx264, yuv420p, no B-frames, CRF 18) or MPEG-4 Part 2 where libx264 is unavailable; a
    16-frame 112x112 clip takes a few KB and decord reads back exactly `frames` frames at `fps`.

    Args:
        path: Output file (parent directories are created).
        frames, size, squares, scene_cut_at, seed: See [`clip_frames`].
        fps: Frame rate written into the container.

    Returns:
        The path written, as a `Path`.
    """
    video = clip_frames(frames=frames, size=size, squares=squares, scene_cut_at=scene_cut_at, seed=seed)
    return write_video(path, video, fps=fps)


def write_video(path: str | Path, video: np.ndarray, *, fps: float = 4.0) -> Path:
    """Encode `[frames, height, width, 3]` uint8 RGB frames (height and width even) to an mp4 file.

    H.264 (libx264, yuv420p, no B-frames, CRF 18) or MPEG-4 Part 2 where libx264 is unavailable; decord reads back
    exactly `frames` frames at `fps`.

    Returns:
        The path written, as a `Path`.
    """
    import av  # PyAV; imported here so that `clip_frames` works without it

    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[1] % 2 or video.shape[2] % 2:
        raise ValueError(f"expected [frames, even height, even width, 3] uint8 frames, got {video.shape} {video.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    try:
        av.codec.Codec("libx264", "w")
        codec, options = "libx264", {"crf": "18", "preset": "medium", "bf": "0", "threads": "1"}
    except Exception:  # FFmpeg builds without libx264
        codec, options = "mpeg4", {"qscale": "2", "bf": "0"}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush
    return path
