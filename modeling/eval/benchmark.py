"""Moving shapes: a generated multiple-choice video-QA benchmark whose every question needs the video over time.

A clip is a static, muted, textured background with 1-4 solid shapes (square, circle or triangle, each a distinct
saturated colour of four); some stay still, the others move at constant velocity in one of four directions; a clip
may cut to a completely different scene. Options come in a fixed natural order (colours, directions, counts, yes/no,
positions), so a correct letter needs the video, and each kind's answers are spread evenly over its options. Questions follow MVBench's format ("Question: ... Options: (A) ... Answer with
the option's letter from the given choices directly.") and come in five kinds:

| kind | question | needs |
|---|---|---|
| `moving_colour` | What colour is the moving shape? | which shape changes position |
| `direction` | In which direction does the {colour} {shape} move? (the others stay still) | its position over time |
| `count_moving` | How many shapes move? | every shape over time |
| `scene_change` | Does the scene change during the video? | a cut somewhere in time |
| `final_position` | Where is the {colour} {shape} at the end of the video? | the last frames (it starts elsewhere; the others stay still) |

Items are deterministic functions of `(split, index)`: the seeds of the `train`, `val` and `test` splits are disjoint,
so the held-out `test` split is never seen in training. Clips are 224x224 (8x8 LLM tokens per temporal patch of
Qwen2.5-VL) with 16, 24 or 32 frames at 2 fps, i.e. 512-1,024 visual tokens; `MEDIA` makes qwen-vl-utils
deliver them to the model at exactly that size and frame count.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..app.options import MediaOptions
from ..demo import cache_dir
from ..demo.clips import write_video


__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "FPS",
    "FRAME_COUNTS",
    "KINDS",
    "POSITIONS",
    "SHAPES",
    "SIZE",
    "MEDIA",
    "Item",
    "Shape",
    "load_split",
    "make_item",
    "render",
]

SIZE = 224  # pixels, square frames: 8x8 tokens of 28x28 after Qwen2.5-VL's 2x2 merger
FPS = 2.0  # frames per second written into the container; qwen-vl-utils samples at 2 fps, so it keeps every frame
FRAME_COUNTS = (16, 24, 32)
SHAPE_SIZE = 40  # pixels, bounding box of a shape (about 1.4 tokens wide)
KINDS = ("moving_colour", "direction", "count_moving", "scene_change", "final_position")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SPLIT_SEEDS = {"train": 101, "val": 202, "test": 303}
SPLIT_SIZES = {"val": 300, "test": 600}  # `train` is unbounded
#: qwen-vl-utils video settings that deliver the clip unresized, every frame (see the module docstring).
#: How the clips are read: every frame (2 fps), at exactly their size.
MEDIA = MediaOptions(fps=FPS, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE)
INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: its look, where it starts (top-left corner, pixels) and its velocity (pixels/frame)."""

    colour: str
    kind: str
    top: float
    left: float
    velocity: tuple[float, float] = (0.0, 0.0)

    @property
    def moves(self) -> bool:
        return self.velocity != (0.0, 0.0)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    def box(self, t: int) -> tuple[int, int]:
        """Top-left corner at frame `t` (relative to the scene's first frame), rounded to pixels."""
        return int(round(self.top + self.velocity[0] * t)), int(round(self.left + self.velocity[1] * t))


@dataclass(frozen=True)
class Item:
    """One multiple-choice question about one clip.

    Attributes:
        id: `"{split}-{index:05d}"`.
        kind: One of `KINDS`.
        question: The full prompt text (question, options, instruction), as the model sees it after the video.
        options: The option texts, in letter order.
        answer: The correct option's letter.
        frames: Number of frames of the clip.
        scenes: The shapes of each scene (two scenes when the clip cuts).
        cut: Index of the first frame of the second scene, or None.
        backgrounds: Seed of each scene's background.
    """

    id: str
    kind: str
    question: str
    options: tuple[str, ...]
    answer: str
    frames: int
    scenes: tuple[tuple[Shape, ...], ...]
    cut: int | None
    backgrounds: tuple[int, ...] = field(default=(0,))

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]

    def frames_array(self) -> np.ndarray:
        """The clip as `[frames, SIZE, SIZE, 3]` uint8 RGB."""
        return render(self)

    def video_path(self, cache: str | os.PathLike | None = None) -> Path:
        """The clip as an mp4 file (H.264, `FPS`), written on first use under `cache` (default: `cache_dir()`).

        The file name carries a digest of the item, so a changed generator never reuses a stale file."""

        folder = Path(cache) if cache is not None else cache_dir() / "clips"
        path = folder / f"{self.id}-{self.digest()}.mp4"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.part.mp4")
            write_video(partial, self.frames_array(), fps=FPS)
            partial.replace(path)  # atomic: a concurrent reader never sees half a file
        return path

    def digest(self) -> str:
        return hashlib.sha256(repr((self.kind, self.frames, self.scenes, self.cut, self.backgrounds)).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------ rendering
def _background(seed: int) -> np.ndarray:
    """A static muted [SIZE, SIZE, 3] background: low-saturation colour ramps plus a 16-pixel checker texture, so
    every location looks different but no background pixel is as saturated as a shape."""
    rng = np.random.default_rng([seed, 7])
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    base = rng.uniform(70, 150)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    tint = rng.uniform(-12, 12, size=3).astype(np.float32)
    cells = rng.uniform(-18, 18, size=(SIZE // 16, SIZE // 16, 1)).astype(np.float32)
    texture = cells.repeat(16, axis=0).repeat(16, axis=1)
    image = base + 30 * ramp[..., None] + tint + texture
    return image.clip(0, 255).round().astype(np.uint8)


def _mask(kind: str) -> np.ndarray:
    """[SHAPE_SIZE, SHAPE_SIZE] bool mask of a shape."""
    n = SHAPE_SIZE
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    if kind == "square":
        return np.ones((n, n), dtype=bool)
    if kind == "circle":
        return (y - n / 2) ** 2 + (x - n / 2) ** 2 <= (n / 2) ** 2
    if kind == "triangle":  # apex up
        return np.abs(x - n / 2) <= y / 2
    raise ValueError(f"unknown shape {kind!r}")


_MASKS = {kind: _mask(kind) for kind in SHAPES}


def render(item: Item) -> np.ndarray:
    """The frames of `item`'s clip, `[frames, SIZE, SIZE, 3]` uint8 RGB."""
    video = np.empty((item.frames, SIZE, SIZE, 3), dtype=np.uint8)
    backgrounds = [_background(seed) for seed in item.backgrounds]
    for t in range(item.frames):
        scene = int(item.cut is not None and t >= item.cut)
        start = item.cut if scene else 0
        frame = video[t]
        frame[:] = backgrounds[scene]
        for shape in item.scenes[scene]:
            top, left = shape.box(t - start)
            mask = _MASKS[shape.kind]
            frame[top : top + SHAPE_SIZE, left : left + SHAPE_SIZE][mask] = COLOURS[shape.colour]
    return video


# ------------------------------------------------------------------------------------------------ generation
_MARGIN = 4


def _path_fits(top: float, left: float, velocity: tuple[float, float], frames: int) -> bool:
    for t in (0, frames - 1):
        y, x = top + velocity[0] * t, left + velocity[1] * t
        if not (_MARGIN <= y <= SIZE - SHAPE_SIZE - _MARGIN and _MARGIN <= x <= SIZE - SHAPE_SIZE - _MARGIN):
            return False
    return True


def _apart(a: Shape, b: Shape, frames: int) -> bool:
    """The shapes' boxes stay at least 6 pixels apart on every frame."""
    for t in range(frames):
        (ay, ax), (by, bx) = a.box(t), b.box(t)
        if abs(ay - by) < SHAPE_SIZE + 6 and abs(ax - bx) < SHAPE_SIZE + 6:
            return False
    return True


def _place(rng: np.random.Generator, looks: list[tuple[str, str]], velocities: list[tuple[float, float]],
           frames: int, constraint=None) -> tuple[Shape, ...] | None:  # fmt: skip
    """Random non-overlapping shapes with the given looks and velocities (None if no layout was found)."""
    for _ in range(200):
        shapes: list[Shape] = []
        for i, ((colour, kind), velocity) in enumerate(zip(looks, velocities)):
            for _ in range(50):
                top, left = rng.uniform(_MARGIN, SIZE - SHAPE_SIZE - _MARGIN, size=2)
                shape = Shape(colour, kind, float(top), float(left), velocity)
                if not _path_fits(shape.top, shape.left, velocity, frames):
                    continue
                if i == 0 and constraint is not None and not constraint(shape):
                    continue
                if all(_apart(shape, other, frames) for other in shapes):
                    shapes.append(shape)
                    break
            else:
                break
        if len(shapes) == len(looks):
            return tuple(shapes)
    return None


def _velocity(rng: np.random.Generator, direction: str, frames: int) -> tuple[float, float]:
    """Constant velocity that travels 70-120 pixels over the clip in `direction`."""
    speed = rng.uniform(70, 120) / (frames - 1)
    dy, dx = DIRECTIONS[direction]
    return (float(dy * speed), float(dx * speed))


def _looks(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    kinds = rng.choice(SHAPES, size=n, replace=True)
    return [(str(c), str(k)) for c, k in zip(colours, kinds)]


def _quadrant(shape: Shape, t: int) -> str | None:
    """Quadrant of the shape's centre at frame t, or None when the centre is within 14 pixels of a midline."""
    top, left = shape.box(t)
    cy, cx = top + SHAPE_SIZE / 2, left + SHAPE_SIZE / 2
    if abs(cy - SIZE / 2) < 14 or abs(cx - SIZE / 2) < 14:
        return None
    return f"{'top' if cy < SIZE / 2 else 'bottom'} {'left' if cx < SIZE / 2 else 'right'}"


def _question(text: str, options: list[str]) -> str:
    lines = [f"Question: {text}", "Options:"] + [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)]
    return "\n".join(lines + [INSTRUCTION])


def _random_scene(rng: np.random.Generator, frames: int) -> tuple[Shape, ...]:
    n = int(rng.integers(1, 4))
    velocities = [
        _velocity(rng, str(rng.choice(list(DIRECTIONS))), frames) if rng.random() < 0.5 else (0.0, 0.0)
        for _ in range(n)
    ]
    scene = _place(rng, _looks(rng, n), velocities, frames)
    assert scene is not None  # 1-3 shapes always fit
    return scene


def make_item(split: str, index: int) -> Item:
    """The `index`-th item of `split` (deterministic; kinds cycle so every block of 5 items holds each once)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if index < 0 or (split in SPLIT_SIZES and index >= SPLIT_SIZES[split]):
        raise IndexError(f"item {index} is out of range for split {split!r}")
    kind = KINDS[index % len(KINDS)]
    attempt = 0
    while True:  # a layout that fails a constraint is redrawn from the next sub-seed
        rng = np.random.default_rng([SPLIT_SEEDS[split], index, attempt])
        item = _make(rng, f"{split}-{index:05d}", kind)
        if item is not None:
            return item
        attempt += 1


def _make(rng: np.random.Generator, item_id: str, kind: str) -> Item | None:
    frames = int(rng.choice(FRAME_COUNTS))
    backgrounds: tuple[int, ...] = (int(rng.integers(2**31)),)
    cut = None
    if kind == "moving_colour":
        n = int(rng.integers(2, 5))
        looks = _looks(rng, n)
        velocities = [_velocity(rng, str(rng.choice(list(DIRECTIONS))), frames)] + [(0.0, 0.0)] * (n - 1)
        scene = _place(rng, looks, velocities, frames)
        if scene is None:
            return None
        options = list(COLOURS)
        text = "What colour is the moving shape?"
        answer_text = looks[0][0]
    elif kind == "direction":
        n = int(rng.integers(1, 4))
        direction = str(rng.choice(list(DIRECTIONS)))
        velocities = [_velocity(rng, direction, frames)] + [(0.0, 0.0)] * (n - 1)
        scene = _place(rng, _looks(rng, n), velocities, frames)
        if scene is None:
            return None
        options = list(DIRECTIONS)
        text = f"In which direction does the {scene[0].name} move?"
        answer_text = direction
    elif kind == "count_moving":
        count = int(rng.integers(0, 4))
        n = int(rng.integers(max(count, 2), 5))
        velocities = [_velocity(rng, str(rng.choice(list(DIRECTIONS))), frames) for _ in range(count)]
        velocities += [(0.0, 0.0)] * (n - count)
        order = rng.permutation(n)
        scene = _place(rng, _looks(rng, n), [velocities[i] for i in order], frames)
        if scene is None:
            return None
        options = ["0", "1", "2", "3"]
        text = "How many shapes move?"
        answer_text = str(count)
        return _item(item_id, kind, text, options, answer_text, frames, (scene,), cut, backgrounds)
    elif kind == "scene_change":
        scene = _random_scene(rng, frames)
        scenes = (scene,)
        if rng.random() < 0.5:
            cut = int(rng.integers(frames // 4, 3 * frames // 4 + 1))
            scenes = (scene, _random_scene(rng, frames - cut))
            backgrounds = (backgrounds[0], int(rng.integers(2**31)))
        options = ["yes", "no"]
        text = "Does the scene change during the video?"
        answer_text = "yes" if cut is not None else "no"
        return _item(item_id, kind, text, options, answer_text, frames, scenes, cut, backgrounds)
    elif kind == "final_position":
        n = int(rng.integers(1, 4))
        direction = str(rng.choice(list(DIRECTIONS)))
        velocities = [_velocity(rng, direction, frames)] + [(0.0, 0.0)] * (n - 1)

        def crosses(shape: Shape) -> bool:
            start, end = _quadrant(shape, 0), _quadrant(shape, frames - 1)
            return start is not None and end is not None and start != end

        scene = _place(rng, _looks(rng, n), velocities, frames, constraint=crosses)
        if scene is None:
            return None
        options = list(POSITIONS)
        text = f"Where is the {scene[0].name} at the end of the video?"
        answer_text = _quadrant(scene[0], frames - 1)
        return _item(item_id, kind, text, options, answer_text, frames, (scene,), cut, backgrounds)
    else:  # pragma: no cover - KINDS is closed
        raise ValueError(kind)
    return _item(item_id, kind, text, options, answer_text, frames, (scene,), cut, backgrounds)


def _item(item_id, kind, text, options, answer_text, frames, scenes, cut, backgrounds) -> Item:
    """Options in their fixed, natural order (colours, directions, counts, yes/no, positions)."""
    answer = LETTERS[options.index(answer_text)]
    return Item(
        id=item_id,
        kind=kind,
        question=_question(text, options),
        options=tuple(options),
        answer=answer,
        frames=frames,
        scenes=tuple(scenes),
        cut=cut,
        backgrounds=tuple(backgrounds),
    )


def load_split(split: str, limit: int | None = None, start: int = 0) -> list[Item]:
    """Items `start .. start + limit` of `split` ("train", "val" or "test"); `limit=None` means the whole split
    (required for "train", which is unbounded)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    total = SPLIT_SIZES.get(split)
    if total is None and limit is None:
        raise ValueError("the train split is unbounded: pass `limit`")
    end = start + limit if limit is not None else total
    if total is not None:
        end = min(end, total)
    return [make_item(split, i) for i in range(start, end)]


def all_questions() -> list[str]:
    """Every question text the generator can produce (for the task's token vocabulary)."""
    names = [f"{c} {k}" for c in COLOURS for k in SHAPES]
    texts = [_question("What colour is the moving shape?", list(COLOURS))]
    texts += [_question(f"In which direction does the {n} move?", list(DIRECTIONS)) for n in names]
    texts += [_question("How many shapes move?", ["0", "1", "2", "3"])]
    texts += [_question("Does the scene change during the video?", ["yes", "no"])]
    texts += [_question(f"Where is the {n} at the end of the video?", list(POSITIONS)) for n in names]
    return texts


def token_labels(item: Item, cell: int = 28, min_pixels: int = 196) -> tuple[np.ndarray, np.ndarray]:
    """What each LLM video token shows (for the demo model's auxiliary training loss, `tools/train_demo_model.py`):
    per temporal patch `t` (frames 2t and 2t+1) and `cell`x`cell` location, the colour index (in `COLOURS` order; 6
    = background) and the motion (0 still or background, 1-4 = up, down, left, right) of the shape covering at least
    `min_pixels` of the cell in frame 2t. Both `[frames // 2, SIZE // cell, SIZE // cell]` int64."""
    grid = SIZE // cell
    colour = np.full((item.frames // 2, grid, grid), len(COLOURS), dtype=np.int64)
    motion = np.zeros_like(colour)
    names = list(COLOURS)
    directions = list(DIRECTIONS.values())
    for t in range(item.frames // 2):
        frame = 2 * t
        scene = int(item.cut is not None and frame >= item.cut)
        start = item.cut if scene else 0
        best = np.zeros((grid, grid), dtype=np.int64)
        for shape in item.scenes[scene]:
            top, left = shape.box(frame - start)
            canvas = np.zeros((SIZE, SIZE), dtype=np.int64)
            canvas[top : top + SHAPE_SIZE, left : left + SHAPE_SIZE] = _MASKS[shape.kind]
            counts = canvas.reshape(grid, cell, grid, cell).sum(axis=(1, 3))
            take = (counts >= min_pixels) & (counts > best)
            best = np.where(take, counts, best)
            colour[t][take] = names.index(shape.colour)
            if shape.moves:
                sign = (int(np.sign(shape.velocity[0])), int(np.sign(shape.velocity[1])))
                motion[t][take] = 1 + directions.index(sign)
            else:
                motion[t][take] = 0
    return colour, motion
