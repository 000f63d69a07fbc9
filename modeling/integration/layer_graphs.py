"""The pruned prefill's decoder layers replayed as CUDA graphs at bucketed lengths (opt-in:
`PruneVidConfig(layer_graphs=True)`, patch `replay-layers`).

Why: after Stage 1 the prefill of a 64-frame video holds about 1,400 tokens (7B architecture), and an eager decoder
layer then costs more host time (about 74 dispatcher calls, 1.2-1.4 ms on the lent H200 hosts) than GPU time: the
pruned prefill took 38-59 ms for about 28 ms of kernels (docs/bench/README.md, issue 20). A replayed graph launches
the same kernels with one call.

How: the layers are cut where PruneVid changes the sequence, `[0, M)`, `[M, M+1)`, `[M+1, N)` with Stage 2 at layer M
(one run `[0, N)` without it). At the first layer of a run, the hidden states, the rotary tables and the mask (if any)
are padded at the end to `bucket(length)` (a multiple of 16; from 256 tokens on at most 1/16 more), and the run's
layers are replayed as one graph, recorded per bucket by a `CudaGraphs` runner (`modeling.prunevid.graphs`: eager on a
signature's first call, recorded on its second, or with `LayerGraphs.record_while_tower_runs` while the next prefill's
vision tower runs). A run whose bucket has no graph yet (a new clip's length) is padded further, to a bucket whose
graph replays, if one is at most 1/4 longer (`LayerGraphs.reuse_longer`). Inside the graph each layer writes its keys
and values to a stand-in cache (`_Collect`); after the replay they are written to the real cache, trimmed to the real
tokens, by the same `cache.update` the layer calls, and the run's output, trimmed, goes on; the run's other layers
pass their input through. The real tokens do not see the pads: attention is causal and the pads come last (a pad
attends to itself only), and everything else is per token. Only the kernels' shapes change (the matrix products have a
few more rows), so the results equal the eager layers' up to the floating-point rounding of other kernel choices, not
bit for bit (tests/test_layer_graphs.py: fp32 on the CPU, through the padded function; on a GPU, through the graphs).

When: in a pruned prefill only (decoding steps and unpruned forwards run the layers as they are), on CUDA, without
autograd or `torch.compile` around it, with `sdpa` or `eager` attention, full-attention layers, a `DynamicCache` (or
none), no per-layer outputs recorded (`output_hidden_states` / `output_attentions`) and no accelerate hooks on the
layers. Otherwise the run's layers run as they are (the reason is logged once).
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.utils import logging

from ..prunevid.graphs import CudaGraphs, ReplayingLengths, bucket
from .compat import CACHE_KWARG, recording_outputs, with_cache
from .prefill_attention import prefill_backends


logger = logging.get_logger(__name__)

__all__ = ["LayerGraphs", "bucket", "layer_runs", "pad_mask", "pad_rows", "passthrough", "watch_tower"]

# keyword arguments of a decoder layer call that a replay reproduces (the text positions only serve flash
# attention's packed sequences, which never replays); any other one with a value keeps the layers eager
_HANDLED = {"attention_mask", "position_embeddings", "position_ids", CACHE_KWARG, "use_cache"}


def layer_runs(num_layers: int, pruning_layer: int | None) -> tuple[tuple[int, int], ...]:
    """The runs `[start, end)` of layers replayed together: cut at the pruning layer M (its input is scored, the
    sequence shrinks after it): `[0, M)`, `[M, M+1)`, `[M+1, N)`; one run without Stage 2."""
    if pruning_layer is None:
        return ((0, num_layers),)
    cuts = (0, pruning_layer, pruning_layer + 1, num_layers)
    return tuple((a, b) for a, b in itertools.pairwise(cuts) if a < b)


def pad_rows(x: Tensor, length: int) -> Tensor:
    """`x` with zero rows appended along dim -2 up to `length` (hidden states [B, L, C], rotary tables [B, L, D] or
    [3, B, L, D])."""
    extra = length - x.shape[-2]
    return x if extra == 0 else torch.nn.functional.pad(x, (0, 0, 0, extra))


def pad_mask(mask: Tensor, length: int, padded: int) -> Tensor:
    """A [B, 1, L, >=L] attention mask (bool: True attends; float: added to the scores) for a prefill of `length`
    tokens, cut to its first `length` keys and padded to [B, 1, padded, padded]: the real tokens attend as before
    (never to a pad), each pad to itself only (no row without a key). Float masks block the pads with -inf, so that
    a row the mask blocks entirely (a padding token of a left-padded row, whose softmax is uniform) still spreads
    over the same `length` keys."""
    mask = mask[..., :length]
    if padded == length:
        return mask
    allowed, blocked = (True, False) if mask.dtype == torch.bool else (0.0, -torch.inf)
    out = mask.new_full((*mask.shape[:-2], padded, padded), blocked)
    out[..., :length, :length] = mask
    pads = torch.arange(length, padded, device=mask.device)
    out[..., pads, pads] = allowed
    return out


class _Collect:
    """The cache a recorded run's layers see: keeps each layer's new keys and values and returns them as the
    attention's (in a prefill the cache is empty, so a layer attends to its own tokens only)."""

    def __init__(self) -> None:
        self.states: list[Tensor] = []

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.states += [key_states, value_states]
        return key_states, value_states


def _replay_layers(hidden: Tensor, cos: Tensor, sin: Tensor, *rest: Tensor, layers: tuple[torch.nn.Module, ...],
                   masked: bool) -> tuple[Tensor, ...]:  # fmt: skip
    """The recorded step: `layers` one after the other on fixed shapes. Returns the last hidden states and each
    layer's keys and values (`rest`: the mask if `masked`, then the layers' weights, read through `layers`)."""
    mask = rest[0] if masked else None
    collect = _Collect()
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), use_cache=True,
                       **with_cache(collect))  # fmt: skip
    return (hidden, *collect.states)


def passthrough(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """What runs in place of a layer that the run before it has computed already."""
    return hidden_states


class LayerGraphs:
    """Replays the runs of a pruned prefill's decoder layers (see the module docstring).

    A run whose bucket has no graph replaying yet (a clip whose length after Stage 1 is new) is padded further, to
    the shortest bucket whose graph replays, if that one is at most `reuse_longer` (a share) longer: more padded
    rows cost the GPU less than running the layers eagerly costs the host (at 64 frames on the lent H200s the
    replayed layers took 38 ms where the eager ones took 55), and the graph is already there. Otherwise the run
    goes to the runner at its own bucket (eagerly until the runner records it). Which buckets replay is learned
    from the runner's `replayed` count, call by call (`lengths`, a `ReplayingLengths`).

    With `record_while_tower_runs` (off by default), a run that ran eagerly (its bucket's first call) is recorded at
    the next prefill while its vision tower runs (`record_pending`, from a forward hook on the tower that
    `watch_tower` sets): a recording is host work (the layers' Python, traced without running), and there the host
    would wait for the tower's kernels anyway; a run served by a longer bucket has its own bucket recorded so too.
    Off, the runner records a bucket at its second call. On a stream of new 64-frame clips (two H100 runs,
    docs/bench/h100-2026-12-06-thirteenth) the window made `fast()` slower (median 153.5 against 135.6 ms): it
    records every bucket met (16 recordings for 8 clips against 6), so the runner's 6 graphs churn.

    Args:
        runner: records and replays `_replay_layers` (default: a `CudaGraphs` keeping 6 graphs, two buckets of each
            run). `modeling.prunevid.graphs.eager` runs the padded function without graphs (the CPU tests).
        devices: device types the runs are padded and replayed on.
        reuse_longer: how much longer (a share of the run's bucket) a replaying bucket may be to serve a run whose
            own bucket does not replay yet; 0 pads every run to its own bucket only.
    """

    # whether the runs that ran eagerly are recorded while the next vision tower runs (see the class docstring;
    # off: it costs more than it saves on a stream of new clips)
    record_while_tower_runs = False
    # the most runs recorded in one such window (one prefill's runs: at most 3)
    pending_per_window = 3

    def __init__(self, runner: Callable[..., tuple[Tensor, ...]] | None = None,
                 devices: Sequence[str] = ("cuda",), reuse_longer: float = 0.25) -> None:  # fmt: skip
        self.runner = runner if runner is not None else CudaGraphs(max_graphs=6)
        self.devices = tuple(devices)
        self.lengths = ReplayingLengths(reuse_longer)  # per run and input kind: the padded lengths that replay
        self.replayed_runs = 0  # runs computed through `runner` (tests, benchmarks)
        self._done_until = 0  # the layers before this one were computed by the last run (this prefill)
        self._weights: dict[tuple[torch.nn.Module, ...], list[Tensor]] = {}  # the parameters of each run
        self._pending: OrderedDict[tuple, tuple] = OrderedDict()  # runs to record in the next tower's window
        self.recorded_in_tower = 0  # runs recorded while a tower ran (tests, benchmarks)

    def __repr__(self) -> str:
        return f"LayerGraphs({self.runner!r})"

    @property
    def reuse_longer(self) -> float:
        return self.lengths.reuse_longer

    @property
    def longer_runs(self) -> int:
        """Runs padded beyond their own bucket to a replaying one (tests, benchmarks)."""
        return self.lengths.longer

    def __deepcopy__(self, memo: dict) -> "LayerGraphs":  # a copied model records its own graphs
        twin = memo[id(self)] = LayerGraphs(copy.deepcopy(self.runner, memo), self.devices, self.reuse_longer)
        return twin

    def __reduce__(self) -> tuple:  # pickled as its settings only (graphs are bound to this process's memory)
        return (LayerGraphs, (self.runner, self.devices, self.reuse_longer))

    def layer(self, text_model: torch.nn.Module, i: int, decoder_layer: Callable, runs: Sequence[tuple[int, int]]):
        """What the text model's loop calls as layer `i` of a pruned prefill: the run starting at `i`, the layer
        itself, or (inside a run already computed) a pass-through."""
        if i == 0:
            self._done_until = 0
        if i < self._done_until:
            return passthrough
        for start, end in runs:
            if start == i:
                return functools.partial(self._run, text_model, start, end, decoder_layer)
        return decoder_layer

    def _run(self, text_model, start, end, decoder_layer, hidden_states, **kwargs):
        layers = tuple(text_model.layers[start:end])
        why = self._eager_reason(text_model, layers, hidden_states, kwargs)
        if why is not None:
            logger.warning_once(f"PruneVid layer_graphs: the decoder layers run eagerly ({why})")
            return decoder_layer(hidden_states, **kwargs)
        length = hidden_states.shape[1]
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        kind = (layers, *((t.shape[:-2], t.shape[-1], t.dtype, t.device) for t in (hidden_states, cos, sin)),
                None if mask is None else (mask.shape[:-2], mask.dtype))  # the inputs but their length
        own = bucket(length)
        padded = self.lengths.pick(kind, own)
        inputs = [pad_rows(hidden_states, padded), pad_rows(cos, padded), pad_rows(sin, padded)]
        if mask is not None:
            inputs.append(pad_mask(mask, length, padded))
        weights = self._weights.get(layers)
        if weights is None:  # (their addresses are read at every call: a model moved or reloaded records anew)
            if len(self._weights) >= 8:
                self._weights.clear()
            weights = self._weights[layers] = [p for layer in layers for p in layer.parameters()]
        replays = getattr(self.runner, "replayed", None)
        options = dict(layers=layers, masked=mask is not None)
        out = self.runner(_replay_layers, inputs, fixed=weights, **options)
        if replays is not None:  # (a runner that counts its replays: learn whether this length replays)
            replayed = self.runner.replayed > replays
            self.lengths.learn(kind, padded, replayed)
            if self.record_while_tower_runs and hasattr(self.runner, "record"):
                if not replayed:  # ran eagerly: its own bucket, for its next call
                    self._pend(kind, padded, [(t.shape, t.stride()) for t in inputs], inputs, weights, options)
                elif padded != own:  # served by a longer bucket: its own one too, for its later calls
                    shapes = [_with_length(t.shape, own, mask=i == 3) for i, t in enumerate(inputs)]
                    self._pend(kind, own, [(shape, _contiguous(shape)) for shape in shapes], inputs, weights, options)
        cache = kwargs.get(CACHE_KWARG)
        if cache is not None:
            for j, layer in enumerate(layers):
                keys, values = out[1 + 2 * j], out[2 + 2 * j]
                cache.update(keys[:, :, :length], values[:, :, :length], layer.self_attn.layer_idx)
        self._done_until = end
        self.replayed_runs += 1
        return out[0][:, :length]

    def _pend(self, kind, padded, layout, inputs, weights, options) -> None:
        """Note the run of `kind` at `padded` tokens (its inputs' shapes and strides in `layout`, their dtypes and
        device those of `inputs`) for `record_pending`; the most recent `2 * pending_per_window` are kept."""
        specs = [(shape, stride, t.dtype, t.device) for (shape, stride), t in zip(layout, inputs)]
        self._pending[(kind, padded)] = (specs, weights, options)
        self._pending.move_to_end((kind, padded))
        while len(self._pending) > 2 * self.pending_per_window:
            self._pending.popitem(last=False)

    def record_pending(self) -> int:
        """Record the runs that ran eagerly since the last window, the most recent first, at most
        `pending_per_window` of them (the rest wait for the next window); returns how many were recorded.

        Called while a vision tower's kernels run (`watch_tower`); their inputs are stand-ins of the same shapes (a
        recording reads no values), and `sdpa` is restricted as in a pruned prefill (`prefill_backends`). Where the
        runner cannot record (the CPU, autograd on, `torch.compile` around it) nothing is recorded and the runs stay
        pending; a recording that fails raises (the tower's hook then turns these recordings off).
        """
        record = getattr(self.runner, "record", None)
        if record is None or not self._pending or not self.record_while_tower_runs:
            return 0
        done = 0
        while self._pending and done < self.pending_per_window:
            (kind, padded), (specs, weights, options) = self._pending.popitem(last=True)
            inputs = [torch.empty_strided(shape, stride, dtype=dtype, device=device)
                      for shape, stride, dtype, device in specs]  # fmt: skip
            with prefill_backends():  # (as `PruneVidController.layer_call` runs them: the kernels they stand for)
                recorded = record(_replay_layers, inputs, fixed=weights, **options)
            if not recorded:
                self._pending[(kind, padded)] = (specs, weights, options)
                self._pending.move_to_end((kind, padded), last=False)  # (not now: left for a later window)
                break
            self.lengths.learn(kind, padded, True)
            done += 1
        self.recorded_in_tower += done
        return done

    def _eager_reason(self, text_model, layers, hidden_states, kwargs) -> str | None:
        """Why this run cannot be replayed, or None."""
        if hidden_states.device.type not in self.devices:
            return f"{hidden_states.device.type} tensors"
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return "autograd or torch.compile around the model"
        config = text_model.config
        if config._attn_implementation not in ("sdpa", "eager"):
            return f"attention {config._attn_implementation!r}: only sdpa and eager replay"
        if any(config.layer_types[layer.self_attn.layer_idx] != "full_attention" for layer in layers):
            return "sliding-window layers"
        if recording_outputs():
            return "per-layer outputs are recorded (output_hidden_states / output_attentions)"
        if any(hasattr(layer, "_hf_hook") for layer in layers):
            return "accelerate hooks on the layers (device map or offloading)"
        cache = kwargs.get(CACHE_KWARG)
        if cache is not None and not (type(cache) is DynamicCache and _plain_layers(cache)):
            return f"a {type(cache).__name__}: only a DynamicCache is filled after a replay"
        extra = sorted(k for k, v in kwargs.items() if k not in _HANDLED and v is not None and v is not False)
        if extra:
            return f"keyword arguments {extra}"
        mask = kwargs.get("attention_mask")
        length = hidden_states.shape[1]
        if mask is not None and not (mask.ndim == 4 and mask.shape[-2] == length and mask.shape[-1] >= length):
            return f"an attention mask of shape {tuple(mask.shape)}"
        return None


def _with_length(shape: torch.Size, length: int, mask: bool) -> tuple[int, ...]:
    """A run input's shape at another length (dim -2; a mask's dims -2 and -1)."""
    return (*shape[:-2], length, length if mask else shape[-1])


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def watch_tower(tower: torch.nn.Module, graphs: LayerGraphs | None) -> None:
    """Let `graphs` record its pending runs while `tower`'s kernels run: a forward hook on the vision tower, which
    returns once its kernels are queued (`LayerGraphs.record_pending`). None removes it."""
    tower._prunevid_layer_graphs = graphs
    handle = getattr(tower, "_prunevid_pending_hook", None)
    if (graphs is None) == (handle is None):  # (as it should be already)
        return
    if handle is None:
        tower._prunevid_pending_hook = tower.register_forward_hook(_record_pending)
    else:
        handle.remove()
        tower._prunevid_pending_hook = None


def _record_pending(tower: torch.nn.Module, args: Any, output: Any) -> None:
    graphs = getattr(tower, "_prunevid_layer_graphs", None)
    if graphs is None or not graphs._pending:
        return
    try:
        graphs.record_pending()
    except Exception as error:  # (a recording is an optimisation: never the reason a forward fails)
        graphs.record_while_tower_runs = False
        logger.warning(f"PruneVid layer_graphs: recording while the vision tower runs is off from now on ({error!r})")


def _plain_layers(cache: DynamicCache) -> bool:
    """Every layer of `cache` a plain `DynamicLayer` (or none made yet)."""
    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", ()))
