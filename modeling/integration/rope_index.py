"""Upstream's `get_rope_index` without its token-by-token Python (opt-in: `PruneVidConfig(rope_index="vectorized")`,
patch `rope-index`; part of `fast()`, and offered with every stage off too).

Why: before the vision tower starts, `generate` computes the prompt's 3-D positions with upstream's
`Qwen2_5_VLModel.get_rope_index`, which groups each row's token types (text, image, video) with `itertools.groupby`
over a Python list, one tuple per token: 2-3 ms for a 64-frame prompt (8,229 tokens) and 7-10 ms at 256 frames on
the lent H200 hosts, with the GPU idle (docs/bench/h200-2026-12-05-rounds, `probe_gaps.json`: the first gap).

What: the same loop, with the runs of equal token types found by one vectorised pass over the row (NumPy, on the
host copy of the types that upstream reads too). Everything else is upstream's, operation for operation: a text run
of n tokens is `arange(n) + current`, each image or video is upstream's own `get_vision_position_ids(current, grid,
1, spatial_merge_size, time_interval)`, `current` moves by `max(h, w) // spatial_merge_size` after it, padding
(`attention_mask`) is skipped the same way, and the deltas are `max + 1 - length`. The result is upstream's, equal
element for element (tests/test_rope_index.py).

The one part that changed across the supported releases is a vision run's `time_interval` (`RULES`): 5.4 multiplied
`tokens_per_second` by `int(second_per_grid_ts)` for images and videos alike (an image took a video's entry); later
releases give images 1 (#45325), with the `int` from 5.5 to 5.17, without it from 5.18 on. `resolve_rule` runs the
installed release's own method once on a small synthetic prompt (an image and two videos, fractional seconds, a
padded row) and keeps the rule that reproduces it; when none does (a release that changed more), the stock method
runs, and this is logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["RULES", "resolve_rule", "rope_index", "upstream_rope_index"]

#: How a vision run's temporal spacing is made, by release: "video_only" (images 1, videos `tokens_per_second *
#: seconds`; 5.18-5.25), "video_only_int" (the same with `int(seconds)`; 5.5-5.17), "all_int" (`tokens_per_second *
#: int(seconds)` for images too, each image taking the next entry of `second_per_grid_ts`; 5.4).
RULES = ("video_only", "video_only_int", "all_int")

_RESOLVED: dict[Callable, str | None] = {}  # a release's `get_rope_index` function -> its rule (None: none fits)


def _time_interval(rule: str, modality: int, tokens_per_second: Any, seconds: Iterator) -> Any:
    if rule == "all_int":
        return tokens_per_second * int(next(seconds))
    if modality != 2:
        return 1
    value = next(seconds)
    return tokens_per_second * (int(value) if rule == "video_only_int" else value)


def rope_index(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    rule: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.get_rope_index(...)` (a `Qwen2_5_VLModel`) under the time-interval `rule` of the release: the 3-D
    positions `[3, B, L]` and the deltas `[B, 1]`, computed as upstream does with the runs of token types found in
    one pass (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rope_index rule {rule!r} is not one of {RULES}")
    merge = model.config.vision_config.spatial_merge_size
    tokens_per_second = model.config.vision_config.tokens_per_second
    device = input_ids.device
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=device)
    grids = {
        1: iter(image_grid_thw) if image_grid_thw is not None else None,
        2: iter(video_grid_thw) if video_grid_thw is not None else None,
    }
    seconds = iter(second_per_grid_ts) if second_per_grid_ts is not None else iter([1] * input_ids.shape[1])
    types = mm_token_type_ids.detach().cpu().numpy()
    keep = attention_mask.detach().bool().cpu().numpy() if attention_mask is not None else None
    deltas = []
    for b in range(input_ids.shape[0]):
        row = types[b] if keep is None else types[b][keep[b]]
        bounds = [0, *(np.flatnonzero(row[1:] != row[:-1]) + 1).tolist(), len(row)]
        current: Any = 0
        pieces = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue  # (an empty row)
            modality = int(row[start])
            if modality == 0:
                pieces.append(torch.arange(end - start, device=device).view(1, -1).expand(3, -1) + current)
                current += end - start
            else:
                grid = next(grids[modality])
                interval = _time_interval(rule, modality, tokens_per_second, seconds)
                pieces.append(model.get_vision_position_ids(current, grid, 1, merge, interval, device=device))
                current += max(grid[1], grid[2]) // merge
        positions = torch.cat(pieces, dim=1).reshape(3, -1)
        if attention_mask is not None:
            position_ids[:, b, attention_mask[b].bool()] = positions.to(position_ids.device)
        else:
            position_ids[:, b] = positions.to(position_ids.device)
        deltas.append(positions.max() + 1 - len(row))
    return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)


def upstream_rope_index(model: torch.nn.Module, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The installed release's own `get_rope_index` on `model` (a `Qwen2_5_VLModel`), whatever its settings: the
    controller is detached for the call, so the patch's hook only evaluates its guard (tests, probes)."""
    controller, model._prunevid = getattr(model, "_prunevid", None), None
    try:
        return type(model).get_rope_index(model, **inputs)
    finally:
        model._prunevid = controller


def _probe_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A small prompt that tells the rules apart: row 0 text, an image, text, a video, text; row 1 left padded, text,
    a video, text. Seconds 0.5, 1.5 and 2.5 (`int` changes them; an image taking an entry shifts them; the third
    serves the rule in which the image takes one)."""
    m = model.config.vision_config.spatial_merge_size
    image, video = [1, 2 * m, 2 * m], [2, 2 * m, 3 * m]  # 4 and 12 tokens after the merger
    rows = [[0] * 3 + [1] * 4 + [0] * 2 + [2] * 12 + [0], [0] * 4 + [2] * 12 + [0] * 6]
    mask = [[1] * 22, [0] * 3 + [1] * 19]
    return {
        "input_ids": torch.zeros(2, 22, dtype=torch.long),
        "mm_token_type_ids": torch.tensor(rows, dtype=torch.int32),
        "image_grid_thw": torch.tensor([image]),
        "video_grid_thw": torch.tensor([video, video]),
        "second_per_grid_ts": torch.tensor([0.5, 1.5, 2.5]),
        "attention_mask": torch.tensor(mask),
    }


def resolve_rule(model: torch.nn.Module) -> str | None:
    """The rule under which `rope_index` reproduces the installed release's own `get_rope_index` (the method of
    `type(model)`, called through `upstream_rope_index`) on `_probe_inputs`; None when no rule does (or the probe
    fails). Resolved once per method."""
    key = type(model).get_rope_index
    if key not in _RESOLVED:
        rule = None
        try:
            inputs = _probe_inputs(model)
            expected = upstream_rope_index(model, **inputs)
        except Exception as error:  # noqa: BLE001 - any failure: the stock method runs
            logger.warning_once(f"PruneVid rope_index: probing get_rope_index failed ({error!r})")
        else:
            for candidate in RULES:
                try:  # (a rule can fail where it does not apply: 5.12's positions of fractional seconds are floats)
                    got = rope_index(model, **inputs, rule=candidate)
                except Exception:  # noqa: BLE001 - not this release's rule
                    continue
                if all(torch.equal(a, b) for a, b in zip(got, expected)):
                    rule = candidate
                    break
        if rule is None:
            logger.warning_once(
                "PruneVid rope_index='vectorized': this transformers release's get_rope_index matches none of the "
                f"known rules {RULES}; its own (token by token) method runs instead."
            )
        _RESOLVED[key] = rule
    return _RESOLVED[key]
