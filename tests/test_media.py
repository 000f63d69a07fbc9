"""The media matrix: codecs, sizes, aspect ratios, frame counts and image modes, read the way the model sees them.

Small files are generated here with PyAV and PIL. Every video is read by `modeling.app.inputs.read_media` (decord,
qwen-vl-utils' sampling and resize, no torchvision fallback) and processed by the offline processor; where
qwen-vl-utils itself can read the file, the result is compared with its `process_vision_info` bit for bit.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling.demo.clips import clip_frames
from modeling import MediaOptions
from modeling.app.inputs import MediaError, build_messages, prepare_inputs, read_media


av = pytest.importorskip("av")

SMALL = {"min_pixels": 28 * 28, "max_pixels": 112 * 112}  # keep the frames at (about) their own size


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError or ValueError
        return False
    return True


def encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, *, fps: int = 8, times=None, audio=False) -> Path:
    """Encode RGB frames `[N, H, W, 3]` with PyAV; `times` (seconds) gives variable frame timestamps, `audio` adds a
    silent audio track."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        sound = out.add_stream("aac" if path.suffix == ".mp4" else "pcm_s16le", rate=8000) if audio else None
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if times is not None:
                picture.pts, picture.time_base = round(times[i] * 1000), Fraction(1, 1000)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
        if sound is not None:  # every stream is added before the first packet is written
            samples = 8000 * len(frames) // fps
            pcm = sound.codec_context.name == "pcm_s16le"
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.int16 if pcm else np.float32),
                                               format="s16" if pcm else "fltp", layout="mono")  # fmt: skip
            chunk.sample_rate, chunk.pts = 8000, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode())
    return path


# name: (codec, pixel format, (height, width), frames, options)
VIDEOS = {
    "h264": ("libx264", "yuv420p", (112, 112), 12, {}),
    "vp9": ("libvpx-vp9", "yuv420p", (112, 112), 12, {}),
    "mjpeg": ("mjpeg", "yuvj420p", (112, 112), 12, {}),
    "mpeg4": ("mpeg4", "yuv420p", (112, 112), 12, {}),
    "odd_97x61": ("libx264", "yuv444p", (61, 97), 12, {}),
    "portrait": ("libx264", "yuv420p", (168, 84), 12, {}),
    "wide": ("libx264", "yuv420p", (56, 224), 12, {}),
    "vfr": ("libx264", "yuv420p", (112, 112), 12, {"times": [0, .1, .15, .5, .55, .6, 1.2, 1.3, 1.35, 2, 2.05, 2.1]}),
    "audio_mkv": ("libx264", "yuv420p", (112, 112), 12, {"audio": True}),
    "audio_mp4": ("libx264", "yuv420p", (112, 112), 12, {"audio": True}),
    "grayscale": ("ffv1", "gray", (112, 112), 12, {}),
    "one_frame": ("libx264", "yuv420p", (112, 112), 1, {}),
    "two_frames": ("libx264", "yuv420p", (112, 112), 2, {}),
    "three_frames": ("libx264", "yuv420p", (112, 112), 3, {}),
    "long_80": ("libx264", "yuv420p", (56, 84), 80, {}),  # more frames than one decode chunk
    # decord's bundled FFmpeg 4.1 cannot open these: read with PyAV
    "av1": ("libaom-av1", "yuv420p", (112, 112), 12, {}),
    "gif": ("gif", "rgb8", (112, 112), 12, {"fps": 5}),  # a GIF stores frame times in hundredths of a second
    "mpegts": ("libx264", "yuv420p", (112, 112), 12, {}),
}
_SUFFIX = {"vp9": ".webm", "mjpeg": ".avi", "odd_97x61": ".mkv", "vfr": ".mkv", "audio_mkv": ".mkv", "grayscale": ".mkv",
           "gif": ".gif", "mpegts": ".ts"}  # fmt: skip
_PYAV = {"av1", "gif", "mpegts"}


def _source_frames(name: str) -> np.ndarray:
    """The RGB frames `[N, H, W, 3]` encoded into the video `name` of VIDEOS."""
    _, pix_fmt, (height, width), count, _ = VIDEOS[name]
    frames = clip_frames(frames=count, size=(height + height % 2, width + width % 2), seed=3)[:, :height, :width]
    if pix_fmt == "gray":
        frames = frames.mean(axis=-1, keepdims=True).round().astype(np.uint8).repeat(3, axis=-1)
    return np.ascontiguousarray(frames)


def write_videos(root: Path) -> None:
    """Encode every video of VIDEOS whose encoder this FFmpeg build has into `root`."""
    for name, (codec, pix_fmt, _, _, options) in VIDEOS.items():
        if _has_encoder(codec):
            encode(root / f"{name}{_SUFFIX.get(name, '.mp4')}", _source_frames(name), codec, pix_fmt, **options)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """The videos, encoded in a fresh process: once decord is imported, its bundled FFmpeg libraries shadow PyAV's
    and the libvpx-vp9 encoder fails to open (seen with decord 0.6.0 and PyAV 18.1)."""
    root = tmp_path_factory.mktemp("videos")
    script = "import sys; sys.path.insert(0, sys.argv[1]); import test_media; test_media.write_videos(Path(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", f"from pathlib import Path; {script}", str(Path(__file__).parent), str(root)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    out = {}
    for name in VIDEOS:
        path = root / f"{name}{_SUFFIX.get(name, '.mp4')}"
        if path.is_file():
            out[name] = (path, _source_frames(name))
    return out


def _video(videos, name):
    if name not in videos:
        pytest.skip(f"this FFmpeg build has no {VIDEOS[name][0]} encoder")
    return videos[name]


def _resized(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The source frames resized like qwen-vl-utils does (bicubic, antialiased), `[N, 3, H, W]` float."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return resize(tensor, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True).float()


@pytest.mark.parametrize("name", list(VIDEOS))
def test_video_matrix(name, videos, processor):
    from qwen_vl_utils import smart_resize

    path, frames = _video(videos, name)
    messages = build_messages("What moves?", [path], options=MediaOptions(fps=8.0, **SMALL))
    media = read_media(messages)
    (video,), (meta,) = media.videos, media.metadata
    count = len(frames)
    sampled = count if count < 2 else count // 2 * 2  # all frames (files at <= 8 fps), in pairs (one frame: itself)
    height, width = smart_resize(*frames.shape[1:3], factor=28, **SMALL)
    assert video.shape == (sampled, 3, height, width) and video.dtype == torch.float32
    assert meta["frames_indices"] == np.linspace(0, count - 1, sampled).round().astype(int).tolist()
    assert meta["total_num_frames"] == count
    assert meta["video_backend"] == ("pyav" if name in _PYAV else "decord")
    assert meta["fps"] == VIDEOS[name][4].get("fps", 8)
    # The decoded pixels are the encoded ones (up to the codec's loss): right frames, right colours, right way up.
    expected = _resized(frames[meta["frames_indices"]], (height, width))
    if name == "gif":  # 256 colours, dithered: compared over 4x4 blocks
        video, expected = torch.nn.functional.avg_pool2d(video, 4), torch.nn.functional.avg_pool2d(expected, 4)
    assert (video - expected).abs().mean() < 8, (video - expected).abs().mean()  # flipped or BGR: 14 to 33

    inputs = prepare_inputs(processor, messages, media=media)
    t = -(-sampled // 2)  # the processor fills an odd last temporal patch by repeating the last frame
    assert inputs["video_grid_thw"].tolist() == [[t, height // 14, width // 14]]
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == t * height * width // 28**2
    assert torch.isfinite(inputs["pixel_values_videos"]).all()
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(2 / (sampled / count * meta["fps"]))]


@pytest.mark.parametrize(
    "options",
    [{"fps": 8.0}, {}, {"fps": 3.0, **SMALL}, {"max_frames": 6}, {"nframes": 10}, {"fps": 2.0, "total_pixels": 50000}],
    ids=["fps8", "defaults", "fps3_small", "max_frames6", "nframes10", "total_pixels"],
)  # fmt: skip
@pytest.mark.parametrize("name", ["h264", "vp9", "long_80", "odd_97x61"])
@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_read_media_equals_qwen_vl_utils(reader, name, options, videos, capfd, monkeypatch):
    """Where qwen-vl-utils' decord reader works, ours returns the same frames, bit for bit, and the same metadata,
    also when it decodes them a few at a time; and so does the PyAV fallback when decord is made to fail."""
    from qwen_vl_utils import process_vision_info

    path, frames = _video(videos, name)
    monkeypatch.setattr("modeling.app.inputs._CHUNK_BYTES", 7 * frames[0].nbytes)  # 7 full-resolution frames per chunk
    messages = build_messages("?", [path, path], options=MediaOptions(**options))
    with monkeypatch.context() as patch:
        if reader == "pyav":
            patch.setattr("decord.VideoReader", _decord_fails)
        media = read_media(messages)
    _, reference, _ = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
    for ours, meta, (theirs, their_meta) in zip(media.videos, media.metadata, reference, strict=True):
        assert torch.equal(ours, theirs)
        assert meta == {**their_meta, "video_backend": reader}
    capfd.readouterr()  # qwen-vl-utils prints its backend on stderr


def _decord_fails(*args, **kwargs):
    raise RuntimeError("decord cannot open this file")


def test_pyav_fallback_samples_the_frames_a_stream_really_has(videos, monkeypatch):
    """A container that announces more frames than its stream decodes: the fallback samples the frames it has."""
    from modeling.app import inputs

    path, frames = _video(videos, "h264")
    messages = build_messages("?", [path], options=MediaOptions(fps=8.0, **SMALL))
    expected = read_media(messages)
    monkeypatch.setattr("decord.VideoReader", _decord_fails)
    probe = inputs._probe_pyav
    monkeypatch.setattr(inputs, "_probe_pyav", lambda *a: probe(*a)._replace(frames=len(frames) + 9))
    media = read_media(messages)
    assert torch.equal(media.videos[0], expected.videos[0])
    assert media.metadata == [{**expected.metadata[0], "video_backend": "pyav"}]


def test_files_without_video_are_named_for_what_they_are(tmp_path):
    sound = tmp_path / "speech.m4a"
    with av.open(str(sound), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype=np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 8000, 0
        out.mux(stream.encode(chunk))
        out.mux(stream.encode())
    with pytest.raises(MediaError, match=r"speech.m4a has no video stream \(streams: audio\)"):
        read_media(build_messages("?", videos=[sound]))
    picture = tmp_path / "still.png"
    Image.fromarray(clip_frames(frames=1, size=(56, 56), seed=0)[0]).save(picture)
    with pytest.raises(MediaError, match="still.png is a still image .*: give it as an image"):
        read_media(build_messages("?", videos=[picture]))


def test_single_frame_video_end_to_end(videos):
    """A 1-frame video is valid input: qwen-vl-utils cannot sample it (and crashed in its removed fallback)."""
    from modeling import PruneVidConfig, VideoQA
    from modeling.demo import checkpoint_path

    path, _ = _video(videos, "one_frame")
    qa = VideoQA.from_pretrained(checkpoint_path(), prunevid=PruneVidConfig.paper())
    small = MediaOptions(max_pixels=112 * 112)
    result = qa.run("What is this?", videos=str(path), options=small, max_new_tokens=2)  # a plain string
    assert result.inputs["video_grid_thw"].tolist() == [[1, 8, 8]]
    assert result.stats.visual_tokens == result.stats.after_stage1 == 16  # one temporal patch: nothing merged
    assert 0 < result.stats.after_stage2 < 16 and result.new_tokens == 2
    same = qa.run("What is this?", videos=[path], options=small, max_new_tokens=2)
    assert same.token_ids == result.token_ids and same.stats == result.stats


def test_beam_search_and_timing(videos):
    from modeling import VideoQA
    from modeling.demo import checkpoint_path

    path, _ = _video(videos, "h264")
    qa = VideoQA.from_pretrained(checkpoint_path())
    inputs = qa.prepare("What moves?", videos=path, options=MediaOptions(max_pixels=112 * 112))
    beams = qa.run(inputs=inputs, max_new_tokens=3, num_beams=2)
    assert beams.time_to_first_token_s is None and beams.decode_tokens_per_s is None and beams.total_s > 0
    assert 1 <= beams.new_tokens <= 3
    assert beams.stats.visual_tokens == int((inputs["input_ids"] == qa.model.config.video_token_id).sum())
    greedy = qa.run(inputs=inputs, max_new_tokens=3)
    assert greedy.total_s >= greedy.time_to_first_token_s > 0 and 1 <= greedy.new_tokens <= 3  # may stop early
    with pytest.raises(TypeError, match="options=MediaOptions"):
        qa.run(inputs=inputs, max_new_tokens=3, fps=2.0)  # a media option is never passed on to generate
    assert greedy.decode_tokens_per_s is None or greedy.decode_tokens_per_s > 0


# ------------------------------------------------------------------------------------------------------- images
def _image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    return rgb.convert(mode)


# name: (mode, format, (width, height))
IMAGES = {
    "rgb_png": ("RGB", "PNG", (97, 61)),
    "rgba_png": ("RGBA", "PNG", (61, 97)),
    "gray_png": ("L", "PNG", (84, 56)),
    "gray_alpha_png": ("LA", "PNG", (84, 56)),
    "bilevel_png": ("1", "PNG", (50, 50)),
    "palette_gif": ("P", "GIF", (84, 56)),
    "gray16_png": ("I;16", "PNG", (56, 84)),
    "cmyk_jpeg": ("CMYK", "JPEG", (112, 84)),
    "rgb_jpeg": ("RGB", "JPEG", (112, 84)),
    "gray_jpeg": ("L", "JPEG", (112, 84)),
    "rgb_webp": ("RGB", "WEBP", (84, 112)),
    "rgb_bmp": ("RGB", "BMP", (33, 47)),
    "rgb_tiff": ("RGB", "TIFF", (40, 30)),
    "one_pixel": ("RGB", "PNG", (1, 1)),
    "tall_199": ("RGB", "PNG", (2, 398)),
    "large_jpeg": ("L", "JPEG", (4096, 3072)),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_matrix(name, tmp_path, processor):
    from qwen_vl_utils import fetch_image

    mode, fmt, size = IMAGES[name]
    path = tmp_path / f"{name}.{fmt.lower()}"
    _image(mode, size).save(path, fmt)
    messages = build_messages("Describe it.", images=[path])
    media = read_media(messages)
    (image,) = media.images
    reference = fetch_image({"image": str(path)})  # qwen-vl-utils' own read of the same file
    assert image.mode == "RGB" and image.size == reference.size
    assert image.tobytes() == reference.tobytes()
    width, height = image.size
    assert width % 28 == 0 and height % 28 == 0
    inputs = prepare_inputs(processor, messages, media=media)
    assert inputs["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    assert int((inputs["mm_token_type_ids"] == 1).sum()) == width * height // 28**2


def test_image_sources(tmp_path):
    """The same picture as a path, a `file://` path, a PathLike, a data URI and a PIL image reads the same."""
    import base64

    picture = _image("RGB", (56, 84))
    path = tmp_path / "p.png"
    picture.save(path)
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    read = [read_media(build_messages("?", images=[source])).images[0].tobytes()
            for source in (str(path), f"file://{path}", path, uri)]  # fmt: skip
    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "?"}]}]
    read.append(read_media(messages).images[0].tobytes())
    assert all(r == read[0] for r in read)


@pytest.mark.parametrize(
    "case, message",
    [("truncated", "Image cannot be decoded"), ("aspect_201", "aspect ratio must be smaller than 200"),
     ("bad_base64", "invalid base64"), ("text_data_uri", "only data:image")],
)  # fmt: skip
def test_bad_images_raise_media_error(case, message, tmp_path):
    if case == "truncated":
        data = io.BytesIO()
        _image("RGB", (64, 64)).save(data, "JPEG")
        source = tmp_path / "cut.jpg"
        source.write_bytes(data.getvalue()[:-200])  # verify() accepts it; decoding it does not
        with Image.open(source) as image:
            image.verify()
    elif case == "aspect_201":
        source = tmp_path / "wide.png"
        Image.new("RGB", (402, 2)).save(source)
    elif case == "bad_base64":
        source = "data:image/png;base64,@@@"
    else:
        source = "data:text/plain;base64,aGVsbG8="
    with pytest.raises(MediaError, match=message):
        read_media(build_messages("?", images=[source]))


@pytest.mark.parametrize(
    "options, message",
    [({"fps": float("nan")}, "fps=nan"), ({"fps": 0}, "fps=0.0"), ({"max_frames": 1}, "max_frames=1"),
     ({"max_pixels": 100}, "max_pixels=100"), ({"min_pixels": 5000, "max_pixels": 1000}, "min_pixels=5000"),
     ({"nframes": 10**12}, "nframes="), ({"fps": 2.0, "nframes": 4}, "either fps or nframes")],
)  # fmt: skip
def test_media_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        MediaOptions(**options)


@pytest.mark.parametrize("options", [{"fps": "2"}, {"fps": True}, {"max_frames": 2.5}, {"max_pixels": "784"}])
def test_media_options_types(options):
    with pytest.raises(TypeError, match=f"MediaOptions.{next(iter(options))} must be"):
        MediaOptions(**options)


def test_media_options_items():
    """Numpy scalars become plain numbers; a small `max_pixels` lowers the video minimum (qwen-vl-utils' 128 tokens
    per frame would exceed it), images keep only the pixel bounds; `replace` validates again."""
    options = MediaOptions(fps=np.float32(4.0), max_pixels=np.int64(112 * 112))
    assert type(options.fps) is float and type(options.max_pixels) is int
    assert options.video_item() == {"fps": 4.0, "max_pixels": 12544, "min_pixels": 3136}
    assert options.image_item() == {"max_pixels": 12544}
    assert MediaOptions(max_pixels=224 * 224, min_pixels=28 * 28).video_item()["min_pixels"] == 784
    assert MediaOptions(max_pixels=10**6).video_item() == {"max_pixels": 10**6}  # above the minimum: unchanged
    with pytest.raises(ValueError, match="either fps or nframes"):
        options.replace(nframes=8)
    with pytest.raises(TypeError, match="MediaOptions"):
        build_messages("?", ["clip.mp4"], options={"fps": 2.0})


def test_empty_question_and_string_media():
    with pytest.raises(ValueError, match="non-empty"):
        build_messages("  ", videos=["clip.mp4"])
    (video, text), = (m["content"] for m in build_messages("?", videos="clip.mp4"))
    assert video == {"type": "video", "video": "clip.mp4"} and text["text"] == "?"


def test_video_failures_name_the_file_and_keep_stderr_clean(tmp_path, capfd):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    with pytest.raises(MediaError, match="garbage.mp4") as caught:
        read_media(build_messages("?", videos=[garbage]))
    assert "\n" not in str(caught.value)
    assert capfd.readouterr().err == ""  # FFmpeg's and decord's own log lines did not reach the terminal
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_media(build_messages("?", videos=[tmp_path / "nope.mp4"]))
    with pytest.raises(MediaError, match="data: URIs are supported for images only"):
        read_media(build_messages("?", videos=["data:video/mp4;base64,AAAA"]))


def _turned(path: Path, out: Path, matrix: tuple[int, ...]) -> Path:
    """A copy of an MP4 whose track header carries the display matrix `matrix` (as phones record upright video)."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd") - 4
    assert data[box + 8] == 0  # version 0: the matrix is 48 bytes into the box
    data[box + 48 : box + 84] = struct.pack(">9i", *matrix)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    "matrix",
    [(0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30), (0, -(1 << 16), 0, 1 << 16, 0, 0, 0, 0, 1 << 30),
     (-(1 << 16), 0, 0, 0, -(1 << 16), 0, 0, 0, 1 << 30)],
    ids=["90", "270", "180"],
)  # fmt: skip
def test_turned_videos_come_upright_from_both_readers(matrix, videos, tmp_path, monkeypatch):
    """decord turns frames by the file's display matrix; the PyAV fallback turns them the same way, bit for bit."""
    path, _ = _video(videos, "portrait")  # 168 x 84
    turned = _turned(path, tmp_path / "turned.mp4", matrix)
    messages = build_messages("?", [turned], options=MediaOptions(fps=8.0, **SMALL))
    by_decord = read_media(messages)
    height, width = by_decord.videos[0].shape[2:]
    assert (height < width) == (matrix[0] == 0)  # a quarter turn lays the portrait video on its side
    monkeypatch.setattr("decord.VideoReader", _decord_fails)
    by_pyav = read_media(messages)
    assert torch.equal(by_pyav.videos[0], by_decord.videos[0])
    assert by_pyav.metadata == [{**by_decord.metadata[0], "video_backend": "pyav"}]
    upright = read_media(build_messages("?", [path], options=MediaOptions(fps=8.0, **SMALL))).videos[0]
    assert not torch.equal(by_pyav.videos[0], upright)  # the matrix was read: the frames did turn


@pytest.fixture
def http(tmp_path):
    """A local HTTP server of the files in `tmp_path / "www"` (its base URL) and the URL of a server that accepts
    connections and never answers."""
    import functools
    import socket
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshakes; nobody reads or writes
    yield root, f"http://127.0.0.1:{server.server_address[1]}", f"http://127.0.0.1:{silent.getsockname()[1]}"
    server.shutdown(), server.server_close(), silent.close()


def test_video_urls_are_downloaded_with_a_timeout_and_errors_name_the_url(http, videos, tmp_path, monkeypatch):
    import shutil
    import tempfile
    import time

    root, base, silent = http
    path, _ = _video(videos, "h264")
    shutil.copy(path, root / "clip.mp4")
    (root / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    options = MediaOptions(fps=8.0, **SMALL)

    from modeling.app import inputs

    local = read_media(build_messages("?", [path], options=options))
    opened, fetch = [], inputs._local_video
    monkeypatch.setattr(inputs, "_local_video", lambda *a: opened.append(fetch(*a)) or opened[-1])
    remote = read_media(build_messages("?", [f"{base}/clip.mp4?token=1"], options=options))
    assert torch.equal(remote.videos[0], local.videos[0]) and remote.metadata == local.metadata
    assert [Path(p).name for p in opened] == ["clip.mp4"] and Path(opened[0]).is_relative_to(scratch)
    assert not Path(opened[0]).exists()  # deleted once read
    (root / "watch.html").write_text("<html><body>a video player</body></html>")
    with pytest.raises(MediaError, match=f"{base}/watch.html is a web page \\(text/html\\), not a video file"):
        read_media(build_messages("?", [f"{base}/watch.html"]))
    with pytest.raises(MediaError, match=f"Cannot download {base}/missing.mp4: HTTPError"):
        read_media(build_messages("?", [f"{base}/missing.mp4"]))
    with pytest.raises(MediaError, match=f"no decodable frames: {base}/garbage.mp4 ") as caught:
        read_media(build_messages("?", [f"{base}/garbage.mp4"]))
    assert str(scratch) not in str(caught.value)  # the URL, not the downloaded copy
    monkeypatch.setattr("modeling.app.inputs._URL_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(MediaError, match=f"Cannot download {silent}/clip.mp4: .*Timeout"):
        read_media(build_messages("?", [f"{silent}/clip.mp4"]))
    assert time.monotonic() - start < 10  # decord waited for ever
    assert not list(scratch.glob("qwen-prunevid-*"))  # every download was deleted
