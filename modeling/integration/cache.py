"""Stage 3 (PruneVid Sec. 3.4) on transformers' caches: the cache of layers 0..M cut to the kept tokens; and the
static cache that `generate` makes for one call fitted to the pruned prompt.

A static cache is a buffer of `max_cache_len` slots per layer, allocated at the layer's first write, and a compiled
decoding step attends over all of them (masked): `generate` sizes it for the unpruned prompt plus the new tokens,
which would leave PruneVid's decoding as slow as stock's. `StaticFit` gives each layer, before its first write, the
slots it will use: the tokens it holds after the pruned prefill plus the room `generate` left for new tokens.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticCache, StaticLayer

#: Set by `Qwen2_5_VLPruneVid._prepare_static_cache` on the static cache `generate` made for the call: only such a
#: cache is fitted (a cache the caller made keeps the size the caller chose).
FIT_TAG = "_prunevid_fit"
#: Set by `StaticFit.fit` on a cache whose layers it resized: releases that reuse `generate`'s static cache across
#: calls (before 5.16) must not reuse it (its layers are too small for another prompt).
FITTED_TAG = "_prunevid_fitted"


class StaticFit:
    """Fits the static cache `generate` made for one call to the pruned prompt.

    `room` is what `generate` left for new tokens (its `max_cache_len` minus the unpruned prompt). A layer gets
    `tokens + room` slots, raised to the largest size this object gave before (as `generate` does with
    `max_cache_len`: a compiled decoding step then meets the same shapes at the next call, and does not recompile
    for a slightly shorter prompt), and never more than `generate` gave it.
    """

    def __init__(self) -> None:
        self.largest: dict[str, int] = {}

    @staticmethod
    def room(cache: Cache | None, prompt: int) -> int | None:
        """Slots `generate` left for new tokens in `cache`; None when the cache is not one to fit (see `FIT_TAG`:
        not `generate`'s, not a plain static cache, or already written)."""
        if not (isinstance(cache, StaticCache) and getattr(cache, FIT_TAG, False)):
            return None
        layers = cache.layers
        if not layers or any(type(layer) is not StaticLayer or layer.is_initialized for layer in layers):
            return None
        return layers[0].max_cache_len - prompt

    def size(self, group: str, tokens: int, room: int, given: int) -> int:
        size = min(given, max(tokens + room, self.largest.get(group, 0)))
        self.largest[group] = max(size, self.largest.get(group, 0))
        return size

    def fit(self, cache: Cache, start: int, group: str, tokens: int, room: int) -> int:
        """Give the (unwritten) layers from `start` on `tokens + room` slots; returns the size given."""
        layers = cache.layers[start:]
        size = self.size(group, tokens, room, layers[0].max_cache_len)
        for layer in layers:
            if not layer.is_initialized and layer.max_cache_len != size:
                layer.max_cache_len = size
                setattr(cache, FITTED_TAG, True)
        return size


def cut_cache(cache: Cache, index: torch.Tensor, upto: int, size: int | None = None) -> None:
    """Keep only `index` tokens in the cache of layers 0..upto (keys/values [B, H, L, D]).

    A dynamic layer is replaced by the gathered tensors. A static layer keeps its buffers (their addresses matter
    to compiled decoding): the kept tokens move to its front, the slots after them are zeroed, and its length is
    set to the kept count, so the next token is written right after them; with `size` (a cache `StaticFit` fitted,
    during the prefill: nothing is compiled yet) it gets new buffers of `size` slots instead.
    """
    for i, layer in enumerate(cache.layers[: upto + 1]):
        if type(layer) not in (DynamicLayer, StaticLayer):
            raise NotImplementedError(
                f"PruneVid Stage 3 cuts DynamicCache and StaticCache layers; layer {i} is a {type(layer).__name__} "
                f"(in a {type(cache).__name__}). Use the default or the static cache, or "
                "PruneVidConfig(enable_stage3=False)."
            )
    width = index.shape[1]
    for layer in cache.layers[: upto + 1]:
        idx = index.to(layer.keys.device)[:, None, :, None]
        keys = layer.keys.gather(2, idx.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1]))
        values = layer.values.gather(2, idx.expand(-1, layer.values.shape[1], -1, layer.values.shape[-1]))
        if isinstance(layer, StaticLayer) and size is not None and size != layer.max_cache_len:
            for name, kept in (("keys", keys), ("values", values)):
                buffer = kept.new_zeros(*kept.shape[:2], size, kept.shape[-1])
                buffer[:, :, :width] = kept
                torch._dynamo.mark_static_address(buffer)  # as `StaticLayer.lazy_initialization` does
                setattr(layer, name, buffer)
            layer.max_cache_len = size
            layer.cumulative_length.fill_(width)
        elif isinstance(layer, StaticLayer):
            length = int(layer.get_seq_length())
            layer.keys[:, :, :width].copy_(keys)
            layer.values[:, :, :width].copy_(values)
            layer.keys[:, :, width:length].zero_()
            layer.values[:, :, width:length].zero_()
            layer.cumulative_length.fill_(width)
        else:
            layer.keys, layer.values = keys, values
