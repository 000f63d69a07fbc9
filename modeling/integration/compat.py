"""Every difference between the transformers releases of the support window (docs/compatibility.md) that the glue
meets, in one place; found by looking at the installed release's signatures and tensors, not at its version number.

- the cache's keyword: `past_key_values`, renamed `cache` in 5.24 (`CACHE_KWARG`, `cache_of`, `with_cache`);
- the mask functions: from 5.14 they size a mask by any cache layer (`layer_idx`), before only by the first one
  (`layer_masks` passes a view of the cache sized by the layer instead);
- the text rotary tables: `[B, L, D]` from 5.17 (the mrope sections recombined), `[3, B, L, D]` from 5.4 to 5.16
  (`gather_rotary` gathers either);
- whether a forward records per-layer outputs (`recording_outputs`: the output collector of
  `transformers.utils.output_capturing`, the same from 5.4 to 5.25; unknown elsewhere, and then assumed).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache
from transformers.generation.utils import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask


try:  # the forward hooks of `output_hidden_states` / `output_attentions` collect into this (5.4-5.25)
    from transformers.utils.output_capturing import _active_collector as _OUTPUT_COLLECTOR
except ImportError:  # another mechanism: `recording_outputs` then assumes a recording
    _OUTPUT_COLLECTOR = None

__all__ = ["CACHE_KWARG", "MASKS_TAKE_LAYER", "MASK_CACHE_KWARG", "cache_of", "gather", "gather_rotary",
           "layer_masks", "recording_outputs", "with_cache"]  # fmt: skip


def _parameter(function: Callable, *names: str) -> str:
    """The first of `names` that `function` takes (decorators such as `deprecate_kwarg` keep the signature)."""
    parameters = inspect.signature(function).parameters
    for name in names:
        if name in parameters:
            return name
    raise TypeError(f"{function.__qualname__} takes none of {names}: this transformers release is not supported")


# transformers 5.24 renamed `past_key_values` to `cache`: the models' forwards, `generate`'s model kwargs,
# `prepare_inputs_for_generation`, the mask functions and the output classes (the old name is accepted, with a
# deprecation warning, until 5.40). The glue passes and reads the cache under the installed release's name.
CACHE_KWARG = _parameter(GenerationMixin.prepare_inputs_for_generation, "cache", "past_key_values")
MASK_CACHE_KWARG = _parameter(create_causal_mask, "cache", "past_key_values")
# transformers >= 5.14 sizes a mask by any cache layer (`layer_idx`); before, always by the first one.
MASKS_TAKE_LAYER = "layer_idx" in inspect.signature(create_causal_mask).parameters

_MASK_FUNCTIONS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


def cache_of(output: Any) -> Any:
    """The cache of a model or `generate` output, under the installed release's name (no deprecation warning)."""
    return getattr(output, CACHE_KWARG)


def with_cache(cache: Any) -> dict[str, Any]:
    """`cache` as the keyword argument of a forward or `generate` of the installed release: `model(**with_cache(c))`."""
    return {CACHE_KWARG: cache}


def recording_outputs() -> bool:
    """Whether the running forward records per-layer outputs (`output_hidden_states`, `output_attentions`): the
    forward hooks that collect them must then see every layer run (`layer_graphs` keeps the layers eager)."""
    return _OUTPUT_COLLECTOR is None or bool(_OUTPUT_COLLECTOR.get())


def layer_masks(config: Any, hidden_states: torch.Tensor, mask: torch.Tensor, kinds: Any, cache: Cache | None,
                layer_idx: int) -> dict[str, Any]:  # fmt: skip
    """The masks of `kinds` (`"full_attention"`, `"sliding_attention"`) for the layers from `layer_idx` on, sized by
    that layer's cache (which, without Stage 3 or during the prefill before it is cut, holds another number of tokens
    than layer 0's)."""
    kwargs = {"config": config, "inputs_embeds": hidden_states, "attention_mask": mask}
    if MASKS_TAKE_LAYER:
        kwargs.update({MASK_CACHE_KWARG: cache, "layer_idx": layer_idx})
    else:
        kwargs[MASK_CACHE_KWARG] = _LayerView(cache, layer_idx) if cache is not None and layer_idx else cache
    return {kind: _MASK_FUNCTIONS[kind](**kwargs) for kind in kinds}


class _LayerView:
    """`cache` as the mask functions of transformers < 5.14 see it: sized by layer `layer_idx` instead of the
    first layer (they take no `layer_idx`). Everything else is the cache's."""

    def __init__(self, cache: Cache, layer_idx: int) -> None:
        self._cache, self._layer = cache, layer_idx

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._cache.get_seq_length(self._layer)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self._cache.get_seq_length(self._layer)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._cache.get_mask_sizes(query_length, self._layer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], ...] for x of shape [B, L, ...]."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


def gather_rotary(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`gather` for a cos/sin table of the text rotary embedding, in either layout transformers has used:
    [B, L, D] (5.17 on: the mrope sections already recombined) or [3, B, L, D] (5.4 to 5.16: one table per
    (t, h, w) row, recombined inside the attention)."""
    if x.ndim == 4:
        return torch.stack([gather(row, index) for row in x])
    return gather(x, index)
