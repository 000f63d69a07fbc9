"""PruneVid (Huang, Zhou, Han, "PruneVid: Visual Token Pruning for Efficient Video Large Language Models",
Findings of ACL 2025, arXiv 2412.16117) in plain PyTorch: no transformers imports in this package.

- `config`: `PruneVidConfig`, the knobs and presets.
- `dpc_knn`: density-peak clustering with k nearest neighbours (batched).
- `merge`: Stage 1, spatial-temporal token merging of one video (Sec. 3.2).
- `select`: Stage 2, attention importance and grouped top-k selection (Sec. 3.3).
"""

from .config import PRESETS, PruneVidConfig

__all__ = ["PRESETS", "PruneVidConfig"]
