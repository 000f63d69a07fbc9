"""Shared fixtures: an offline processor, generated clips and images, and saved random-weight checkpoints."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# (test id, what) for every input the installed release's stock model cannot process (tests/test_equivalence.py,
# tests/test_stages.py); listed at the end of the run, one `STOCK-UNSUPPORTED` line each (read by tools/sync_matrix.py).
STOCK_UNSUPPORTED: list[tuple[str, str]] = []


def pytest_terminal_summary(terminalreporter):
    if STOCK_UNSUPPORTED:
        import transformers

        terminalreporter.section(f"inputs the stock model of transformers {transformers.__version__} cannot process")
        for nodeid, what in STOCK_UNSUPPORTED:
            terminalreporter.line(f"STOCK-UNSUPPORTED {nodeid}: {what}")


@pytest.fixture(scope="session")
def processor():
    from modeling.demo.offline import build_processor

    return build_processor()


# The clips of the `media` fixture (`make_clip` arguments; `fps` is also the rate they are read at), and the video
# cases of `make_inputs` / `frame_inputs`: (question, clip) per conversation.
CLIPS = {
    "clip16": dict(frames=16, size=(112, 112), fps=4.0, seed=0),
    "clip8": dict(frames=8, size=(84, 112), fps=4.0, squares=2, seed=1),
    "clip12_cut": dict(frames=12, size=(112, 112), fps=2.0, scene_cut_at=6, seed=2),
}
VIDEO_QUESTION = "What is happening in this video? Answer in one sentence."
VIDEO_CASES = {
    "video": [(VIDEO_QUESTION, "clip16")],
    "batch3": [(VIDEO_QUESTION, "clip16"), ("Where do the squares go?", "clip8"),
               ("Is there a scene cut?", "clip12_cut")],
}  # fmt: skip


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Small clips that behave like video (static textured background, moving squares, a scene cut) and an image."""
    import numpy as np
    from PIL import Image

    from modeling.demo.clips import clip_frames, make_clip

    root = tmp_path_factory.mktemp("media")
    files = {name: make_clip(root / f"{name}.mp4", **clip) for name, clip in CLIPS.items()}
    frame = clip_frames(frames=1, size=(56, 84), seed=3)[0]
    Image.fromarray(np.ascontiguousarray(frame)).save(root / "image.png")
    files["image"] = root / "image.png"
    return files


def make_inputs(processor, media, case: str):
    """Processor outputs for the named input case, built through the released model's path."""
    from modeling import MediaOptions
    from modeling.app.inputs import build_messages as _build_messages, prepare_inputs

    # Keep the clips at their own size (qwen-vl-utils would upscale them to >= 128 tokens per frame pair).
    small = MediaOptions(min_pixels=28 * 28 * 4, max_pixels=112 * 112)

    def build_messages(question, videos=(), images=(), fps=None):
        return _build_messages(question, videos, images, small.replace(fps=fps))

    if case == "text":
        conv = build_messages("Write a haiku about tokens.")
    elif case == "image":
        conv = build_messages("Describe the image.", images=[str(media["image"])])
    elif case in VIDEO_CASES:
        conv = [build_messages(question, videos=[str(media[clip])], fps=CLIPS[clip]["fps"])
                for question, clip in VIDEO_CASES[case]]  # fmt: skip
        conv = conv if case == "batch3" else conv[0]
    elif case == "multi":
        conv = build_messages(
            "Compare the two videos and the picture.",
            videos=[str(media["clip16"]), str(media["clip12_cut"])],
            images=[str(media["image"])],
            fps=2.0,
        )
    else:
        raise KeyError(case)
    return prepare_inputs(processor, conv)


def frame_inputs(processor, case: str):
    """The "video" and "batch3" cases of `make_inputs` made from the clips' frames in memory, every frame sampled:
    no video file is written or read (the lent GPU machine has neither PyAV nor decord)."""
    from modeling.app.inputs import Media, build_messages, prepare_inputs
    from modeling.demo.clips import clip_frames

    conv, videos, metadata = [], [], []
    for question, name in VIDEO_CASES[case]:
        clip = dict(CLIPS[name])
        fps = clip.pop("fps")
        frames = torch.from_numpy(clip_frames(**clip)).permute(0, 3, 1, 2).float()
        conv.append(build_messages(question, videos=["clip.mp4"]))
        videos.append(frames)
        metadata.append({"fps": fps, "frames_indices": list(range(len(frames))), "total_num_frames": len(frames),
                         "video_backend": "frames"})  # fmt: skip
    return prepare_inputs(processor, conv if case == "batch3" else conv[0], media=Media(None, videos, metadata))


INPUT_CASES = ("text", "image", "video", "multi", "batch3")

# Small random-weight shapes: GQA ratios 2 / 6 / 1 (MHA), different mrope sections, depth >= 12.
SHAPES = {
    "gqa2": dict(),
    "gqa6": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=1, intermediate_size=160,
                 rope_parameters={"mrope_section": [4, 2, 2]}),
    "mha": dict(num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=14,
                rope_parameters={"mrope_section": [4, 6, 6]}, vision_depth=4,
                fullatt_block_indexes=[1, 3]),
}  # fmt: skip


def make_video(seed: int, lengths: list[int], h: int, w: int, dyn: tuple[slice, slice], c: int = 24) -> torch.Tensor:
    """Stage-1 test features `[T*h*w, c]`: scenes of `lengths` frames, each a static random background with small
    per-frame noise, and a region `dyn` whose tokens are fresh every frame (test_algorithm, test_ablations)."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for n in lengths:
        bg = torch.randn(h, w, c, generator=g) + 3.0 * torch.randn(c, generator=g)
        for _ in range(n):
            f = bg + 0.05 * torch.randn(h, w, c, generator=g)
            f[dyn] = 2.0 * torch.randn(f[dyn].shape, generator=g)
            frames.append(f)
    return torch.stack(frames).reshape(-1, c)


def save_random_model(path: Path, seed: int = 0, **overrides) -> Path:
    """Save a random-weight Qwen2.5-VL (stock class) to `path`; returns `path`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from modeling.demo.offline import tiny_config

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(**overrides))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: save_random_model(root / name, seed=i, **kw) for i, (name, kw) in enumerate(SHAPES.items())}
