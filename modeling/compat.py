"""What differs between the transformers releases of the support window (docs/compatibility.md), found by looking
at the installed release's signatures rather than at its version number."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from transformers.generation.utils import GenerationMixin
from transformers.masking_utils import create_causal_mask


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


def cache_of(output: Any) -> Any:
    """The cache of a model or `generate` output, under the installed release's name (no deprecation warning)."""
    return getattr(output, CACHE_KWARG)


def with_cache(cache: Any) -> dict[str, Any]:
    """`cache` as the keyword argument of a forward or `generate` of the installed release: `model(**with_cache(c))`."""
    return {CACHE_KWARG: cache}
