"""What `VideoQA.run` measures around `generate`: the time to the first new token (a streamer that notes when
`generate` hands it over) and the peak memory of the call (CUDA max allocated, or the process's peak RSS)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import torch

__all__ = ["FirstTokenTimer", "PeakMemory"]


class FirstTokenTimer:
    """Streamer (the `put`/`end` interface of transformers' `BaseStreamer`) that notes when `generate` hands over its
    first new token (its first `put` is the prompt)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.calls = 0
        self.first_token_at: float | None = None

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.sync()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


class PeakMemory:
    """Peak memory over a `with` block: CUDA max allocated, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                self.kind = "cpu_peak_rss_since_start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        try:
            with open("/proc/self/status") as handle:
                line = next(line for line in handle if line.startswith("VmHWM:"))
            self.peak_bytes = int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            import resource
            import sys

            self.kind = "cpu_peak_rss_since_start"
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
