"""`MediaOptions`: how videos and images are sampled and sized before the processor, validated once.

The same object serves the command line (`--fps`, `--max-frames`, `--min-pixels`, `--max-pixels`), `VideoQA`
(`options=`), the accuracy table (`modeling.eval.benchmark.MEDIA`) and the lmms-eval plugin (its `fps`,
`max_num_frames`, `min_pixels`, `max_pixels` model args). A field left at None keeps qwen-vl-utils' default (2 fps,
4 to 768 frames, 128 to 768 tokens of 28x28 pixels per frame pair, and a total budget per video).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any


__all__ = ["MAX_OPTION", "MediaOptions"]

#: Largest integer option accepted (far beyond any real frame count or pixel budget).
MAX_OPTION = 2**31 - 1
#: qwen-vl-utils' default lower bound on a video frame's pixels (128 tokens of 28x28).
VIDEO_MIN_PIXELS = 128 * 28 * 28
#: qwen-vl-utils' default lower bound on an image's pixels (4 tokens of 28x28).
IMAGE_MIN_PIXELS = 4 * 28 * 28

#: (smallest allowed value, why) of the integer options.
_INT_BOUNDS = {
    "max_frames": (2, "frames are sampled in pairs, one temporal patch"),
    "nframes": (2, "frames are sampled in pairs, one temporal patch"),
    "min_pixels": (1, "a pixel"),
    "max_pixels": (28 * 28, "one 28x28-pixel token"),
    "total_pixels": (28 * 28, "one 28x28-pixel token"),
}


@dataclass(frozen=True)
class MediaOptions:
    """Sampling and sizing of every video and image of a question (qwen-vl-utils' per-item options).

    Args:
        fps: Frames per second sampled from each video, a finite number > 0 (not with `nframes`).
        max_frames: Most frames sampled from each video with `fps` sampling, an integer >= 2 (frames come in pairs,
            one temporal patch).
        nframes: Exactly this many frames from each video (rounded to an even number), >= 2 (not with `fps`).
        min_pixels: Fewest pixels of each video frame and image, >= 1 and <= `max_pixels`.
        max_pixels: Most pixels of each video frame and image, >= 784 (one 28x28 token); frames and images are
            resized to multiples of 28 pixels, keeping the aspect ratio.
        total_pixels: Pixel budget of each video over all its frames, >= 784.

    Raises:
        TypeError: A value of the wrong type (booleans are not numbers here), naming the field.
        ValueError: A value out of range, or `fps` with `nframes`, naming the field and what is allowed.

    When `max_pixels` is below qwen-vl-utils' per-frame minimum for videos (128 tokens) and `min_pixels` is not
    given, videos get a minimum of 4 tokens (or `max_pixels`), so that small frames keep their size instead of
    failing qwen-vl-utils' check (`video_item`).
    """

    fps: float | None = None
    max_frames: int | None = None
    nframes: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None

    def __post_init__(self) -> None:
        fps = self.fps
        if fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
                raise TypeError(f"MediaOptions.fps must be a number, got {type(fps).__name__} {fps!r}")
            fps = float(fps)
            if not math.isfinite(fps) or fps <= 0:
                raise ValueError(f"MediaOptions.fps={fps!r} is out of range: allowed a finite number > 0")
            object.__setattr__(self, "fps", fps)
        for name, (low, why) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"MediaOptions.{name} must be an integer, got {type(value).__name__} {value!r}")
            value = int(value)
            if not low <= value <= MAX_OPTION:
                raise ValueError(f"MediaOptions.{name}={value} is out of range: allowed integers {low}..{MAX_OPTION} "
                                 f"({why})")  # fmt: skip
            object.__setattr__(self, name, value)
        if self.fps is not None and self.nframes is not None:
            raise ValueError("MediaOptions: pass either fps or nframes, not both")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"MediaOptions.min_pixels={self.min_pixels} is larger than max_pixels={self.max_pixels}")

    def replace(self, **changes: Any) -> "MediaOptions":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (not None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def video_item(self) -> dict[str, Any]:
        """The keys of a qwen-vl-utils video item (`{"type": "video", "video": path, **options.video_item()}`)."""
        item = self.to_dict()
        if self.max_pixels is not None and self.min_pixels is None and self.max_pixels < VIDEO_MIN_PIXELS:
            item["min_pixels"] = min(IMAGE_MIN_PIXELS, self.max_pixels)
        return item

    def image_item(self) -> dict[str, Any]:
        """The keys of a qwen-vl-utils image item (only the pixel bounds apply to images)."""
        return {k: v for k, v in self.to_dict().items() if k in ("min_pixels", "max_pixels")}
