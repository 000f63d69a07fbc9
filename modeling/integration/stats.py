"""`PruneVidStats`: the token counts of one batch row's prefill, the same type whether or not anything was pruned;
and the per-token fates of each video (for pictures and analysis)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .state import PrefillState


__all__ = ["PruneVidStats", "prefill_stats", "unpruned_stats", "video_fates"]


@dataclass(frozen=True)
class PruneVidStats:
    """Token counts of one batch row's prefill (PruneVid, Huang et al., Sec. 3.2-3.4).

    Attributes:
        prompt_tokens: Attended tokens of the unpruned prompt (padding excluded).
        visual_tokens: Video tokens of the unpruned prompt (what the stock model feeds its LLM).
        after_stage1: Video tokens entering the LLM, after Stage 1's merging (= `visual_tokens` without Stage 1).
        after_stage2: Video tokens after Stage 2's selection at the pruning layer (= `after_stage1` without it).
        kv_cache_tokens: Prompt tokens that the cache of layer 0 holds after the prefill (with Stage 3 every layer
            holds the same; without it, the layers after the pruning layer hold the Stage-2 selection).
        cached_visual_tokens: Video tokens among `kv_cache_tokens`.
        image_tokens: Image tokens of the unpruned prompt (Stage 1 never merges images).
        image_tokens_after_stage2: Image tokens after Stage 2 (it selects among them only with `include_images`).
        static_ratio: Share of the video tokens that Stage 1 found static (merged over their segment).
        segments: Per video, Stage 1's temporal segments as `(start, end)` temporal patches.
        pruning_layer: The 0-indexed LLM layer of Stage 2; None when nothing was selected.
        technique: Which controller ran the prefill (`"prunevid"`, a baseline's name), `"off"` for the stock model.
    """

    prompt_tokens: int
    visual_tokens: int
    after_stage1: int
    after_stage2: int
    kv_cache_tokens: int
    cached_visual_tokens: int
    image_tokens: int = 0
    image_tokens_after_stage2: int = 0
    static_ratio: float = 0.0
    segments: tuple[tuple[tuple[int, int], ...], ...] = ()
    pruning_layer: int | None = None
    technique: str = "off"

    @property
    def retention(self) -> float | None:
        """The one definition used everywhere (CLI, `python -m modeling.eval`, the lmms-eval plugin): the share of
        the video tokens that decoding attends to, `cached_visual_tokens / visual_tokens`; None without video."""
        return self.cached_visual_tokens / self.visual_tokens if self.visual_tokens else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: every field (segments as lists) and `retention` (rounded to 4 digits)."""
        out = dataclasses.asdict(self)
        out["segments"] = [[list(s) for s in video] for video in self.segments]
        out["retention"] = None if self.retention is None else round(self.retention, 4)
        return out


def unpruned_stats(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, video_token_id: int,
                   image_token_id: int, technique: str = "off") -> list[PruneVidStats]:  # fmt: skip
    """The counts of a prefill in which every token stays (the stock model, or a prompt with nothing to prune)."""
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    video = ((input_ids == video_token_id) & valid).sum(dim=1).tolist()
    image = ((input_ids == image_token_id) & valid).sum(dim=1).tolist()
    prompt = valid.sum(dim=1).tolist()
    return [
        PruneVidStats(prompt_tokens=p, visual_tokens=v, after_stage1=v, after_stage2=v, kv_cache_tokens=p,
                      cached_visual_tokens=v, image_tokens=i, image_tokens_after_stage2=i, technique=technique)
        for p, v, i in zip(prompt, video, image)
    ]  # fmt: skip


def prefill_stats(state: PrefillState, pruning_layer: int | None, technique: str) -> list[PruneVidStats]:
    """The counts of a pruned prefill, one per batch row."""
    valid = state.mask.bool()
    kept = state.keep & valid if state.keep is not None else valid
    cached = valid if state.cached_columns is None else _columns(valid, state.cached_columns, state.cached_mask)
    columns = {
        "after_stage1": state.visual & valid,
        "after_stage2": state.visual & kept,
        "cached_visual_tokens": state.visual & cached,
        "image_tokens_after_stage2": state.image & kept,
        "kv_cache_tokens": cached,
    }
    counts = {name: flags.sum(dim=1).tolist() for name, flags in columns.items()}
    segments: list[list[tuple[tuple[int, int], ...]]] = [[] for _ in state.prompt_tokens]
    for record in state.videos:
        if record.merge is not None:
            segments[record.sample].append(tuple((int(a), int(b)) for a, b in record.merge.segments))
    return [
        PruneVidStats(
            prompt_tokens=state.prompt_tokens[b],
            visual_tokens=state.visual_tokens[b],
            image_tokens=state.image_tokens[b],
            static_ratio=state.static_ratio[b],
            segments=tuple(segments[b]),
            pruning_layer=pruning_layer,
            technique=technique,
            **{name: int(values[b]) for name, values in counts.items()},
        )
        for b in range(len(state.prompt_tokens))
    ]


def _columns(valid: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L1] bool: the columns of the Stage-1 layout that `index` ([B, L2], valid where `mask`) keeps."""
    out = torch.zeros_like(valid)
    out.scatter_(1, index, mask.bool())
    return out & valid


def video_fates(state: PrefillState | None) -> list[dict[str, Any]]:
    """What happened to every token of every video in a prefill, for pictures and analysis.

    One dict per video: `sample`, `grid` (t, h, w in LLM tokens), `segments`, and [t, h*w] bool tensors:
    `static` (merged over its segment by Stage 1), `kept` (the token it was merged into, or itself, survived
    Stage 2), `carrier` (this cell is the real token whose 3-D position a kept token carries).
    """
    if state is None:
        return []
    keep = state.keep if state.keep is not None else torch.ones_like(state.mask, dtype=torch.bool)
    out = []
    for rec in state.videos:
        t, h, w = rec.grid
        n = t * h * w
        origin, valid = state.origin[rec.sample], state.mask[rec.sample].bool()
        layout = torch.full((state.orig_len,), -1, dtype=torch.long, device=origin.device)
        layout[origin[valid]] = torch.arange(origin.shape[0], device=origin.device)[valid]
        m = rec.merge
        source = m.source if m is not None else torch.arange(n, device=origin.device)
        row_kept = keep[rec.sample, layout[rec.start + source]]
        kept = row_kept[m.assignment] if m is not None else row_kept
        carrier = torch.zeros(n, dtype=torch.bool, device=origin.device)
        carrier[source[row_kept]] = True
        static = m.static_mask.reshape(-1) if m is not None else torch.zeros_like(carrier)
        out.append(
            {
                "sample": rec.sample,
                "grid": rec.grid,
                "segments": list(m.segments) if m is not None else [(0, t)],
                "static": static.view(t, h * w).cpu(),
                "kept": kept.view(t, h * w).cpu(),
                "carrier": carrier.view(t, h * w).cpu(),
            }
        )
    return out
