"""What PruneVid is compared against in the accuracy table (`python -m modeling.eval`).

Each baseline is a technique: a `PruneVidController` subclass that overrides one of its documented steps (kvpress
style: one object per technique), set with `model.prunevid = technique` or `with model.prunevid_override(technique)`.
Every baseline thus runs through the same glue: kept tokens keep the 3-D positions they have in the unpruned model,
the sequence is re-packed, the cache holds only what entered the LLM, and `model.prunevid_stats` names it.

* `TokenDrop("random")`: keep a seeded random subset of each video's tokens before the LLM.
* `TokenDrop("evs")`: Efficient Video Sampling as production engines run it: drop the tokens that changed least
  from the same location in the previous temporal patch (1 - cosine similarity of the vision features), always
  keeping the first temporal patch; the budget is filled by the largest changes.
* `SystemPromptQuery`: the paper preset with Stage 2 scored by the system prompt's tokens instead of the question's
  (the bug that gave the earlier port chance accuracy); a negative control that the table must catch.

Uniform temporal downsampling (fewer frames) needs no controller: it is the input path with `nframes`.
Budgets are set per video through `budget` (a token count, or a share of the video's tokens).
"""

from __future__ import annotations

import torch

from ..integration.controller import PruneVidController
from ..prunevid.config import PruneVidConfig
from ..prunevid.merge import MergeResult


__all__ = ["SystemPromptQuery", "TokenDrop"]


class TokenDrop(PruneVidController):
    """Pre-LLM token dropping at a budget (no merging, no selection inside the LLM): overrides `merge`.

    Args:
        method: `"random"` or `"evs"`; also the technique's `name` in the stats.
        budget: Tokens to keep per video: an int, or a float share in (0, 1]; may be changed between calls.
        seed: Seed of the random choice (the same seed and budget keep the same tokens).
    """

    METHODS = ("random", "evs")

    def __init__(self, method: str, budget: int | float = 1.0, seed: int = 0) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown token-dropping method {method!r}; choose one of {self.METHODS}")
        super().__init__(PruneVidConfig.stage1_only())  # Stage 1's place before the LLM, nothing inside it
        self.method, self.budget, self.seed = method, budget, seed
        self.name = method

    def _count(self, n: int) -> int:
        budget = self.budget
        count = round(budget * n) if isinstance(budget, float) else int(budget)
        return max(1, min(n, count))

    def merge(self, features: torch.Tensor, grid: tuple[int, int, int]) -> MergeResult:
        t, h, w = grid
        n = t * h * w
        keep = self._count(n)
        device = features.device
        if self.method == "random":
            generator = torch.Generator().manual_seed(self.seed)
            index = torch.randperm(n, generator=generator)[:keep].to(device)
        else:
            frames = features.float().view(t, h * w, -1)
            change = torch.full((t, h * w), float("inf"), device=device)  # the first temporal patch always stays
            if t > 1:
                change[1:] = 1 - torch.nn.functional.cosine_similarity(frames[1:], frames[:-1], dim=-1)
            order = torch.sort(change.flatten(), descending=True, stable=True).indices
            index = order[:keep]
        index = torch.sort(index).values
        assignment = torch.zeros(n, dtype=torch.long, device=device)
        assignment[index] = torch.arange(keep, device=device)
        return MergeResult(
            features=features[index],
            source=index,
            group=torch.zeros(keep, dtype=torch.long, device=device),
            is_static=torch.zeros(keep, dtype=torch.bool, device=device),
            assignment=assignment,
            segments=[(0, t)],
            static_mask=torch.zeros(t, h * w, dtype=torch.bool, device=device),
        )


class SystemPromptQuery(PruneVidController):
    """PruneVid with Stage 2 scored by the tokens *before* the first video (system prompt and chat header): overrides
    `query_mask`.

    Args:
        config: The PruneVid settings (default: the paper's).
    """

    name = "system_prompt_query"

    def query_mask(self, origin, mask, is_video, is_image) -> torch.Tensor:
        valid = mask.bool()
        tok_video = is_video.gather(1, origin.clamp(min=0)) & valid
        positions = torch.arange(origin.shape[1], device=origin.device)
        first = torch.where(tok_video, positions, origin.shape[1]).min(dim=1).values
        return valid & (positions[None] < first[:, None] - 1)  # before <|vision_start|>
