"""Attention within short packed segments as one Triton kernel: the vision tower's windowed blocks.

28 of the 32 blocks of the released Qwen2.5-VL towers attend within windows of at most 64 tokens (8x8 patches).
flash-attention's varlen kernel (the `vision_attention="varlen"` path) tiles every segment by 128 query rows, so
with 64-token windows half of each tile is empty, and its head dimension of 80 is padded to 96: it reaches about
40 TFLOP/s there (0.26 ms a block at 64 frames on an H200, where reading q, k, v and writing the output once
takes about 0.07 ms: docs/bench/h200-2026-12-05-rounds/probe_window_attn.json).

Here one program computes one (segment, head) whole: it loads the segment's queries, keys and values once, forms
the `n x n` scores in fp32, takes the softmax in fp32 and multiplies the probabilities (in the input dtype, as
flash-attention does) by the values with fp32 accumulation. Measured (H200, docs/bench/h200-2026-12-05-window/):
0.21 against the varlen kernel's 0.24 ms a block at 64 frames, 0.57 against 0.87 ms at 256 (still about 3x the
memory floor at 64 frames); the compiled tower 90.8 -> 89.6 ms and 346.5 -> 339.0 ms. Where it rotates q and k
itself (the tower's default), it takes the head dimension in steps (`CHUNK`, `OUT_CHUNK`), so that the rotation's
fp32 tiles fit in registers (docs/bench/README.md, eighteenth step). The function is the varlen
kernel's and upstream's per-window `sdpa`: exact softmax attention within each segment; only the rounding differs,
as between any two attention kernels (`tests/test_window_attention.py` checks it against `sdpa` per segment; the
GPU test against the varlen kernel).

It runs where segments have at most `MAX_SEGMENT` tokens, on CUDA, in float16 / bfloat16, with Triton importable
(`segment_attention_unavailable_reason`); the caller (`vision_attention._PackedAttention`) uses the varlen kernel
everywhere else, e.g. the 4 full-attention blocks (1,024 tokens per frame pair at 448x448).

It is a `torch.library.custom_op`, so `torch.compile` (the `varlen_compiled` tower) keeps it as one opaque call,
with symbolic token counts (no recompilation per video length).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton ships with torch's CUDA wheels; elsewhere (or broken) the varlen kernel is used
    import triton
    import triton.language as tl
except Exception as _error:  # noqa: BLE001
    triton = None
    _IMPORT_ERROR = f"{type(_error).__name__}: {_error}"
else:
    _IMPORT_ERROR = None

# whether Triton runs kernels on the CPU (`TRITON_INTERPRET=1`: how the CPU tests run the kernel, float16 only)
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
MAX_SEGMENT = 128  # longest segment one program holds (scores n x n in registers)
NUM_WARPS = 4  # warps per program (`tools/probe_window_attn.py` times 2 and 8: slower on an H200)
# the order of the programs: a window's heads one after the other (True), so that they run side by side and read its
# rotary tables and qkv rows from L2 once, instead of each head once over all windows (False: the tables, 84 MB at
# 256 frames, then come from memory 16 times; `tools/probe_window_attn.py` times both). The outputs are the same.
HEADS_INNER = True
# columns of the head dimension per step where the kernel rotates q and k, for the scores and for the output (powers
# of two from 16, the smallest `tl.dot` takes): the rotation's fp32 tiles of one step, not of the whole padded head,
# are held at a time (254 -> 126 registers a thread for the tower's heads of 80; 0.979 -> 0.785 ms a block at 256
# frames, 0.360 -> 0.309 at 64, H100; `tools/probe_window_attn.py` times (16, 16), (16, 64), (32, 32), (32, 64),
# (32, 128), (64, 64)). Without the rotation the head is one step (as measured before the steps: 0.52 ms at 256)
CHUNK = 32
OUT_CHUNK = 64
_DTYPES = (torch.float16, torch.bfloat16)

__all__ = ["MAX_SEGMENT", "segment_attention", "segment_attention_unavailable_reason"]


def segment_attention_unavailable_reason(query: Tensor, max_len: int) -> str | None:
    """Why :func:`segment_attention` cannot run on ``query`` (``[tokens, heads, head_dim]``) with segments of at most
    ``max_len`` tokens, or None when it can."""
    if triton is None:
        return f"Triton cannot be imported ({_IMPORT_ERROR})"
    if query.dtype not in _DTYPES:
        return f"the kernel takes float16 or bfloat16, the input is {query.dtype}"
    if not 0 < max_len <= MAX_SEGMENT:
        return f"segments of up to {max_len} tokens (the kernel holds at most {MAX_SEGMENT})"
    if query.device.type != "cuda" and not _INTERPRETED:
        return f"the kernel runs on CUDA, the input is on {query.device.type}"
    return None


if triton is not None:

    @triton.jit
    def _chunk(X, token, head, s_t, s_h, COS, SIN, sc_t, ss_t, dims, tile_ok, HEAD_DIM: tl.constexpr,
               ROTARY: tl.constexpr):  # fmt: skip
        """Columns ``dims`` (one ``[BLOCK_N, CHUNK]`` chunk) of one head of ``X``, rotated as upstream's
        `apply_rotary_pos_emb_vision` does where ``ROTARY`` (in fp32: ``x * cos + rotate_half(x) * sin``, then back
        to the input dtype); a column's partner in ``rotate_half`` is read from its own place in the row."""
        row = X + token * s_t + head * s_h
        x = tl.load(row + dims[None, :], mask=tile_ok, other=0.0)
        if ROTARY:
            half = HEAD_DIM // 2
            lower = dims < half  # rotate_half(x) = cat(-x[half:], x[:half])
            partner = tl.where(lower, dims + half, dims - half)
            other = tl.load(row + partner[None, :], mask=tile_ok, other=0.0).to(tl.float32)
            cos = tl.load(COS + token * sc_t + dims[None, :], mask=tile_ok, other=0.0)
            sin = tl.load(SIN + token * ss_t + dims[None, :], mask=tile_ok, other=0.0)
            turned = tl.where(lower[None, :], -other, other)
            x = (x.to(tl.float32) * cos + turned * sin).to(x.dtype)
        return x

    @triton.jit
    def _segment_attention_kernel(
        Q, K, V, O, CU, COS, SIN, scale,
        sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, so_t, so_h, sc_t, ss_t,
        n_heads, n_segments, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
        OUT_CHUNK: tl.constexpr, ROTARY: tl.constexpr, HEADS_INNER: tl.constexpr,
    ):  # fmt: skip
        """One (segment, head): ``O = softmax(scale * Q K^T) V`` over the segment's ``n <= BLOCK_N`` tokens, with
        ``Q`` and ``K`` rotated first where ``ROTARY``. A 1-D grid of ``n_segments * n_heads`` programs (no limit
        of 65,535 on either count), ordered by ``HEADS_INNER``. The head dimension is taken in chunks: of ``CHUNK``
        columns for the scores (summed over the chunks in order), of ``OUT_CHUNK`` for the output (written chunk by
        chunk), so that the rotation's fp32 tiles stay small and no tile is padded far past the head (80 -> 128)."""
        program = tl.program_id(0)
        if HEADS_INNER:
            segment = program // n_heads
            head = program % n_heads
        else:
            segment = program % n_segments
            head = program // n_segments
        start = tl.load(CU + segment)
        n = tl.load(CU + segment + 1) - start
        rows = tl.arange(0, BLOCK_N)
        row_ok = rows < n
        token = (start + rows).to(tl.int64)[:, None]
        scores = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        for c in tl.static_range(0, HEAD_DIM, CHUNK):
            dims = c + tl.arange(0, CHUNK)
            tile_ok = row_ok[:, None] & (dims < HEAD_DIM)[None, :]
            q = _chunk(Q, token, head, sq_t, sq_h, COS, SIN, sc_t, ss_t, dims, tile_ok, HEAD_DIM, ROTARY)
            k = _chunk(K, token, head, sk_t, sk_h, COS, SIN, sc_t, ss_t, dims, tile_ok, HEAD_DIM, ROTARY)
            scores = tl.dot(q, tl.trans(k), scores)  # fp32 accumulation
        scores = tl.where(row_ok[None, :], scores * scale, float("-inf"))  # keys past the segment's end
        probs = tl.exp(scores - tl.max(scores, axis=1)[:, None])
        total = tl.sum(probs, axis=1)[:, None]
        probs = probs.to(Q.dtype.element_ty)
        for c in tl.static_range(0, HEAD_DIM, OUT_CHUNK):
            dims = c + tl.arange(0, OUT_CHUNK)
            tile_ok = row_ok[:, None] & (dims < HEAD_DIM)[None, :]
            v = tl.load(V + token * sv_t + head * sv_h + dims[None, :], mask=tile_ok, other=0.0)
            out = tl.dot(probs, v) / total
            tl.store(O + token * so_t + head * so_h + dims[None, :], out.to(O.dtype.element_ty), mask=tile_ok)


@torch.library.custom_op("prunevid::segment_attention", mutates_args=())
def segment_attention(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_len: int, scale: float,
                      cos: Tensor | None = None, sin: Tensor | None = None) -> Tensor:  # fmt: skip
    """Softmax attention within each packed segment (what `varlen_attn(q, k, v, cu, cu, max_len, max_len)` computes
    for segments of at most ``MAX_SEGMENT`` tokens), with the rotary embedding applied to ``query`` and ``key``
    first when ``cos`` and ``sin`` are given (as upstream's `apply_rotary_pos_emb_vision(q, k, cos, sin)`: in
    fp32, rounded back to the input dtype; here inside the kernel, so the rotated copies are never written).

    Args:
        query, key, value: ``[tokens, heads, head_dim]`` (the last dimension contiguous), float16 / bfloat16.
        cu_seqlens: ``IntTensor[segments + 1]`` the segments' cumulative boundaries, from 0 to ``tokens``.
        max_len: the longest segment (at most ``MAX_SEGMENT``).
        scale: the softmax scale.
        cos, sin: ``[tokens, head_dim]`` rotary tables (the last dimension contiguous; cast to fp32), or None.

    Returns:
        ``[tokens, heads, head_dim]``, contiguous.
    """
    reason = segment_attention_unavailable_reason(query, max_len)
    if reason is not None:
        raise RuntimeError(f"segment_attention cannot run: {reason}")
    rotary = cos is not None or sin is not None
    if rotary:
        want = (query.shape[0], query.shape[-1])
        if cos is None or sin is None or tuple(cos.shape) != want or tuple(sin.shape) != want or want[1] % 2:
            raise ValueError(
                f"segment_attention: cos and sin must both be [tokens, head_dim] = {list(want)} (an even head_dim), "
                f"got {None if cos is None else list(cos.shape)} and {None if sin is None else list(sin.shape)}"
            )
        cos, sin = (t.float() if t.stride(-1) == 1 else t.float().contiguous() for t in (cos, sin))
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    out = query.new_empty(query.shape)
    tokens, heads, head_dim = query.shape
    segments = cu_seqlens.shape[0] - 1
    if tokens == 0 or segments <= 0:
        return out
    cos_arg, sin_arg = (cos, sin) if rotary else (query, query)  # (not read without ROTARY)
    _segment_attention_kernel[(segments * heads,)](
        query, key, value, out, cu_seqlens, cos_arg, sin_arg, float(scale),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        out.stride(0), out.stride(1), cos_arg.stride(0), sin_arg.stride(0), heads, segments,
        **_constants(head_dim, max_len, rotary), num_warps=NUM_WARPS, num_stages=1,
    )  # fmt: skip
    return out


def _constants(head_dim: int, max_len: int, rotary: bool,
               steps: tuple[int, int] | None = None) -> dict[str, int | bool]:  # fmt: skip
    """The kernel's compile-time constants for heads of ``head_dim``, segments of at most ``max_len`` tokens and
    the rotation on or off, with this module's settings (``steps``: other ``(CHUNK, OUT_CHUNK)``): what
    `segment_attention` launches with, and what `tools/kernel_registers.py` compiles."""
    block_d = max(16, triton.next_power_of_2(head_dim))  # (a step need not be wider than the padded head)
    chunk, out_chunk = steps or (CHUNK, OUT_CHUNK)
    chunk, out_chunk = (min(chunk, block_d), min(out_chunk, block_d)) if rotary else (block_d, block_d)
    return {"HEAD_DIM": head_dim, "BLOCK_N": max(16, triton.next_power_of_2(max_len)), "CHUNK": chunk,
            "OUT_CHUNK": out_chunk, "ROTARY": rotary, "HEADS_INNER": HEADS_INNER}  # fmt: skip


@segment_attention.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_len: int, scale: float,
      cos: Tensor | None = None, sin: Tensor | None = None) -> Tensor:  # fmt: skip
    return query.new_empty(query.shape)
