"""The attention kernels of a pruned prefill: none that is planned per sequence length.

How long a pruned prefill is depends on the video's content: Stage 1 keeps what the clip's segments and clusters
leave (`L1` tokens), Stage 2 a share of them (`L2`). With the lent torch 2.11 on an H100 or H200, `sdpa` in bf16
picks cuDNN's attention, which builds an execution plan for every sequence length it has not met, on the host:
tens to hundreds of milliseconds. The stock model meets one prompt length per video shape, so it builds its plans
once; PruneVid met new lengths with nearly every new clip. Measured (`tools/probe_new_videos.py`, H100, 7B
architecture, 64 frames, `fast()`; docs/bench/README.md): the first token of a clip no call had seen took 536 ms
instead of the 124 ms of its repeats; with flash or memory-efficient attention (no plans), 149 ms, and the repeats
the same 124 ms.

So in a pruned prefill (`PruneVidController.layer_call`, patch `replay-layers`), each decoder layer, or run of layers
replayed as a CUDA graph, is called with `sdpa` restricted to `PREFILL_BACKENDS` while its input is on CUDA. The
function is the same softmax attention; only the kernel (and with it the floating-point rounding) can differ from
cuDNN's. Nothing changes with every stage off (the stock model, bit for bit), in decoding steps, on the CPU, or
with another attention implementation than `sdpa`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["PREFILL_BACKENDS", "prefill_backends", "without_length_plans"]

# the backends a pruned prefill's `sdpa` may use: flash-attention, memory-efficient attention, and the math fallback
PREFILL_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def without_length_plans(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call` (a decoder layer, or what runs in its place) run with `sdpa` restricted to `PREFILL_BACKENDS` whenever
    its hidden states are on CUDA."""
    return functools.partial(_call, call)


def prefill_backends() -> contextlib.AbstractContextManager:
    """`sdpa` restricted to `PREFILL_BACKENDS` (also for what records a pruned prefill's layers elsewhere, e.g.
    `LayerGraphs.record_pending`: a recording must see the kernels its replays stand for)."""
    return sdpa_kernel(list(PREFILL_BACKENDS))


def _call(call: Callable[..., Any], hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    if not hidden_states.is_cuda:
        return call(hidden_states, *args, **kwargs)
    with prefill_backends():
        return call(hidden_states, *args, **kwargs)
