"""`qwen2_5_vl_prunevid`: lmms-eval's own Qwen2.5-VL model with [`Qwen2_5_VLPruneVid`] in place of the stock class.

Everything that decides what the model sees and how it decodes is inherited unchanged from lmms-eval's chat
`qwen2_5_vl` model (the class `--model qwen2_5_vl` resolves to): messages from the task, qwen-vl-utils with
`fps` / `max_num_frames` / `min_pixels` / `max_pixels`, the processor, the generation kwargs and the batching. This
class changes three things, and only these:

1. **Loading** (`__init__`): `Qwen2_5_VLPruneVid.from_pretrained` with the PruneVid settings of the model args
   (`prunevid=<preset>` and one override per `PruneVidConfig` field, e.g. `keep_ratio=0.3`), with the stock class's
   dtype (bfloat16, or the extra arg `dtype=float32`), device map and attention implementation. Data parallel runs
   on CPU processes too, which the stock class refuses; the model is never wrapped in DDP (evaluation only).
2. **Statistics** (`generate_until`): PruneVid's token counts of every sample's prefill (`PruneVidStats.to_dict()`:
   visual tokens, after Stage 1, after Stage 2, KV cache, ..., and `retention`, the share of the video tokens that
   decoding attends to) are attached to the sample's `token_counts`, which lmms-eval writes into every logged sample (`--log_samples`) for
   any task. The run's mean retention (over all ranks) is logged through lmms-eval's `log_metrics`, which puts it in
   the results file under `throughput.avg_prunevid_retention` (and per task).
3. **Input checks**: `fps`, `max_num_frames`, `min_pixels` and `max_pixels` are validated once, as the `MediaOptions`
   of the command line and `VideoQA` are (a bad value stops the run naming it); qwen-vl-utils must read videos with decord (its fallback, `torchvision.io.read_video`, is gone
   from torchvision 0.29), and a missing or undecodable local video raises an error naming the file instead of
   reaching that fallback.

With `prunevid=off` the model is the stock model bit for bit (tests/test_equivalence.py), so this class then
produces exactly what `--model qwen2_5_vl` produces (tests/test_lmms_eval.py checks it on a trained model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")  # read by qwen-vl-utils when it is first imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from lmms_eval.models.model_utils.gen_metrics import log_metrics  # noqa: E402
from loguru import logger as eval_logger  # noqa: E402
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

from ...app.inputs import check_media  # noqa: E402
from ...app.options import MediaOptions  # noqa: E402
from ...integration.model import Qwen2_5_VLPruneVid  # noqa: E402
from ...prunevid.config import PruneVidConfig  # noqa: E402


__all__ = ["PruneVidTokenCounts", "Qwen2_5_VLPruneVidLMM", "prunevid_config_from_args"]

_FIELDS = {field.name for field in dataclasses.fields(PruneVidConfig)}


@dataclass
class PruneVidTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus PruneVid's numbers for the sample (`prunevid`), which lmms-eval
    writes into the logged sample as `token_counts[i]["prunevid"]`."""

    prunevid: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()
        if self.prunevid is not None:
            out["prunevid"] = self.prunevid
        return out


def prunevid_config_from_args(preset: str, overrides: dict[str, Any]) -> PruneVidConfig:
    """The `PruneVidConfig` of `prunevid=<preset>` plus per-field overrides, as lmms-eval parsed the model args.

    lmms-eval turns `true`/`false` into bools and numbers into ints or floats; `pruning_layer=none` means the
    default layer. Raises the config's `ValueError` (naming the field, the value and the allowed range) for a bad
    value, and a `ValueError` listing the fields for an unknown name.
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(
            f"qwen2_5_vl_prunevid: unknown model arg(s) {unknown}; besides lmms-eval's qwen2_5_vl args it accepts "
            f"prunevid=<preset> and the PruneVidConfig fields {sorted(_FIELDS)}"
        )
    values = dict(overrides)
    if isinstance(values.get("pruning_layer"), str) and values["pruning_layer"].lower() == "none":
        values["pruning_layer"] = None
    return PruneVidConfig.preset(str(preset), **values)


class Qwen2_5_VLPruneVidLMM(Qwen2_5_VL):
    """lmms-eval model `qwen2_5_vl_prunevid`: lmms-eval's chat `qwen2_5_vl` running [`Qwen2_5_VLPruneVid`].

    Args:
        pretrained, device, device_map, batch_size, use_cache, attn_implementation, min_pixels, max_pixels,
        max_num_frames, fps, system_prompt, interleave_visuals, reasoning_prompt: as lmms-eval's
            `qwen2_5_vl` (same defaults).
        dtype: Weights' dtype; `bfloat16`, what lmms-eval's `qwen2_5_vl` always loads, by default (`float32` for
            CPU runs that must match the project's float32 path).
        prunevid: PruneVid preset: `paper` (default), `conservative`, `aggressive`, `stage1_only`, `fastv`, `off`.
        **overrides: One value per `PruneVidConfig` field to change in the preset (e.g. `keep_ratio=0.3`).
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str = "Qwen/Qwen2.5-VL-3B-Instruct",
        device: str | None = "cuda",
        device_map: str | None = "auto",
        batch_size: int | str | None = 1,
        use_cache: bool = True,
        attn_implementation: str | None = None,
        min_pixels: int = 256 * 28 * 28,
        max_pixels: int = 1605632,
        max_num_frames: int = 32,
        fps: float | None = None,
        system_prompt: str | None = "You are a helpful assistant.",
        interleave_visuals: bool | None = False,
        reasoning_prompt: str | None = None,
        dtype: str = "bfloat16",
        prunevid: str = "paper",
        **overrides: Any,
    ) -> None:
        lmms.__init__(self)
        self.prunevid = prunevid_config_from_args(prunevid, overrides)
        torch_dtype = getattr(torch, str(dtype), None)
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise ValueError(f"qwen2_5_vl_prunevid: dtype={dtype!r} is not a torch floating-point dtype "
                             "(bfloat16, float16, float32)")  # fmt: skip
        valid_attn_implementations = (None, "flash_attention_2", "sdpa", "eager")
        if attn_implementation not in valid_attn_implementations:
            raise ValueError(
                f"attn_implementation must be one of {valid_attn_implementations}, got {attn_implementation}"
            )
        # lmms-eval's qwen2_5_vl samples `fps` when given, else `max_num_frames` frames (qwen-vl-utils' `nframes`).
        try:
            media = MediaOptions(fps=fps, nframes=None if fps is not None else max_num_frames, min_pixels=min_pixels,
                                 max_pixels=max_pixels)  # fmt: skip
        except (TypeError, ValueError) as error:
            names = {"MediaOptions.nframes": "max_num_frames", "MediaOptions.": ""}
            message = str(error)
            for old, new in names.items():
                message = message.replace(old, new)
            raise type(error)(f"qwen2_5_vl_prunevid: {message}") from None
        _require_decord()

        # As lmms-eval's qwen2_5_vl, except that several processes may share a CPU-only host.
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self._device = self.accelerator.device
            self.device_map = str(self.accelerator.device)
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            if self.accelerator.is_local_main_process:
                eval_logger.info(f"Using {self._world_size} processes with data parallelism")
        else:
            self._device = torch.device(device)
            self.device_map = device_map if device_map else device

        model_kwargs: dict[str, Any] = {"dtype": torch_dtype, "device_map": self.device_map}
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        self._model = Qwen2_5_VLPruneVid.from_pretrained(pretrained, prunevid=self.prunevid, **model_kwargs).eval()

        self.media = media
        self.max_pixels = media.max_pixels
        self.min_pixels = media.min_pixels
        self.max_num_frames = max_num_frames
        self.fps = media.fps
        self.reasoning_prompt = reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None
        self.processor = AutoProcessor.from_pretrained(pretrained, max_pixels=max_pixels, min_pixels=min_pixels)
        self._tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.system_prompt = system_prompt
        self.interleave_visuals = interleave_visuals
        self._config = self._model.config
        self._max_length = 2048
        self.batch_size_per_gpu = int(batch_size)
        self.use_cache = use_cache

        self._records: list[tuple[str, Any, dict[str, Any]]] = []  # (task, doc_id, stats) of this rank's samples

    @property
    def model(self) -> Qwen2_5_VLPruneVid:
        return self._model

    # ------------------------------------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """lmms-eval's `qwen2_5_vl` generation, with PruneVid's numbers attached to each sample's token counts."""
        pending: list[int] = []  # request indices whose messages were built for the next `generate` call
        stats: dict[int, dict[str, Any]] = {}
        tracked = [self._tracked(request, index, pending) for index, request in enumerate(requests)]
        with self._recording_generate(pending, stats):
            results = super().generate_until(tracked)

        out = []
        for index, (request, result) in enumerate(zip(requests, results)):
            if isinstance(result, GenerationResult):
                text, counts = result.text, result.token_counts
            else:
                text, counts = result, None
            sample = stats.get(index)
            if sample is not None:
                self._records.append((request.task_name, request.doc_id, sample))
            counts = dataclasses.asdict(counts) if counts is not None else {}
            out.append(GenerationResult(text=text, token_counts=PruneVidTokenCounts(**counts, prunevid=sample)))
        return out

    def _tracked(self, request: Instance, index: int, pending: list[int]) -> Instance:
        """A copy of `request` whose `doc_to_messages` notes `index` when called (the chat model calls it for each
        row of a batch, in row order, right before that batch's `generate`) and checks the local videos."""
        context, doc_to_messages, *rest = request.args

        def messages_of(doc: Any, *args: Any, **kwargs: Any) -> Any:
            messages = doc_to_messages(doc, *args, **kwargs)
            _check_videos(messages)
            pending.append(index)
            return messages

        return dataclasses.replace(request, arguments=(context, messages_of, *rest))

    @contextlib.contextmanager
    def _recording_generate(self, pending: list[int], stats: dict[int, dict[str, Any]]) -> Iterator[None]:
        """While inside, `self.model.generate` also stores each row's PruneVid numbers under its request index."""
        model = self.model
        generate: Callable[..., Any] = model.generate

        def recording_generate(**kwargs: Any) -> Any:
            output = generate(**kwargs)
            rows = sample_stats(model)
            if len(rows) != len(pending):
                raise RuntimeError(
                    f"qwen2_5_vl_prunevid: a batch of {len(rows)} rows was generated for {len(pending)} requests; "
                    "lmms-eval's qwen2_5_vl no longer builds one batch per chunk of requests (check the version)"
                )
            stats.update(zip(pending, rows))
            pending.clear()
            return output

        model.generate = recording_generate  # an instance attribute: shadows the method until removed
        try:
            yield
        finally:
            del model.generate

    # --------------------------------------------------------------------------------------------- run summary
    def clean(self) -> None:
        """Log the run's mean retention, then free the model as lmms-eval's `clean` does.

        lmms-eval calls `clean()` on every rank exactly once, after all requests are answered; here the samples of
        all ranks are gathered (a padding duplicate of a rank's last request counts once) and their mean retention
        is logged with `log_metrics`, which the results file reports under `throughput` as
        `avg_prunevid_retention`, `avg_prunevid_retention/<task>`, `avg_prunevid_visual_tokens`,
        `avg_prunevid_kept_tokens`.
        """
        records = self._records
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, records)
            records = [record for rank_records in gathered for record in rank_records]
        summary = summarize(records)
        if summary:
            log_metrics(total_elapsed_time=0.0, total_gen_tokens=0, avg_speed=0.0, additional_metrics=summary)
        self._records = []
        super().clean()


# ---------------------------------------------------------------------------------------------------- helpers
def sample_stats(model: Qwen2_5_VLPruneVid) -> list[dict[str, Any]]:
    """One dict per batch row of the last prefill: `PruneVidStats.to_dict()` (visual tokens, after Stage 1 and 2, KV
    cache, `retention`, ...; with PruneVid off every token stays: retention 1)."""
    return [stats.to_dict() for stats in model.prunevid_stats]


def summarize(records: list[tuple[str, Any, dict[str, Any]]]) -> dict[str, float]:
    """Mean retention over the samples that have video tokens (each `(task, doc_id)` once), overall and per task,
    and the mean visual and kept token counts."""
    unique: dict[tuple[str, Any], dict[str, Any]] = {}
    for task, doc_id, stats in records:
        if stats.get("retention") is not None:
            unique.setdefault((task, doc_id), stats)
    if not unique:
        return {}
    samples = list(unique.values())
    summary = {
        "prunevid_retention": sum(s["retention"] for s in samples) / len(samples),
        "prunevid_visual_tokens": sum(s["visual_tokens"] for s in samples) / len(samples),
        "prunevid_kept_tokens": sum(s["cached_visual_tokens"] for s in samples) / len(samples),
    }
    for task in sorted({task for task, _ in unique}):
        values = [stats["retention"] for (name, _), stats in unique.items() if name == task]
        summary[f"prunevid_retention/{task}"] = sum(values) / len(values)
    return summary


def _require_decord() -> None:
    """qwen-vl-utils must read videos with decord; its last resort, `torchvision.io.read_video`, no longer exists."""
    from qwen_vl_utils.vision_process import get_video_reader_backend

    backend = get_video_reader_backend()
    if backend != "decord":
        raise RuntimeError(
            f"qwen2_5_vl_prunevid reads videos with decord, but qwen-vl-utils selected {backend!r}: set "
            "FORCE_QWENVL_VIDEO_READER=decord in the environment (and `pip install decord`)"
        )


def _check_videos(messages: Any) -> None:
    """Raise `FileNotFoundError` / `ValueError` naming a local video or image of the task's messages that is missing
    or cannot be decoded (before qwen-vl-utils would fall back to a reader that no longer exists)."""
    conversation = []
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        items = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("video", "image") and isinstance(part.get("url"), str):
                items.append({part["type"]: part["url"]})
        conversation.append({"role": message.get("role", "user"), "content": items})
    check_media(conversation)
