"""From media paths and a question to Qwen2.5-VL model inputs, and from generated ids back to text.

This follows the reference recipe of the Qwen2.5-VL model card (chat template, then
`qwen_vl_utils.process_vision_info`, then the processor), with two details that matter for correctness on
transformers 5:

- qwen-vl-utils is asked for each video's metadata (`return_video_metadata=True`), which is passed on to the processor
  as `video_metadata`. The processor derives `second_per_grid_ts` (seconds per temporal patch, used by the 3-D rotary
  positions) from the *sampled* fps in that metadata; without it, it would assume 24 fps.
- decord is the video backend (`FORCE_QWENVL_VIDEO_READER=decord`, which qwen-vl-utils reads when it is imported), and
  media files are checked up front, so a missing or undecodable file raises an error naming it rather than a failure
  deep inside a fallback reader.
"""

from __future__ import annotations

import os


os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from qwen_vl_utils import process_vision_info  # noqa: E402
from transformers import BatchFeature, ProcessorMixin  # noqa: E402


__all__ = ["build_messages", "check_media", "decode", "prepare_inputs"]

Conversation = list[dict[str, Any]]
_REMOTE = ("http://", "https://", "data:")


def build_messages(
    question: str,
    videos: Sequence[str | Path] = (),
    images: Sequence[str | Path] = (),
    fps: float | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    *,
    nframes: int | None = None,
    total_pixels: int | None = None,
) -> Conversation:
    """A one-turn conversation in the format qwen-vl-utils and the chat template expect.

    The user turn holds the videos, then the images, then the question. Options left at `None` are omitted, so
    qwen-vl-utils' defaults apply (2 fps, 4 to 768 frames, 128 to 768 tokens per frame pair, and a total budget).

    Args:
        question: The text of the turn.
        videos: Local video paths (or URLs), read by qwen-vl-utils.
        images: Local image paths (or URLs).
        fps: Frames per second to sample from each video (mutually exclusive with `nframes`).
        max_frames: Upper bound on the frames sampled from each video (with `fps` sampling).
        max_pixels: Upper bound on the pixels of each video frame and each image (qwen-vl-utils resizes to multiples of
            28, keeping the aspect ratio).
        min_pixels: Lower bound on the pixels of each video frame and each image.
        nframes: Exact number of frames to sample from each video (rounded to an even number).
        total_pixels: Pixel budget of each video over all its frames.

    Returns:
        `[{"role": "user", "content": [...]}]`, with items such as
        `{"type": "video", "video": "/path/clip.mp4", "fps": 4.0, "max_pixels": 12544}`.
    """
    if fps is not None and nframes is not None:
        raise ValueError("Pass either `fps` or `nframes`, not both.")
    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    video_options = {"fps": fps, "nframes": nframes, "max_frames": max_frames, "total_pixels": total_pixels, **pixels}
    content: list[dict[str, Any]] = []
    for video in videos:
        item = {"type": "video", "video": str(video)}
        content.append(item | {key: value for key, value in video_options.items() if value is not None})
    for image in images:
        item = {"type": "image", "image": str(image)}
        content.append(item | {key: value for key, value in pixels.items() if value is not None})
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def _local_path(source: Any) -> Path | None:
    """The local file a media reference points to, or `None` for URLs and in-memory media."""
    if not isinstance(source, (str, Path)):
        return None
    source = str(source)
    if source.startswith(_REMOTE):
        return None
    return Path(source.removeprefix("file://"))


def check_media(conversations: Conversation | Sequence[Conversation]) -> None:
    """Check that every local video and image of the conversation(s) exists and can be decoded.

    Raises:
        FileNotFoundError: A media file does not exist.
        ValueError: A video has no decodable frames, or an image cannot be read.
    """
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    for conversation in conversations:
        for message in conversation:
            if not isinstance(message.get("content"), list):
                continue
            for item in message["content"]:
                kind = "video" if "video" in item else "image" if "image" in item else None
                path = _local_path(item.get(kind)) if kind else None
                if path is None:
                    continue
                if not path.is_file():
                    raise FileNotFoundError(f"{kind.capitalize()} file not found: {path}")
                _check_video(path) if kind == "video" else _check_image(path)


def _check_video(path: Path) -> None:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        if len(reader) == 0:
            raise ValueError("the stream has no frames")
        reader[0]  # decode one frame: a broken stream can still report a length
    except Exception as error:
        raise ValueError(f"Video has no decodable frames: {path} ({error})") from error


def _check_image(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:
        raise ValueError(f"Image cannot be decoded: {path} ({error})") from error


def prepare_inputs(
    processor: ProcessorMixin,
    messages: Conversation | Sequence[Conversation],
    return_video_kwargs: bool = True,
) -> BatchFeature:
    """Turn one conversation, or a batch of them, into model inputs.

    Renders the chat template (with the generation prompt), reads and resizes the media with qwen-vl-utils (patch size
    taken from the processor: 14 for Qwen2.5-VL), then runs the processor with padding (left, from the tokenizer).

    Args:
        processor: A Qwen2.5-VL processor (e.g. [`modeling.offline.build_processor`] or `AutoProcessor`).
        messages: A conversation (list of message dicts, see [`build_messages`]) or a list of conversations. A
            conversation may hold several videos and images; the conversations of a batch may differ in media.
        return_video_kwargs: Forward the video kwargs of qwen-vl-utils (`do_sample_frames=False`: the frames it
            sampled are used as they are) to the processor.

    Returns:
        A [`BatchFeature`] of tensors: `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video,
        from which transformers derives the 3-D rotary positions), and where present `pixel_values_videos`,
        `video_grid_thw`, `second_per_grid_ts`, `pixel_values`, `image_grid_thw`.

    Raises:
        FileNotFoundError: A local media file does not exist.
        ValueError: A video has no decodable frames, or an image cannot be read.
    """
    conversations: list[Conversation] = [messages] if isinstance(messages[0], dict) else list(messages)
    check_media(conversations)
    text = [
        processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        for conversation in conversations
    ]
    patch_size = getattr(processor.image_processor, "patch_size", 14)
    images, videos, video_kwargs = process_vision_info(
        conversations, return_video_kwargs=True, return_video_metadata=True, image_patch_size=patch_size
    )
    kwargs: dict[str, Any] = dict(video_kwargs) if return_video_kwargs else {}
    if videos is not None:
        videos, metadata = (list(column) for column in zip(*videos))
        kwargs["video_metadata"] = [_to_plain_metadata(item) for item in metadata]
    inputs = processor(text=text, images=images, videos=videos, padding=True, return_tensors="pt", **kwargs)
    if "second_per_grid_ts" in inputs and not torch.is_tensor(inputs["second_per_grid_ts"]):
        inputs["second_per_grid_ts"] = torch.tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
    return inputs


def _to_plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """qwen-vl-utils metadata with `frames_indices` as a list of ints (the torchvision reader returns a tensor)."""
    metadata = dict(metadata)
    indices = metadata.get("frames_indices")
    if torch.is_tensor(indices):
        metadata["frames_indices"] = indices.tolist()
    return metadata


def decode(processor: ProcessorMixin, inputs: BatchFeature | dict[str, Any], generated_ids: torch.Tensor) -> list[str]:
    """Decode what `generate` added after the prompt, one string per batch row (special tokens skipped).

    Args:
        processor: The processor (or tokenizer) that produced `inputs`.
        inputs: The model inputs given to `generate`; only `input_ids` is used, to know the prompt length.
        generated_ids: The `[batch, prompt + new]` ids returned by `generate`.
    """
    prompt_length = inputs["input_ids"].shape[1]
    new_ids = generated_ids[:, prompt_length:]
    return processor.batch_decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
