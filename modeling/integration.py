"""Glue between the two guarded hooks of the vendored Qwen2.5-VL file and the PruneVid algorithm.

The vendored `modeling_qwen2_5_vl.py` calls into one `PruneVidController` (attached as `_prunevid` to
`Qwen2_5_VLModel` and to `Qwen2_5_VLTextModel` when a stage is on):

* `before_language_model` (patch `merge-before-llm`), after the vision features are scattered into the
  embeddings and the 3-D positions are computed:
    - prefill: Stage 1 (Sec. 3.2) merges each video's tokens and re-packs the sequence (left padded); it
      records, per token of the new layout, its Stage-2 group and whether it is a question token.
    - continuing from a pruned prefill's cache (decoding steps, or a follow-up turn appended after the answer):
      translates the caller's 2-D attention mask (unpruned length, as `generate` keeps it) to the pruned cache
      layout and gives the new tokens their positions in the unpruned numbering (see `_continue`).
* `before_layer` (patch `select-in-layers`), before each decoder layer:
    - prefill, layer M: scores the candidate visual tokens with the attention of the question tokens
      (Sec. 3.3; pre-RoPE q/k of layer M, softmax over all valid keys, max over heads then queries);
    - prefill, layer M+1: drops the unselected tokens from the hidden states, positions and masks, and (Stage 3,
      Sec. 3.4) cuts the cache of layers 0..M to the same tokens;
    - continuing without Stage 3: switches to the mask of the shorter cache from layer M+1 on.

The cache a pruned prefill fills holds fewer tokens than the prompt. It is tagged with its `PrefillState`
(`cache._prunevid_layout`), so that a forward continuing from it knows the unpruned length of what it holds
(`unpruned_length`), and a cache this controller did not fill is refused rather than misread. Stage 3 cuts a
`DynamicCache` and a `StaticCache` (the kept tokens move to the front of each static buffer).

Positions (the Qwen2.5-VL decision, see README "Positions"): every kept or merged token carries the 3-D position
(t, h, w) of a real member token of the unpruned model: its DPC-KNN centre, and for static tokens the centre at the
first temporal patch of the segment. Text tokens keep exactly their unpruned positions, and `rope_deltas` is the
unpruned one, so decoding continues from the unpruned numbering. The text row of 4-row position ids (used only to
detect packed sequences) is made non-decreasing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.utils import logging

from .compat import MASK_CACHE_KWARG, MASKS_TAKE_LAYER
from .prunevid.config import PruneVidConfig
from .prunevid.merge import MergeResult, merge_video
from .prunevid.select import attention_importance, grouped_topk


logger = logging.get_logger(__name__)

_MASK_FUNCTIONS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


@dataclass
class VideoRecord:
    """What Stage 1 did to one video (for stats and the visualisation)."""

    sample: int
    start: int  # first token of the video in the unpruned sequence
    grid: tuple[int, int, int]  # (t, h, w) in LLM tokens (after the 2x2 merger)
    merge: MergeResult | None  # None when Stage 1 is off


@dataclass
class PrefillState:
    """Per-prefill bookkeeping, kept for the decoding steps that continue from its cache."""

    orig_len: int  # length of the unpruned prompt (what `generate`'s attention mask starts with)
    origin: torch.Tensor  # [B, L1] index in the unpruned sequence of the token whose position each token carries
    mask: torch.Tensor  # [B, L1] 2-D attention mask after Stage 1
    group: torch.Tensor  # [B, L1] Stage-2 group, -1 = not a candidate
    visual: torch.Tensor  # [B, L1] bool: video tokens (merged or not)
    query: torch.Tensor  # [B, L1] bool: the tokens whose attention scores the candidates
    videos: list[VideoRecord]
    stats: dict[str, list[Any]]
    keep: torch.Tensor | None = None  # [B, L1] bool after the Stage-2 scoring
    index: torch.Tensor | None = None  # [B, L2] kept columns of the Stage-1 layout (left padded)
    mask_after_select: torch.Tensor | None = None  # [B, L2]
    next_position: torch.Tensor | None = None  # [B] position of the first token after the prompt (unpruned numbering)
    cached_prompt: int = 0  # prompt tokens held by cache layer 0 after the prefill
    tail: torch.Tensor | None = field(default=None, repr=False)  # continuing: mask columns after the prompt


class PruneVidController:
    """Runs PruneVid inside one `Qwen2_5_VLForConditionalGeneration` (see module docstring)."""

    def __init__(self, config: PruneVidConfig, model_config: Any) -> None:
        self.config = config
        self.video_token_id = model_config.video_token_id
        self.image_token_id = model_config.image_token_id
        self.spatial_merge_size = model_config.vision_config.spatial_merge_size
        num_layers = model_config.text_config.num_hidden_layers
        self.layer = config.resolve_pruning_layer(num_layers) if config.enable_stage2 else None
        self.state: PrefillState | None = None  # the last pruned prefill
        self._prefilling = False
        self._continuing: PrefillState | None = None  # set while a forward continues from `state`'s cache

    # ------------------------------------------------------------------------------------------ pruned caches
    def pruned_state(self, cache: Cache | None) -> PrefillState | None:
        """The prefill whose pruned prompt `cache` holds, or None for a cache that no pruned prefill filled.

        Raises if `cache` was pruned by another prefill (an earlier one of this model, another model, or another
        PruneVid setting): its layout is not the one this controller would translate to.
        """
        if cache is None or int(cache.get_seq_length()) == 0:
            return None
        state = getattr(cache, "_prunevid_layout", None)
        if state is None:
            return None
        if state is not self.state:
            raise ValueError(
                "PruneVid: this cache holds a pruned prompt from another prefill (an earlier `generate`, another "
                "model, or before `model.prunevid` was changed). Only the cache of this model's last pruned prefill "
                "can be continued; run the whole conversation again with a fresh cache."
            )
        return state

    def unpruned_length(self, cache: Cache) -> int:
        """How many tokens of the unpruned sequence `cache` stands for: what `generate` compares with the ids."""
        state = self.pruned_state(cache)
        length = int(cache.get_seq_length())
        return length if state is None else length + state.orig_len - state.cached_prompt

    # ------------------------------------------------------------------------------------------ hook 1
    def before_language_model(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        video_grid_thw: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        past = int(cache.get_seq_length()) if cache is not None else 0
        self._prefilling, self._continuing = False, None
        if past > 0:
            return self._continue(input_ids, inputs_embeds, position_ids, attention_mask, cache)
        self.state = None
        cfg = self.config
        if not (cfg.enable_stage1 or cfg.enable_stage2):
            return inputs_embeds, position_ids, attention_mask
        if input_ids is None:
            logger.warning_once("PruneVid needs `input_ids` to find the video tokens; this call is not pruned.")
            return inputs_embeds, position_ids, attention_mask
        is_video = input_ids == self.video_token_id
        is_image = input_ids == self.image_token_id
        if not (is_video.any() or (cfg.include_images and cfg.enable_stage2 and is_image.any())):
            return inputs_embeds, position_ids, attention_mask  # text only (or images only): untouched
        if position_ids is None:
            raise ValueError(
                "PruneVid needs the 3-D (t, h, w) positions of the video tokens, but none were computed: pass the "
                "processor's `mm_token_type_ids` (and `video_grid_thw`) to the model, or explicit `position_ids`."
            )
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2):
            raise ValueError(
                "PruneVid changes the sequence inside the model and needs the 2-D (batch, length) attention mask, got "
                f"{type(attention_mask).__name__} {getattr(attention_mask, 'shape', '')}"
            )
        batch, length = input_ids.shape
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(is_video)
        lowest = torch.iinfo(position_ids.dtype).min
        next_position = position_ids[-3:].masked_fill(~valid[None], lowest).amax(dim=(0, 2)) + 1
        # `generate` encodes the videos up front and drops `video_grid_thw`; the grid is then read off the positions.
        grids = iter(video_grid_thw.tolist()) if video_grid_thw is not None else None
        embeds, origins, groups, videos = [], [], [], []
        stats: dict[str, list[Any]] = {k: [] for k in ("visual_tokens", "static_ratio", "segments")}
        for b in range(batch):
            sample_grids = grids
            if sample_grids is None:
                sample_grids = _grids_from_positions(position_ids[-3:, b], is_video[b], self.spatial_merge_size)
            e, o, g, recs = self._stage1_sample(b, inputs_embeds[b], is_video[b], is_image[b], sample_grids)
            embeds.append(e), origins.append(o), groups.append(g), videos.extend(recs)
            merges = [r.merge for r in recs if r.merge is not None]
            n_video = int(is_video[b].sum())
            n_static = sum(int(r.static_mask.sum()) for r in merges)
            stats["visual_tokens"].append(n_video)
            stats["static_ratio"].append(round(n_static / n_video, 4) if n_video else 0.0)
            stats["segments"].append([[list(s) for s in r.segments] for r in merges])

        if cfg.enable_stage1:
            keep = [valid[b][o] for b, o in enumerate(origins)]  # padding is re-created, on the left, below
            embeds = [e[k] for e, k in zip(embeds, keep)]
            origins = [o[k] for o, k in zip(origins, keep)]
            groups = [g[k] for g, k in zip(groups, keep)]
            inputs_embeds, origin, mask = _left_pad(embeds, origins)
            index = origin.clamp(min=0)
            position_ids = torch.stack([row.gather(1, index) for row in position_ids])
            if position_ids.shape[0] == 4:  # text row only detects packed sequences: keep it non-decreasing
                position_ids[0] = position_ids[0].cummax(dim=1).values
            pad = mask == 0
            position_ids = position_ids.masked_fill(pad[None], 0)
            group = _left_pad_like(groups, mask, fill=-1)
            attention_mask = mask
        else:
            origin = torch.arange(length, device=input_ids.device).expand(batch, -1)
            mask = valid.long() if attention_mask is None else attention_mask
            group = torch.stack(groups)
        self.state = PrefillState(
            orig_len=length,
            origin=origin,
            mask=mask,
            group=group,
            visual=is_video.gather(1, origin.clamp(min=0)) & (mask > 0),
            query=self._query_mask(origin, mask, is_video, is_image),
            videos=videos,
            stats=stats,
            next_position=next_position,
        )
        self._prefilling = True
        return inputs_embeds, position_ids, attention_mask

    def _stage1_sample(self, b, embeds, is_video, is_image, grids):
        """Stage 1 on one sample: per video `merge_video`; returns the sample's new embeds, origins, groups."""
        cfg, m = self.config, self.spatial_merge_size
        parts_e, parts_o, parts_g, records = [], [], [], []
        next_group, cursor = 0, 0
        length = embeds.shape[0]
        device = embeds.device
        runs = _runs(is_video)
        image_runs = _runs(is_image) if cfg.include_images and cfg.enable_stage2 else []
        text_group = torch.full((length,), -1, dtype=torch.long, device=device)
        for start, end in image_runs:  # each image is one candidate group (never merged)
            text_group[start:end] = next_group if cfg.selection_scope == "grouped" else 0
            next_group += 1
        for start, end in runs:
            pos = start
            while pos < end:  # a run may hold several videos back to back
                t, h, w = next(grids)  # as in video_grid_thw: patches before the 2x2 merger
                grid = (t, h // m, w // m)
                n = grid[0] * grid[1] * grid[2]
                if pos + n > end:
                    raise ValueError(f"video tokens of sample {b} do not match video_grid_thw {[t, h, w]}")
                parts_e.append(embeds[cursor:pos]), parts_o.append(torch.arange(cursor, pos, device=device))
                parts_g.append(text_group[cursor:pos])
                if cfg.enable_stage1 and grid[0] > 1:  # one temporal patch: nothing to merge over time
                    res = self.merge(embeds[pos : pos + n], grid)
                    feats, origin, group = res.features, pos + res.source, res.group
                else:
                    res = None
                    feats, origin = embeds[pos : pos + n], torch.arange(pos, pos + n, device=device)
                    group = torch.arange(n, device=device) // (grid[1] * grid[2])  # one group per temporal patch
                if cfg.selection_scope == "global":
                    group = torch.zeros_like(group)
                    next_group = 0
                parts_e.append(feats), parts_o.append(origin), parts_g.append(group + next_group)
                next_group = next_group + int(group.max()) + 1 if cfg.selection_scope == "grouped" else 0
                records.append(VideoRecord(sample=b, start=pos, grid=grid, merge=res))
                cursor = pos = pos + n
        parts_e.append(embeds[cursor:]), parts_o.append(torch.arange(cursor, length, device=device))
        parts_g.append(text_group[cursor:])
        origin = torch.cat(parts_o)
        group = torch.cat(parts_g) if cfg.enable_stage2 else torch.full_like(origin, -1)
        return torch.cat(parts_e), origin, group, records

    def merge(self, features: torch.Tensor, grid: tuple[int, int, int]) -> MergeResult:
        """Stage 1 on one video's `[t*h*w, C]` tokens (Sec. 3.2). The one place a subclass swaps the pre-LLM
        reduction (e.g. the token-dropping baselines of `modeling.eval.baselines`)."""
        cfg = self.config
        return merge_video(
            features,
            grid,
            tau=cfg.tau,
            temporal_segment_ratio=cfg.temporal_segment_ratio,
            cluster_ratio=cfg.cluster_ratio,
            k=cfg.dpc_knn_k,
            min_tokens_to_cluster=cfg.min_tokens_to_cluster,
        )

    def _query_mask(self, origin, mask, is_video, is_image) -> torch.Tensor:
        """Tokens whose attention scores the candidates: text after the last video (paper) or the last token."""
        valid = mask.bool()
        if self.config.selection_query == "last":
            query = torch.zeros_like(valid)
            query[:, -1] = valid[:, -1]
            return query
        index = origin.clamp(min=0)
        visual = is_video | (is_image if self.config.include_images else torch.zeros_like(is_image))
        tok_visual = visual.gather(1, index) & valid
        last = torch.where(tok_visual, torch.arange(index.shape[1], device=index.device), -1).max(dim=1).values
        after = torch.arange(index.shape[1], device=index.device)[None] > last[:, None]
        return after & valid & ~tok_visual

    # ------------------------------------------------------------------------------------------ hook 2
    def before_layer(self, text_model, i, hidden_states, mask_mapping, position_embeddings, text_positions, cache):
        if not self._prefilling:
            state = self._continuing
            if (
                state is not None
                and i == (self.layer or 0) + 1
                and state.index is not None
                and not self.config.enable_stage3
            ):
                mask = torch.cat([state.mask_after_select.to(state.tail.dtype), state.tail], dim=1)
                mask_mapping = self._masks(text_model, hidden_states, mask, mask_mapping, cache, i)
            return hidden_states, mask_mapping, position_embeddings, text_positions
        state = self.state
        if i == 0:
            state.cached_prompt = hidden_states.shape[1]
            if cache is not None:
                cache._prunevid_layout = state  # lets a later forward over this cache find its layout
        if self.layer is None or i not in (self.layer, self.layer + 1):
            return hidden_states, mask_mapping, position_embeddings, text_positions
        if i == self.layer:
            state.keep = self._select(text_model.layers[i], hidden_states, state)
            return hidden_states, mask_mapping, position_embeddings, text_positions

        # i == layer + 1: drop the tokens that were not selected, from here on and (Stage 3) in the cache.
        keep = state.keep & state.mask.bool()
        counts = keep.sum(dim=1)
        width = int(counts.max())
        index = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, keep.shape[1] - width :]
        mask = (torch.arange(width, device=keep.device)[None] >= (width - counts)[:, None]).to(state.mask.dtype)
        hidden_states = _gather(hidden_states, index)
        position_embeddings = tuple(_gather_rotary(p, index) for p in position_embeddings)
        if text_positions is not None:
            text_positions = text_positions.gather(1, index)
        mask_mapping = self._masks(text_model, hidden_states, mask, mask_mapping, cache, i)
        if self.config.enable_stage3 and cache is not None:
            _cut_cache(cache, index, upto=self.layer)
            state.cached_prompt = width
        state.index, state.mask_after_select = index, mask
        return hidden_states, mask_mapping, position_embeddings, text_positions

    @torch.no_grad()
    def _select(self, layer, hidden_states, state: PrefillState) -> torch.Tensor:
        """Stage 2 scoring at layer M: pre-RoPE q/k of the layer, only the question rows (Sec. 3.3)."""
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden_states)
        batch, length, _ = normed.shape
        n_query = int(state.query.sum(dim=1).max())
        q_index = torch.sort(state.query.to(torch.int8), dim=1, stable=True).indices[:, length - n_query :]
        q_mask = state.query.gather(1, q_index)
        query = attn.q_proj(_gather(normed, q_index)).view(batch, n_query, -1, attn.head_dim).transpose(1, 2)
        key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        scores = attention_importance(
            query,
            key,
            query_mask=q_mask,
            key_mask=state.mask.bool(),
            scaling=attn.scaling,
            head_reduce=self.config.attention_aggregation,
            query_reduce=self.config.attention_aggregation,
        )
        has_query = q_mask.any(dim=1, keepdim=True)
        group = torch.where(has_query, state.group, -1)  # no question tokens: keep every token of that sample
        kept = grouped_topk(scores, group, self.config.keep_ratio, rounding=self.config.keep_rounding)
        return kept | (group < 0)

    def _masks(self, text_model, hidden_states, mask, mapping, cache, layer_idx):
        """The masks of `mapping`'s kinds for the layers from `layer_idx` on, whose cache (without Stage 3, or
        during the prefill before it is cut) holds another number of tokens than layer 0's."""
        kwargs = {"config": text_model.config, "inputs_embeds": hidden_states, "attention_mask": mask}
        if MASKS_TAKE_LAYER:
            kwargs.update({MASK_CACHE_KWARG: cache, "layer_idx": layer_idx})
        else:
            kwargs[MASK_CACHE_KWARG] = _LayerView(cache, layer_idx) if cache is not None else None
        return {kind: _MASK_FUNCTIONS[kind](**kwargs) for kind in mapping}

    def _continue(self, input_ids, inputs_embeds, position_ids, attention_mask, cache):
        """A forward over the cache of a pruned prefill: a decoding step, or a follow-up turn after the answer.

        The cache holds the pruned prompt (plus the tokens since), the caller's 2-D mask and positions the unpruned
        one. The mask's prompt part is replaced by the pruned layout's; the new tokens get the positions they have
        in the unpruned numbering (the first token after the prompt at `max position + 1`, i.e. `rope_deltas`
        applied, then one more per attended token) whatever positions came in, since a model that counts from
        the cache length would count from the pruned one. Nothing is pruned here (README, "Limits").
        """
        state = self.pruned_state(cache)
        if state is None:  # a cache no pruned prefill filled (e.g. a text-only prompt): the stock forward
            return inputs_embeds, position_ids, attention_mask
        if input_ids is not None and ((input_ids == self.video_token_id) | (input_ids == self.image_token_id)).any():
            raise ValueError(
                "PruneVid: a forward that continues from a pruned cache cannot bring new images or videos (they "
                "would be neither merged nor positioned with the pruned prompt). Start a new conversation with a "
                "fresh cache, or pass only the new text tokens."
            )
        batch, q_len = inputs_embeds.shape[:2]
        seen = int(cache.get_seq_length()) - state.cached_prompt  # tokens cached after the prompt
        if batch != state.mask.shape[0] or seen < 0:
            raise ValueError(
                f"PruneVid: this cache holds a pruned prompt of batch {state.mask.shape[0]} and "
                f"{state.cached_prompt} tokens, but the forward has batch {batch} and the cache "
                f"{int(cache.get_seq_length())} tokens (was it cropped or reordered?)"
            )
        new = seen + q_len
        if attention_mask is None:
            tail = torch.ones(batch, new, dtype=state.mask.dtype, device=state.mask.device)
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
                raise ValueError(
                    "PruneVid: continuing from a pruned cache needs the 2-D attention mask (unpruned length), got "
                    f"{type(attention_mask).__name__} {getattr(attention_mask, 'shape', '')}"
                )
            if attention_mask.shape[1] != state.orig_len + new:
                raise ValueError(
                    "PruneVid: after a pruned prefill the 2-D attention mask must cover the unpruned prompt "
                    f"({state.orig_len} tokens) plus the {new} tokens since, got shape {tuple(attention_mask.shape)}"
                )
            tail = attention_mask[:, state.orig_len :]
        state.tail = tail
        self._continuing = state
        positions = state.next_position[:, None] + tail.long().cumsum(dim=1)[:, new - q_len :] - 1
        positions = positions.to(inputs_embeds.device)[None].expand(3, -1, -1)
        if position_ids is not None and position_ids.ndim == 3 and position_ids.shape[0] == 4:
            positions = torch.cat([position_ids[:1], positions])  # text row: only read for packed sequences
        prompt = state.mask_after_select if (state.index is not None and self.config.enable_stage3) else state.mask
        return inputs_embeds, positions, torch.cat([prompt.to(tail.dtype), tail], dim=1)

    # ------------------------------------------------------------------------------------------ stats
    def video_fates(self) -> list[dict[str, Any]]:
        """What happened to every token of every video in the last prefill, for pictures and analysis.

        One dict per video: `sample`, `grid` (t, h, w in LLM tokens), `segments`, and [t, h*w] bool tensors:
        `static` (merged over its segment by Stage 1), `kept` (the token it was merged into, or itself, survived
        Stage 2), `carrier` (this cell is the real token whose 3-D position a kept token carries).
        """
        state = self.state
        if state is None:
            return []
        keep = state.keep if state.keep is not None else torch.ones_like(state.mask, dtype=torch.bool)
        out = []
        for rec in state.videos:
            t, h, w = rec.grid
            n = t * h * w
            origin, valid = state.origin[rec.sample], state.mask[rec.sample].bool()
            layout = torch.full((state.orig_len,), -1, dtype=torch.long, device=origin.device)
            layout[origin[valid]] = torch.arange(origin.shape[0], device=origin.device)[valid]
            m = rec.merge
            source = m.source if m is not None else torch.arange(n, device=origin.device)
            row_kept = keep[rec.sample, layout[rec.start + source]]
            kept = row_kept[m.assignment] if m is not None else row_kept
            carrier = torch.zeros(n, dtype=torch.bool, device=origin.device)
            carrier[source[row_kept]] = True
            static = m.static_mask.reshape(-1) if m is not None else torch.zeros_like(carrier)
            out.append(
                {
                    "sample": rec.sample,
                    "grid": rec.grid,
                    "segments": list(m.segments) if m is not None else [(0, t)],
                    "static": static.view(t, h * w).cpu(),
                    "kept": kept.view(t, h * w).cpu(),
                    "carrier": carrier.view(t, h * w).cpu(),
                }
            )
        return out

    def stats(self) -> dict[str, Any] | None:
        """JSON-serialisable numbers of the last prefill (per-sample lists when batched)."""
        state = self.state
        if state is None:
            return None
        kept = state.visual & state.keep if state.keep is not None else state.visual
        cached = state.mask_after_select if state.index is not None and self.config.enable_stage3 else state.mask
        out = {
            "visual_tokens": state.stats["visual_tokens"],
            "after_stage1": _per_sample(state.visual.sum(dim=1)),
            "after_stage2": _per_sample(kept.sum(dim=1)),
            "kv_cache_tokens": _per_sample(cached.sum(dim=1)),
            "static_ratio": state.stats["static_ratio"],
            "segments": state.stats["segments"],
            "pruning_layer": self.layer,
        }
        if len(out["visual_tokens"]) == 1:  # batch of one: plain values
            out = {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}
        return out


# ---------------------------------------------------------------------------------------------- helpers
def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D bool tensor."""
    padded = torch.cat([flags.new_zeros(1), flags, flags.new_zeros(1)]).to(torch.int8)
    edges = (padded[1:] - padded[:-1]).nonzero().flatten().tolist()
    return list(zip(edges[0::2], edges[1::2]))


def _grids_from_positions(positions: torch.Tensor, is_video: torch.Tensor, merge: int):
    """(t, h, w) grids (video_grid_thw units) of one sample's videos, from their 3-D positions [3, L]: the h and w
    rows of a video are `start + arange(H)` and `start + arange(W)` (`get_vision_position_ids`)."""
    for start, end in _runs(is_video):
        h, w = positions[1, start:end], positions[2, start:end]
        height, width = int(h.max() - h.min()) + 1, int(w.max() - w.min()) + 1
        frames = (end - start) // (height * width)
        if frames * height * width != end - start:
            raise ValueError(f"cannot read the video grid off the positions of tokens {start}..{end}")
        yield frames, merge * height, merge * width


def _per_sample(counts: torch.Tensor) -> list[int]:
    return [int(v) for v in counts]


def _left_pad(embeds: list[torch.Tensor], origins: list[torch.Tensor]):
    """Stack variable-length samples, left padded (as generation expects); origin -1 and mask 0 on padding."""
    width = max(e.shape[0] for e in embeds)
    batch, hidden = len(embeds), embeds[0].shape[-1]
    out = embeds[0].new_zeros(batch, width, hidden)
    origin = origins[0].new_full((batch, width), -1)
    mask = origins[0].new_zeros(batch, width)
    for b, (e, o) in enumerate(zip(embeds, origins)):
        n = e.shape[0]
        out[b, width - n :], origin[b, width - n :], mask[b, width - n :] = e, o, 1
    return out, origin, mask


def _left_pad_like(values: list[torch.Tensor], mask: torch.Tensor, fill: int) -> torch.Tensor:
    out = mask.new_full(mask.shape, fill)
    for b, v in enumerate(values):
        out[b, mask.shape[1] - v.shape[0] :] = v
    return out


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], ...] for x of shape [B, L, ...]."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


def _gather_rotary(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`_gather` for a cos/sin table of the text rotary embedding, in either layout transformers has used:
    [B, L, D] (5.17 on: the mrope sections already recombined) or [3, B, L, D] (5.4 to 5.16: one table per
    (t, h, w) row, recombined inside the attention)."""
    if x.ndim == 4:
        return torch.stack([_gather(row, index) for row in x])
    return _gather(x, index)


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


def _cut_cache(cache: Cache, index: torch.Tensor, upto: int) -> None:
    """Stage 3 (Sec. 3.4): keep only `index` tokens in the cache of layers 0..upto (keys/values [B, H, L, D]).

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
