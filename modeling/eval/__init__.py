"""Evidence that pruned answers stay right.

- `benchmark`: the moving-shapes video-QA benchmark (generated clips, five question kinds, disjoint splits, `MEDIA`).
- `baselines`: what PruneVid is compared against, written as techniques (`TokenDrop`, `SystemPromptQuery`).
- `ablations`: Stage-1 ablations as one technique (`Stage1Ablation`: static averaging, centre features, dynamic
  merging, each switchable), for the curves at equal retention.
- `run`: the accuracy table, `python -m modeling.eval`.
- `lmms`: the lmms-eval plugin (model `qwen2_5_vl_prunevid`, task `prunevid_moving_shapes`).

The top of the import order: builds on `modeling.app`, `modeling.integration`, `modeling.demo` and
`modeling.prunevid`; nothing imports from here.
"""
