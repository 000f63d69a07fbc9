"""Moving shapes: a generated multiple-choice video-QA benchmark whose every question needs the video over time.

A clip is a static, muted, textured background with 1-4 solid shapes (square, circle or triangle, each a distinct
saturated colour of four); some stay still, the others move at constant velocity in one of four directions; a clip may cut to a completely different
scene. Options come in a fixed natural order (colours, directions, counts, yes/no, positions), so a correct letter
needs the video, and each kind's answers are spread evenly over its options. Questions follow MVBench's format
("Question: ... Options: (A) ... Answer with the option's letter from the given choices directly.") and come in five
kinds:

| kind | version 1 question | version 2 question |
|---|---|---|
| `moving_colour` | What colour is the moving shape? (one moves) | What colour is the shape that moves {direction}? (2-3 move, each its own way) |
| `direction` | In which direction does the {colour} {shape} move? (the others stay still) | the same; 2-3 shapes move, each its own way |
| `count_moving` | How many shapes move? | the same |
| `scene_change` | Does the scene change during the video? | the same |
| `final_position` | Where is the {colour} {shape} at the end of the video? (the others stay still) | the same; 2-3 shapes move, each ends in its own quadrant |

Two versions (`VERSIONS`; `version=` of `make_item` / `load_split`, `DEFAULT_VERSION` the one the shipped demo model
and the committed table use). **Version 1**: 40-pixel shapes (about 1.4 LLM tokens wide); the shape a question names
is the only one that moves, so any salient-token selection finds it. **Version 2**: 56-pixel shapes (2x2 LLM tokens,
as objects in real footage usually are); in three kinds the question names one shape, by its look or its motion, and
the other shapes move too, their answers (colour, direction, end quadrant) among the options: which tokens matter
depends on the question, the test of Stage 2's question-aware selection. `count_moving` and `scene_change` need every
shape or the whole frame, whatever the question. In version 2 each kind's answers cycle evenly over its options.

Items are deterministic functions of `(split, index)`: the seeds of the `train`, `val` and `test` splits are disjoint,
so the held-out `test` split is never seen in training. Clips are 224x224 (8x8 LLM tokens per temporal patch of
Qwen2.5-VL) with 16, 24 or 32 frames at 2 fps, i.e. 512-1,024 visual tokens; `MEDIA` makes qwen-vl-utils
deliver them to the model at exactly that size and frame count.
"""

from __future__ import annotations

import functools
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
    "DEFAULT_VERSION",
    "VERSIONS",
    "Item",
    "Shape",
    "load_split",
    "make_item",
    "render",
    "referent",
    "siblings",
]

SIZE = 224  # pixels, square frames: 8x8 tokens of 28x28 after Qwen2.5-VL's 2x2 merger
FPS = 2.0  # frames per second written into the container; qwen-vl-utils samples at 2 fps, so it keeps every frame
FRAME_COUNTS = (16, 24, 32)
VERSIONS = (1, 2)  # of the generator (module docstring); items, digests and accuracy tables name theirs
DEFAULT_VERSION = 2  # the version the shipped demo model was trained on and the committed table measures
SHAPE_SIZES = {1: 40, 2: 56}  # pixels, bounding box of a shape: about 1.4 and 2 LLM tokens of 28 pixels
TRAVEL = {1: (70, 120), 2: (56, 100)}  # pixels a moving shape travels over its clip
SHAPE_SIZE = SHAPE_SIZES[1]
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
    size: int = SHAPE_SIZES[1]  # pixels, its bounding box

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
        version: Of the generator that made it (`VERSIONS`).
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
    version: int = 1

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
        key = (self.version, self.kind, self.frames, self.scenes, self.cut, self.backgrounds)
        return hashlib.sha256(repr(key).encode()).hexdigest()[:10]


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


@functools.lru_cache(maxsize=None)
def _mask(kind: str, n: int) -> np.ndarray:
    """[n, n] bool mask of a shape of bounding box `n` pixels."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    if kind == "square":
        return np.ones((n, n), dtype=bool)
    if kind == "circle":
        return (y - n / 2) ** 2 + (x - n / 2) ** 2 <= (n / 2) ** 2
    if kind == "triangle":  # apex up
        return np.abs(x - n / 2) <= y / 2
    raise ValueError(f"unknown shape {kind!r}")


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
            n = shape.size
            frame[top : top + n, left : left + n][_mask(shape.kind, n)] = COLOURS[shape.colour]
    return video


# ------------------------------------------------------------------------------------------------ generation
_MARGIN = 4
_GAP = 6  # pixels between two shapes' boxes on every frame


def _path_fits(top: float, left: float, velocity: tuple[float, float], frames: int, size: int) -> bool:
    for t in (0, frames - 1):
        y, x = top + velocity[0] * t, left + velocity[1] * t
        if not (_MARGIN <= y <= SIZE - size - _MARGIN and _MARGIN <= x <= SIZE - size - _MARGIN):
            return False
    return True


def _boxes(shape: Shape, frames: int) -> np.ndarray:
    """[frames, 2] top-left corners, rounded as `Shape.box` rounds them (half to even)."""
    t = np.arange(frames, dtype=np.float64)
    return np.stack([np.round(shape.top + shape.velocity[0] * t), np.round(shape.left + shape.velocity[1] * t)], 1)


def _apart(a: Shape, b: Shape, frames: int) -> bool:
    """The shapes' boxes stay at least `_GAP` pixels apart on every frame."""
    gap = np.abs(_boxes(a, frames) - _boxes(b, frames))
    return bool(((gap[:, 0] >= a.size + _GAP) | (gap[:, 1] >= a.size + _GAP)).all())


def _place(rng: np.random.Generator, looks: list[tuple[str, str]], velocities: list[tuple[float, float]],
           frames: int, size: int, first=None, layout=None, tries: tuple[int, int] = (200, 50)
           ) -> tuple[Shape, ...] | None:  # fmt: skip
    """Random non-overlapping shapes with the given looks and velocities, inside the frame on every frame (None if no
    layout was found in `tries` (layouts, positions per shape)); `first(shape)` must hold for the first shape and
    `layout(shapes)` for the whole layout."""
    for _ in range(tries[0]):
        shapes: list[Shape] = []
        for i, ((colour, kind), velocity) in enumerate(zip(looks, velocities)):
            for _ in range(tries[1]):
                top, left = rng.uniform(_MARGIN, SIZE - size - _MARGIN, size=2)
                shape = Shape(colour, kind, float(top), float(left), velocity, size)
                if not _path_fits(shape.top, shape.left, velocity, frames, size):
                    continue
                if i == 0 and first is not None and not first(shape):
                    continue
                if all(_apart(shape, other, frames) for other in shapes):
                    shapes.append(shape)
                    break
            else:
                break
        if len(shapes) == len(looks) and (layout is None or layout(shapes)):
            return tuple(shapes)
    return None


def _velocity(rng: np.random.Generator, direction: str, frames: int, version: int) -> tuple[float, float]:
    """Constant velocity that travels `TRAVEL[version]` pixels over the clip in `direction`."""
    speed = rng.uniform(*TRAVEL[version]) / (frames - 1)
    dy, dx = DIRECTIONS[direction]
    return (float(dy * speed), float(dx * speed))


def _looks(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    kinds = rng.choice(SHAPES, size=n, replace=True)
    return [(str(c), str(k)) for c, k in zip(colours, kinds)]


def _quadrant(shape: Shape, t: int) -> str | None:
    """Quadrant of the shape's centre at frame t, or None when the centre is within 14 pixels of a midline."""
    top, left = shape.box(t)
    cy, cx = top + shape.size / 2, left + shape.size / 2
    if abs(cy - SIZE / 2) < 14 or abs(cx - SIZE / 2) < 14:
        return None
    return f"{'top' if cy < SIZE / 2 else 'bottom'} {'left' if cx < SIZE / 2 else 'right'}"


def _direction(shape: Shape) -> str:
    return next(d for d, v in DIRECTIONS.items() if tuple(np.sign(shape.velocity)) == v)


def _question(text: str, options: list[str]) -> str:
    lines = [f"Question: {text}", "Options:"] + [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)]
    return "\n".join(lines + [INSTRUCTION])


def _random_scene(rng: np.random.Generator, frames: int, version: int) -> tuple[Shape, ...]:
    while True:  # version 1 always places its first draw
        n = int(rng.integers(1, 4))
        velocities = [
            _velocity(rng, str(rng.choice(list(DIRECTIONS))), frames, version) if rng.random() < 0.5 else (0.0, 0.0)
            for _ in range(n)
        ]
        scene = _place(rng, _looks(rng, n), velocities, frames, SHAPE_SIZES[version])
        if scene is not None:
            return scene


def make_item(split: str, index: int, version: int = DEFAULT_VERSION) -> Item:
    """The `index`-th item of `split` (deterministic; kinds cycle so every block of 5 items holds each once)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if version not in VERSIONS:
        raise ValueError(f"unknown benchmark version {version!r}; choose one of {VERSIONS}")
    if index < 0 or (split in SPLIT_SIZES and index >= SPLIT_SIZES[split]):
        raise IndexError(f"item {index} is out of range for split {split!r}")
    kind = KINDS[index % len(KINDS)]
    attempt = 0
    while True:  # a layout that fails a constraint is redrawn from the next sub-seed
        if version == 1:
            item = _make_v1(np.random.default_rng([SPLIT_SEEDS[split], index, attempt]), f"{split}-{index:05d}", kind)
        else:
            rng = np.random.default_rng([SPLIT_SEEDS[split], version, index, attempt])
            item = _make_v2(rng, f"{split}-{index:05d}", kind, slot=index // len(KINDS))
        if item is not None:
            return item
        attempt += 1


def _make_v1(rng: np.random.Generator, item_id: str, kind: str) -> Item | None:
    frames = int(rng.choice(FRAME_COUNTS))
    backgrounds: tuple[int, ...] = (int(rng.integers(2**31)),)
    size, cut = SHAPE_SIZES[1], None
    if kind == "moving_colour":
        n = int(rng.integers(2, 5))
        looks = _looks(rng, n)
        velocities = [_velocity(rng, str(rng.choice(list(DIRECTIONS))), frames, 1)] + [(0.0, 0.0)] * (n - 1)
        scene = _place(rng, looks, velocities, frames, size)
        if scene is None:
            return None
        options, text, answer_text = list(COLOURS), "What colour is the moving shape?", looks[0][0]
    elif kind == "direction":
        n = int(rng.integers(1, 4))
        direction = str(rng.choice(list(DIRECTIONS)))
        velocities = [_velocity(rng, direction, frames, 1)] + [(0.0, 0.0)] * (n - 1)
        scene = _place(rng, _looks(rng, n), velocities, frames, size)
        if scene is None:
            return None
        options, text, answer_text = list(DIRECTIONS), f"In which direction does the {scene[0].name} move?", direction
    elif kind == "count_moving":
        count = int(rng.integers(0, 4))
        n = int(rng.integers(max(count, 2), 5))
        velocities = [_velocity(rng, str(rng.choice(list(DIRECTIONS))), frames, 1) for _ in range(count)]
        velocities += [(0.0, 0.0)] * (n - count)
        order = rng.permutation(n)
        scene = _place(rng, _looks(rng, n), [velocities[i] for i in order], frames, size)
        if scene is None:
            return None
        options, text, answer_text = ["0", "1", "2", "3"], "How many shapes move?", str(count)
    elif kind == "scene_change":
        return _scene_change(rng, item_id, frames, backgrounds, 1, cuts=None)
    elif kind == "final_position":
        n = int(rng.integers(1, 4))
        direction = str(rng.choice(list(DIRECTIONS)))
        velocities = [_velocity(rng, direction, frames, 1)] + [(0.0, 0.0)] * (n - 1)

        def crosses(shape: Shape) -> bool:
            start, end = _quadrant(shape, 0), _quadrant(shape, frames - 1)
            return start is not None and end is not None and start != end

        scene = _place(rng, _looks(rng, n), velocities, frames, size, first=crosses)
        if scene is None:
            return None
        options, text = list(POSITIONS), f"Where is the {scene[0].name} at the end of the video?"
        answer_text = _quadrant(scene[0], frames - 1)
    else:  # pragma: no cover - KINDS is closed
        raise ValueError(kind)
    return _item(item_id, kind, text, options, answer_text, frames, (scene,), cut, backgrounds, 1)


def _scene_change(rng, item_id: str, frames: int, backgrounds: tuple[int, ...], version: int,
                  cuts: bool | None) -> Item:  # fmt: skip
    """A random scene, and a cut to a second one when `cuts` (None: a coin flip after the first scene is drawn)."""
    scene = _random_scene(rng, frames, version)
    scenes, cut = (scene,), None
    if cuts is None:
        cuts = bool(rng.random() < 0.5)
    if cuts:
        cut = int(rng.integers(frames // 4, 3 * frames // 4 + 1))
        scenes = (scene, _random_scene(rng, frames - cut, version))
        backgrounds = (backgrounds[0], int(rng.integers(2**31)))
    text = "Does the scene change during the video?"
    return _item(item_id, "scene_change", text, ["yes", "no"], "yes" if cuts else "no", frames, scenes, cut,
                 backgrounds, version)  # fmt: skip


def _movers(rng: np.random.Generator, frames: int, still: int = 0, layout=None, direction: str | None = None,
            colour: str | None = None) -> tuple[Shape, ...] | None:  # fmt: skip
    """Version 2: 2-3 shapes moving in distinct directions (the first, moving `direction` and of `colour` when given,
    is the one the question names), then `still` still ones."""
    n = int(rng.integers(2, 4))
    others = [d for d in DIRECTIONS if d != direction]
    directions = [str(d) for d in rng.choice(others, size=n - (direction is not None), replace=False)]
    directions = [direction] + directions if direction is not None else directions
    velocities = [_velocity(rng, d, frames, 2) for d in directions] + [(0.0, 0.0)] * still
    looks = _looks(rng, n + still)
    if colour is not None:  # the named shape gets `colour`; a shape that had it takes the first one's
        swap = next((i for i, (c, _) in enumerate(looks) if c == colour), None)
        if swap is not None:
            looks[swap] = (looks[0][0], looks[swap][1])
        looks[0] = (colour, looks[0][1])
    return _place(rng, looks, velocities, frames, SHAPE_SIZES[2], layout=layout, tries=(100, 30))


def _make_v2(rng: np.random.Generator, item_id: str, kind: str, slot: int) -> Item | None:
    """One version-2 item of `kind` whose answer is option `slot % len(options)` (answers cycle over the options)."""
    frames = int(rng.choice(FRAME_COUNTS))
    backgrounds: tuple[int, ...] = (int(rng.integers(2**31)),)
    if kind == "scene_change":
        return _scene_change(rng, item_id, frames, backgrounds, 2, cuts=slot % 2 == 0)
    if kind == "count_moving":
        count = slot % 4
        n = int(rng.integers(max(count, 2), 5))
        velocities = [_velocity(rng, str(rng.choice(list(DIRECTIONS))), frames, 2) for _ in range(count)]
        velocities += [(0.0, 0.0)] * (n - count)
        order = rng.permutation(n)
        scene = _place(rng, _looks(rng, n), [velocities[i] for i in order], frames, SHAPE_SIZES[2], tries=(100, 30))
        options = ["0", "1", "2", "3"]
        return None if scene is None else _item(item_id, kind, "How many shapes move?", options, str(count), frames,
                                                (scene,), None, backgrounds, 2)  # fmt: skip
    if kind == "moving_colour":  # named by its motion; the other movers' colours are options
        scene = _movers(rng, frames, still=int(rng.integers(0, 2)), colour=list(COLOURS)[slot % len(COLOURS)])
    elif kind == "direction":  # named by its look; the other movers' directions are options
        scene = _movers(rng, frames, direction=list(DIRECTIONS)[slot % len(DIRECTIONS)])
    elif kind == "final_position":  # named by its look; every mover ends in its own quadrant, all are options
        target = POSITIONS[slot % len(POSITIONS)]

        def distinct_ends(shapes: list[Shape]) -> bool:
            ends = [_quadrant(s, frames - 1) for s in shapes]
            start = _quadrant(shapes[0], 0)
            return None not in ends and len(set(ends)) == len(ends) and start not in (None, ends[0]) and ends[0] == target

        scene = _movers(rng, frames, layout=distinct_ends)
    else:  # pragma: no cover - KINDS is closed
        raise ValueError(kind)
    if scene is None:
        return None
    return _named(item_id, kind, scene, frames, backgrounds)


def _named(item_id: str, kind: str, scene: tuple[Shape, ...], frames: int, backgrounds: tuple[int, ...],
           cut: int | None = None) -> Item:  # fmt: skip
    """The version-2 question of `kind` about `scene[0]`."""
    shape = scene[0]
    if kind == "moving_colour":
        text, options, answer = f"What colour is the shape that moves {_direction(shape)}?", list(COLOURS), shape.colour
    elif kind == "direction":
        text, options, answer = f"In which direction does the {shape.name} move?", list(DIRECTIONS), _direction(shape)
    else:
        text, options = f"Where is the {shape.name} at the end of the video?", list(POSITIONS)
        answer = _quadrant(shape, frames - 1)
    return _item(item_id, kind, text, options, answer, frames, (scene,), cut, backgrounds, 2)


def referent(item: Item) -> str | None:
    """What a version-2 question names its shape by: its colour (`direction`, `final_position`) or its direction
    (`moving_colour`); None for the other kinds and for version 1."""
    if item.version < 2 or item.kind not in ("moving_colour", "direction", "final_position"):
        return None
    return _direction(item.scenes[0][0]) if item.kind == "moving_colour" else item.scenes[0][0].colour


def siblings(item: Item) -> list[Item]:
    """The same clip asked about each *other* moving shape, for the version-2 kinds whose question names one
    (`moving_colour`, `direction`, `final_position`; others: none): contrastive training pairs, where only the
    question tells which answer is right. Each names its shape first in `scenes`; ids get a `/n` suffix."""
    if item.version < 2 or item.kind not in ("moving_colour", "direction", "final_position"):
        return []
    scene = item.scenes[0]
    movers = [s for s in scene[1:] if s.moves]
    return [_named(f"{item.id}/{n + 1}", item.kind, (shape,) + tuple(s for s in scene if s is not shape), item.frames,
                   item.backgrounds, item.cut) for n, shape in enumerate(movers)]  # fmt: skip


def _item(item_id, kind, text, options, answer_text, frames, scenes, cut, backgrounds, version) -> Item:
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
        version=version,
    )


def load_split(split: str, limit: int | None = None, start: int = 0, version: int = DEFAULT_VERSION) -> list[Item]:
    """Items `start .. start + limit` of `split` ("train", "val" or "test") in benchmark `version`; `limit=None`
    means the whole split (required for "train", which is unbounded)."""
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
    return [make_item(split, i, version) for i in range(start, end)]


def all_questions() -> list[str]:
    """Every question text either version can produce (for the task's token vocabulary)."""
    names = [f"{c} {k}" for c in COLOURS for k in SHAPES]
    texts = [_question("What colour is the moving shape?", list(COLOURS))]
    texts += [_question(f"What colour is the shape that moves {d}?", list(COLOURS)) for d in DIRECTIONS]
    texts += [_question(f"In which direction does the {n} move?", list(DIRECTIONS)) for n in names]
    texts += [_question("How many shapes move?", ["0", "1", "2", "3"])]
    texts += [_question("Does the scene change during the video?", ["yes", "no"])]
    texts += [_question(f"Where is the {n} at the end of the video?", list(POSITIONS)) for n in names]
    return texts


def cell_coverage(shape: Shape, t: int, cell: int = 28) -> np.ndarray:
    """Pixels of `shape` in each `cell`x`cell` cell at frame `t` of its scene: `[SIZE // cell, SIZE // cell]` int64."""
    top, left = shape.box(t)
    canvas = np.zeros((SIZE, SIZE), dtype=np.int64)
    canvas[top : top + shape.size, left : left + shape.size] = _mask(shape.kind, shape.size)
    return canvas.reshape(SIZE // cell, cell, SIZE // cell, cell).sum(axis=(1, 3))


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
            counts = cell_coverage(shape, frame - start, cell)
            take = (counts >= min_pixels) & (counts > best)
            best = np.where(take, counts, best)
            colour[t][take] = names.index(shape.colour)
            if shape.moves:
                sign = (int(np.sign(shape.velocity[0])), int(np.sign(shape.velocity[1])))
                motion[t][take] = 1 + directions.index(sign)
            else:
                motion[t][take] = 0
    return colour, motion
