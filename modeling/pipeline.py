"""`VideoQA`: from media paths and a question to an answer in a few lines, with PruneVid's numbers alongside.

    from modeling import PruneVidConfig, VideoQA

    qa = VideoQA.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", prunevid=PruneVidConfig.paper())
    print(qa.ask("What happens?", videos=["clip.mp4"]))

`VideoQA.run` returns a [`Result`] with the token ids, PruneVid's token counts per stage, the per-token fates of each
video (for [`modeling.visualize.render_fates`]) and timings:

* `prefill_s` is the time to the first new token: from the call to `generate` (vision encoder, PruneVid Stages 1-2,
  the prompt's forward pass, the first sampling step) until `generate` hands that token to its streamer.
* `decode_tokens_per_s` counts the tokens after the first: `(new_tokens - 1) / (end - first token)`.
* `peak_memory_bytes` is, on CUDA, `torch.cuda.max_memory_allocated` over the call (reset before it); on CPU, the
  process's peak resident set size over the call (Linux `VmHWM`, reset through `/proc/self/clear_refs`; where that is
  not possible, the peak since the process started). `peak_memory_kind` says which.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from .inputs import build_messages, check_media, decode, prepare_inputs
from .model import Qwen2_5_VLPruneVid
from .prunevid.config import PruneVidConfig


__all__ = ["Result", "VideoQA", "check_checkpoint", "stock_stats"]

#: qwen-vl-utils' default lower bound on a video frame's pixels (128 tokens of 28x28).
_VIDEO_MIN_PIXELS = 128 * 28 * 28
#: qwen-vl-utils' default lower bound on an image's pixels (4 tokens of 28x28).
_IMAGE_MIN_PIXELS = 4 * 28 * 28


@dataclass
class Result:
    """What one [`VideoQA.run`] produced.

    Attributes:
        answer: The generated text (special tokens skipped).
        token_ids: The new token ids (prompt excluded).
        prompt_tokens: Length of the unpruned prompt, visual tokens included.
        stats: Token counts of the prefill: `visual_tokens` (video tokens entering the LLM unpruned), `after_stage1`,
            `after_stage2`, `kv_cache_tokens` (prompt tokens held in the cache after the prefill), `static_ratio`,
            `segments`, `pruning_layer`. For the stock model (PruneVid off) the same keys, from [`stock_stats`].
        video_fates: Per video, `PruneVidController.video_fates()` (empty when PruneVid is off).
        prunevid: The PruneVid settings of the run (`PruneVidConfig.to_dict()`).
        prefill_s: Seconds to the first new token (see the module docstring).
        decode_s: Seconds from the first to the last new token.
        decode_tokens_per_s: `(new_tokens - 1) / decode_s`, or None with fewer than two new tokens.
        peak_memory_bytes: Peak memory over the call (see `peak_memory_kind`).
        peak_memory_kind: `"cuda_max_memory_allocated"`, `"cpu_peak_rss"` or `"cpu_peak_rss_since_start"`.
        inputs: The model inputs (on the CPU), for pictures of the frames the model saw.
    """

    answer: str
    token_ids: list[int]
    prompt_tokens: int
    stats: dict[str, Any]
    video_fates: list[dict[str, Any]]
    prunevid: dict[str, Any]
    prefill_s: float
    decode_s: float
    decode_tokens_per_s: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no tensors: fates and inputs are left out)."""
        return {
            "answer": self.answer,
            "new_tokens": self.new_tokens,
            "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "stats": self.stats,
            "prunevid": self.prunevid,
            "timings": {
                "prefill_s": round(self.prefill_s, 4),
                "decode_s": round(self.decode_s, 4),
                "decode_tokens_per_s": None if self.decode_tokens_per_s is None else round(self.decode_tokens_per_s, 2),
            },
            "memory": {"peak_bytes": self.peak_memory_bytes, "kind": self.peak_memory_kind},
        }


class VideoQA:
    """A Qwen2.5-VL model (with PruneVid) and its processor, answering questions about videos and images.

    Args:
        model: A [`Qwen2_5_VLPruneVid`]; its `prunevid` setting is used (and may be switched between calls).
        processor: The matching Qwen2.5-VL processor.
        offline_demo: True for the random-weight model of [`VideoQA.offline_demo`] (its answers are meaningless).
    """

    def __init__(self, model: Qwen2_5_VLPruneVid, processor: Any, *, offline_demo: bool = False) -> None:
        self.model = model.eval()
        self.processor = processor
        self.offline_demo = offline_demo

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        prunevid: PruneVidConfig | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
    ) -> "VideoQA":
        """Load a Qwen2.5-VL checkpoint (local directory or Hub id) and its processor.

        Args:
            path: Directory or Hub id of a Qwen2.5-VL checkpoint (e.g. `Qwen/Qwen2.5-VL-7B-Instruct`).
            prunevid: PruneVid settings; None keeps those saved with the checkpoint, or the paper's.
            dtype: Torch dtype or `"auto"`: bfloat16 on CUDA, float32 on the CPU.
            device: `"cuda"`, `"cpu"`, ...; None picks CUDA when available.
            attn_implementation: `"sdpa"`, `"eager"`, `"flash_attention_2"`, ...

        Raises:
            ValueError: `path` is not a Qwen2.5-VL checkpoint (no `config.json`, or another `model_type`).
        """
        from transformers import AutoProcessor

        check_checkpoint(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _resolve_dtype(dtype, device)
        model = Qwen2_5_VLPruneVid.from_pretrained(
            path, prunevid=prunevid, dtype=dtype, attn_implementation=attn_implementation
        )
        processor = AutoProcessor.from_pretrained(path)
        return cls(model.to(device), processor)

    @classmethod
    def offline_demo(
        cls,
        prunevid: PruneVidConfig | None = None,
        seed: int = 0,
        *,
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
    ) -> "VideoQA":
        """A small random-weight Qwen2.5-VL ([`modeling.offline.tiny_config`]) with the real processor, built
        offline in a few seconds. Its answers are meaningless; it shows the pipeline, the token budget and timing."""
        from .offline import build_processor, tiny_config

        torch.manual_seed(seed)
        model = Qwen2_5_VLPruneVid(tiny_config(), prunevid=prunevid)
        model.set_attn_implementation(attn_implementation)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model.to(device), build_processor(), offline_demo=True)

    # ------------------------------------------------------------------------------------------------ asking
    def ask(
        self,
        question: str,
        videos: Sequence[str | os.PathLike] = (),
        images: Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 64,
        **generate_kwargs: Any,
    ) -> str:
        """The answer to `question` about the videos and images (greedy decoding unless told otherwise)."""
        return self.run(
            question, videos, images, fps=fps, max_frames=max_frames, max_pixels=max_pixels,
            max_new_tokens=max_new_tokens, **generate_kwargs,
        ).answer  # fmt: skip

    def prepare(
        self,
        question: str,
        videos: Sequence[str | os.PathLike] = (),
        images: Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ) -> dict[str, Any]:
        """Model inputs (on the CPU) for one question: chat template, qwen-vl-utils, processor.

        When `max_pixels` is below qwen-vl-utils' per-frame video minimum (128 tokens) and `min_pixels` is not given,
        the minimum is lowered to 4 tokens, so that small frames keep their size instead of failing its check.

        Raises:
            FileNotFoundError: A local media file does not exist.
            ValueError: A video has no decodable frames, or an image cannot be read.
        """
        if max_pixels is not None and min_pixels is None and max_pixels < _VIDEO_MIN_PIXELS:
            min_pixels = min(_IMAGE_MIN_PIXELS, max_pixels)
        messages = build_messages(
            question, videos=videos, images=images, fps=fps, max_frames=max_frames,
            max_pixels=max_pixels, min_pixels=min_pixels,
        )  # fmt: skip
        check_media(messages)
        return dict(prepare_inputs(self.processor, messages))

    @torch.no_grad()
    def run(
        self,
        question: str | None = None,
        videos: Sequence[str | os.PathLike] = (),
        images: Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 64,
        *,
        min_pixels: int | None = None,
        inputs: dict[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> Result:
        """Answer one question and report tokens per stage, timings and memory.

        Pass either the question and media (see [`prepare`]) or ready `inputs` from [`prepare`] (to run the same
        inputs under several PruneVid settings). `generate_kwargs` go to `model.generate`; decoding is greedy by
        default.
        """
        if inputs is None:
            if question is None:
                raise ValueError("VideoQA.run needs a question (or ready `inputs`).")
            inputs = self.prepare(question, videos, images, fps, max_frames, max_pixels, min_pixels)
        device = self.model.device
        on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        generate_kwargs.setdefault("do_sample", False)
        timer = _FirstTokenTimer(cuda=device.type == "cuda")
        memory = _PeakMemory(device)
        with memory:
            start = time.perf_counter()
            output = self.model.generate(**on_device, max_new_tokens=max_new_tokens, streamer=timer, **generate_kwargs)
            timer.sync()
            end = time.perf_counter()
        prompt_tokens = int(inputs["input_ids"].shape[1])
        new_ids = output[0, prompt_tokens:].tolist()
        first = timer.first_token_at if timer.first_token_at is not None else end
        decode_s = end - first
        stats = self.model.prunevid_stats or stock_stats(inputs, self.model.config.video_token_id)
        return Result(
            answer=decode(self.processor, inputs, output.cpu())[0],
            token_ids=new_ids,
            prompt_tokens=prompt_tokens,
            stats=stats,
            video_fates=self.model.prunevid_video_fates(),
            prunevid=self.model.prunevid.to_dict(),
            prefill_s=first - start,
            decode_s=decode_s,
            decode_tokens_per_s=(len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0 else None,
            peak_memory_bytes=memory.peak_bytes,
            peak_memory_kind=memory.kind,
            inputs=inputs,
        )


# ---------------------------------------------------------------------------------------------------- helpers
def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise a `ValueError` unless `path` is a Qwen2.5-VL checkpoint: a directory with a `config.json` whose
    `model_type` is `qwen2_5_vl`, or a Hub id whose config (from the cache, or downloaded) says so."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"--model must be a checkpoint directory or a Hub id, got the file {local}")
        config_file = local / "config.json"
        if not config_file.is_file():
            raise ValueError(f"Not a Hugging Face checkpoint: {local} has no config.json")
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read {config_file}: {error}") from error
    else:
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(str(path)).model_type
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Cannot load a model config from {str(path)!r}: not a local directory, and not found on the Hub or "
                f"in its cache ({error.__class__.__name__})"
            ) from error
    if model_type != "qwen2_5_vl":
        raise ValueError(f"{path} is not a Qwen2.5-VL checkpoint: its config.json has model_type={model_type!r}, "
                         "expected 'qwen2_5_vl'")  # fmt: skip


def stock_stats(inputs: dict[str, Any], video_token_id: int) -> dict[str, Any]:
    """The keys of `prunevid_stats` for a run without pruning (batch of one): every token stays."""
    ids = inputs["input_ids"][0]
    mask = inputs.get("attention_mask")
    visual = int((ids == video_token_id).sum())
    prompt = int(mask[0].sum()) if mask is not None else int(ids.numel())
    return {
        "visual_tokens": visual,
        "after_stage1": visual,
        "after_stage2": visual,
        "kv_cache_tokens": prompt,
        "static_ratio": 0.0,
        "segments": [],
        "pruning_layer": None,
    }


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return resolved


class _FirstTokenTimer(BaseStreamer):
    """Streamer that notes when `generate` hands over its first new token (its first `put` is the prompt)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.calls = 0
        self.first_token_at: float | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.sync()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


class _PeakMemory:
    """Peak memory over a `with` block: CUDA max allocated, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                self.kind = "cpu_peak_rss_since_start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        try:
            with open("/proc/self/status") as handle:
                line = next(line for line in handle if line.startswith("VmHWM:"))
            self.peak_bytes = int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            import resource
            import sys

            self.kind = "cpu_peak_rss_since_start"
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
