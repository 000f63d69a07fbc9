"""Stage 2 of PruneVid: attention-based token selection (Sec. 3.3 of the paper).

PruneVid (Huang, Zhou, Han, Findings of ACL 2025, arXiv 2412.16117), Sec. 3.3: at an intermediate LLM layer the
question tokens' attention to the video tokens scores every video token; a fraction ``alpha`` of the tokens is
kept inside each group (each segment's static tokens, each frame's dynamic tokens) so the budget stays spread over
time. The kept index list is also what Sec. 3.4 cuts the KV cache of the earlier layers to.

Decisions:

* The scores follow the authors' code: ``softmax(Q K^T * scaling)`` over the valid keys only, with no causal mask
  (the caller passes the pre-RoPE q/k by default), max over heads, then max over the valid query tokens.
* Invalid keys get score 0 (real scores are probabilities, so >= 0); exclusion from the selection is done by
  giving them group ``-1`` in :func:`grouped_topk`.
* Quota per group is ``ceil(alpha * n)`` so every non-empty group keeps at least one token (the paper only says
  "alpha of them"); ties go to the lower index.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["attention_importance", "grouped_topk"]


def _reduce(x: Tensor, mask: Tensor | None, dim: int, how: str) -> Tensor:
    """Max or mean of ``x`` over ``dim``, over the entries where ``mask`` (broadcastable) is True."""
    if how not in ("max", "mean"):
        raise ValueError(f"reduction must be 'max' or 'mean', got {how!r}")
    if mask is None:
        return x.amax(dim=dim) if how == "max" else x.mean(dim=dim)
    mask = mask.expand_as(x)
    count = mask.sum(dim=dim)
    if how == "max":
        out = torch.where(mask, x, float("-inf")).amax(dim=dim)
    else:
        out = torch.where(mask, x, 0.0).sum(dim=dim) / count.clamp_min(1)
    return out.masked_fill(count == 0, 0.0)


def attention_importance(
    query: Tensor,
    key: Tensor,
    *,
    query_mask: Tensor,
    key_mask: Tensor,
    scaling: float,
    head_reduce: str = "max",
    query_reduce: str = "max",
) -> Tensor:
    """Importance of each key (video token) from the queries' attention (PruneVid Sec. 3.3).

    ``softmax(Q K^T * scaling)`` over the valid keys of each row, without a causal mask; grouped-query attention
    is handled as transformers' ``repeat_kv`` (query head ``h`` uses key head ``h // (Hq // Hk)``) without copying
    the keys; then reduced over heads, then over the valid queries, with ``"max"`` (authors) or ``"mean"``.

    Args:
        query: ``Tensor[B, Hq, Nq, D]`` (only the question tokens' rows).
        key: ``Tensor[B, Hk, L, D]`` with ``Hq % Hk == 0``.
        query_mask: ``BoolTensor[B, Nq]``, the valid queries.
        key_mask: ``BoolTensor[B, L]``, the valid keys (softmax runs over these only).
        scaling: logit scale, usually ``D ** -0.5``.
        head_reduce: ``"max"`` or ``"mean"`` over heads.
        query_reduce: ``"max"`` or ``"mean"`` over valid queries.

    Returns:
        ``Tensor[B, L]`` float32; 0 at invalid keys and for rows without valid queries or keys.
        Memory ``O(B * Hq * Nq * L)``.
    """
    batch, n_heads, n_query, head_dim = query.shape
    kb, n_kv, n_keys, kd = key.shape
    if kb != batch or kd != head_dim or n_heads % n_kv != 0:
        raise ValueError(f"incompatible query {tuple(query.shape)} and key {tuple(key.shape)}")
    n_rep = n_heads // n_kv
    q = query.float().reshape(batch, n_kv, n_rep, n_query, head_dim)
    k = key.float()[:, :, None]  # [B, Hk, 1, L, D], broadcast over the n_rep query heads of each key head
    logits = torch.matmul(q, k.transpose(-1, -2)).reshape(batch, n_heads, n_query, n_keys) * scaling
    kmask = key_mask.to(device=logits.device, dtype=torch.bool)[:, None, None, :]
    probs = torch.softmax(torch.where(kmask, logits, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows without any valid key
    per_query = _reduce(probs, None, 1, head_reduce)  # [B, Nq, L]
    qmask = query_mask.to(device=logits.device, dtype=torch.bool)[:, :, None]
    scores = _reduce(per_query, qmask, 1, query_reduce)  # [B, L]
    return torch.where(kmask[:, 0, 0, :], scores, 0.0)


def grouped_topk(scores: Tensor, group: Tensor, keep_ratio: float) -> Tensor:
    """Keep the top ``ceil(keep_ratio * n)`` scores of every group of every row (PruneVid Sec. 3.3).

    Vectorised: a stable sort by score (descending; ties keep the lower index first), then a stable sort by group,
    gives each position its rank inside its group, compared with the group's quota. The quota is
    ``ceil(keep_ratio * n)`` computed in float64 with a 1e-9 slack, so products that are integers in exact
    arithmetic (e.g. ``0.7 * 10``) are not rounded up. One group per row gives a global top-k (FastV-style).

    Args:
        scores: ``Tensor[B, L]`` importance (higher = keep).
        group: ``LongTensor[B, L]`` group id ``>= 0`` of each candidate, ``-1`` for non-candidates.
        keep_ratio: ``alpha`` in ``(0, 1]``.

    Returns:
        ``BoolTensor[B, L]``, True at kept positions; non-candidates are always False.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if scores.shape != group.shape or scores.dim() != 2:
        raise ValueError(f"scores and group must both be [B, L], got {tuple(scores.shape)}, {tuple(group.shape)}")
    batch, length = scores.shape
    device = scores.device
    if length == 0:
        return torch.zeros(batch, 0, dtype=torch.bool, device=device)
    group = group.to(device=device, dtype=torch.long)
    candidate = group >= 0
    gkey = torch.where(candidate, group, -1)

    by_score = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    by_group = torch.sort(gkey.gather(1, by_score), dim=1, stable=True).indices
    perm = by_score.gather(1, by_group)  # positions ordered by (group, -score, index)
    sorted_group = gkey.gather(1, perm)

    pos = torch.arange(length, device=device).expand(batch, length)
    new_run = torch.ones_like(sorted_group, dtype=torch.bool)
    new_run[:, 1:] = sorted_group[:, 1:] != sorted_group[:, :-1]
    run_start = torch.cummax(torch.where(new_run, pos, 0), dim=1).values
    rank = pos - run_start
    # group size = run length: run_end[p] = first run start after p (or L), by a reverse cumulative min
    later_start = torch.full_like(pos, length)
    later_start[:, :-1] = torch.where(new_run, pos, length)[:, 1:]
    run_end = torch.cummin(later_start.flip(1), dim=1).values.flip(1)
    size = run_end - run_start
    quota = torch.ceil(size.double() * keep_ratio - 1e-9).long()

    keep_sorted = (sorted_group >= 0) & (rank < quota)
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, perm, keep_sorted)
