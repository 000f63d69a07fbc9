"""`VideoQA`: from media paths and a question to an answer in a few lines, with PruneVid's numbers alongside.

    from modeling import PruneVidConfig, VideoQA

    qa = VideoQA.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", prunevid=PruneVidConfig.paper())
    print(qa.ask("What happens?", videos=["clip.mp4"]))

`VideoQA.run` returns a [`Result`] with the token ids, PruneVid's token counts ([`PruneVidStats`]), the per-token
fates of each video (for [`modeling.app.pictures.render_fates`]) and timings:

* `time_to_first_token_s`: from the call to `generate` (vision encoder, PruneVid Stages 1-2, the prompt's forward
  pass, the first sampling step) until `generate` hands the first new token to its streamer.
* `decode_tokens_per_s` counts the tokens after the first: `(new_tokens - 1) / (end - first token)`.
* `total_s` is the whole `generate` call. Beam search (`num_beams > 1`) cannot stream, and a caller may pass a
  streamer of their own: then only `total_s` is measured (the time to first token and the decode rate are None).
* `peak_memory_bytes` is, on CUDA, `torch.cuda.max_memory_allocated` over the call (reset before it); on CPU, the
  process's peak resident set size over the call (Linux `VmHWM`, reset through `/proc/self/clear_refs`; where that is
  not possible, the peak since the process started). `peak_memory_kind` says which.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..prunevid.config import PruneVidConfig
from .checkpoints import check_checkpoint, load_errors
from .inputs import Media, build_messages, decode, prepare_inputs
from .options import MediaOptions
from .timing import FirstTokenTimer, PeakMemory


if TYPE_CHECKING:  # torch and transformers are imported when a model is built: the checks run without them
    import torch

    from ..integration.model import Qwen2_5_VLPruneVid
    from ..integration.stats import PruneVidStats


__all__ = ["Result", "VideoQA"]

_MEDIA_FIELDS = frozenset(f.name for f in dataclasses.fields(MediaOptions))


@dataclass
class Result:
    """What one [`VideoQA.run`] produced.

    Attributes:
        answer: The generated text (special tokens skipped).
        token_ids: The new token ids (prompt excluded).
        prompt_tokens: Length of the unpruned prompt, visual tokens included.
        stats: Token counts of the prefill ([`PruneVidStats`]; with PruneVid off, every token stays).
        video_fates: Per video, `PruneVidController.video_fates()` (empty when PruneVid is off).
        prunevid: The PruneVid settings of the run (`PruneVidConfig.to_dict()`).
        time_to_first_token_s: Seconds to the first new token (see the module docstring); None when not measured
            (beam search, or a streamer of the caller's).
        decode_s: Seconds from the first to the last new token (None when `time_to_first_token_s` is).
        decode_tokens_per_s: `(new_tokens - 1) / decode_s`, or None with fewer than two new tokens.
        total_s: Seconds of the whole `generate` call.
        peak_memory_bytes: Peak memory over the call (see `peak_memory_kind`).
        peak_memory_kind: `"cuda_max_memory_allocated"`, `"cpu_peak_rss"` or `"cpu_peak_rss_since_start"`.
        inputs: The model inputs (on the CPU), for pictures of the frames the model saw.
    """

    answer: str
    token_ids: list[int]
    prompt_tokens: int
    stats: PruneVidStats
    video_fates: list[dict[str, Any]]
    prunevid: dict[str, Any]
    time_to_first_token_s: float | None
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
            "stats": self.stats.to_dict(),
            "prunevid": self.prunevid,
            "timings": {
                "time_to_first_token_s": _round(self.time_to_first_token_s, 4),
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
    """

    def __init__(self, model: Qwen2_5_VLPruneVid, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor

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
            path: Directory or Hub id of a Qwen2.5-VL checkpoint (e.g. `Qwen/Qwen2.5-VL-7B-Instruct`; the offline
                demo model: `modeling.demo.checkpoint_path()`).
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

        from ..integration.model import Qwen2_5_VLPruneVid

        check_checkpoint(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _resolve_dtype(dtype, device)
        with load_errors(path, "processor"):
            processor = AutoProcessor.from_pretrained(path)
        with load_errors(path, "weights"):
            model = Qwen2_5_VLPruneVid.from_pretrained(
                path, prunevid=prunevid, dtype=dtype, attn_implementation=attn_implementation
            )
        return cls(model.to(device), processor)

    # ------------------------------------------------------------------------------------------------ asking
    def ask(
        self,
        question: str,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        *,
        options: MediaOptions | None = None,
        max_new_tokens: int = 64,
        **generate_kwargs: Any,
    ) -> str:
        """The answer to `question` about the videos and images (greedy decoding unless told otherwise). A single
        video or image may be passed as a plain path; `options` sample and size them ([`MediaOptions`])."""
        return self.run(question, videos, images, options=options, max_new_tokens=max_new_tokens,
                        **generate_kwargs).answer  # fmt: skip

    def prepare(
        self,
        question: str,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        *,
        options: MediaOptions | None = None,
        media: Media | None = None,
    ) -> dict[str, Any]:
        """Model inputs (on the CPU) for one question: chat template, media ([`read_media`]), processor.

        `media` are the media of exactly these arguments, read earlier by [`read_media`] on [`build_messages`]`(...)`.

        Raises:
            FileNotFoundError: A local media file does not exist.
            ValueError: An empty question, or a video or image that cannot be read.
        """
        messages = build_messages(question, videos, images, options)
        return dict(prepare_inputs(self.processor, messages, media=media))

    def run(
        self,
        question: str | None = None,
        videos: str | os.PathLike | Sequence[str | os.PathLike] = (),
        images: str | os.PathLike | Sequence[str | os.PathLike] = (),
        *,
        options: MediaOptions | None = None,
        max_new_tokens: int = 64,
        inputs: dict[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> Result:
        """Answer one question and report tokens per stage, timings and memory.

        Pass either the question and media (see [`prepare`]) or ready `inputs` from [`prepare`] (to run the same
        inputs under several PruneVid settings). `generate_kwargs` go to `model.generate`; decoding is greedy by
        default. With beam search, or a `streamer` of your own, only the total time is measured.
        """
        import torch

        misplaced = sorted(_MEDIA_FIELDS & set(generate_kwargs))
        if misplaced:
            raise TypeError(f"{', '.join(misplaced)}: media options go in `options=MediaOptions(...)`, not to generate")
        if inputs is None:
            if question is None:
                raise ValueError("VideoQA.run needs a question (or ready `inputs`).")
            inputs = self.prepare(question, videos, images, options=options)
        elif inputs["input_ids"].shape[0] != 1:
            raise ValueError(f"VideoQA.run answers one question at a time; `inputs` has a batch of "
                             f"{inputs['input_ids'].shape[0]}")  # fmt: skip
        device = self.model.device
        on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        generate_kwargs.setdefault("do_sample", False)
        beams = generate_kwargs.get("num_beams") or getattr(self.model.generation_config, "num_beams", 1) or 1
        timer = None
        if beams == 1 and generate_kwargs.get("streamer") is None:  # beam search cannot stream
            timer = generate_kwargs["streamer"] = FirstTokenTimer(cuda=device.type == "cuda")
        memory = PeakMemory(device)
        with memory, torch.no_grad():
            start = time.perf_counter()
            output = self.model.generate(**on_device, max_new_tokens=max_new_tokens, **generate_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
        prompt_tokens = int(inputs["input_ids"].shape[1])
        new_ids = output[0, prompt_tokens:].tolist()
        first_token_s = decode_s = rate = None
        if timer is not None:
            first = timer.first_token_at if timer.first_token_at is not None else end
            first_token_s, decode_s = first - start, end - first
            rate = (len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0 else None
        stats = self.model.prunevid_stats[0]  # beam search and num_return_sequences repeat the one prompt per row
        return Result(
            answer=decode(self.processor, inputs, output.cpu())[0],
            token_ids=new_ids,
            prompt_tokens=prompt_tokens,
            stats=stats,
            video_fates=self.model.prunevid_video_fates(),
            prunevid=self.model.prunevid.to_dict(),
            time_to_first_token_s=first_token_s,
            decode_s=decode_s,
            decode_tokens_per_s=rate,
            peak_memory_bytes=memory.peak_bytes,
            peak_memory_kind=memory.kind,
            inputs=inputs,
            total_s=end - start,
        )


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


