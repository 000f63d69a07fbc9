"""CUDA graphs for PruneVid's fixed-shape steps (opt-in: ``PruneVidConfig(cuda_graphs=True)``, part of ``fast()``).

Stage 1 (Sec. 3.2) and the Stage-2 scoring (Sec. 3.3) are a few hundred small kernels each call. On the lent H200
hosts one eager PyTorch op costs about 25 us of host time, so at 64 frames they took 13 ms for about 3 ms of GPU
work (docs/bench/h200-2026-12-04). A CUDA graph records the kernels of one call and replays them with one launch.

A replay runs **the same kernels with the same arguments** as the eager call it recorded, so it computes what the
eager code computes, bit for bit wherever the eager kernels are deterministic (PruneVid's are: no float atomics).
That is why this module records the eager functions as they are instead of compiling them: the algorithm's tests
and the comparison with the authors' code pin the eager path, and the graphs inherit it.

What a function must be to be recorded: tensors in, a tuple of tensors out, every shape fixed by the input shapes
and the keyword options (no ``.item()``, ``.tolist()``, ``nonzero`` or boolean indexing inside). PruneVid reads its
data-dependent sizes back *between* recorded functions (``merge_video``: the temporal segments, then the output
count).

:class:`CudaGraphs` keeps one graph per input signature (shapes, dtypes, strides, device; which inputs are one
tensor passed twice; the options; the address of every ``fixed`` tensor such as a layer's weights), at most
``max_graphs`` of them (least recently used first out), all in one memory pool per device, so their scratch memory
is shared and bounded by the largest. Anything it cannot record runs eagerly: CPU tensors, autograd on
(``torch.is_grad_enabled()``), inside ``torch.compile`` or another capture.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter, OrderedDict
from typing import Any, Callable, Hashable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["CudaGraphs", "ReplayingLengths", "bucket", "eager"]


def eager(fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor], *, fixed: Sequence[Tensor] = (),
          **options: Any) -> tuple[Tensor, ...]:  # fmt: skip
    """The runner that records nothing: ``fn(*inputs, *fixed, **options)``."""
    return fn(*inputs, *fixed, **options)


def bucket(length: int) -> int:
    """`length` rounded up to a multiple of 1/16 of its power of two, and of 16: from 256 tokens on at most 1/16
    more (16 buckets per octave), below that at most 15 more. 1,412 -> 1,472; 554 -> 576; 17 -> 32."""
    step = max(16, 1 << max(0, int(length).bit_length() - 5))
    return -(-int(length) // step) * step


class ReplayingLengths:
    """The padded lengths at which each kind of call replays a recorded graph, learned call by call, and the length
    a call is padded to: its own `bucket`, or, where that has no graph replaying yet (a clip whose length after
    Stage 1 is new), the shortest longer length whose graph replays, if that one is at most `reuse_longer` (a share)
    longer. More padded rows cost the GPU less than an eager call costs the host, and the graph is already there.

    For calls whose padding changes nothing they return but its rows (callers trim them): the decoder layers
    (`LayerGraphs`) and the Stage-2 steps. Whether a call replayed is read from its runner's `replayed` count
    (`run`), so a graph the runner has dropped is forgotten at its next use; a runner without that count (`eager`)
    pads every call to its own bucket.

    Args:
        reuse_longer: how much longer (a share of the call's own bucket) a replaying length may be; 0 pads every
            call to its own bucket.
        max_kinds: kinds of call remembered (all are forgotten past it).
    """

    def __init__(self, reuse_longer: float = 0.25, max_kinds: int = 64) -> None:
        if isinstance(reuse_longer, bool) or not isinstance(reuse_longer, (int, float)) or not reuse_longer >= 0:
            raise ValueError(f"reuse_longer must be a share >= 0, got {reuse_longer!r}")
        self.reuse_longer = float(reuse_longer)
        self.max_kinds = max_kinds
        self.longer = 0  # calls padded beyond their own bucket to a replaying length (tests, benchmarks)
        self._lengths: dict[Hashable, set[int]] = {}

    def __repr__(self) -> str:
        return f"ReplayingLengths(reuse_longer={self.reuse_longer}, kinds={len(self._lengths)})"

    def __deepcopy__(self, memo: dict) -> "ReplayingLengths":  # (learned from a runner's graphs, which a copy of
        return ReplayingLengths(self.reuse_longer, self.max_kinds)  # the model does not share: its own, anew)

    def __reduce__(self) -> tuple:  # pickled as its settings only, as `CudaGraphs`
        return (ReplayingLengths, (self.reuse_longer, self.max_kinds))

    def pick(self, kind: Hashable, own: int) -> int:
        """The length a call of `kind` whose own bucket is `own` is padded to (see the class docstring)."""
        replaying = self._lengths.get(kind, ())
        if own in replaying:
            return own
        longer = [n for n in replaying if own < n <= own * (1 + self.reuse_longer)]
        if not longer:
            return own
        self.longer += 1
        return min(longer)

    def learn(self, kind: Hashable, padded: int, replayed: bool) -> None:
        """Note whether a call of `kind` padded to `padded` replayed a graph."""
        lengths = self._lengths.setdefault(kind, set())
        (lengths.add if replayed else lengths.discard)(padded)
        if len(self._lengths) > self.max_kinds:
            self._lengths.clear()

    def run(self, runner: Callable[..., tuple[Tensor, ...]], fn: Callable[..., tuple[Tensor, ...]], kind: Hashable,
            length: int, pad: Callable[[int], Sequence[Tensor]], *, fixed: Sequence[Tensor] = (),
            **options: Any) -> tuple[Tensor, ...]:  # fmt: skip
        """`runner(fn, pad(n), fixed=fixed, **options)` with `n = pick(kind, bucket(length))`, learning whether it
        replayed. The outputs keep the padded rows."""
        replays = getattr(runner, "replayed", None)
        padded = self.pick(kind, bucket(length)) if replays is not None else bucket(length)
        out = runner(fn, pad(padded), fixed=fixed, **options)
        if replays is not None:
            self.learn(kind, padded, runner.replayed > replays)
        return out


class _Graph(NamedTuple):
    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]  # the static input buffers the graph reads
    outputs: tuple[Tensor, ...]  # the static outputs it writes


def _signature(t: Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.stride(), t.device)


def _aliases(tensors: tuple[Tensor, ...]) -> tuple[int, ...]:
    """For each tensor, the position of its first occurrence in `tensors`: a call that passes one tensor twice
    (e.g. a table that is its own int32 copy) is recorded with one buffer for both, as a compiled function inside
    it saw them (dynamo guards on its inputs' aliasing: two copies would make it compile anew, in the capture)."""
    first: dict[int, int] = {}
    return tuple(first.setdefault(id(t), i) for i, t in enumerate(tensors))


class CudaGraphs:
    """Runs ``fn(*inputs, *fixed, **options)`` as a recorded CUDA graph, one per signature (see the module doc).

    Call it like :func:`eager`. A signature seen fewer than ``record_after`` times runs eagerly (a stream of ever
    new shapes, e.g. prompts of every length, then costs what eager costs instead of a recording each time); at its
    ``record_after``-th call it is recorded and replayed; later calls copy ``inputs`` into the graph's input buffers
    and replay. Before recording, ``fn`` runs eagerly once on a side stream (the warm-up CUDA graphs need: lazy
    initialisations such as library handles, kernel loading or compilation must not happen inside a capture),
    unless the signature has already run eagerly in this process (``record_after`` > 1), which did the same
    initialisations; ``warm_up_again = True`` warms up anyway. A recording then costs about one eager call
    plus the replay, instead of two; it captures without emptying the allocator's caches first (`_capture`).
    ``bucket_shapes``: the callers pad the sizes that follow a clip's content, so that new clips of a known shape
    replay instead of running eagerly (the class attribute's comment says which and how exactly); ``lengths`` (a
    :class:`ReplayingLengths`) tells them which padded lengths replay here, so that a new length may take a longer
    one's graph.
    ``fixed`` tensors (weights) are read in place: the graph is keyed on their addresses, so a model moved or
    reloaded elsewhere gets a new graph.

    **The outputs of a replay are the graph's own buffers**: valid until the next call with the same signature.
    Copy what you keep (``merge_video`` and the selection do, in the same step that trims the padding).

    Args:
        max_graphs: graphs kept (least recently used first out); each holds its outputs, and the pool holds the
            scratch memory of the largest.
        record_after: the call of a signature that records it (1: the first; default 2: the first repeat). The
            counts of signatures not recorded yet are kept for the last ``64 * max_graphs`` of them.
    """

    # whether callers pad the sizes that follow a clip's content to buckets, so that the clips of one shape share
    # graphs: Stage 1's segment count (`merge.segment_slots`; the same outputs) and the token count of Stage 2's steps
    # (the controller: its sizes exactly, its scoring, with `layer_graphs`, up to the rounding of the padded layers)
    bucket_shapes = True
    # whether a signature that already ran eagerly is warmed up again before its recording (see the class doc)
    warm_up_again = False
    # whether a recording first waits for the device and empties the allocator's caches, as `torch.cuda.graph` does
    # (see `_capture`)
    flush_before_capture = False

    def __init__(self, max_graphs: int = 8, record_after: int = 2) -> None:
        for name, value in (("max_graphs", max_graphs), ("record_after", record_after)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_graphs = max_graphs
        self.record_after = record_after
        self.recorded = 0  # graphs recorded so far (tests, benchmarks)
        self.replayed = 0  # replays so far
        self.warmups = 0  # warm-up runs before a recording so far
        self.eager_runs: Counter[str] = Counter()  # calls run eagerly so far, by function name (tests, benchmarks)
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pools: dict[torch.device, Any] = {}
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._failed: set[tuple] = set()
        self._seen: OrderedDict[tuple, int] = OrderedDict()  # calls of signatures not recorded yet
        self.lengths = ReplayingLengths()  # the padded lengths that replay here, for callers that pad (see above)

    def __repr__(self) -> str:
        return f"CudaGraphs(max_graphs={self.max_graphs}, record_after={self.record_after}, held={len(self._graphs)})"

    def __deepcopy__(self, memo: dict) -> "CudaGraphs":  # a copied model records its own graphs
        return CudaGraphs(self.max_graphs, self.record_after)

    def __reduce__(self) -> tuple:  # pickled as its settings only (graphs are bound to this process's memory)
        return (CudaGraphs, (self.max_graphs, self.record_after))

    def clear(self) -> None:
        """Drop every graph (and with them their memory) and the counts of signatures not recorded yet."""
        self._graphs.clear()
        self._pools.clear()
        self._streams.clear()
        self._seen.clear()
        self.lengths = ReplayingLengths(self.lengths.reuse_longer, self.lengths.max_kinds)

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor], *,
                 fixed: Sequence[Tensor] = (), **options: Any) -> tuple[Tensor, ...]:  # fmt: skip
        inputs, fixed = tuple(inputs), tuple(fixed)
        if not self._recordable(inputs + fixed):
            return self._eager(fn, inputs, fixed, options)
        key = self._key(fn, inputs, fixed, options)
        device = (inputs + fixed)[0].device  # (`_recordable`: all on one GPU)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
        elif key in self._failed:
            return self._eager(fn, inputs, fixed, options)
        else:
            calls = self._seen.pop(key, 0) + 1
            if calls < self.record_after:
                self._seen[key] = calls
                while len(self._seen) > 64 * self.max_graphs:
                    self._seen.popitem(last=False)
                return self._eager(fn, inputs, fixed, options)
            entry = self._record(key, device, fn, inputs, fixed, options, ran_eagerly=calls > 1)
            if entry is None:  # could not be recorded (warned once): eager from now on
                return self._eager(fn, inputs, fixed, options)
        with torch.cuda.device(device):  # (the model may live on another GPU than the current one)
            for buffer, value in zip(entry.inputs, inputs):
                buffer.copy_(value)
            entry.graph.replay()  # (recording ran nothing: a new graph's first result is its first replay)
        self.replayed += 1
        return entry.outputs

    def _eager(self, fn, inputs: tuple[Tensor, ...], fixed: tuple[Tensor, ...], options: dict) -> tuple[Tensor, ...]:
        """``fn`` run eagerly, counted in ``eager_runs`` under its name."""
        self.eager_runs[getattr(fn, "__name__", repr(fn))] += 1
        return fn(*inputs, *fixed, **options)

    def record(self, fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor], *, fixed: Sequence[Tensor] = (),
               **options: Any) -> bool:  # fmt: skip
        """Record the graph of this signature now, without running it: a later call with the signature replays.

        For a signature that has run eagerly in this process (nothing is warmed up), in a window where the host
        would wait for the GPU anyway (`LayerGraphs.record_pending`, while the vision tower runs). The values of
        `inputs` are not read (the graph reads its own buffers, filled at each call): only their signatures count.
        Returns whether a graph for the signature is held afterwards (False: nothing can be recorded here now, e.g.
        on the CPU or with autograd on). A capture that fails raises its error, and the signature is not marked as
        failed (its own call may still record it).
        """
        inputs, fixed = tuple(inputs), tuple(fixed)
        if not self._recordable(inputs + fixed):
            return False
        key = self._key(fn, inputs, fixed, options)
        if key in self._graphs:
            return True
        if key in self._failed:
            return False
        self._record(key, (inputs + fixed)[0].device, fn, inputs, fixed, options, ran_eagerly=True, quiet=False)
        self._seen.pop(key, None)
        return True

    @staticmethod
    def _key(fn, inputs: tuple[Tensor, ...], fixed: tuple[Tensor, ...], options: dict) -> tuple:
        """A recording's signature: the function, its options, the inputs' shapes, dtypes, strides and device,
        which of them are one tensor passed twice (`_aliases`), and the fixed tensors' too, with their addresses."""
        return (
            fn,
            tuple(sorted(options.items(), key=lambda item: item[0])),
            tuple(_signature(t) for t in inputs),
            _aliases(inputs),
            tuple((_signature(t), t.data_ptr()) for t in fixed),
        )

    @staticmethod
    def _recordable(tensors: tuple[Tensor, ...]) -> bool:
        if not tensors or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        device = tensors[0].device
        if device.type != "cuda" or any(t.device != device for t in tensors):
            return False
        return not torch.cuda.is_current_stream_capturing()

    @contextlib.contextmanager
    def _capture(self, graph: Any, device: torch.device):
        """Capture into `graph` on this runner's side stream of `device`, in the pool its graphs share.

        What `torch.cuda.graph` does, without its preparations for memory: it first waits for the whole device
        (`torch.cuda.synchronize`) and hands every cached block back to the driver (`torch.cuda.empty_cache`, and
        the pinned host cache), "to free as much memory as we can for the graph". Here the graphs' scratch lives in
        one shared pool, bounded by the largest graph, so that buys little, while a recording inside a prefill
        then waited for the GPU's queue and left the rest of the prefill to allocate its blocks anew (one new
        clip's first calls under the profiler: 24 `cudaMalloc`, 2.9 ms of host time,
        docs/bench/h200-2026-12-05-new-videos/new_videos.log), and a recording while the vision tower runs
        (`LayerGraphs.record_pending`) would wait for the tower. ``flush_before_capture = True`` restores
        `torch.cuda.graph`'s way (for A/B measurements).
        """
        if self.flush_before_capture:
            with torch.cuda.graph(graph, pool=self._pools.get(device), stream=self._stream(device)):
                yield
            return
        stream = self._stream(device)
        stream.wait_stream(torch.cuda.current_stream())  # (the capture stream after the work queued so far)
        with torch.cuda.stream(stream):
            pool = self._pools.get(device)
            graph.capture_begin(*(() if pool is None else (pool,)))
            try:
                yield
            finally:
                graph.capture_end()

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        """The side stream this runner captures on (one per device: captures that share a pool share a stream)."""
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def _record(self, key, device, fn, inputs, fixed, options, ran_eagerly=False, quiet=True) -> _Graph | None:
        with torch.cuda.device(device):
            static: list[Tensor] = []  # one buffer per input object: the graph sees the aliasing its call saw
            for i, (x, first) in enumerate(zip(inputs, _aliases(inputs))):
                static.append(torch.empty_like(x).copy_(x) if first == i else static[first])
            static = tuple(static)
            if self.warm_up_again or not ran_eagerly:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    fn(*static, *fixed, **options)  # the warm-up (lazy initialisations happen outside the capture)
                torch.cuda.current_stream().wait_stream(side)
                self.warmups += 1
            graph = torch.cuda.CUDAGraph()
            try:
                with self._capture(graph, device):
                    outputs = fn(*static, *fixed, **options)
            except RuntimeError as error:  # an op that cannot be recorded: this signature runs eagerly from now on
                # (a failed capture can leave its pool marked as still recording: later captures take a new one)
                self._pools.pop(device, None)
                if not quiet:
                    raise
                self._failed.add(key)
                warnings.warn(
                    f"PruneVid cuda_graphs: {getattr(fn, '__name__', fn)} could not be recorded as a CUDA graph "
                    f"({error}); it runs eagerly", RuntimeWarning, stacklevel=3,
                )  # fmt: skip
                return None
        self._pools.setdefault(device, graph.pool())
        entry = self._graphs[key] = _Graph(graph, static, tuple(outputs))
        self.recorded += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry
