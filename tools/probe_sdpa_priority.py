#!/usr/bin/env python3
"""GPU probe for issue 20 (seventeenth step): does a function holding `sdpa_kernel([CUDNN, FLASH], set_priority=...)`,
called eagerly and then compiled (as the tower's full-attention blocks call `_equal_segments_sdpa`), change which
kernel a later plain `sdpa` call of the language model's shapes picks (`torch._fused_sdp_choice`: 3 is cuDNN, 1
flash-attention) or how fast it runs? Prints torch's priority order, the choice and the median of 5 calls (ms) at
the start and after each. Run as `tmp_sdp_check.py` in docs/bench/h100-2026-12-06-seventeenth/e-after-256/.

    python3 tools/probe_sdpa_priority.py plain|priority
"""

from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench import event_times


def main() -> None:
    set_priority = sys.argv[1] == "priority"
    dev, dt = torch.device("cuda"), torch.bfloat16
    q = torch.randn(1, 28, 32768, 128, device=dev, dtype=dt)  # the 7B language model at 256 frames, kv heads repeated
    k, v = (torch.randn(1, 4, 32768, 128, device=dev, dtype=dt).repeat_interleave(7, 1) for _ in range(2))

    def lm():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def timed(fn, n=5):
        return round(statistics.median(event_times(fn, n, warmup=1)), 2)

    def show(tag):
        choice = torch._fused_sdp_choice(q, k, v, is_causal=True)
        print(tag, "order", torch._C._get_sdp_priority_order(), "choice", choice, "lm ms", timed(lm), flush=True)

    def tower(x):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=set_priority):
            out = F.scaled_dot_product_attention(x, x, x)
        return out * 2

    show("start")
    x = torch.randn(32, 16, 1024, 80, device=dev, dtype=dt)  # a full-attention block's frame pairs as a batch
    tower(x)
    show("after eager")
    torch.compile(tower, dynamic=True)(x)
    show("after compiled")


if __name__ == "__main__":
    main()
