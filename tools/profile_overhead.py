"""Host overhead of PruneVid's own work: aten ops and host syncs of one Stage 1 call and one Stage 2 selection.

CPU proxy for the GPU host-boundness (docs/bench/stage1_profile.txt): with torch.profiler it counts

* ops: profiler events whose name starts with ``aten::`` (nested ones included), and
* syncs: calls that make the host wait for the device on CUDA: ``aten::_local_scalar_dense`` (``.item()``,
  ``int(t)``, ``bool(t)``), data-dependent output sizes (``aten::nonzero`` incl. boolean-mask indexing,
  ``aten::masked_select``, ``aten::unique*``, ``aten::repeat_interleave`` without ``output_size``) and
  ``Tensor.tolist()`` / ``Tensor.cpu()`` / ``Tensor.numpy()`` (counted by a patched wrapper).

On CPU these are all cheap, so only the counts are meaningful, not the times. Inputs are the paper's 64-frame
setting: 32x16x16 LLM tokens of width 3584 (Qwen2.5-VL-7B), tau 0.8, temporal ratio 0.25, cluster ratio 0.5, k 7;
selection with 28 query heads, 4 kv heads, head_dim 128, 30 queries, ~1400 keys.

Usage: ``PYTHONPATH=. .venv/bin/python tools/profile_overhead.py [--dtype bf16|fp32] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from modeling.prunevid.merge import merge_video
from modeling.prunevid.select import attention_importance, grouped_topk

_SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique_consecutive",
    "aten::_unique2",
    "aten::_unique",
    "aten::unique_dim",
}


class _HostCalls:
    """Counts Tensor.tolist / .cpu / .numpy calls while active (each is a device->host transfer, i.e. a sync)."""

    names = ("tolist", "cpu", "numpy")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._orig: dict[str, object] = {}

    def __enter__(self) -> "_HostCalls":
        for name in self.names:
            orig = getattr(torch.Tensor, name)
            self._orig[name] = orig

            def wrapper(t, *a, _orig=orig, _name=name, **kw):
                self.counts[f"Tensor.{_name}"] += 1
                return _orig(t, *a, **kw)

            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        for name, orig in self._orig.items():
            setattr(torch.Tensor, name, orig)


def measure(fn, *args, **kwargs) -> dict:
    """Run ``fn`` once under the profiler; return op and sync counts (after one warm-up call)."""
    fn(*args, **kwargs)
    with _HostCalls() as host, profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(*args, **kwargs)
    ops, syncs = 0, Counter()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        ops += 1
        if e.name in _SYNC_OPS:
            syncs[e.name] += 1
        elif e.name == "aten::repeat_interleave":
            # repeat_interleave(Tensor repeats) without output_size has a data-dependent size (a sync on CUDA);
            # its self-op dispatches the Tensor overload as the first repeat_interleave event only.
            shapes = e.input_shapes
            if len(shapes) >= 2 and shapes[0] and shapes[1] and (len(shapes) < 4 or not shapes[3]):
                syncs[e.name] += 1
    syncs.update(host.counts)
    return {"ops": ops, "syncs": sum(syncs.values()), "sync_breakdown": dict(syncs)}


def stage1_inputs(dtype: torch.dtype, seed: int = 0):
    """64 frames -> 32 temporal patches of 16x16 tokens, width 3584, three scenes, ~half the locations static."""
    g = torch.Generator().manual_seed(seed)
    t, h, w, c = 32, 16, 16, 3584
    scene_of_frame = torch.tensor([0] * 9 + [1] * 13 + [2] * 10)
    scenes = torch.randn(3, h * w, c, generator=g)
    dynamic = torch.rand(h * w, generator=g) < 0.5
    noise_scale = torch.where(dynamic, 1.5, 0.1)[None, :, None]
    frames = scenes[scene_of_frame] + noise_scale * torch.randn(t, h * w, c, generator=g)
    return frames.reshape(t * h * w, c).to(dtype), (t, h, w)


def selection_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, hq, hk, d, nq, length = 1, 28, 4, 128, 30, 1430
    query = torch.randn(batch, hq, nq, d, generator=g).bfloat16()
    key = torch.randn(batch, hk, length, d, generator=g).bfloat16()
    q_mask = torch.ones(batch, nq, dtype=torch.bool)
    k_mask = torch.ones(batch, length, dtype=torch.bool)
    # ~60 text tokens, then 1340 video candidates in ~40 groups of varied size, then the question
    group = torch.full((batch, length), -1, dtype=torch.long)
    sizes = torch.randint(10, 56, (40,), generator=g)
    ids = torch.repeat_interleave(torch.arange(40), sizes)[: length - 90]
    group[0, 60 : 60 + ids.numel()] = ids
    return query, key, q_mask, k_mask, group, d**-0.5


def run_selection(query, key, q_mask, k_mask, group, scaling):
    scores = attention_importance(query, key, query_mask=q_mask, key_mask=k_mask, scaling=scaling)
    return grouped_topk(scores, group, 0.4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.manual_seed(0)
    feats, grid = stage1_inputs(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    settings = dict(tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7, min_tokens_to_cluster=14)
    res = merge_video(feats, grid, **settings)
    rows = {
        "stage1 merge_video": measure(merge_video, feats, grid, **settings),
        "stage2 selection": measure(run_selection, *selection_inputs()),
    }
    print(f"grid {grid}, C={feats.shape[1]}, {feats.dtype}: segments {res.segments}, {res.features.shape[0]} merged "
          f"tokens, {int(res.static_mask.sum())} static")
    print(f"{'call':<22}{'aten ops':>10}{'host syncs':>12}  breakdown")
    for name, r in rows.items():
        print(f"{name:<22}{r['ops']:>10}{r['syncs']:>12}  {r['sync_breakdown']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    assert math.isfinite(float(res.features.float().sum()))


if __name__ == "__main__":
    main()
