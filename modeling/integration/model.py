"""`Qwen2_5_VLPruneVid`: the drop-in class. Everything but the PruneVid switch is inherited from the vendored,
patched `Qwen2_5_VLForConditionalGeneration`; with every stage off its forward is upstream's, line for line."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.generation.configuration_utils import GenerationMode
from transformers.masking_utils import create_masks_for_generate

from ..modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from ..prunevid.config import PruneVidConfig
from ..prunevid.graphs import CudaGraphs
from .cache import FIT_TAG, FITTED_TAG
from .compat import CACHE_KWARG
from .controller import PruneVidController
from .layer_graphs import LayerGraphs, watch_tower
from .stats import PruneVidStats, unpruned_stats
from .vision_attention import attach, vision_attention_for


# The `prunevid=` given to `from_pretrained`, read by `__init__` so that the saved settings are never parsed then.
_EXPLICIT_SETTINGS: contextvars.ContextVar[PruneVidConfig | PruneVidController | None] = contextvars.ContextVar(
    "prunevid_explicit_settings", default=None
)


class Qwen2_5_VLPruneVid(Qwen2_5_VLForConditionalGeneration, GenerationMixin):
    """Qwen2.5-VL with PruneVid (Huang, Zhou, Han, ACL 2025 Findings) inside the forward.

    Loads the released checkpoints and saves checkpoints that the stock class loads. The PruneVid settings live in
    `model.prunevid` (reassignable at runtime) and are saved in `config.json` under `"prunevid"`.

    Example:
        >>> model = Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=PruneVidConfig.paper())
        >>> model.generate(**inputs)  # pruned prefill, compressed cache
        >>> model.prunevid_stats      # [PruneVidStats(...)]: tokens per stage of the last prefill, one per row

    Techniques: `model.prunevid` also takes a `PruneVidController` (a subclass that overrides `merge`, `query_mask`
    or `select`); `with model.prunevid_override(technique): ...` runs one for a block and restores what was set.

    Generation: greedy, sampling and beam search, on a dynamic or static cache, and continuing from the returned
    cache (a follow-up turn: `generate(input_ids=ids_so_far_plus_new_turn, cache=cache)`, `past_key_values=cache`
    before transformers 5.24). Assisted
    decoding, prompt lookup and chunked prefill are refused while a pruning stage is on.
    """

    def __init__(self, config, prunevid: PruneVidConfig | PruneVidController | dict | None = None) -> None:
        super().__init__(config)
        if prunevid is None:
            prunevid = _EXPLICIT_SETTINGS.get() or _saved_settings(config)
        self._last_prefill: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._chunked_prefill = False  # set by `generate` (its `prefill_chunk_size`), read by `_note_prefill`
        self._prefill_chunk_next = False  # the next forward is a chunk of `generate`'s chunked prefill
        self.register_forward_pre_hook(_note_prefill, with_kwargs=True)
        self.prunevid = prunevid

    @classmethod
    def from_pretrained(cls, *args: Any, prunevid: PruneVidConfig | PruneVidController | dict | None = None,
                        **kwargs: Any):  # fmt: skip
        """`from_pretrained` of the stock class; `prunevid` (if given) replaces the saved/default settings, which
        are then not read at all (a checkpoint whose saved settings this version cannot parse still loads)."""
        if prunevid is None:
            return super().from_pretrained(*args, **kwargs)
        explicit = prunevid if isinstance(prunevid, PruneVidController) else _as_config(prunevid)
        token = _EXPLICIT_SETTINGS.set(explicit)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            _EXPLICIT_SETTINGS.reset(token)

    @property
    def prunevid(self) -> PruneVidConfig:
        """The PruneVid settings in use (those of the technique, when one was set)."""
        return self._prunevid_config

    @prunevid.setter
    def prunevid(self, value: PruneVidConfig | PruneVidController | dict) -> None:
        """Switch PruneVid: settings (a `PruneVidConfig`, or a dict of its fields), or a technique (a
        `PruneVidController`, e.g. a subclass that overrides `merge`, `query_mask` or `select`). Settings with every
        stage off (`PruneVidConfig.disabled()`) give the stock model."""
        if isinstance(value, PruneVidController):
            controller = value.bind(self.config)  # validates the pruning layer against this model's depth
            controller.reset()  # its last prefill (if any) is not this model's last one any more
            config = controller.config
        else:
            config = _as_config(value)
            controller = PruneVidController(config, self.config) if config.is_active else None
        if controller is not None and config.cuda_graphs:  # one set of graphs per model, kept across settings
            if getattr(self, "_prunevid_graphs", None) is None:
                self._prunevid_graphs = CudaGraphs()
            controller.runner = self._prunevid_graphs
        if controller is not None and config.layer_graphs:  # the same for the decoder layers' graphs
            if getattr(self, "_prunevid_layer_graphs", None) is None:
                self._prunevid_layer_graphs = LayerGraphs()
            controller.layer_graphs = self._prunevid_layer_graphs
        self._prunevid_config = config
        self.config.prunevid = config.to_dict()
        self.model._prunevid = controller
        self.model.language_model._prunevid = controller
        attach(self.model.visual, vision_attention_for(config))  # None (the stock tower) clears every hook
        watch_tower(self.model.visual, controller.layer_graphs if controller is not None else None)
        self._last_prefill = None  # stats describe a prefill of these settings only

    @property
    def prunevid_technique(self) -> PruneVidController | None:
        """The controller that runs in the forward: PruneVid's, or the technique set through `model.prunevid` (also
        when that technique's stages are all off); None when settings with every stage off were set. Its `name`
        labels the stats."""
        return self.model._prunevid

    @contextlib.contextmanager
    def prunevid_override(self, value: PruneVidConfig | PruneVidController | dict) -> Iterator[PruneVidController | None]:
        """`with model.prunevid_override(technique_or_settings) as controller:` runs the block with them, then puts
        back the settings and the controller that were in place (even on an error)."""
        saved = (self._prunevid_config, self.model._prunevid)
        self.prunevid = value
        try:
            yield self.model._prunevid
        finally:
            config, controller = saved
            self.prunevid = controller if controller is not None else config

    @property
    def prunevid_stats(self) -> list[PruneVidStats]:
        """Token counts of the last prefill, one `PruneVidStats` per batch row, also when nothing was pruned
        (PruneVid off, a text-only prompt: every token stays, `technique` says which). Empty before the first
        prefill under the current settings, or after a forward that had no `input_ids`."""
        controller = self.model._prunevid
        if controller is not None and controller.state is not None:
            return controller.stats()
        if self._last_prefill is None:
            return []
        input_ids, attention_mask = self._last_prefill
        return unpruned_stats(input_ids, attention_mask, self.config.video_token_id, self.config.image_token_id,
                              technique=controller.name if controller is not None else "off")  # fmt: skip

    def prunevid_video_fates(self) -> list[dict[str, Any]]:
        """Per video of the last prefill: which tokens were merged as static, kept, or dropped (see
        `PruneVidController.video_fates`)."""
        controller = self.model._prunevid
        return controller.video_fates() if controller is not None else []

    # ------------------------------------------------------------------------------------------ generation
    def _prunes(self) -> bool:
        config = self._prunevid_config
        return self.model._prunevid is not None and (config.enable_stage1 or config.enable_stage2)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Upstream's, with the first forward over a pruned cache sliced by the length the cache stands for.

        `generate` processes `ids[:, cache.get_seq_length():]` when it starts from a filled cache; a pruned cache
        is shorter than the prompt it holds (Stage 1 merged, Stage 3 dropped tokens), which would feed part of the
        prompt through again. Its unpruned length (`PruneVidController.unpruned_length`) is used instead.
        The cache comes in `kwargs` under the installed release's name (`cache` from transformers 5.24 on).
        A forward over a pruned cache gets the positions and masks of the pruned layout from here
        (`PruneVidController.generation_inputs`): computed eagerly, so that the compiled decoding step of a static
        cache reads nothing back and has one shape at every step.
        """
        cache: Cache | None = kwargs.get(CACHE_KWARG, kwargs.get("past_key_values"))
        self._prefill_chunk_next = bool(is_first_iteration) and self._chunked_prefill
        controller = self.model._prunevid
        if controller is None:
            if getattr(cache, "_prunevid_layout", None) is not None and cache.get_seq_length():
                raise ValueError(
                    "This cache holds a PruneVid-pruned prompt, but PruneVid is off on this model: continue with "
                    "the settings that pruned it, or start again with a fresh cache."
                )
        elif is_first_iteration and controller.pruned_state(cache) is not None:
            encoded = kwargs.get("mm_encoder_outputs") or {}
            if any(v is not None for v in encoded.values()) or kwargs.get("pixel_values_videos") is not None:
                raise ValueError(
                    "PruneVid: the videos of a pruned prompt are already in its cache; continue from it with the "
                    "conversation's `input_ids` and `attention_mask` only (no `pixel_values`/`pixel_values_videos`)."
                )
            if next_sequence_length is not None:
                unpruned = controller.unpruned_length(cache)
                next_sequence_length -= unpruned - int(cache.get_seq_length())
                if next_sequence_length <= 0:
                    raise ValueError(
                        f"PruneVid: the cache stands for {unpruned} tokens of the sequence, which leaves none of the "
                        f"{input_ids.shape[1]} given ids to process. Pass the whole sequence so far (prompt, answer, "
                        "new turn) as `input_ids`, with its full attention mask."
                    )
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if controller is not None:
            ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
            prepared = controller.generation_inputs(
                cache,
                ids,
                q_len=(ids if ids is not None else embeds).shape[1],
                attention_mask=attention_mask,
                position_ids=inputs.get("position_ids"),
                dtype=self.dtype,
                check_media=bool(is_first_iteration),
            )
            if prepared is not None:
                inputs.update(prepared)
        return inputs

    def _prepare_static_cache(self, *args: Any, **kwargs: Any) -> Cache:
        """Upstream's, with the cache marked as `generate`'s own: a pruned prefill fits its layers to the pruned
        prompt (`modeling.integration.cache.StaticFit`). A fitted cache that a release before 5.16 would reuse is
        made anew (its layers are too small for another prompt)."""
        cache = super()._prepare_static_cache(*args, **kwargs)
        if getattr(cache, FITTED_TAG, False):
            self.__dict__.pop("_cache", None)
            cache = super()._prepare_static_cache(*args, **kwargs)
        setattr(cache, FIT_TAG, True)
        return cache

    def create_masks_for_generate(self, config: Any, inputs_embeds: torch.Tensor, attention_mask: Any, **kwargs: Any):
        """`generate` builds the 4-D masks up front for a static cache; PruneVid changes the sequence inside the
        forward (and, without Stage 3, uses one mask per layer group), so while a stage is on the 2-D mask is passed
        on and the masks of the pruned layout are made by the model (the prefill) or by `generation_inputs` (a
        forward over the pruned cache). With every stage off these are upstream's masks."""
        if self._prunes() and (attention_mask is None or attention_mask.ndim == 2):
            return attention_mask
        return create_masks_for_generate(
            config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )

    def _validate_generation_mode(self, generation_mode, generation_config, generation_mode_kwargs) -> None:
        """Upstream's checks, plus the generation modes PruneVid does not support while a pruning stage is on."""
        super()._validate_generation_mode(generation_mode, generation_config, generation_mode_kwargs)
        self._chunked_prefill = generation_config.prefill_chunk_size is not None
        if not self._prunes():
            return
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                "PruneVid does not support assisted decoding or prompt lookup (`assistant_model`, "
                "`prompt_lookup_num_tokens`): they crop and re-extend the cache by unpruned lengths. Generate "
                "without them, or switch pruning off (`model.prunevid = PruneVidConfig.disabled()`)."
            )
        if generation_config.prefill_chunk_size is not None:
            raise ValueError(
                "PruneVid prunes the whole prompt in one prefill, so `prefill_chunk_size` is not supported while a "
                "pruning stage is on."
            )


def _note_prefill(model: "Qwen2_5_VLPruneVid", args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: keep the `input_ids` and 2-D `attention_mask` of a prefill, by reference, for
    `prunevid_stats`, and forget the pruned layout an emptied cache was tagged with. A prefill is a forward from an
    empty cache, continued by the later chunks of `generate`'s chunked prefill (`prefill_chunk_size`), whose ids are
    appended. Arguments are read by name or position. Reads only the cache's length (a device read for a static
    cache) and does nothing while compiled, so the stock forward's outputs and compiled graphs are untouched."""
    chunk, model._prefill_chunk_next = model._prefill_chunk_next, False
    if torch.compiler.is_compiling():
        return
    named = dict(zip(_FORWARD_PARAMETERS, args)) | kwargs if args else kwargs  # `generate` passes keywords only
    cache = named.get(CACHE_KWARG, named.get("past_key_values"))
    input_ids, mask = named.get("input_ids"), named.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    past = cache.get_seq_length() if cache is not None else 0
    if past == 0:
        model._last_prefill = None if input_ids is None else (input_ids, mask)
        if cache is not None:  # an emptied cache (`reset()`, reused by `generate` before 5.16) holds no pruned prompt
            cache.__dict__.pop("_prunevid_layout", None)
        return
    recorded = model._last_prefill
    if chunk and recorded is not None and input_ids is not None and recorded[0].shape[1] == past:
        ids = torch.cat([recorded[0], input_ids], dim=1)
        model._last_prefill = (ids, mask if mask is not None and mask.shape[1] == ids.shape[1] else None)


# The forward's parameters in order (after `self`), to read positional arguments by name.
_FORWARD_PARAMETERS = tuple(inspect.signature(Qwen2_5_VLPruneVid.forward).parameters)[1:]


def _as_config(value: PruneVidConfig | dict) -> PruneVidConfig:
    """A validated `PruneVidConfig` from a config (re-validated: its fields may have been assigned since) or a dict
    (strict: unknown keys raise)."""
    if isinstance(value, dict):
        return PruneVidConfig.from_dict(value, strict=True)
    if not isinstance(value, PruneVidConfig):
        raise TypeError(f"prunevid must be a PruneVidConfig or a dict, got {type(value).__name__}")
    return dataclasses.replace(value)


def _saved_settings(config: Any) -> PruneVidConfig:
    """The settings saved in `config.json` under `"prunevid"` (the paper's when none); keys this version does not
    know (a newer release's) are ignored with a warning (`PruneVidConfig.from_dict`)."""
    saved = getattr(config, "prunevid", None)
    if isinstance(saved, PruneVidConfig):
        return _as_config(saved)
    if not isinstance(saved, dict):
        return PruneVidConfig.paper()
    try:
        return PruneVidConfig.from_dict(saved)
    except (TypeError, ValueError) as error:
        raise type(error)(
            f"{error} (in the checkpoint's saved `prunevid` settings; pass `prunevid=` to `from_pretrained` to "
            "override them)"
        ) from error


# The released checkpoints store `model.layers.*` / `visual.*`; transformers renames them on load only for its own
# classes and for names registered by hand (a class outside `transformers.` counts as custom code and is skipped). So
# our class gets the stock class's mapping, and the vendored classes (the inner `model`, and both when used directly
# after this import) the mappings of their stock namesakes: the same conversions as stock, class by class (without
# the vendored `Qwen2_5_VLModel` left the language model's weights at their initial values, a check with
# transformers' own model tests found). Registering a name is global: it changes nothing for transformers' classes
# (their mappings are these), and gives another custom class of the same name the stock conversions.
for _ours, _stock in ((Qwen2_5_VLPruneVid.__name__, "Qwen2_5_VLForConditionalGeneration"),
                      ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
                      ("Qwen2_5_VLModel", "Qwen2_5_VLModel")):  # fmt: skip
    if (_mapping := get_checkpoint_conversion_mapping(_stock)) is not None:
        register_checkpoint_conversion_mapping(_ours, _mapping, overwrite=True)
