"""The glue between the vendored, patched `modeling_qwen2_5_vl.py` and the PruneVid algorithm (`modeling.prunevid`).

- `model`: `Qwen2_5_VLPruneVid`, the drop-in class (settings, techniques, stats, generation).
- `controller`: `PruneVidController`, called by the guarded hooks of the vendored file; the extension point for
  other techniques (override `merge`, `query_mask`, `select`).
- `state`: what a pruned prefill leaves for the decoding steps (`PrefillState`) and the layout helpers.
- `stats`: `PruneVidStats`, the token counts of one batch row, and the per-token fates of each video.
- `cache`: Stage 3 on transformers' caches (dynamic and static).
- `compat`: every difference between the supported transformers releases that the glue meets.
- `vision_attention`: the opt-in fused (varlen) attention of the vision tower; `window_attention`: its Triton
  kernel for the windowed blocks.
- `layer_graphs`: the opt-in replay of the pruned prefill's decoder layers as CUDA graphs.
- `rope_index`: the opt-in 3-D positions of the prompt without upstream's token-by-token grouping.

Imports only `modeling.prunevid` and the vendored file from this package.
"""
