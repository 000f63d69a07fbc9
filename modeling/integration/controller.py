"""`PruneVidController`: the glue between the guarded hooks of the vendored Qwen2.5-VL file and the algorithm, and
the public extension point for other techniques.

The vendored `modeling_qwen2_5_vl.py` calls into one controller (attached as `_prunevid` to `Qwen2_5_VLModel` and to
`Qwen2_5_VLTextModel` while a stage or an opt-in path is on):

* `before_language_model` (patch `merge-before-llm`), after the vision features are scattered into the
  embeddings and the 3-D positions are computed:
    - prefill: Stage 1 (Sec. 3.2) merges each video's tokens (`merge`) and re-packs the sequence (left padded); it
      records, per token of the new layout, its Stage-2 group and whether it is a question token (`query_mask`).
    - continuing from a pruned prefill's cache (decoding steps, or a follow-up turn appended after the answer):
      translates the caller's 2-D attention mask (unpruned length, as `generate` keeps it) to the pruned cache
      layout and gives the new tokens their positions in the unpruned numbering (see `_continue`). Under
      `generate` this translation is done before the forward (`generation_inputs`, from
      `prepare_inputs_for_generation`), so that a compiled decoding step reads nothing back and keeps its shapes.
* `before_layer` (patch `select-in-layers`), before each decoder layer:
    - prefill, layer M: scores the candidate visual tokens (`select`; Sec. 3.3: pre-RoPE q/k of layer M, softmax
      over all valid keys, max over heads then queries);
    - prefill, layer M+1: drops the unselected tokens from the hidden states, positions and masks, and (Stage 3,
      Sec. 3.4) cuts the cache of layers 0..M to the same tokens;
    - continuing without Stage 3: switches to the mask of the shorter cache from layer M+1 on.
* `layer_call` (patch `replay-layers`), right after: what the loop calls as decoder layer i; the layer itself, or with
  `layer_graphs` in a pruned prefill the layers around M replayed as CUDA graphs (`layer_graphs.LayerGraphs`); in a
  pruned prefill without attention kernels planned per sequence length (`prefill_attention`).
* `rope_index` (patch `rope-index`), at the top of `get_rope_index`: with `rope_index="vectorized"` the prompt's 3-D
  positions without upstream's token-by-token grouping (`rope_index.rope_index`), else None.

**Techniques** (kvpress style: one small object per technique): a subclass overrides one or more of the three
documented steps and keeps everything else (re-packing, 3-D positions, masks, cache cutting, stats):

* `merge(features, grid) -> MergeResult`: the pre-LLM reduction of one video (Stage 1);
* `query_mask(origin, mask, is_video, is_image) -> Tensor`: the tokens whose attention scores the candidates;
* `select(layer, hidden_states, state) -> Tensor`: the Stage-2 keep mask at the pruning layer.

It is set like a config, `model.prunevid = MyTechnique(config)`, or for a block, `with
model.prunevid_override(MyTechnique(config)): ...` (the previous one is restored). `name` names it in the stats.
The baselines of `modeling.eval.baselines` are written this way.

The cache a pruned prefill fills holds fewer tokens than the prompt. It is tagged with its `PrefillState`
(`cache._prunevid_layout`), so that a forward continuing from it knows the unpruned length of what it holds
(`unpruned_length`), and a cache this controller did not fill is refused rather than misread. Stage 3 cuts a
`DynamicCache` and a `StaticCache` (the kept tokens move to the front of each static buffer).

Positions (the Qwen2.5-VL decision, docs/design.md "Positions"): every kept or merged token carries the 3-D position
(t, h, w) of a real member token of the unpruned model: its DPC-KNN centre, and for static tokens the centre at the
first temporal patch of the segment. Text tokens keep exactly their unpruned positions, and `rope_deltas` is the
unpruned one, so decoding continues from the unpruned numbering. The text row of 4-row position ids (used only to
detect packed sequences) is made non-decreasing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers.cache_utils import Cache, StaticLayer
from transformers.utils import logging

from ..prunevid.config import PruneVidConfig
from ..prunevid.graphs import CudaGraphs, ReplayingLengths, eager
from ..prunevid.merge import MergeResult, merge_video
from ..prunevid.select import attention_importance, grouped_topk, kept_counts
from .cache import StaticFit, cut_cache
from .compat import gather, gather_rotary, layer_masks
from .layer_graphs import LayerGraphs, layer_runs, pad_rows, passthrough
from .prefill_attention import without_length_plans
from .rope_index import resolve_rule, rope_index
from .state import PrefillState, VideoRecord, grids_from_positions, left_pad, left_pad_like, row_runs, runs
from .stats import PruneVidStats, prefill_stats, video_fates


logger = logging.get_logger(__name__)

__all__ = ["AFTER_SELECT", "PREPARED", "PruneVidController"]

# Keys of a mask mapping that `PruneVidController.generation_inputs` prepared for a forward over a pruned cache:
# the mark that it was prepared, and (without Stage 3) the masks of the layers after the pruning layer.
PREPARED = "prunevid_prepared"
AFTER_SELECT = "prunevid_after_select"


class PruneVidController:
    """Runs PruneVid inside one `Qwen2_5_VLForConditionalGeneration` (see the module docstring).

    Args:
        config: The PruneVid settings (default: the paper's). A technique keeps the steps it does not override
            under these settings.
        model_config: The model's `Qwen2_5_VLConfig`; None binds it when set on a model (`model.prunevid = ...`).
    """

    #: Names the technique in `PruneVidStats.technique`; a subclass gives its own.
    name: str = "prunevid"
    #: True in a subclass whose `select` returns this class's keep mask (e.g. wraps it to time it): the length after
    #: Stage 2 is then predicted after Stage 1, as for this class, and not read back behind layers 0..M (a wrong
    #: prediction raises on the CPU, where it is always checked).
    select_keeps_quotas: bool = False

    def __init__(self, config: PruneVidConfig | None = None, model_config: Any = None) -> None:
        if config is None:
            config = PruneVidConfig.paper()
        if not isinstance(config, PruneVidConfig):
            raise TypeError(f"{type(self).__name__} takes a PruneVidConfig, got {type(config).__name__}")
        self.config = config
        self.model_config: Any = None
        self.layer: int | None = None  # Stage 2's layer M, resolved against the model's depth by `bind`
        self.state: PrefillState | None = None  # the last pruned prefill
        self._prefilling = False
        self._cut_size: int | None = None  # new slots of a fitted static cache's cut layers (Stage 3, this prefill)
        self._static_fit = StaticFit()  # sizes `generate`'s static caches to the pruned prompt
        # runs Stage 1's and the scoring's fixed-shape steps: eagerly, or replayed as CUDA graphs (`cuda_graphs`)
        self.runner = CudaGraphs() if config.cuda_graphs else eager
        # replays the pruned prefill's decoder layers (`layer_graphs`), or None
        self.layer_graphs = LayerGraphs() if config.layer_graphs else None
        if model_config is not None:
            self.bind(model_config)

    def bind(self, model_config: Any) -> "PruneVidController":
        """Take the token ids, merge size and depth of the model this controller runs in; checks the pruning layer
        against the depth. A controller runs in one model: binding it to another model's config raises."""
        if self.model_config is not None and self.model_config is not model_config:
            raise ValueError(
                f"this {type(self).__name__} already runs in another model (it keeps that model's last prefill); "
                "make a new one for this model"
            )
        num_layers = model_config.text_config.num_hidden_layers
        self.layer = self.config.resolve_pruning_layer(num_layers) if self.config.enable_stage2 else None
        self.video_token_id = model_config.video_token_id
        self.image_token_id = model_config.image_token_id
        self.spatial_merge_size = model_config.vision_config.spatial_merge_size
        self.layer_runs = layer_runs(num_layers, self.layer)
        # Stage 3 cuts layers 0..M before layer M+2 (M+1 when it is the last): layer M+1, or its replayed run, is
        # queued by then, so the cut's host work overlaps GPU work instead of holding the GPU idle before it
        self.cut_layer = None if self.layer is None else min(self.layer + 2, num_layers - 1)
        self.model_config = model_config
        return self

    def reset(self) -> None:
        """Forget the last prefill (its cache can no longer be continued)."""
        self.state = None
        self._prefilling = False
        self._cut_size = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # ------------------------------------------------------------------------------------------ results
    def stats(self) -> list[PruneVidStats]:
        """Token counts of the last pruned prefill, one per batch row (empty when the last prefill was left as it
        was, e.g. a text-only prompt: `Qwen2_5_VLPruneVid.prunevid_stats` then gives the unpruned counts)."""
        if self.state is None:
            return []
        return prefill_stats(self.state, self.layer if self.state.keep is not None else None, self.name)

    def video_fates(self) -> list[dict[str, Any]]:
        """Per video of the last prefill, what happened to each token (`modeling.integration.stats.video_fates`)."""
        return video_fates(self.state)

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
        self._prefilling = False
        if isinstance(attention_mask, dict) and attention_mask.get(PREPARED):
            return inputs_embeds, position_ids, attention_mask  # a continuation `generate` prepared: nothing to read
        cfg = self.config
        if not (cfg.enable_stage1 or cfg.enable_stage2):  # (no stage on: nothing is read back, the step stays whole)
            if getattr(cache, "_prunevid_layout", None) is not None:
                self.pruned_state(cache)  # refuses the cache of another setting's pruned prefill
            return inputs_embeds, position_ids, attention_mask
        past = int(cache.get_seq_length()) if cache is not None else 0
        if past > 0:
            return self._continue(input_ids, inputs_embeds, position_ids, attention_mask, cache)
        self.state = None
        if input_ids is None:
            logger.warning_once("PruneVid needs `input_ids` to find the video tokens; this call is not pruned.")
            return inputs_embeds, position_ids, attention_mask
        is_video = input_ids == self.video_token_id
        is_image = input_ids == self.image_token_id
        two_d = isinstance(attention_mask, torch.Tensor) and attention_mask.shape == input_ids.shape
        valid = attention_mask.bool() if two_d else torch.ones_like(is_video)
        positions = position_ids
        if positions is not None and positions.ndim == 2:
            positions = positions[None].expand(3, -1, -1)
        # One read-back of the prompt's layout (the flags and, when the grids must be read off them, the positions),
        # then runs, grids and counts on the host. The GPU has the tower's output done here: every read-back from
        # now on makes it wait for the host's next launch.
        host = _on_host(is_video, is_image, valid, positions if video_grid_thw is None else None)
        video_runs = row_runs(host.video)
        if not (any(video_runs) or (cfg.include_images and cfg.enable_stage2 and bool(host.image.any()))):
            return inputs_embeds, position_ids, attention_mask  # text only (or images only): untouched
        if position_ids is None:
            raise ValueError(
                "PruneVid needs the 3-D (t, h, w) positions of the video tokens, but none were computed: pass the "
                "processor's `mm_token_type_ids` (and `video_grid_thw`) to the model, or explicit `position_ids`."
            )
        position_ids = positions
        if attention_mask is not None and not two_d:
            raise ValueError(
                "PruneVid changes the sequence inside the model and needs the 2-D (batch, length) attention mask of "
                f"the input ids {tuple(input_ids.shape)}, got {type(attention_mask).__name__} "
                f"{getattr(attention_mask, 'shape', '')}"
            )
        batch, length = input_ids.shape
        lowest = torch.iinfo(position_ids.dtype).min
        next_position = position_ids[-3:].masked_fill(~valid[None], lowest).amax(dim=(0, 2)) + 1
        # `generate` encodes the videos up front and drops `video_grid_thw`; the grid is then read off the positions.
        grids = iter(video_grid_thw.tolist()) if video_grid_thw is not None else None
        embeds, origins, groups, videos, n_static = [], [], [], [], []
        for b in range(batch):
            sample_grids = grids
            if sample_grids is None:
                sample_grids = grids_from_positions(host.positions[:, b], video_runs[b], self.spatial_merge_size)
            e, o, g, recs = self._stage1_sample(b, inputs_embeds[b], video_runs[b], host.image[b], sample_grids)
            embeds.append(e), origins.append(o), groups.append(g), videos.extend(recs)
            n_static.append(sum(_static_count(r.merge) for r in recs if r.merge is not None))
        visual_tokens, n_videos, prompt_tokens, image_tokens = (
            x.sum(dim=1).tolist() for x in (host.video & host.valid, host.video, host.valid, host.image & host.valid)
        )
        static_ratio = [round(s / n, 4) if n else 0.0 for s, n in zip(n_static, n_videos)]

        if cfg.enable_stage1:
            # padding is re-created, on the left, below: in a padded row one index (one sync) serves all three gathers
            for b, o in enumerate(origins):
                if prompt_tokens[b] < length:
                    keep = valid[b].index_select(0, o).nonzero().squeeze(1)
                    embeds[b], origins[b], groups[b] = (t.index_select(0, keep) for t in (embeds[b], o, groups[b]))
            inputs_embeds, origin, mask = left_pad(embeds, origins)
            index = origin.clamp(min=0)
            position_ids = position_ids.gather(2, index[None].expand(position_ids.shape[0], -1, -1))
            if position_ids.shape[0] == 4:  # text row only detects packed sequences: keep it non-decreasing
                position_ids[0] = position_ids[0].cummax(dim=1).values
            if len(embeds) > 1:  # (one row is never padded)
                position_ids = position_ids.masked_fill((mask == 0)[None], 0)
            group = left_pad_like(groups, mask, fill=-1)
            # one row is never padded: upstream's masks from no 2-D mask are the same, without reading back whether
            # an all-ones mask is all ones (sdpa's `is_causal` check), where the GPU has nothing queued
            attention_mask = mask if batch > 1 else None
        else:
            origin = torch.arange(length, device=input_ids.device).expand(batch, -1)
            mask = valid.long() if attention_mask is None else attention_mask
            group = torch.stack(groups)
        index = origin.clamp(min=0)
        room = StaticFit.room(cache, length)
        if room is not None:  # before the masks are made: they are as long as the cache layers
            self._static_fit.fit(cache, 0, "stage1", inputs_embeds.shape[1], room)
        self.state = PrefillState(
            orig_len=length,
            origin=origin,
            mask=mask,
            group=group,
            visual=is_video.gather(1, index) & (mask > 0),
            image=is_image.gather(1, index) & (mask > 0),
            query=self.query_mask(origin, mask, is_video, is_image),
            videos=videos,
            prompt_tokens=prompt_tokens,
            visual_tokens=visual_tokens,
            image_tokens=image_tokens,
            static_ratio=static_ratio,
            next_position=next_position,
            static_room=room,
        )
        if self.layer is not None:  # read back here, where the GPU has little queued, not behind layers 0..M
            self._read_stage2_sizes(self.state)
        self._prefilling = True
        return inputs_embeds, position_ids, attention_mask

    def _stage1_sample(self, b, embeds, video_runs, is_image, grids):
        """Stage 1 on one sample (its runs of video tokens given; `is_image`: its image flags, on the host): per video
        `merge`; returns the sample's new embeds, origins, groups."""
        cfg, m = self.config, self.spatial_merge_size
        parts_e, parts_o, parts_g, records = [], [], [], []
        next_group, cursor = 0, 0
        length = embeds.shape[0]
        device = embeds.device
        image_runs = runs(is_image) if cfg.include_images and cfg.enable_stage2 else []
        text_group = torch.full((length,), -1, dtype=torch.long, device=device)
        for start, end in image_runs:  # each image is one candidate group (never merged)
            text_group[start:end] = next_group if cfg.selection_scope == "grouped" else 0
            next_group += 1
        for start, end in video_runs:
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
                    n_groups = res.num_groups if res.num_groups is not None else int(group.max()) + 1
                else:
                    res = None
                    feats, origin = embeds[pos : pos + n], torch.arange(pos, pos + n, device=device)
                    group = torch.arange(n, device=device) // (grid[1] * grid[2])  # one group per temporal patch
                    n_groups = grid[0]
                if cfg.selection_scope == "global":
                    group = torch.zeros_like(group)
                    next_group = 0
                parts_e.append(feats), parts_o.append(origin), parts_g.append(group + next_group)
                next_group = next_group + n_groups if cfg.selection_scope == "grouped" else 0
                records.append(VideoRecord(sample=b, start=pos, grid=grid, merge=res))
                cursor = pos = pos + n
        parts_e.append(embeds[cursor:]), parts_o.append(torch.arange(cursor, length, device=device))
        parts_g.append(text_group[cursor:])
        origin = torch.cat(parts_o)
        group = torch.cat(parts_g) if cfg.enable_stage2 else torch.full_like(origin, -1)
        return torch.cat(parts_e), origin, group, records

    def _read_stage2_sizes(self, state: PrefillState) -> None:
        """The number of question rows Stage 2 scores with and, for this class's `select`, the length of the
        sequence after it (its quotas depend on the group sizes only), computed in one step (`runner`: one graph
        replay on CUDA) and read back: on the CPU now, on CUDA at layer M (`_settle`) from a copy queued now."""
        cfg = self.config
        # (not a subclass's or one set on the instance, unless it says it keeps the quotas: another selection keeps
        # other counts)
        predict = getattr(self.select, "__func__", None) is PruneVidController.select or (
            self.select_keeps_quotas and "select" not in vars(self))
        length = state.query.shape[1]
        options = dict(keep_ratio=cfg.keep_ratio, rounding=cfg.keep_rounding, predict=predict)

        def pad(padded: int) -> tuple[torch.Tensor, ...]:
            return (_pad_tokens(state.query, padded, False), _pad_tokens(state.group, padded, -1),
                    _pad_tokens(state.mask, padded, 0))  # fmt: skip

        lengths = self._bucket_lengths()
        if lengths is not None:  # (integer counts: padded with tokens that count for nothing, clips of one shape,
            # or up to 1/4 shorter than one whose graph replays, share the runner's graph; the sizes stay exact)
            kind = (_stage2_sizes, state.query.shape[0], state.query.device, *options.values())
            (sizes,) = lengths.run(self.runner, _stage2_sizes, kind, length, pad, **options)
        else:
            (sizes,) = self.runner(_stage2_sizes, pad(length), **options)
        if sizes.is_cuda:  # copied behind Stage 1 and waited for at layer M (`_settle`): meanwhile the host queues
            # the layers before M, instead of waiting here for Stage 1's last kernels and leaving the GPU idle
            host = torch.empty(sizes.shape, dtype=sizes.dtype, pin_memory=True)
            host.copy_(sizes, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(sizes.device))
            state.pending_sizes = (host, copied)
        else:
            state.pending_sizes = (sizes, None)
            self._settle(state)

    def _bucket_lengths(self) -> ReplayingLengths | None:
        """Which padded lengths of Stage 2's steps replay on `runner` (its `lengths`), where it takes bucketed shapes
        (`CudaGraphs.bucket_shapes`); None otherwise: the steps then run at their exact length."""
        return getattr(self.runner, "lengths", None) if getattr(self.runner, "bucket_shapes", False) else None

    @staticmethod
    def _settle(state: PrefillState) -> None:
        """`state.query_rows` and `kept_width` from Stage 2's sizes (`_read_stage2_sizes`), once their copy is done:
        waits for the work queued before that copy (Stage 1), not for the layers queued since."""
        if state.pending_sizes is None:
            return
        sizes, copied = state.pending_sizes
        if copied is not None:
            copied.synchronize()
        state.query_rows, *width = sizes.tolist()
        state.kept_width = width[0] if width else None
        state.pending_sizes = None

    # ------------------------------------------------------------------------------------------ the three steps
    def merge(self, features: torch.Tensor, grid: tuple[int, int, int]) -> MergeResult:
        """Stage 1 on one video's `[t*h*w, C]` tokens (Sec. 3.2); `grid` is (t, h, w) in LLM tokens.

        Override to replace the pre-LLM reduction: return a `MergeResult` whose `features` enter the LLM, each at
        the 3-D position of the real token `source` names, with its Stage-2 `group` (see `TokenDrop` in
        `modeling.eval.baselines`). Called only with Stage 1 on and for videos of more than one temporal patch.
        """
        cfg = self.config
        return merge_video(
            features,
            grid,
            tau=cfg.tau,
            temporal_segment_ratio=cfg.temporal_segment_ratio,
            cluster_ratio=cfg.cluster_ratio,
            dynamic_cluster_ratio=cfg.dynamic_cluster_ratio,
            k=cfg.dpc_knn_k,
            min_tokens_to_cluster=cfg.min_tokens_to_cluster,
            runner=self.runner,
        )

    def query_mask(self, origin: torch.Tensor, mask: torch.Tensor, is_video: torch.Tensor,
                   is_image: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """[B, L1] bool: the tokens (of the layout after Stage 1) whose attention scores the candidates in Stage 2.

        `origin` [B, L1] is each token's index in the unpruned sequence (-1 on padding), `mask` [B, L1] the 2-D mask
        after Stage 1, `is_video` / `is_image` [B, L] flag the unpruned prompt's tokens. The paper's choice: the text
        after the last video (`selection_query="after_video"`), or the last token (`"last"`, FastV). A row without
        any query token keeps all its candidates.
        """
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

    @torch.no_grad()
    def select(self, layer: torch.nn.Module, hidden_states: torch.Tensor, state: PrefillState) -> torch.Tensor:
        """[B, L1] bool keep mask of Stage 2 at the pruning layer (Sec. 3.3); True for every non-candidate token.

        `layer` is the decoder layer M, `hidden_states` [B, L1, C] its input, `state` the prefill's layout
        (`state.query`: the `query_mask`, `state.group`: the candidates' groups, -1 for the rest). The paper's
        scoring: pre-RoPE q/k of the layer, softmax over all valid keys, only the question rows, reduced over heads
        and queries, then `keep_ratio` per group.
        """
        n_query = state.query_rows if state.query_rows is not None else int(state.query.sum(dim=1).max())
        cfg = self.config
        attn = layer.self_attn
        weights = [p for m in (layer.input_layernorm, attn.q_proj, attn.k_proj) for p in m.parameters()]
        length = hidden_states.shape[1]
        options = dict(layer=layer, n_query=n_query, reduce=cfg.attention_aggregation, keep_ratio=cfg.keep_ratio,
                       rounding=cfg.keep_rounding)  # fmt: skip

        def pad(padded: int) -> tuple[torch.Tensor, ...]:
            return (pad_rows(hidden_states, padded), _pad_tokens(state.query, padded, False),
                    _pad_tokens(state.mask, padded, 0), _pad_tokens(state.group, padded, -1))  # fmt: skip

        lengths = self._bucket_lengths()
        if (lengths is not None and self.layer_graphs is not None
                and hidden_states.device.type in self.layer_graphs.devices):  # fmt: skip
            # the replayed layers pad the prefill to a bucket: the scoring too (its pads are neither keys nor
            # questions nor candidates), so clips of one shape, or up to 1/4 shorter than one whose graph replays,
            # share its graph; up to rounding, as those layers
            kind = (_score_and_keep, *hidden_states.shape[::2], hidden_states.dtype, hidden_states.device,
                    *options.values())  # fmt: skip
            (kept,) = lengths.run(self.runner, _score_and_keep, kind, length, pad, fixed=weights, **options)
        else:
            (kept,) = self.runner(_score_and_keep, pad(length), fixed=weights, **options)
        return kept[:, :length].clone()

    # ------------------------------------------------------------------------------------------ hook 2
    def before_layer(self, text_model, i, hidden_states, mask_mapping, position_embeddings, text_positions, cache):
        if not self._prefilling:
            if isinstance(mask_mapping, dict) and AFTER_SELECT in mask_mapping and i == (self.layer or 0) + 1:
                mask_mapping = mask_mapping[AFTER_SELECT]  # continuing without Stage 3 (`_continuation`)
            return hidden_states, mask_mapping, position_embeddings, text_positions
        state = self.state
        if i == 0:
            state.cached_prompt = hidden_states.shape[1]
            if cache is not None:
                cache._prunevid_layout = state  # lets a later forward over this cache find its layout
        if self.layer is None or i not in (self.layer, self.layer + 1, self.cut_layer):
            return hidden_states, mask_mapping, position_embeddings, text_positions
        if i == self.layer:
            self._settle(state)
            state.keep = self.select(text_model.layers[i], hidden_states, state)
            return hidden_states, mask_mapping, position_embeddings, text_positions
        if i == self.layer + 1:
            hidden_states, mask_mapping, position_embeddings, text_positions = self._drop_unselected(
                text_model, i, hidden_states, mask_mapping, position_embeddings, text_positions, cache
            )
        if i == self.cut_layer and state.cache_cut and cache is not None:  # Stage 3 (see `bind`)
            cut_cache(cache, state.index, upto=self.layer, size=self._cut_size)
            state.cached_prompt = state.index.shape[1]
        return hidden_states, mask_mapping, position_embeddings, text_positions

    def _drop_unselected(self, text_model, i, hidden_states, mask_mapping, position_embeddings, text_positions, cache):
        """Before layer M+1: drop the tokens that were not selected from the sequence; with Stage 3 mark the cache
        of layers 0..M for the same cut (made at `cut_layer`)."""
        state = self.state
        keep = state.keep & state.mask.bool()
        counts = keep.sum(dim=1)
        width = state.kept_width  # (predicted after Stage 1: no read-back here, behind the layers up to M)
        if width is None or keep.device.type == "cpu":
            actual = int(counts.max())
            if width is not None and width != actual:  # (checked wherever it costs nothing: every CPU test)
                raise RuntimeError(f"PruneVid predicted {width} tokens after Stage 2, the selection kept {actual}")
            width = actual
        index = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, keep.shape[1] - width :]
        mask = (torch.arange(width, device=keep.device)[None] >= (width - counts)[:, None]).to(state.mask.dtype)
        size = None
        if state.static_room is not None:  # the later layers (not written yet) and, with Stage 3, the cut ones
            size = self._static_fit.fit(cache, i, "selected", width, state.static_room)
        hidden_states = gather(hidden_states, index)
        position_embeddings = tuple(gather_rotary(p, index) for p in position_embeddings)
        if text_positions is not None:
            text_positions = text_positions.gather(1, index)
        # one row keeps all its `width` tokens: upstream's masks from no 2-D mask, the same masks without reading
        # back whether an all-ones mask is all ones (the GPU still has the layers up to M queued)
        mask_mapping = layer_masks(text_model.config, hidden_states, None if keep.shape[0] == 1 else mask,
                                   mask_mapping, cache, i)  # fmt: skip
        state.index, state.mask_after_select = index, mask
        if self.config.enable_stage3:
            state.cache_cut, self._cut_size = True, size
        return hidden_states, mask_mapping, position_embeddings, text_positions

    # ------------------------------------------------------------------------------------------ hook 3
    def layer_call(self, text_model, i, decoder_layer):
        """What the text model's loop calls as decoder layer `i`: the layer, or in a pruned prefill with
        `layer_graphs` its run of layers replayed as one CUDA graph (`LayerGraphs.layer`); in a pruned prefill either
        runs with `sdpa` kept off kernels planned per sequence length (`prefill_attention`: its length follows
        the video's content)."""
        if not self._prefilling:
            return decoder_layer
        if self.layer_graphs is not None:
            decoder_layer = self.layer_graphs.layer(text_model, i, decoder_layer, self.layer_runs)
        return decoder_layer if decoder_layer is passthrough else without_length_plans(decoder_layer)

    # ------------------------------------------------------------------------------------------ hook 4
    def rope_index(self, model: torch.nn.Module, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Hook 4 (patch `rope-index`, the top of `Qwen2_5_VLModel.get_rope_index`, called with its arguments by
        keyword): with `rope_index="vectorized"`, the positions and deltas of `modeling.integration.rope_index`
        (upstream's, element for element, under the rule `resolve_rule` found for this release); else None, and
        upstream's lines run (also when no rule reproduces this release's method, or without `mm_token_type_ids`)."""
        if self.config.rope_index != "vectorized" or inputs.get("mm_token_type_ids") is None:
            return None
        rule = resolve_rule(model)  # (probes upstream's method with this controller detached: no re-entry here)
        return None if rule is None else rope_index(model, **inputs, rule=rule)

    # ------------------------------------------------------------------------------------------ continuing
    def generation_inputs(self, cache: Cache | None, input_ids: torch.Tensor | None, q_len: int,
                          attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, dtype: torch.dtype,
                          check_media: bool) -> dict[str, Any] | None:  # fmt: skip
        """The positions and masks of a forward over a pruned cache, prepared by `generate` before the forward.

        Called from `prepare_inputs_for_generation`, which runs eagerly before every forward of `generate`: the
        host reads (the cache's length) happen here, so that the forward, compiled or not, reads nothing back and
        has the same shapes at every decoding step. Returns None when `cache` holds no pruned prompt; else the
        forward's `position_ids` and `attention_mask` (`_continuation`), which `before_language_model` passes
        through.
        """
        state = self.pruned_state(cache)
        if state is None:
            return None
        if check_media:
            self._refuse_media(input_ids)
        batch = input_ids.shape[0] if input_ids is not None else state.mask.shape[0]
        like = torch.empty(batch, q_len, 0, dtype=dtype, device=state.mask.device)  # the mask functions read it
        positions, masks = self._continuation(state, cache, like, attention_mask, position_ids)
        return {"attention_mask": masks, "position_ids": positions}

    def _refuse_media(self, input_ids: torch.Tensor | None) -> None:
        if input_ids is not None and ((input_ids == self.video_token_id) | (input_ids == self.image_token_id)).any():
            raise ValueError(
                "PruneVid: a forward that continues from a pruned cache cannot bring new images or videos (they "
                "would be neither merged nor positioned with the pruned prompt). Start a new conversation with a "
                "fresh cache, or pass only the new text tokens."
            )

    def _seen(self, state, cache, batch, q_len) -> int:
        """Tokens cached after the pruned prompt (checked against the batch and the room of a static cache)."""
        seen = int(cache.get_seq_length()) - state.cached_prompt
        if batch != state.mask.shape[0] or seen < 0:
            raise ValueError(
                f"PruneVid: this cache holds a pruned prompt of batch {state.mask.shape[0]} and "
                f"{state.cached_prompt} tokens, but the forward has batch {batch} and the cache "
                f"{int(cache.get_seq_length())} tokens (was it cropped or reordered?)"
            )
        self._check_room(state, cache, seen, q_len)
        return seen

    def _continuation(self, state, cache, like, attention_mask, position_ids):
        """(positions, masks) of the new tokens of a forward over the pruned cache; `like` [B, q, ...] gives their
        count, dtype and device.

        Positions: in the unpruned numbering (the first token after the prompt at `max position + 1`, i.e.
        `rope_deltas` applied, then one more per attended token). Masks: the caller's 2-D mask (unpruned length)
        with its prompt part replaced by the pruned layout's, made into the masks of the layers by transformers'
        mask functions, sized by the cache (a static cache's are `max_cache_len` long: one shape at every step);
        without Stage 3 the layers after M, which hold fewer tokens, get their own under `AFTER_SELECT`. With no
        padding anywhere they are made from no mask, as for the stock model. Marked `PREPARED`.
        """
        batch, q_len = like.shape[:2]
        seen = self._seen(state, cache, batch, q_len)
        new = seen + q_len
        after_select = state.index is not None and not state.cache_cut  # layers after M hold fewer tokens
        padded = state.padded(state.cached_mask) or (after_select and state.padded(state.mask_after_select))
        if attention_mask is None and not padded:
            tail = None
            positions = state.next_position[:, None] + torch.arange(seen, new, device=state.mask.device)
        else:
            if attention_mask is None:
                tail = torch.ones(batch, new, dtype=state.mask.dtype, device=state.mask.device)
            else:
                if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
                    raise ValueError(
                        "PruneVid: continuing from a pruned cache needs the 2-D attention mask (unpruned length), "
                        f"got {type(attention_mask).__name__} {getattr(attention_mask, 'shape', '')}"
                    )
                if attention_mask.shape[1] != state.orig_len + new:
                    raise ValueError(
                        "PruneVid: after a pruned prefill the 2-D attention mask must cover the unpruned prompt "
                        f"({state.orig_len} tokens) plus the {new} tokens since, got shape "
                        f"{tuple(attention_mask.shape)}"
                    )
                tail = attention_mask[:, state.orig_len :].to(state.mask.device)
            positions = state.next_position[:, None] + tail.long().cumsum(dim=1)[:, seen:] - 1
        positions = positions[None].expand(3, -1, -1)
        if position_ids is not None and position_ids.ndim == 3 and position_ids.shape[0] == 4:
            positions = torch.cat([position_ids[:1].to(positions.device), positions])  # text row: packed sequences

        def with_tail(prompt: torch.Tensor) -> torch.Tensor | None:
            return None if tail is None else torch.cat([prompt.to(tail.dtype), tail], dim=1)

        text_config = self.model_config.text_config
        kinds = sorted(set(text_config.layer_types))
        masks: dict[str, Any] = layer_masks(text_config, like, with_tail(state.cached_mask), kinds, cache, 0)
        if after_select:
            masks[AFTER_SELECT] = layer_masks(
                text_config, like, with_tail(state.mask_after_select), kinds, cache, self.layer + 1
            )
        masks[PREPARED] = True
        return positions, masks

    def _check_room(self, state, cache, seen, q_len):
        """A clear error, instead of an index error on the device, when a static cache has no slots left."""
        held = {0: state.cached_prompt}
        if state.index is not None and not state.cache_cut:
            held[self.layer + 1] = state.index.shape[1]
        for i, prompt in held.items():
            layer = cache.layers[i]
            if isinstance(layer, StaticLayer) and prompt + seen + q_len > layer.max_cache_len:
                raise ValueError(
                    f"PruneVid: the static cache has {layer.max_cache_len - prompt - seen} free slots (layer {i}) "
                    f"for {q_len} new tokens. A static cache that `generate` made is sized for that call's answer "
                    "(and fitted to the pruned prompt); continue with a bigger "
                    "`StaticCache(config, max_cache_len=...)` passed to the first call, or with the dynamic cache."
                )

    def _continue(self, input_ids, inputs_embeds, position_ids, attention_mask, cache):
        """A forward over the cache of a pruned prefill that `generate` did not prepare (`generation_inputs`): a
        direct call, e.g. a manual decoding loop or a follow-up turn.

        The cache holds the pruned prompt (plus the tokens since), the caller's 2-D mask and positions the unpruned
        one: the new tokens get their positions and masks as `generate`'s would (`_continuation`), whatever
        positions came in, since a model that counts from the cache length would count from the pruned one.
        Nothing is pruned here (docs/design.md, "Limits"). New media tokens are refused. This path reads the
        cache's length back (a host sync, and a recompilation per step under `torch.compile`); `generate` avoids it.
        """
        state = self.pruned_state(cache)
        if state is None:  # a cache no pruned prefill filled (e.g. a text-only prompt): the stock forward
            return inputs_embeds, position_ids, attention_mask
        self._refuse_media(input_ids)
        positions, masks = self._continuation(state, cache, inputs_embeds, attention_mask, position_ids)
        return inputs_embeds, positions.to(inputs_embeds.device), masks


class _HostLayout(NamedTuple):
    """The prompt's flags `[B, L]` (bool) and, where read, its 3-D positions `[3, B, L]`, on the host."""

    video: torch.Tensor
    image: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor | None


def _on_host(is_video: torch.Tensor, is_image: torch.Tensor, valid: torch.Tensor,
             positions: torch.Tensor | None) -> _HostLayout:  # fmt: skip
    """The flags (and `positions[-3:]`, when given) copied to the host in one read-back."""
    parts = [is_video[None], is_image[None], valid[None]]
    if positions is not None:
        parts.append(positions[-3:])
    host = torch.cat([p.to(torch.long) for p in parts]).cpu()
    return _HostLayout(host[0].bool(), host[1].bool(), host[2].bool(), host[3:] if positions is not None else None)


def _static_count(merge: MergeResult) -> int:
    """Static tokens of one merged video: as its merge read them back, else from its mask (a read-back)."""
    return merge.num_static if merge.num_static is not None else int(merge.static_mask.sum())


def _pad_tokens(x: torch.Tensor, length: int, fill: Any) -> torch.Tensor:
    """A [B, L] per-token tensor padded at the end to `length` tokens with `fill`."""
    extra = length - x.shape[1]
    return x if extra == 0 else torch.nn.functional.pad(x, (0, extra), value=fill)


def _stage2_sizes(query, group, mask, *, keep_ratio, rounding, predict) -> tuple[torch.Tensor]:
    """`PruneVidController._read_stage2_sizes`'s step (recordable): the most question rows of a row and, with
    `predict`, the most tokens a row keeps after `_score_and_keep` (`kept_counts`)."""
    sizes = [query.sum(dim=1).max()]
    if predict:
        group = torch.where(query.any(dim=1, keepdim=True), group, -1)  # no question tokens: the row keeps all
        sizes.append(kept_counts(group, mask.bool(), keep_ratio, rounding=rounding).max())
    return (torch.stack(sizes),)


def _score_and_keep(hidden_states, query_rows, mask, group, *weights, layer, n_query, reduce, keep_ratio,
                    rounding) -> tuple[torch.Tensor]:  # fmt: skip
    """`PruneVidController.select`'s fixed-shape step (recordable; `weights` are the layer's, read through `layer`):
    pre-RoPE q/k of the question rows and all keys, `attention_importance`, `grouped_topk`. Returns the keep mask."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden_states)
    batch, length, _ = normed.shape
    q_index = torch.sort(query_rows.to(torch.int8), dim=1, stable=True).indices[:, length - n_query :]
    q_mask = query_rows.gather(1, q_index)
    query = attn.q_proj(gather(normed, q_index)).view(batch, n_query, -1, attn.head_dim).transpose(1, 2)
    key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    scores = attention_importance(
        query, key, query_mask=q_mask, key_mask=mask.bool(), scaling=attn.scaling, head_reduce=reduce,
        query_reduce=reduce,
    )  # fmt: skip
    has_query = q_mask.any(dim=1, keepdim=True)
    group = torch.where(has_query, group, -1)  # no question tokens: keep every token of that sample
    kept = grouped_topk(scores, group, keep_ratio, rounding=rounding)
    return (kept | (group < 0),)
