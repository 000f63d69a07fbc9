"""What a pruned prefill leaves behind (`PrefillState`, one `VideoRecord` per video) and the helpers that build the
layout of the pruned sequence (left padded, as generation expects)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..prunevid.merge import MergeResult


@dataclass
class VideoRecord:
    """What Stage 1 did to one video (for stats and the visualisation)."""

    sample: int
    start: int  # first token of the video in the unpruned sequence
    grid: tuple[int, int, int]  # (t, h, w) in LLM tokens (after the 2x2 merger)
    merge: MergeResult | None  # None when Stage 1 is off


@dataclass
class PrefillState:
    """Per-prefill bookkeeping, kept for the decoding steps that continue from its cache (and for the stats).

    Tensors of shape [B, L1] describe the sequence after Stage 1 (left padded); per-row lists the unpruned prompt.
    """

    orig_len: int  # length of the unpruned prompt (what `generate`'s attention mask starts with)
    origin: torch.Tensor  # [B, L1] index in the unpruned sequence of the token whose position each token carries
    mask: torch.Tensor  # [B, L1] 2-D attention mask after Stage 1
    group: torch.Tensor  # [B, L1] Stage-2 group, -1 = not a candidate
    visual: torch.Tensor  # [B, L1] bool: video tokens (merged or not)
    image: torch.Tensor  # [B, L1] bool: image tokens
    query: torch.Tensor  # [B, L1] bool: the tokens whose attention scores the candidates
    videos: list[VideoRecord]
    prompt_tokens: list[int]  # per row: attended tokens of the unpruned prompt
    visual_tokens: list[int]  # per row: video tokens of the unpruned prompt
    image_tokens: list[int]  # per row: image tokens of the unpruned prompt
    static_ratio: list[float]  # per row: share of the video tokens that Stage 1 found static
    query_rows: int | None = None  # the most `query` tokens of a row (computed after Stage 1, read at layer M)
    kept_width: int | None = None  # the most tokens a row keeps in Stage 2 (read back with `query_rows`; None: not
    # predicted, e.g. a `select` of a subclass, so read back after the scoring)
    keep: torch.Tensor | None = None  # [B, L1] bool after the Stage-2 scoring
    index: torch.Tensor | None = None  # [B, L2] kept columns of the Stage-1 layout (left padded)
    mask_after_select: torch.Tensor | None = None  # [B, L2]
    next_position: torch.Tensor | None = None  # [B] position of the first token after the prompt (unpruned numbering)
    cached_prompt: int = 0  # prompt tokens held by cache layer 0 after the prefill
    cache_cut: bool = False  # Stage 3 cut the cache of layers 0..M to `index`
    static_room: int | None = None  # slots for new tokens in `generate`'s static cache, when fitted (`StaticFit`)
    pending_sizes: tuple | None = field(default=None, repr=False)  # Stage 2's sizes on their way to the host:
    # (host tensor, CUDA event of the copy, or None) until layer M reads them into `query_rows` and `kept_width`
    _padded: dict[int, bool] = field(default_factory=dict, repr=False)  # `padded`, by mask

    def padded(self, mask: torch.Tensor) -> bool:
        """Whether `mask` (this prefill's `mask` or `mask_after_select`) has padding; read back once per mask."""
        key = id(mask)
        if key not in self._padded:
            self._padded[key] = bool((mask == 0).any())
        return self._padded[key]

    @property
    def cached_mask(self) -> torch.Tensor:
        """[B, L] 2-D mask of the prompt tokens that cache layer 0 holds after the prefill."""
        return self.mask_after_select if self.cache_cut else self.mask

    @property
    def cached_columns(self) -> torch.Tensor | None:
        """[B, L] columns of the Stage-1 layout that cache layer 0 holds (None: all of them)."""
        return self.index if self.cache_cut else None


def runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D bool tensor."""
    return row_runs(flags[None])[0]


def row_runs(flags: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[start, end) of the runs of True in each row of a 2-D bool tensor, with one read-back for all rows."""
    padded = torch.nn.functional.pad(flags.to(torch.int8), (1, 1))
    edges = (padded[:, 1:] - padded[:, :-1]).nonzero().tolist()  # row-major: each run's start, then its end
    out: list[list[tuple[int, int]]] = [[] for _ in range(flags.shape[0])]
    for (row, start), (_, end) in zip(edges[0::2], edges[1::2]):
        out[row].append((start, end))
    return out


def grids_from_positions(positions: torch.Tensor, video_runs: list[tuple[int, int]],
                         merge: int) -> Iterator[tuple[int, int, int]]:  # fmt: skip
    """(t, h, w) grids (video_grid_thw units) of one sample's videos, from their 3-D positions [3, L] and the runs of
    video tokens (:func:`row_runs`): the h and w rows of a video are `start + arange(H)` and `start + arange(W)`
    (`get_vision_position_ids`)."""
    for start, end in video_runs:
        span = positions[1:3, start:end]
        height, width = (span.amax(dim=1) - span.amin(dim=1) + 1).tolist()  # one read-back for both
        frames = (end - start) // (height * width)
        if frames * height * width != end - start:
            raise ValueError(f"cannot read the video grid off the positions of tokens {start}..{end}")
        yield frames, merge * height, merge * width


def left_pad(embeds: list[torch.Tensor], origins: list[torch.Tensor]):
    """Stack variable-length samples, left padded (as generation expects); origin -1 and mask 0 on padding."""
    if len(embeds) == 1:  # nothing to pad
        return embeds[0][None], origins[0][None], torch.ones_like(origins[0])[None]
    width = max(e.shape[0] for e in embeds)
    batch, hidden = len(embeds), embeds[0].shape[-1]
    out = embeds[0].new_zeros(batch, width, hidden)
    origin = origins[0].new_full((batch, width), -1)
    mask = origins[0].new_zeros(batch, width)
    for b, (e, o) in enumerate(zip(embeds, origins)):
        n = e.shape[0]
        out[b, width - n :], origin[b, width - n :], mask[b, width - n :] = e, o, 1
    return out, origin, mask


def left_pad_like(values: list[torch.Tensor], mask: torch.Tensor, fill: int) -> torch.Tensor:
    """`values` (one per row) left padded with `fill` to the width of `mask`."""
    if len(values) == 1 and values[0].shape[0] == mask.shape[1]:
        return values[0][None]
    out = mask.new_full(mask.shape, fill)
    for b, v in enumerate(values):
        out[b, mask.shape[1] - v.shape[0] :] = v
    return out
