"""Stage 3 (PruneVid Sec. 3.4) on transformers' caches: the cache of layers 0..M cut to the kept tokens."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer


def cut_cache(cache: Cache, index: torch.Tensor, upto: int) -> None:
    """Keep only `index` tokens in the cache of layers 0..upto (keys/values [B, H, L, D]).

    A dynamic layer is replaced by the gathered tensors; a static layer keeps its buffers (their addresses matter
    to compiled decoding): the kept tokens move to its front, the slots after them are zeroed, and its length is
    set to the kept count, so the next token is written right after them.
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
        if isinstance(layer, StaticLayer):
            length = int(layer.get_seq_length())
            layer.keys[:, :, :width].copy_(keys)
            layer.values[:, :, :width].copy_(values)
            layer.keys[:, :, width:length].zero_()
            layer.values[:, :, width:length].zero_()
            layer.cumulative_length.fill_(width)
        else:
            layer.keys, layer.values = keys, values
