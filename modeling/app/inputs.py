"""From media paths and a question to Qwen2.5-VL model inputs, and from generated ids back to text.

This follows the reference recipe of the Qwen2.5-VL model card (chat template, then qwen-vl-utils' media reading,
then the processor), with three details that matter for correctness:

- Videos are read by [`read_media`] with decord, exactly as qwen-vl-utils' decord reader does (its frame range, its
  `smart_nframes` sampling, its resize rules and bicubic antialiased resize; tested bitwise equal), but without its
  fallback: when decord fails, qwen-vl-utils retries with `torchvision.io.read_video`, which torchvision 0.29 removed,
  so every read failure became an unrelated crash. Here a failure raises [`MediaError`] naming the file. A file that
  decord's bundled FFmpeg 4.1 cannot open (AV1, e.g. a video from YouTube; MPEG-TS; an animated GIF) is read with PyAV
  instead, turned by its display matrix as decord does, sampled and resized by the same rules (`video_backend: "pyav"`
  in its metadata). Two deliberate differences: a video of a single frame is read as that frame (qwen-vl-utils'
  sampler needs two; the Qwen2.5-VL processor repeats the last frame to fill the temporal patch, as it does for any
  odd count), and frames are decoded and resized in chunks of at most 256 MiB, so the full-resolution frames of a long
  or large video never sit in memory at once (qwen-vl-utils decodes every sampled frame in one batch).
- Each video's metadata is passed on to the processor as `video_metadata`: the processor derives
  `second_per_grid_ts` (seconds per temporal patch, used by the 3-D rotary positions) from the *sampled* fps in it;
  without it, it would assume 24 fps.
- Images are decoded completely (a truncated file fails here, naming it), then resized by qwen-vl-utils'
  `fetch_image`. Image and video URLs are fetched with a timeout (a video into a temporary file, then read). FFmpeg's
  and decord's native log lines are kept off the terminal; the last one is quoted in the error when a read fails.

Nothing here imports transformers: media can be read and checked before any model or processor is loaded.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple


from .options import MediaOptions


if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import BatchFeature, ProcessorMixin


__all__ = [
    "Media",
    "MediaOptions",
    "MediaError",
    "MediaNotFoundError",
    "build_messages",
    "check_files",
    "check_media",
    "decode",
    "prepare_inputs",
    "read_media",
]

Conversation = list[dict[str, Any]]
_REMOTE = ("http://", "https://")
#: Bytes of full-resolution RGB frames decoded at a time (then resized): 256 MiB, whatever the resolution.
_CHUNK_BYTES = 256 * 2**20
#: Seconds to wait for a media URL's server (to connect, and for each piece of a download).
_URL_TIMEOUT_S = 30


class MediaError(ValueError):
    """A video or image that cannot be used: the message names the file (or URL) and what is wrong."""


class MediaNotFoundError(MediaError, FileNotFoundError):
    """A local video or image file that does not exist."""


@dataclass
class Media:
    """The media of one or more conversations, read and resized as qwen-vl-utils would, in order of appearance.

    Attributes:
        images: PIL images (RGB, resized to multiples of 28 pixels), or None when there are none.
        videos: `[frames, 3, H, W]` float tensors (0..255), or None.
        metadata: Per video, `fps` (of the file), `frames_indices` (the frames sampled), `total_num_frames`,
            `video_backend`; the processor derives the sampled fps from it.
    """

    images: list[Image.Image] | None = None
    videos: list[torch.Tensor] | None = None
    metadata: list[dict[str, Any]] | None = field(default=None, repr=False)


# ------------------------------------------------------------------------------------------------ messages
def build_messages(
    question: str,
    videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
    images: str | os.PathLike | Sequence[str | os.PathLike] = (),
    options: MediaOptions | None = None,
) -> Conversation:
    """A one-turn conversation in the format qwen-vl-utils and the chat template expect.

    The user turn holds the videos, then the images, then the question. Each video and image item carries the
    sampling and size `options` that are set ([`MediaOptions`]); qwen-vl-utils' defaults apply to the rest.

    Args:
        question: The text of the turn (not empty).
        videos: Local video paths or URLs; a single path may be given as it is.
        images: Local image paths, URLs or `data:image/...;base64,` URIs; a single one may be given as it is.
        options: How videos and images are sampled and sized (default: qwen-vl-utils' defaults).

    Returns:
        `[{"role": "user", "content": [...]}]`, with items such as
        `{"type": "video", "video": "/path/clip.mp4", "fps": 4.0, "max_pixels": 12544}`.

    Raises:
        ValueError: An empty question.
        TypeError: `options` that is not a `MediaOptions`, or media that are not paths.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question must be a non-empty string, got {question!r}")
    if options is None:
        options = MediaOptions()
    elif not isinstance(options, MediaOptions):
        raise TypeError(f"options must be a MediaOptions, got {type(options).__name__}")
    content: list[dict[str, Any]] = []
    for video in _as_list(videos, "videos"):
        content.append({"type": "video", "video": str(video), **options.video_item()})
    for image in _as_list(images, "images"):
        content.append({"type": "image", "image": str(image), **options.image_item()})
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def _as_list(media: Any, name: str) -> list[Any]:
    """`media` as a list; a single path (str or PathLike) becomes a list of one, not a sequence of characters."""
    if isinstance(media, (str, os.PathLike)):
        return [media]
    if media is None:
        return []
    if not isinstance(media, Sequence):
        raise TypeError(f"`{name}` must be a path or a list of paths, got {type(media).__name__}")
    return list(media)


def _conversations(messages: Conversation | Sequence[Conversation]) -> list[Conversation]:
    if not messages:
        raise ValueError("no conversation given")
    return [messages] if isinstance(messages[0], dict) else list(messages)  # type: ignore[list-item]


def _media_items(conversations: list[Conversation]) -> Iterator[dict[str, Any]]:
    """The image and video items of the conversations, in order (as qwen-vl-utils' `extract_vision_info`)."""
    for conversation in conversations:
        for message in conversation:
            if not isinstance(message.get("content"), list):
                continue
            for item in message["content"]:
                if "image" in item or "image_url" in item or "video" in item:
                    yield item
                elif item.get("type", "text") in ("image", "image_url", "video"):
                    raise MediaError(f"a {item['type']} item without its {item['type']!r} key: {item}")


# ------------------------------------------------------------------------------------------------ reading
def check_media(conversations: Conversation | Sequence[Conversation]) -> None:
    """Check cheaply that every video and image of the conversation(s) can be read: the file exists, one video frame
    decodes, the image decodes completely (a video URL is downloaded for it, into a temporary folder deleted after).
    [`read_media`] does the full read (and the same checks).

    Raises:
        MediaNotFoundError: A local media file does not exist (a `FileNotFoundError`).
        MediaError: A video has no decodable frame, an image cannot be decoded (a `ValueError`).
    """
    with tempfile.TemporaryDirectory(prefix="qwen-prunevid-") as folder:
        for item in _media_items(_conversations(conversations)):
            if "video" in item:
                source = item["video"]
                if isinstance(source, str):
                    _open_video(source, folder)
            else:
                _load_image(item.get("image", item.get("image_url")))


def check_files(conversations: Conversation | Sequence[Conversation]) -> None:
    """Check that every local video and image file of the conversation(s) exists (nothing is opened or imported).

    Raises:
        MediaNotFoundError: A local media file does not exist or is a directory (a `FileNotFoundError`).
        MediaError: A `data:` URI given as a video.
    """
    for item in _media_items(_conversations(conversations)):
        source = item["video"] if "video" in item else item.get("image", item.get("image_url"))
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if not isinstance(source, str):
            continue
        if "video" in item:
            _video_location(source)
        elif not source.startswith((*_REMOTE, "data:")):
            _local_image(source)


def read_media(conversations: Conversation | Sequence[Conversation], patch_size: int = 14) -> Media:
    """Read and resize every video and image of the conversation(s), as qwen-vl-utils' `process_vision_info` with
    decord does (see the module docstring for the two differences), never through its torchvision fallback; a
    video decord cannot open is read with PyAV.

    Args:
        conversations: A conversation or a list of them (see [`build_messages`]).
        patch_size: The vision patch size (14 for Qwen2.5-VL); sizes are multiples of `2 * patch_size`.

    Raises:
        MediaNotFoundError: A local media file does not exist (a `FileNotFoundError`).
        MediaError: A video or image cannot be decoded, or cannot be resized within the pixel limits (a `ValueError`).
    """
    with tempfile.TemporaryDirectory(prefix="qwen-prunevid-") as folder:  # video URLs are downloaded here
        return _read_media(list(_media_items(_conversations(conversations))), patch_size, folder)


def _read_media(items: list[dict[str, Any]], patch_size: int, folder: str) -> Media:
    opened: list[Any] = []  # 1. every file opens and decodes (decord, PIL): a bad one is named in a second or so
    for item in items:
        if "video" in item:
            source = item["video"]
            opened.append(_open_video(source, folder) if isinstance(source, str) else None)
        else:
            opened.append(_load_image(item.get("image", item.get("image_url"))))

    from qwen_vl_utils import fetch_image, fetch_video  # 2. sampled and resized (imports torchvision)

    images, videos, metadata = [], [], []
    for item, probe in zip(items, opened):
        if "video" in item:
            if isinstance(item["video"], str):
                location, probe = probe
                with _named(item["video"], location):
                    video, meta = _read_video(item, patch_size, probe, location)
            else:  # a list of frames: qwen-vl-utils' own path (no video reader involved)
                video, meta = fetch_video(item, image_patch_size=patch_size, return_video_metadata=True)
            videos.append(video), metadata.append(meta)
        else:
            try:
                images.append(fetch_image({**item, "image": probe}, image_patch_size=patch_size))
            except (ValueError, AssertionError, ZeroDivisionError) as error:
                source = _name(item.get("image", item.get("image_url")))
                raise MediaError(f"Image {source} cannot be resized: {error}") from error
    return Media(images or None, videos or None, metadata or None)


def _name(source: Any) -> str:
    if isinstance(source, str) and source.startswith("data:"):
        return source[:40] + "..."
    return str(source)


def _open_video(source: str, folder: str) -> tuple[str, _Probe]:
    """(the local file, its [`_probe_video`]) of a video path or URL (a URL downloaded into `folder`)."""
    location = _local_video(source, folder)
    with _named(source, location):
        return location, _probe_video(location)


def _local_video(source: str, folder: str) -> str:
    """The local file to open for a video path or URL: a URL is downloaded into `folder` first (decord and FFmpeg
    would wait for a stalled server for ever), in pieces of 1 MiB, waiting at most `_URL_TIMEOUT_S` for each."""
    import requests

    location = _video_location(source)
    if not location.startswith(_REMOTE):
        return location
    path = Path(tempfile.mkdtemp(dir=folder)) / (Path(location.split("?")[0]).name or "video")
    try:
        with requests.get(location, stream=True, timeout=_URL_TIMEOUT_S) as response:
            response.raise_for_status()
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind in ("text/html", "application/xhtml+xml"):
                raise MediaError(f"Video {location} is a web page ({kind}), not a video file: give the address of "
                                 "the file itself, or download the video first")  # fmt: skip
            with path.open("wb") as out:
                for piece in response.iter_content(2**20):
                    out.write(piece)
    except requests.RequestException as error:
        raise MediaError(f"Cannot download {location}: {type(error).__name__}") from error
    return str(path)


@contextlib.contextmanager
def _named(source: str, location: str) -> Iterator[None]:
    """Errors about a downloaded video name its URL, not the temporary file."""
    try:
        yield
    except MediaError as error:
        if location == source:
            raise
        raise type(error)(str(error).replace(location, source)) from error


def _video_location(source: str) -> str:
    """The path or URL of a video; raises for a missing local file or an unsupported URL scheme."""
    if source.startswith(_REMOTE):
        return source
    if source.startswith("data:"):
        raise MediaError(f"Video {_name(source)}: data: URIs are supported for images only")
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        kind = "is a directory, not a video file" if path.is_dir() else "not found"
        raise MediaNotFoundError(f"Video file {kind}: {path}")
    return str(path)


@contextlib.contextmanager
def _native_log(lines: list[str]) -> Iterator[None]:
    """Route file descriptor 2 to a temporary file while native code runs (FFmpeg and decord write their log lines
    there, past Python's `sys.stderr`); the captured lines are appended to `lines`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(line for line in log.read().decode(errors="replace").splitlines() if line.strip())


def _reason(error: BaseException, log: list[str]) -> str:
    """One line: the error, and the last native log line when it says more."""
    text = " ".join(str(error).split()) or type(error).__name__
    if log:
        last = " ".join(log[-1].split())
        if last not in text:
            text = f"{text}; {last}"
    return text


class _Probe(NamedTuple):
    """What opening a video found: its frame count and frame rate, its frame size and the reader that opened it."""

    frames: int
    fps: float
    size: tuple[int, int]  # (height, width) of the first frame
    backend: str  # "decord", or "pyav" for a file decord's own FFmpeg cannot decode


def _probe_video(location: str) -> _Probe:
    """Open a video and decode its first frame, with decord (qwen-vl-utils' reader); a file decord cannot open
    (its bundled FFmpeg 4.1 has no AV1 decoder and cannot count the frames of an animated GIF) is opened with PyAV."""
    import decord

    log: list[str] = []
    try:
        with _native_log(log):
            reader = decord.VideoReader(location, num_threads=1)
            frames, fps = len(reader), float(reader.get_avg_fps())
            height, width = reader[0].shape[:2] if frames else (0, 0)
            del reader
    except Exception as error:  # noqa: BLE001 - decord raises its own DECORDError or RuntimeError
        reason = _reason(error, log)
        probe = _probe_pyav(location)
        if probe is None:
            raise MediaError(f"Video has no decodable frames: {location} ({reason})") from error
        frames, fps, (height, width), _ = probe
        backend = "pyav"
    else:
        backend = "decord"
    if frames < 1:
        raise MediaError(f"Video has no decodable frames: {location} (the stream has no frames)")
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(f"Video {location} reports a frame rate of {fps}; cannot sample it by time")
    return _Probe(frames, fps, (height, width), backend)


def _probe_pyav(location: str) -> _Probe | None:
    """PyAV's view of a video decord could not open: None if PyAV cannot decode a frame of it either. The frame count
    is the container's, else the stream's packets (counted without decoding); [`_read_video`] corrects it when the
    decoder delivers fewer frames. Raises [`MediaError`] for a file whose only streams are not video."""
    import av

    log: list[str] = []
    try:
        with _native_log(log), av.open(location) as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
                raise MediaError(f"Video {location} has no video stream (streams: {kinds})")
            if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                raise MediaError(f"Video {location} is a still image ({container.format.name}): give it as an image")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            rate = stream.average_rate or stream.guessed_rate
        if first is None:
            return None
        size = (first.width, first.height) if _quarter_turns(first) % 2 else (first.height, first.width)
        frames = stream.frames
        if frames <= 0:
            with _native_log(log), av.open(location) as container:
                frames = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except MediaError:
        raise
    except Exception:  # noqa: BLE001 - PyAV raises av.FFmpegError subclasses, OSError, StopIteration...
        return None
    return _Probe(frames, float(rate) if rate else math.nan, size, "pyav")


def _quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns that make a PyAV frame upright (its display matrix; PyAV >= 14 reads it), as
    decord turns the frames it returns."""
    return round(getattr(frame, "rotation", 0) / 90) % 4


def _read_video(item: dict[str, Any], patch_size: int, probe: _Probe,
                location: str) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """qwen-vl-utils' `fetch_video` with its decord reader for the video file at `location`, given its
    [`_probe_video`]; returns (video, metadata). A video only PyAV can open is sampled and resized by the same rules."""
    total, fps, (height, width), backend = probe
    indices, total, new_size = _sampling(item, patch_size, location, total, fps, height, width)
    if backend == "decord":
        video = _decord_frames(location, indices, (height, width), new_size)
    else:
        video, decoded = _pyav_frames(location, indices, (height, width), new_size)
        if video is None:  # the stream held fewer frames than its packets: sample the frames it has
            if decoded < 1:
                raise MediaError(f"Video has no decodable frames: {location} (the stream has no frames)")
            indices, total, new_size = _sampling(item, patch_size, location, decoded, fps, height, width)
            video, _ = _pyav_frames(location, indices, (height, width), new_size)
    metadata = {"fps": fps, "frames_indices": indices, "total_num_frames": total, "video_backend": backend}
    return video, metadata


def _sampling(item: dict[str, Any], patch_size: int, location: str, total: int, fps: float, height: int,
              width: int) -> tuple[list[int], int, tuple[int, int]]:  # fmt: skip
    """qwen-vl-utils' sampling and resized size for a video of `total` frames at `fps`: (the frame indices to read,
    the frames in the sampled range, (new height, new width))."""
    import torch
    from qwen_vl_utils import vision_process as qvu

    try:
        start, end, total = qvu.calculate_video_frame_range(item, total, fps)
        # One frame: qwen-vl-utils' sampler needs two; the processor repeats it to fill the temporal patch.
        count = total if total < qvu.FRAME_FACTOR else qvu.smart_nframes(item, total_frames=total, video_fps=fps)
        factor = patch_size * qvu.SPATIAL_MERGE_SIZE
        min_pixels = item.get("min_pixels", qvu.VIDEO_MIN_TOKEN_NUM * factor**2)
        total_pixels = item.get("total_pixels", qvu.MODEL_SEQ_LEN * factor**2 * 0.9)
        max_pixels = max(min(qvu.VIDEO_MAX_TOKEN_NUM * factor**2, total_pixels / count * qvu.FRAME_FACTOR),
                         int(min_pixels * 1.05))  # fmt: skip
        max_pixels = min(item.get("max_pixels", max_pixels), max_pixels)
        size = [height, width]
        if "resized_height" in item and "resized_width" in item:
            size = [item["resized_height"], item["resized_width"]]
            min_pixels, max_pixels = None, None
        new_height, new_width = qvu.smart_resize(*size, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except AssertionError as error:  # smart_resize's min_pixels <= max_pixels
        raise MediaError(f"Video {location}: max_pixels={max_pixels} is below min_pixels={min_pixels} (give a "
                         "smaller min_pixels)") from error  # fmt: skip
    except (ValueError, ZeroDivisionError) as error:
        raise MediaError(f"Video {location} cannot be sampled or resized: {' '.join(str(error).split())}") from error
    if new_height < factor or new_width < factor:
        raise MediaError(f"Video {location} ({width}x{height}) is resized to {new_width}x{new_height} pixels: raise "
                         f"max_pixels to at least {factor}x{factor} tokens' worth for this aspect ratio")  # fmt: skip
    return torch.linspace(start, end, count).round().long().tolist(), total, (new_height, new_width)


def _frames_per_chunk(size: tuple[int, int]) -> int:
    """Full-resolution RGB frames of `size` (height, width) decoded at a time: `_CHUNK_BYTES` of them, at least one."""
    return max(1, _CHUNK_BYTES // (3 * size[0] * size[1]))


def _resize(frames: np.ndarray, new_size: tuple[int, int]) -> torch.Tensor:
    """RGB frames `[N, H, W, 3]` (uint8) -> `[N, 3, h, w]`, resized as qwen-vl-utils does (bicubic, antialiased)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
    return resize(frames, list(new_size), interpolation=InterpolationMode.BICUBIC, antialias=True)


def _decord_frames(location: str, indices: list[int], size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """The frames at `indices`, decoded by decord a chunk at a time and resized (float `[N, 3, h, w]`)."""
    import decord
    import torch

    step = _frames_per_chunk(size)
    chunks, log = [], []
    try:
        with _native_log(log):
            reader = decord.VideoReader(location)
            for first in range(0, len(indices), step):
                chunks.append(_resize(reader.get_batch(indices[first : first + step]).asnumpy(), new_size))
            del reader
    except Exception as error:  # noqa: BLE001 - decord raises its own DECORDError or RuntimeError
        raise MediaError(f"Video {location} cannot be decoded: {_reason(error, log)}") from error
    return torch.cat(chunks).float()


def _pyav_frames(location: str, indices: list[int], size: tuple[int, int],
                 new_size: tuple[int, int]) -> tuple[torch.Tensor | None, int]:  # fmt: skip
    """The frames at `indices` (ascending, repeats allowed), decoded by PyAV in one pass, converted to RGB at the first
    frame's size, turned upright as decord turns them, and resized a chunk at a time: (float `[N, 3, h, w]`, frames
    decoded), or (None, frames decoded) when the stream ends before the last index. It decodes every frame up to the
    last index (no seeking, which frame indices would need exact timestamps for): slower than decord on long videos."""
    import av
    import numpy as np
    import torch

    step = _frames_per_chunk(size)
    wanted = Counter(indices)  # repeats: how often each frame is sampled
    last, decoded, pending, chunks, log = indices[-1], 0, [], [], []
    try:
        with _native_log(log), av.open(location) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if not decoded:
                    width, height = frame.width, frame.height
                repeats = wanted.get(decoded, 0)
                decoded += 1
                if repeats:
                    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                    turns = _quarter_turns(frame)
                    if turns:
                        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
                    pending += [rgb] * repeats
                    if len(pending) >= step:
                        chunks.append(_resize(np.stack(pending), new_size))
                        pending = []
                if decoded > last:
                    break
    except Exception as error:  # noqa: BLE001 - PyAV raises av.FFmpegError subclasses and OSError
        raise MediaError(f"Video {location} cannot be decoded: {_reason(error, log)}") from error
    if decoded <= last:
        return None, decoded
    if pending:
        chunks.append(_resize(np.stack(pending), new_size))
    return torch.cat(chunks).float(), decoded


def _load_image(source: Any) -> Image.Image:
    """A completely decoded PIL image from a path, `file://` path, http(s) URL, `data:image/...;base64,` URI or a
    PIL image."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise MediaError(f"an image must be a path, URL, data URI or PIL image, got {type(source).__name__}")
    if source.startswith(_REMOTE):
        data = io.BytesIO(_download(source))
    elif source.startswith("data:"):
        header, _, payload = source.partition(",")
        if not header.startswith("data:image") or not header.endswith(";base64"):
            raise MediaError(f"Image {_name(source)}: only data:image/...;base64, URIs are supported")
        try:
            data = io.BytesIO(base64.b64decode(payload, validate=True))
        except ValueError as error:
            raise MediaError(f"Image {_name(source)}: invalid base64 ({error})") from error
    else:
        data = _local_image(source)
    try:
        with Image.open(data) as image:
            image.load()  # decode every pixel: a truncated file fails here, not later
            return image
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise MediaError(f"Image cannot be decoded: {_name(source)} ({' '.join(str(error).split())})") from error


def _local_image(source: str) -> Path:
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        kind = "is a directory, not an image file" if path.is_dir() else "not found"
        raise MediaNotFoundError(f"Image file {kind}: {path}")
    return path


def _download(url: str) -> bytes:
    import requests

    try:
        response = requests.get(url, timeout=_URL_TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as error:
        raise MediaError(f"Cannot download {url}: {type(error).__name__}") from error
    return response.content


# ------------------------------------------------------------------------------------------------ processing
def prepare_inputs(
    processor: ProcessorMixin,
    messages: Conversation | Sequence[Conversation],
    return_video_kwargs: bool = True,
    *,
    media: Media | None = None,
) -> BatchFeature:
    """Turn one conversation, or a batch of them, into model inputs.

    Renders the chat template (with the generation prompt), reads and resizes the media ([`read_media`], patch size
    taken from the processor: 14 for Qwen2.5-VL), then runs the processor with padding (left, from the tokenizer).

    Args:
        processor: A Qwen2.5-VL processor (e.g. [`modeling.demo.offline.build_processor`] or `AutoProcessor`).
        messages: A conversation (list of message dicts, see [`build_messages`]) or a list of conversations. A
            conversation may hold several videos and images; the conversations of a batch may differ in media.
        return_video_kwargs: Tell the processor that the frames are already sampled (`do_sample_frames=False`, as
            qwen-vl-utils' video kwargs do), so it uses them as they are.
        media: The media of `messages`, already read by [`read_media`] (to read them before loading a model).

    Returns:
        A [`BatchFeature`] of tensors: `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video,
        from which transformers derives the 3-D rotary positions), and where present `pixel_values_videos`,
        `video_grid_thw`, `second_per_grid_ts`, `pixel_values`, `image_grid_thw`.

    Raises:
        MediaNotFoundError: A local media file does not exist (a `FileNotFoundError`).
        MediaError: A video or image cannot be read (a `ValueError`).
    """
    import torch

    conversations = _conversations(messages)
    if media is None:
        media = read_media(conversations, patch_size=getattr(processor.image_processor, "patch_size", 14))
    text = [
        processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        for conversation in conversations
    ]
    kwargs: dict[str, Any] = {"do_sample_frames": False} if return_video_kwargs else {}
    if media.videos is not None:
        kwargs["video_metadata"] = media.metadata
    inputs = processor(text=text, images=media.images, videos=media.videos, padding=True, return_tensors="pt", **kwargs)
    if "second_per_grid_ts" in inputs and not torch.is_tensor(inputs["second_per_grid_ts"]):
        inputs["second_per_grid_ts"] = torch.tensor(inputs["second_per_grid_ts"], dtype=torch.float32)
    return inputs


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
