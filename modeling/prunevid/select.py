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
* Quota per group of ``n`` candidates is ``floor(alpha * n)`` by default, as the authors' ``int(alpha * n)``: a
  group of 1 or 2 tokens keeps none at ``alpha = 0.4``, and a sample whose groups are all that small keeps no
  video token at all (faithful; its text tokens remain). ``rounding="ceil"`` keeps ``ceil(alpha * n)`` instead, so
  every non-empty group keeps at least one token. Both are computed on the exact product (float64 with a 1e-9
  slack), so ``0.7 * 10`` gives 7 either way, where Python's ``int(0.29 * 100)`` gives 28, not 29.
  Ties go to the lower index.
* The scores can be computed in chunks of query rows (``query_chunk``), bitwise equal to the unchunked result,
  so the extra memory is bounded whatever the question length.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QUERY_CHUNK", "ROUNDINGS", "attention_importance", "group_quota", "grouped_topk", "kept_counts"]

ROUNDINGS = ("floor", "ceil")
"""Quota rounding of :func:`grouped_topk`: ``floor`` (the authors' ``int(alpha * n)``) or ``ceil``."""


QUERY_CHUNK = 128
"""Default query rows scored at once by :func:`attention_importance`: a question of up to this many tokens is one
chunk; a longer one costs at most about two ``[B, Hq, QUERY_CHUNK, L]`` float32 blocks of extra memory."""

_MATMUL_ROWS = 16  # query rows per Q K^T matmul (fixed, see _logits)
_REDUCTIONS = ("max", "mean")


def _sum_in_order(x: Tensor, dim: int) -> Tensor:
    """Sum over ``dim`` strictly in index order, one slice at a time: the same float operations whatever the
    tensor's other sizes, so a sum split into chunks and continued in order is bitwise the same."""
    out = x.select(dim, 0).clone()
    for i in range(1, x.shape[dim]):
        out += x.select(dim, i)
    return out


def _logits(query: Tensor, key_t: Tensor, start: int, rows: int, n_rep: int) -> Tensor:
    """``Q K^T`` of query rows ``start .. start + rows`` as float32 ``[B, Hq, rows_padded, L]``.

    One matmul per block of exactly ``_MATMUL_ROWS`` query rows at a multiple of ``_MATMUL_ROWS`` (the last block
    zero-padded): a BLAS result may depend on the matrix shape (e.g. CPU GEMM vs small-matrix paths), so a fixed
    shape and position makes each logit the same bits however the rows are chunked. The ``n_rep`` query heads of
    a key head are stacked as rows of the matmul, so the keys are never repeated.
    """
    batch, n_heads, n_query, head_dim = query.shape
    n_kv, n_keys = key_t.shape[1], key_t.shape[-1]
    padded = -(-rows // _MATMUL_ROWS) * _MATMUL_ROWS
    out = torch.empty(batch, n_kv, n_rep, padded, n_keys, device=query.device)
    for first in range(0, padded, _MATMUL_ROWS):
        block = query[:, :, start + first : start + min(first + _MATMUL_ROWS, rows)].float()
        if block.shape[2] < _MATMUL_ROWS:
            block = torch.nn.functional.pad(block, (0, 0, 0, _MATMUL_ROWS - block.shape[2]))
        block = block.reshape(batch, n_kv, n_rep * _MATMUL_ROWS, head_dim)
        out[:, :, :, first : first + _MATMUL_ROWS] = torch.matmul(block, key_t).view(
            batch, n_kv, n_rep, _MATMUL_ROWS, n_keys
        )
    return out.view(batch, n_heads, padded, n_keys)


def attention_importance(
    query: Tensor,
    key: Tensor,
    *,
    query_mask: Tensor,
    key_mask: Tensor,
    scaling: float,
    head_reduce: str = "max",
    query_reduce: str = "max",
    query_chunk: int | None = QUERY_CHUNK,
) -> Tensor:
    """Importance of each key (video token) from the queries' attention (PruneVid Sec. 3.3).

    ``softmax(Q K^T * scaling)`` over the valid keys of each row, without a causal mask; grouped-query attention
    is handled as transformers' ``repeat_kv`` (query head ``h`` uses key head ``h // (Hq // Hk)``) without copying
    the keys; then reduced over heads, then over the valid queries, with ``"max"`` (authors) or ``"mean"``.

    The query rows are processed ``query_chunk`` at a time and reduced incrementally, so the extra memory is about
    two float32 ``[B, Hq, query_chunk, L]`` blocks (logits, then probabilities) whatever the question length,
    instead of ``O(B * Hq * Nq * L)``. Chunking does not change a single bit of the result: the logits come from
    matmuls of one fixed shape at fixed query positions (:func:`_logits`), softmax is per row, max is exact, and
    the means are summed strictly in head / query order (:func:`_sum_in_order`).

    Args:
        query: ``Tensor[B, Hq, Nq, D]`` (only the question tokens' rows).
        key: ``Tensor[B, Hk, L, D]`` with ``Hq % Hk == 0``.
        query_mask: ``BoolTensor[B, Nq]``, the valid queries.
        key_mask: ``BoolTensor[B, L]``, the valid keys (softmax runs over these only).
        scaling: logit scale, usually ``D ** -0.5``.
        head_reduce: ``"max"`` or ``"mean"`` over heads.
        query_reduce: ``"max"`` or ``"mean"`` over valid queries.
        query_chunk: query rows scored at once (``>= 1``, rounded up to a multiple of 16); ``None`` scores all
            rows at once.

    Returns:
        ``Tensor[B, L]`` float32; 0 at invalid keys and for rows without valid queries or keys.
    """
    for name, how in (("head_reduce", head_reduce), ("query_reduce", query_reduce)):
        if how not in _REDUCTIONS:
            raise ValueError(f"{name} must be one of {_REDUCTIONS}, got {how!r}")
    bad_chunk = isinstance(query_chunk, bool) or not isinstance(query_chunk, int) or query_chunk < 1
    if query_chunk is not None and bad_chunk:
        raise ValueError(f"query_chunk must be a positive integer or None, got {query_chunk!r}")
    batch, n_heads, n_query, head_dim = query.shape
    kb, n_kv, n_keys, kd = key.shape
    if kb != batch or kd != head_dim or n_heads % n_kv != 0:
        raise ValueError(f"incompatible query {tuple(query.shape)} and key {tuple(key.shape)}")
    if query_mask.shape != (batch, n_query) or key_mask.shape != (batch, n_keys):
        raise ValueError(
            f"query_mask must be {(batch, n_query)} and key_mask {(batch, n_keys)}, "
            f"got {tuple(query_mask.shape)} and {tuple(key_mask.shape)}"
        )
    device = query.device
    n_rep = n_heads // n_kv
    key_t = key.float().transpose(-1, -2)  # [B, Hk, D, L]
    kmask = key_mask.to(device=device, dtype=torch.bool)
    qmask = query_mask.to(device=device, dtype=torch.bool)
    invalid_key = ~kmask[:, None, None, :]
    step = -(-max(n_query, 1) // _MATMUL_ROWS) if query_chunk is None else -(-int(query_chunk) // _MATMUL_ROWS)
    step *= _MATMUL_ROWS
    scores = torch.full((batch, n_keys), float("-inf") if query_reduce == "max" else 0.0, device=device)
    for start in range(0, n_query, step):
        rows = min(step, n_query - start)
        logits = _logits(query, key_t, start, rows, n_rep)[:, :, :rows]  # [B, Hq, rows, L]
        probs = torch.softmax(logits.mul_(scaling).masked_fill_(invalid_key, float("-inf")), dim=-1)
        del logits
        probs = probs.nan_to_num_(nan=0.0)  # rows without any valid key
        per_query = probs.amax(dim=1) if head_reduce == "max" else _sum_in_order(probs, 1) / n_heads  # [B, r, L]
        del probs
        valid = qmask[:, start : start + rows, None]
        if query_reduce == "max":
            scores = torch.maximum(scores, per_query.masked_fill_(~valid, float("-inf")).amax(dim=1))
        else:
            per_query = per_query.masked_fill_(~valid, 0.0)
            for i in range(rows):  # continue the in-order sum over all queries
                scores += per_query[:, i]
    count = qmask.sum(dim=1)
    if query_reduce == "mean":
        scores = scores / count.clamp_min(1)[:, None]
    scores = scores.masked_fill((count == 0)[:, None], 0.0)
    return torch.where(kmask, scores, 0.0)


def grouped_topk(scores: Tensor, group: Tensor, keep_ratio: float, *, rounding: str = "floor") -> Tensor:
    """Keep the top ``floor(keep_ratio * n)`` scores of every group of ``n`` candidates (PruneVid Sec. 3.3).

    Vectorised: a stable sort by score (descending; ties keep the lower index first), then a stable sort by group,
    gives each position its rank inside its group, compared with the group's quota. The quota is
    ``floor(keep_ratio * n)`` (the authors' ``int(alpha * n)``; groups of ``n < 1 / keep_ratio`` keep nothing) or,
    with ``rounding="ceil"``, ``ceil(keep_ratio * n)`` (every non-empty group keeps at least one). It is computed
    in float64 with a 1e-9 slack towards the exact product, so products that are integers in exact arithmetic
    (e.g. ``0.7 * 10``) give that integer under both roundings. One group per row gives a global top-k (FastV).

    Args:
        scores: ``Tensor[B, L]`` importance (higher = keep).
        group: ``LongTensor[B, L]`` group id ``>= 0`` of each candidate, ``-1`` for non-candidates.
        keep_ratio: ``alpha`` in ``(0, 1]``.
        rounding: ``"floor"`` (authors, default) or ``"ceil"``.

    Returns:
        ``BoolTensor[B, L]``, True at kept positions; non-candidates are always False.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
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

    _, rank, size = _runs(sorted_group)
    quota = group_quota(size, keep_ratio, rounding)

    keep_sorted = (sorted_group >= 0) & (rank < quota)
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, perm, keep_sorted)


def group_quota(size: Tensor, keep_ratio: float, rounding: str = "floor") -> Tensor:
    """Tokens a group of ``size`` candidates keeps (:func:`grouped_topk`'s quota): ``floor(keep_ratio * size)`` or,
    with ``rounding="ceil"``, ``ceil(keep_ratio * size)``, on the exact product (float64, 1e-9 slack)."""
    exact = size.double() * keep_ratio
    return (torch.floor(exact + 1e-9) if rounding == "floor" else torch.ceil(exact - 1e-9)).long()


def kept_counts(group: Tensor, valid: Tensor, keep_ratio: float, *, rounding: str = "floor") -> Tensor:
    """How many valid tokens of each row Stage 2 keeps, before it scores them: the quotas depend on the group sizes
    only, so the length after the selection is known as soon as the groups are (the caller reads it back with
    Stage 1's counts instead of after the scoring, where the GPU has the layers up to M queued).

    Args:
        group: ``LongTensor[B, L]`` as for :func:`grouped_topk` (``-1``: not a candidate, always kept).
        valid: ``BoolTensor[B, L]``, the tokens counted (candidates must be valid).

    Returns:
        ``LongTensor[B]``: valid non-candidates plus ``sum(group_quota(size))`` over each row's groups, i.e.
        ``(grouped_topk(scores, group, keep_ratio) | (group < 0)) & valid`` summed per row, for any ``scores``.
    """
    candidate = group >= 0
    sorted_group = torch.sort(torch.where(candidate, group, -1), dim=1).values
    new_run, _, size = _runs(sorted_group)
    quota = torch.where(new_run & (sorted_group >= 0), group_quota(size, keep_ratio, rounding), 0).sum(dim=1)
    return (valid & ~candidate).sum(dim=1) + quota


def _runs(sorted_group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``[B, L]`` rows of sorted group ids: where each run of equal ids starts (bool), every position's rank in
    its run and its run's length."""
    batch, length = sorted_group.shape
    pos = torch.arange(length, device=sorted_group.device).expand(batch, length)
    new_run = torch.ones_like(sorted_group, dtype=torch.bool)
    new_run[:, 1:] = sorted_group[:, 1:] != sorted_group[:, :-1]
    run_start = torch.cummax(torch.where(new_run, pos, 0), dim=1).values
    # run_end[p] = first run start after p (or L), by a reverse cumulative min
    later_start = torch.full_like(pos, length)
    later_start[:, :-1] = torch.where(new_run, pos, length)[:, 1:]
    run_end = torch.cummin(later_start.flip(1), dim=1).values.flip(1)
    return new_run, pos - run_start, run_end - run_start
