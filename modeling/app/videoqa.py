"""`VideoQA`: from media paths and a question to an answer in a few lines, with PruneVid's numbers alongside.

    from modeling import PruneVidConfig, VideoQA

    qa = VideoQA.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", prunevid=PruneVidConfig.paper())
    print(qa.ask("What happens?", videos=["clip.mp4"]))

`VideoQA.run` returns a [`Result`] with the token ids, PruneVid's token counts per stage, the per-token fates of each
video (for [`modeling.visualize.render_fates`]) and timings:

* `prefill_s` is the time to the first new token: from the call to `generate` (vision encoder, PruneVid Stages 1-2,
  the prompt's forward pass, the first sampling step) until `generate` hands that token to its streamer.
* `decode_tokens_per_s` counts the tokens after the first: `(new_tokens - 1) / (end - first token)`.
* `total_s` is the whole `generate` call. Beam search (`num_beams > 1`) cannot stream, and a caller may pass a
  streamer of their own: then only `total_s` is measured (`prefill_s` and the decode rate are None).
* `peak_memory_bytes` is, on CUDA, `torch.cuda.max_memory_allocated` over the call (reset before it); on CPU, the
  process's peak resident set size over the call (Linux `VmHWM`, reset through `/proc/self/clear_refs`; where that is
  not possible, the peak since the process started). `peak_memory_kind` says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inputs import Media, build_messages, decode, prepare_inputs
from .prunevid.config import PruneVidConfig


if TYPE_CHECKING:  # torch and transformers are imported when a model is built: the checks run without them
    import torch

    from .model import Qwen2_5_VLPruneVid


__all__ = ["CheckpointError", "Result", "VideoQA", "check_checkpoint", "stock_stats"]

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
        prefill_s: Seconds to the first new token (see the module docstring); None when not measured (beam search,
            or a streamer of the caller's).
        decode_s: Seconds from the first to the last new token (None when `prefill_s` is).
        decode_tokens_per_s: `(new_tokens - 1) / decode_s`, or None with fewer than two new tokens.
        total_s: Seconds of the whole `generate` call.
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
    prefill_s: float | None
    decode_s: float | None
    decode_tokens_per_s: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    total_s: float = 0.0

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
                "prefill_s": _round(self.prefill_s, 4),
                "decode_s": _round(self.decode_s, 4),
                "decode_tokens_per_s": _round(self.decode_tokens_per_s, 2),
                "total_s": round(self.total_s, 4),
            },
            "memory": {"peak_bytes": self.peak_memory_bytes, "kind": self.peak_memory_kind},
        }


class VideoQA:
    """A Qwen2.5-VL model (with PruneVid) and its processor, answering questions about videos and images.

    Args:
        model: A [`Qwen2_5_VLPruneVid`]; its `prunevid` setting is used (and may be switched between calls).
        processor: The matching Qwen2.5-VL processor.
        offline_demo: True for the model of [`VideoQA.offline_demo`].
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
            CheckpointError: `path` is not a loadable Qwen2.5-VL checkpoint (see [`check_checkpoint`]), or its weights
                or processor files fail to load (a `ValueError`).
        """
        import torch
        from transformers import AutoProcessor

        from .model import Qwen2_5_VLPruneVid

        check_checkpoint(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _resolve_dtype(dtype, device)
        with _load_errors(path, "processor"):
            processor = AutoProcessor.from_pretrained(path)
        with _load_errors(path, "weights"):
            model = Qwen2_5_VLPruneVid.from_pretrained(
                path, prunevid=prunevid, dtype=dtype, attn_implementation=attn_implementation
            )
        return cls(model.to(device), processor)

    @classmethod
    def offline_demo(
        cls,
        prunevid: PruneVidConfig | None = None,
        seed: int = 0,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
    ) -> "VideoQA":
        """The small Qwen2.5-VL trained here on the moving-shapes benchmark ([`modeling.demo`]), loaded offline
        through `from_pretrained` from the standard checkpoint folder that [`modeling.demo.checkpoint_path`] writes
        to the user cache on first use. It answers questions about clips like the bundled one (its answers to
        anything else mean nothing). `dtype` as in [`from_pretrained`]; `seed` seeds sampling, if asked for."""
        import torch

        from transformers.utils import logging as hf_logging

        from .demo import checkpoint_path, quiet_progress

        torch.manual_seed(seed)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with quiet_progress(hf_logging):
            qa = cls.from_pretrained(checkpoint_path(), prunevid=prunevid, dtype=dtype, device=device,
                                     attn_implementation=attn_implementation)  # fmt: skip
        qa.offline_demo = True
        return qa

    # ------------------------------------------------------------------------------------------------ asking
    def ask(
        self,
        question: str,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 64,
        *,
        min_pixels: int | None = None,
        **generate_kwargs: Any,
    ) -> str:
        """The answer to `question` about the videos and images (greedy decoding unless told otherwise). A single
        video or image may be passed as a plain path."""
        return self.run(
            question, videos, images, fps=fps, max_frames=max_frames, max_pixels=max_pixels,
            max_new_tokens=max_new_tokens, min_pixels=min_pixels, **generate_kwargs,
        ).answer  # fmt: skip

    def prepare(
        self,
        question: str,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        *,
        media: Media | None = None,
    ) -> dict[str, Any]:
        """Model inputs (on the CPU) for one question: chat template, media ([`read_media`]), processor.

        `media` are the media of exactly these arguments, read earlier by [`read_media`] on [`messages`]`(...)`.

        Raises:
            FileNotFoundError: A local media file does not exist.
            ValueError: An empty question, an option out of range, or a video or image that cannot be read.
        """
        messages = self.messages(question, videos, images, fps, max_frames, max_pixels, min_pixels)
        return dict(prepare_inputs(self.processor, messages, media=media))

    @staticmethod
    def messages(
        question: str,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        fps: float | None = None,
        max_frames: int | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ) -> list[dict[str, Any]]:
        """The conversation [`prepare`] builds ([`build_messages`]). When `max_pixels` is below qwen-vl-utils'
        per-frame video minimum (128 tokens) and `min_pixels` is not given, the minimum is lowered to 4 tokens (or
        `max_pixels`), so that small frames keep their size instead of failing qwen-vl-utils' check."""
        if max_pixels is not None and min_pixels is None and max_pixels < _VIDEO_MIN_PIXELS:
            min_pixels = min(_IMAGE_MIN_PIXELS, max_pixels)
        return build_messages(
            question, videos=videos, images=images, fps=fps, max_frames=max_frames,
            max_pixels=max_pixels, min_pixels=min_pixels,
        )  # fmt: skip

    def run(
        self,
        question: str | None = None,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
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
        default. With beam search, or a `streamer` of your own, only the total time is measured.
        """
        import torch

        if inputs is None:
            if question is None:
                raise ValueError("VideoQA.run needs a question (or ready `inputs`).")
            inputs = self.prepare(question, videos, images, fps, max_frames, max_pixels, min_pixels)
        device = self.model.device
        on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        generate_kwargs.setdefault("do_sample", False)
        beams = generate_kwargs.get("num_beams") or getattr(self.model.generation_config, "num_beams", 1) or 1
        timer = None
        if beams == 1 and generate_kwargs.get("streamer") is None:  # beam search cannot stream
            timer = generate_kwargs["streamer"] = _FirstTokenTimer(cuda=device.type == "cuda")
        memory = _PeakMemory(device)
        with memory, torch.no_grad():
            start = time.perf_counter()
            output = self.model.generate(**on_device, max_new_tokens=max_new_tokens, **generate_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
        prompt_tokens = int(inputs["input_ids"].shape[1])
        new_ids = output[0, prompt_tokens:].tolist()
        prefill_s = decode_s = rate = None
        if timer is not None:
            first = timer.first_token_at if timer.first_token_at is not None else end
            prefill_s, decode_s = first - start, end - first
            rate = (len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0 else None
        stats = self.model.prunevid_stats or stock_stats(inputs, self.model.config.video_token_id)
        stats = {**stats, **_image_counts(self.model, inputs)}
        return Result(
            answer=decode(self.processor, inputs, output.cpu())[0],
            token_ids=new_ids,
            prompt_tokens=prompt_tokens,
            stats=stats,
            video_fates=self.model.prunevid_video_fates(),
            prunevid=self.model.prunevid.to_dict(),
            prefill_s=prefill_s,
            decode_s=decode_s,
            decode_tokens_per_s=rate,
            peak_memory_bytes=memory.peak_bytes,
            peak_memory_kind=memory.kind,
            inputs=inputs,
            total_s=end - start,
        )


# ---------------------------------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A `--model` / `from_pretrained` path that is not a loadable Qwen2.5-VL checkpoint; the message says why."""


#: A Hugging Face Hub model id: `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: Weight files `from_pretrained` reads, in its order of preference.
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check, without loading it, that `path` is a Qwen2.5-VL checkpoint, and return its `config.json`.

    A local directory needs a `config.json` holding a JSON object with `model_type` `qwen2_5_vl`, weights
    (`model.safetensors`, sharded with an index whose every shard exists, or `pytorch_model.bin`), safetensors
    files whose header is intact and whose size covers every tensor, and the processor's files (an image/video
    processor config and a tokenizer). A Hub id is looked up in the local cache, then on the Hub (one request, no
    retries), and only its `config.json` is checked.

    Raises:
        CheckpointError: Why `path` is not one (a `ValueError`).
    """
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"--model must be a checkpoint directory or a Hub id, got the file {local}")
        config = _read_config(local / "config.json", f"Not a Hugging Face checkpoint: {local} has no config.json")
        _check_weights(local)
        _check_processor_files(local)
    elif _HUB_ID.match(str(path)):
        config = _read_config(_hub_config(str(path)), "")
    else:
        raise CheckpointError(f"--model {str(path)!r} is neither an existing directory nor a Hub id (owner/name)")
    model_type = config.get("model_type")
    if model_type != "qwen2_5_vl":
        raise CheckpointError(f"{path} is not a Qwen2.5-VL checkpoint: its config.json has model_type={model_type!r}, "
                              "expected 'qwen2_5_vl'")  # fmt: skip
    return config


def checkpoint_depth(config: dict[str, Any]) -> int | None:
    """The LLM's number of layers from a `config.json` dict (`text_config.num_hidden_layers`, or the top level)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    depth = text.get("num_hidden_layers", config.get("num_hidden_layers"))
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else None


def _read_config(file: Path, missing: str) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(missing)
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"Cannot read {file}: {' '.join(str(error).split())}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got a JSON {type(config).__name__}")
    return config


def _check_weights(folder: Path) -> None:
    present = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not present:
        raise CheckpointError(f"No weights in {folder}: expected one of {', '.join(_WEIGHTS)}")
    name = present[0]
    if name.endswith(".index.json"):
        index = _read_config(folder / name, "")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / name} has no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise CheckpointError(f"{folder / name} lists {len(missing)} missing shard(s), e.g. {missing[0]}")
        files = [folder / shard for shard in shards]
    else:
        files = [folder / name]
    for file in files:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        elif file.stat().st_size == 0:
            raise CheckpointError(f"Weights file {file} is empty")


def _check_safetensors(file: Path) -> None:
    """The 8-byte header length, a JSON header, and a file long enough for every tensor's byte range."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, 100 * 2**20):
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"Weights file {file} is not a valid safetensors file ({error})") from error
    if 8 + length + end > size:
        raise CheckpointError(f"Weights file {file} is truncated: {size} bytes, its tensors need {8 + length + end}")


def _check_processor_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise CheckpointError(f"No processor config in {folder}: expected preprocessor_config.json or "
                              "processor_config.json (save the processor next to the weights)")  # fmt: skip
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise CheckpointError(f"No tokenizer in {folder}: expected tokenizer.json (or vocab.json and merges.txt)")


def _hub_config(repo_id: str) -> Path:
    """`config.json` of a Hub model: from the cache, else downloaded after one lookup (which fails fast offline)."""
    from huggingface_hub import constants, hf_hub_download, model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"--model {repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:
        model_info(repo_id, timeout=10)
    except GatedRepoError as error:
        raise CheckpointError(f"--model {repo_id}: gated on the Hub; log in with access to it") from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"--model {repo_id}: no such model on the Hugging Face Hub (or it is private)") from error
    except Exception as error:  # noqa: BLE001 - network errors of the HTTP client
        raise CheckpointError(f"--model {repo_id}: not a local directory, not in the Hugging Face cache, and the Hub "
                              f"cannot be reached ({type(error).__name__})") from error  # fmt: skip
    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"--model {repo_id}: cannot download its config.json ({type(error).__name__})") from error


@contextlib.contextmanager
def _load_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failure to load a checkpoint's processor or weights into a [`CheckpointError`] naming the path; running
    out of memory is not the checkpoint's fault and passes through."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - transformers, safetensors and hub errors have no common base
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"Cannot load the {what} of {path}: {type(error).__name__}: {message}") from error


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
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return resolved


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _image_counts(model: Any, inputs: dict[str, Any]) -> dict[str, int]:
    """Image tokens of the prompt (batch of one) and how many of them Stage 2 kept (it selects among them only
    with `include_images`; otherwise every image token stays)."""
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    total = int(is_image.sum())
    kept = total
    controller = getattr(model.model, "_prunevid", None)
    state = getattr(controller, "state", None)
    if total and state is not None and state.keep is not None:
        origin, valid = state.origin[0].cpu(), state.mask[0].cpu().bool()
        kept = int((is_image[origin.clamp(min=0)] & valid & state.keep[0].cpu()).sum())
    return {"image_tokens": total, "image_tokens_after_stage2": kept}


class _FirstTokenTimer:
    """Streamer (the `put`/`end` interface of transformers' `BaseStreamer`) that notes when `generate` hands over its
    first new token (its first `put` is the prompt)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.calls = 0
        self.first_token_at: float | None = None

    def sync(self) -> None:
        if self.cuda:
            import torch

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
            import torch

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
            import torch

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
