"""Opt-in fused attention for the Qwen2.5-VL vision tower (`PruneVidConfig(vision_attention="varlen")`).

The stock tower attends within windows (28 of the 32 blocks of the released models: 8x8 patches, 64 tokens) and,
in the 4 "full attention" blocks, within each temporal patch (one frame pair). With any attention implementation
but flash-attention, upstream runs one `sdpa` call per window: a 64-frame 448x448 clip has 512 windows per layer,
so the tower spends most of its time launching tiny kernels. Here every block's attention is one packed
variable-length call, `torch.nn.attention.varlen.varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len)`,
over exactly the same segments (`cu_seqlens` / `cu_window_seqlens` of the tower): the function computed is the
stock one, only the kernel differs (flash-attention's varlen kernel instead of one `sdpa` per segment).

Wiring (patch `vision-varlen-attention`, three guarded blocks):

* `Qwen2_5_VisionTransformerPretrainedModel.forward`, before the block loop: when the tower has a
  `_prunevid_vision` object (set by `Qwen2_5_VLPruneVid.prunevid = cfg`, see [`vision_attention_for`]), its
  [`VisionVarlenAttention.prepare`] returns the block kwargs with a `prunevid_vision` entry, or unchanged (the
  stock path) where the fused kernel cannot run here; it logs why, once.
* `Qwen2_5_VLVisionAttention.forward`, just before the rotary embedding: when `prunevid_vision` is in the kwargs,
  the attention of the block is computed by it (given the rotary tables and upstream's `apply_rotary_pos_emb_vision`
  by keyword: it applies that function, or the same rotation inside the window kernel) and projected by the block's
  own `proj`.
* the block loop: when `prunevid_vision` is in the kwargs, each block is called through its `block(blk)`: the block
  itself, or its compiled form (below).

Patch `vision-patch-embed-matmul`, one guarded block: the same object is also set on the tower's `patch_embed`
(`attach` sets it on every module that has a hook);
at the top of `Qwen2_5_VisionPatchEmbed.forward`, its [`VisionVarlenAttention.patch_embed`] returns the patch
embedding computed as one matmul (the conv's kernel is its stride: the same function) where the fused path runs,
else None and the stock `Conv3d` runs.

Patch `vision-mlp-padded`, one guarded block: the object is also set on every block's MLP; at the top of
`Qwen2_5_VLMLP.forward`, its [`VisionVarlenAttention.mlp`] returns the MLP computed with its intermediate size
zero-padded to a multiple of 8 ([`padded_mlp`]) while `torch.compile` traces the block, else None and the stock
lines run (eagerly, always). Why: the released towers' MLP has 3,420 units; inductor pads such GEMMs to 3,424 on its
own, but then writes the activation unpadded and copies it into a padded buffer for `down_proj` (one extra read and
write of the largest activation per block: 3.3 of 90.6 ms of kernels at 64 frames, H200) and runs `silu(gate) * up`
over strided inputs. Padded in the graph itself, the activation is written once, padded: 8.4 + 3.3 ms of
pointwise kernels become 4.9 (`tools/probe_tower.py`, docs/bench/h200-2026-12-04-tower/). The function is the
same: the extra units are `silu(0 + 0) * (0 + 0) = 0` and meet zero columns of `down_proj`; the rounding is that of
inductor's own padding.

The tower's preamble (no patch: a forward pre-hook on the tower, registered by `attach`): upstream's tables that
depend on `grid_thw` alone (rotary positions, `cu_seqlens`, the window permutation and its boundaries) are computed
once per grid by upstream's own functions and handed back to it as precomputed kwargs, upstream's mechanism for them
([`VisionVarlenAttention.preamble`]); where the fused path runs and the release takes them.

Compiled blocks (`vision_attention="varlen_compiled"`): where the fused
path runs, every block is called through `torch.compile(..., dynamic=True)`, so the norms, rotary embedding, MLP
and residual adds of a block become a few fused kernels around the varlen call. The blocks share one compiled graph
per attention kind (windowed, full), traced with symbolic token counts: videos of any length reuse it (no
recompilation per length; a new resolution changes only the segment lengths, which are symbolic too). The first
call pays the compile (18 s for the 7B tower on an H200, docs/bench/h200-2026-12-04/; `tools/bench.py` reports it).
Compilation follows torch's own rules (`torch.compile`'s caches, `TORCHINDUCTOR_*` settings); anywhere the fused
kernel cannot run, the stock tower runs uncompiled, as for "varlen".

The compiled tower replayed (`vision_attention="varlen_compiled"`; no patch: `attach` sets the tower's `forward` to
`_graphed_forward`, which calls [`VisionVarlenAttention.replay`] and else the class's own forward; `attach(tower,
None)` takes it off): where the preamble was filled in, the whole tower (patch embedding, the compiled blocks,
merger) runs through a `CudaGraphs` runner kept on the tower: eagerly at a grid's first call, recorded at its
second, replayed after, with the pixels, the grid and the preamble's tables
copied into the graph's buffers (so the graph owns what it reads, and the key is the same after a settings switch
or for another grid of the same shapes) and its outputs copied out. The same kernels in the same order, without the
host's launches between them: the compiled tower's GPU waited for its host 2.9-3.6 ms at 64 frames (H100,
docs/bench/h200-2026-12-05-new-videos/h100/phases.log). Held: at most `max_tower_graphs` graphs, whose scratch memory
stays reserved (about the tower's own peak, once for all of them).

Backends:
    "auto" (default): varlen_attn where it can run (torch with `torch.nn.attention.varlen`, CUDA, fp16 / bf16);
        elsewhere the stock path, with a one-time warning naming the reason. Blocks whose segments have at most
        128 tokens (the windowed blocks: 64) use `window_attention.segment_attention` instead, one Triton program
        per window and head, where Triton imports (0.21 against 0.24 ms a block at 64 frames, 0.57 against 0.87 at
        256, H200: the varlen kernel tiles by 128 query rows; the same function, see that module). Blocks whose
        segments all have one length (the full-attention blocks of a video or an image: one segment per frame pair)
        run `sdpa` over the segments as a batch (cuDNN's or flash-attention's kernel), where they are longer than
        the Triton kernel takes (`equal_segments_sdpa`).
    "varlen": varlen_attn for every block, or an error.
    "reference": the same packed computation as one block-diagonal masked `sdpa` over the whole packed sequence
        (memory O(tokens^2): for tests and small inputs only). It checks the index bookkeeping of the fused path
        on any device, including the CPU.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.utils import logging

from ..prunevid.graphs import CudaGraphs
from .window_attention import MAX_SEGMENT, segment_attention, segment_attention_unavailable_reason


logger = logging.get_logger(__name__)

BACKENDS = ("auto", "varlen", "reference")
_FUSED_DTYPES = (torch.float16, torch.bfloat16)
_warned: set[str] = set()  # reasons already logged (one warning per reason and process)


def _load_varlen():
    """`torch.nn.attention.varlen.varlen_attn` and whether it takes `scale=`, or (None, reason)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception as error:  # noqa: BLE001 - old torch: ImportError; broken builds: anything
        return None, f"torch {torch.__version__} has no torch.nn.attention.varlen ({type(error).__name__}: {error})"
    try:
        takes_scale = "scale" in inspect.signature(varlen_attn).parameters
    except (TypeError, ValueError):
        takes_scale = False
    return (varlen_attn, takes_scale), None


def varlen_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernel cannot run for tensors on `device` of `dtype` (None when it can)."""
    loaded, reason = _load_varlen()
    if loaded is None:
        return reason
    if device.type != "cuda":
        return f"varlen_attn runs on CUDA only, the vision tower is on {device.type}"
    if dtype not in _FUSED_DTYPES:
        return f"varlen_attn needs float16 or bfloat16, the vision tower runs in {dtype}"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning(
            "PruneVid vision_attention='varlen' is not available here (%s); the vision tower uses the stock "
            "attention instead.",
            reason,
        )


class VisionVarlenAttention:
    """What `Qwen2_5_VLPruneVid` puts on its vision tower as `_prunevid_vision` for `vision_attention="varlen"`."""

    # whether the windowed blocks' kernel rotates q and k itself (True: the compiled tower 104.7 -> 100.2 ms at 64
    # frames, 420.7 -> 381.1 at 256, same error, H100, docs/bench/README.md) or gets them rotated by upstream's function
    rotary_in_kernel = True
    # whether blocks whose segments all have one length (a video's frame pairs in the full-attention blocks, an
    # image) attend through `sdpa` over the segments as a batch, cuDNN's kernel on Hopper (`_equal_segments_sdpa`),
    # instead of the varlen kernel (1,024-token segments, H100: 2.76 -> 1.70 ms a block at 256 frames)
    equal_segments_sdpa = True
    # towers' preambles kept (`preamble`): one per video / image grid, least recently used first out
    max_preambles = 16
    # whether the compiled blocks add the MLP's residual inside `down_proj`'s GEMM (`mlp_residual`: cuBLAS's `addmm_`
    # into the residual, the bias a unit of the intermediate) instead of a pointwise add after it (the compiled tower
    # 87.2 -> 85.8 ms at 64 frames, 342.1 -> 337.4 at 256, H100, `tools/probe_tower.py --variants equal_segments_sdpa
    # residual_in_gemm`, docs/bench/README.md, twenty-first step)
    residual_in_gemm = True
    # whether the compiled tower is replayed as a CUDA graph per grid (`replay`), and how many graphs a tower keeps
    tower_graphs = True
    max_tower_graphs = 2

    def __init__(self, backend: str = "auto", compile: bool | dict[str, Any] = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"VisionVarlenAttention backend={backend!r} is not one of {BACKENDS}")
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"VisionVarlenAttention compile= takes a bool or torch.compile's keywords, got {compile!r}")
        self.backend = backend
        self.compile_options = None  # torch.compile's keywords for the blocks (None: not compiled)
        if compile is not False:
            self.compile_options = {"dynamic": True, **(compile if isinstance(compile, dict) else {})}
        self._preambles: OrderedDict[tuple, _Preamble] = OrderedDict()
        self._graph_tables: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None  # set inside `replay`'s run

    def __repr__(self) -> str:
        compiled = "" if self.compile_options is None else f", compile={self.compile_options!r}"
        return f"VisionVarlenAttention(backend={self.backend!r}{compiled})"

    def block(self, block: torch.nn.Module) -> Any:
        """Hook 3 (the block loop): the callable that runs `block` on the fused path, the block itself or, with
        `compile`, the block through one compiled function shared by every block (see `compiled_block_runner`)."""
        if self.compile_options is None:
            return block
        return functools.partial(compiled_block_runner(self.compile_options), block)

    def prepare(
        self, hidden_states: torch.Tensor, kwargs: dict[str, Any], *cu_seqlens: torch.Tensor
    ) -> dict[str, Any]:
        """Hook 1 (tower forward, before the blocks): the block kwargs, with a `prunevid_vision` entry when the
        fused path runs for this call. `cu_seqlens` are the segment boundaries the blocks will pass (full and
        windowed); their lengths are read to the host once here, not once per block."""
        known = self._graph_tables
        if known is None:
            known = [table for entry in self._preambles.values() for table in entry.tables]
        if self.backend == "reference":
            return {**kwargs, "prunevid_vision": _PackedAttention(cu_seqlens, fused=None, owner=self, known=known)}
        reason = varlen_unavailable_reason(hidden_states.device, hidden_states.dtype)
        if reason is not None:
            if self.backend == "varlen":
                raise RuntimeError(f"PruneVid vision_attention='varlen' (backend 'varlen') cannot run: {reason}")
            _warn_once(reason)
            return kwargs
        fused, _ = _load_varlen()
        attention = _PackedAttention(cu_seqlens, fused=fused, owner=self, known=known, tokens=hidden_states.shape[0],
                                     like=hidden_states)  # fmt: skip
        return {**kwargs, "prunevid_vision": attention}

    def preamble(self, tower: torch.nn.Module, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Hook 0 (a forward pre-hook on the tower, see `attach`): the tower's kwargs with its preamble filled in
        from a cache, one entry per grid; `kwargs` unchanged where this does not apply.

        Upstream's tower forward starts with tables that depend on `grid_thw` alone: the rotary positions, the
        full-attention boundaries `cu_seqlens`, the window permutation `window_index` and `cu_window_seqlens` (and
        their maximum lengths where flash-attention wants them), computed by `transformers.vision_utils`' `get_*`
        functions on the host, with several reads of the grid from the GPU, while the GPU waits: 1.5-4.5 ms of
        idle GPU per call at 64 frames (docs/bench/h200-2026-12-05-ceiling/h100-phases). Those functions take
        precomputed tables from the tower's kwargs (upstream's own mechanism, `video_cu_seqlens` & co. from
        `generate`): here they are computed once per grid by the same functions with the same arguments, and
        passed that way, so the tower computes exactly what it computes without them; `prepare` then also finds
        the boundaries' maximum lengths on the host (no read-back per call). One read of the grid remains (the
        key).

        Applies only where the fused path runs (as in `prepare`), on releases whose tower forward takes the
        precomputed tables (`preamble_functions`), and when the caller passed none of them itself.
        """
        functions = preamble_functions(type(tower))
        if functions is None or any(key in kwargs for key in _PREAMBLE_KEYS) or not isinstance(grid_thw, torch.Tensor):
            return kwargs
        weight = tower.patch_embed.proj.weight
        if self.backend != "reference" and varlen_unavailable_reason(weight.device, weight.dtype) is not None:
            return kwargs  # (`prepare` warns, or raises for backend "varlen")
        merge, window, patch = tower.spatial_merge_size, tower.window_size, tower.patch_size
        key = (tuple(map(tuple, grid_thw.tolist())), grid_thw.device, grid_thw.dtype, merge, window, patch,
               tower.config._attn_implementation)  # fmt: skip
        entry = self._preambles.get(key)
        if entry is None:
            entry = self._preambles[key] = _Preamble.compute(functions, tower, grid_thw)
            while len(self._preambles) > self.max_preambles:
                self._preambles.popitem(last=False)
        else:
            self._preambles.move_to_end(key)
        return {**kwargs, **entry.kwargs}

    def replay(self, tower: torch.nn.Module, hidden_states: torch.Tensor, grid_thw: torch.Tensor,
               kwargs: dict[str, Any]) -> Any:  # fmt: skip
        """Hook 5 (the tower's `forward`, set by `attach` for the compiled tower): the tower's output computed
        through the tower's `CudaGraphs` runner (eager at a signature's first call, recorded at its second, replayed
        after; its outputs copied out), or None, and the class's forward runs: when the blocks are not compiled or
        `tower_graphs` is off, when no preamble of this object filled the tables in (a caller's own tables, a
        release without them, or off the fused path: the CPU with "auto"), and when the caller asks for the blocks'
        hidden states or attentions or passes options that cannot key a graph.

        What a replay reads, it owns: the pixels, the grid, the preamble's tensors and the kernels' int32 boundary
        tables are copied into the graph's buffers at each call; its host values (maximum lengths, the other
        options, the backend's settings) and the input shapes key the graph; the weights are read in place (the
        key holds the addresses of the tower's first and last parameter: a moved model records anew). The key
        holds nothing of this object, so a graph survives `model.prunevid = ...` switches."""
        if self.compile_options is None or not self.tower_graphs:
            return None
        if getattr(tower, "_prunevid_vision", None) is not self:  # (the runner's call finds this object there)
            return None
        if not (isinstance(hidden_states, torch.Tensor) and isinstance(grid_thw, torch.Tensor)):
            return None
        entry = next((e for e in reversed(self._preambles.values()) if _filled_in(e, kwargs)), None)
        if entry is None:
            return None
        extra = {k: v for k, v in kwargs.items() if k not in entry.kwargs}
        if extra.get("output_attentions") or extra.get("output_hidden_states"):
            return None
        try:
            extra_items = tuple(sorted(extra.items()))
            hash(extra_items)
        except TypeError:
            return None
        names = tuple(k for k, v in entry.kwargs.items() if isinstance(v, torch.Tensor))
        first, last = next(tower.parameters()), [*getattr(tower, "merger", tower).parameters()][-1]  # (all: 0.4 ms)
        runner = tower.__dict__.get("_prunevid_tower_graphs")
        if runner is None:
            runner = tower._prunevid_tower_graphs = CudaGraphs(max_graphs=self.max_tower_graphs)
        replays = runner.replayed
        outputs = runner(
            _tower_forward,
            (hidden_states, grid_thw, *(entry.kwargs[k] for k in names), *(t[1] for t in entry.tables)),
            fixed=(first, last),
            tower=tower,
            names=names,
            host=tuple((k, v) for k, v in entry.kwargs.items() if k not in names),
            lens=tuple(t[2] for t in entry.tables),
            extra=extra_items,
            settings=(self.backend, self.rotary_in_kernel, self.equal_segments_sdpa,
                      VisionVarlenAttention.residual_in_gemm, repr(sorted(self.compile_options.items()))),
        )  # fmt: skip
        if runner.replayed != replays:  # (the graph's own buffers: rewritten by its next replay)
            outputs = tuple(t.clone() for t in outputs)
        kind, keys = tower._prunevid_tower_output[extra_items]
        return outputs[0] if keys is None else kind(**dict(zip(keys, outputs)))

    def patch_embed(self, module: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Hook 0 (`Qwen2_5_VisionPatchEmbed.forward`): the patch embedding `[patches, embed_dim]` as one matmul,
        in the conv weight's dtype, where the fused path runs (as in `prepare`: always for "reference", else where
        `varlen_unavailable_reason` gives None for the weight's device and dtype); None elsewhere, and for a `proj`
        that is not a bias-free `Conv3d` whose kernel is its stride, so the stock conv runs.

        Why: the `Conv3d`'s kernel is the whole patch (temporal 2 x 14 x 14, 3 channels) and its stride the same,
        so each output row is the flattened patch times the flattened weight,
        `x.view(-1, C*T*P*P) @ W.view(E, -1).T`. cuDNN runs that conv as an implicit GEMM, 20-30x slower than the
        matmul on H100/H200 (H200, 32768 bf16 patches, embed_dim 1280: 3.9 ms against 0.15 ms). The function is
        the same: the input is flattened as upstream's `view(-1, C, T, P, P)` sees it and the weight is laid out
        [E, C, T, P, P], both in C, T, P, P order. The rounding differs as between any two GEMMs (bf16 inputs,
        fp32 accumulation, another summation order)."""
        proj = getattr(module, "proj", None)
        if not _is_patch_conv(proj):
            return None
        weight = proj.weight
        if self.backend != "reference" and varlen_unavailable_reason(weight.device, weight.dtype) is not None:
            return None  # `prepare` warns (or, for backend "varlen", raises) for the tower
        patch = module.in_channels * module.temporal_patch_size * module.patch_size * module.patch_size
        return hidden_states.view(-1, patch).to(weight.dtype) @ weight.reshape(module.embed_dim, patch).T

    def mlp(self, module: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Hook 4 (`Qwen2_5_VLMLP.forward`): while `torch.compile` traces the tower's blocks, the MLP with its
        intermediate size padded to a multiple of 8 ([`padded_mlp`]); None otherwise (eager calls, and an MLP that
        `padded_mlp` does not recognise), so the stock lines run. Reads nothing of `self`: switching settings (a new
        object) does not invalidate the compiled graph."""
        if not torch.compiler.is_compiling():
            return None
        return padded_mlp(module, hidden_states)

    def block_mlp(self, block: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Hook 6 (`Qwen2_5_VLVisionBlock.forward`, before its MLP line): while `torch.compile` traces the tower's
        blocks and `residual_in_gemm` is on (a class setting), the line's `hidden_states +
        mlp(norm2(hidden_states))` with the sum inside `down_proj`'s GEMM, written into `hidden_states` (the block's
        own intermediate, `hidden_states + attn(...)` just before the hook: [`mlp_residual`]); None otherwise (eager
        calls, an MLP that `padded_mlp` does not recognise, and one with hooks of its own, which its call would run),
        so the stock line runs; and None with autograd on (`residual_addmm_` has no backward: a gradient through it
        would be lost without an error). Reads nothing of `self`."""
        if not (torch.compiler.is_compiling() and VisionVarlenAttention.residual_in_gemm):
            return None
        if torch.is_grad_enabled():
            return None
        mlp = block.mlp
        if mlp._forward_hooks or mlp._forward_pre_hooks or hasattr(mlp, "_hf_hook") or _gated_linears(mlp) is None:
            return None
        return mlp_residual(mlp, block.norm2(hidden_states), hidden_states)


def padded_mlp(module: torch.nn.Module, hidden_states: torch.Tensor, multiple: int = 8) -> torch.Tensor | None:
    """`down_proj(act_fn(gate_proj(x)) * up_proj(x))` with the intermediate size zero-padded to a multiple of
    `multiple`: the same function (an extra unit is `act_fn(0) * 0 = 0`, `up_proj`'s extra rows being zero, and
    meets a zero column of `down_proj`), with GEMM shapes that need no padding by the compiler. The padded weights
    are made per call (in a compiled graph, copies of 3 x 8.8 MB per block of the released towers, against a 224 MB
    activation per block at 64 frames); the module's own weights are untouched. None when `module` is not upstream's
    gated MLP (three `nn.Linear` of matching sizes without hooks) or is already aligned."""
    linears = _gated_linears(module)
    if linears is None:
        return None
    pad = -linears[0].out_features % multiple
    if pad == 0:
        return None
    down = linears[2]
    return F.linear(_gated_product(module, hidden_states, pad), F.pad(down.weight, (0, pad)), down.bias)


def mlp_residual(module: torch.nn.Module, hidden_states: torch.Tensor, residual: torch.Tensor,
                 multiple: int = 8) -> torch.Tensor | None:  # fmt: skip
    """`residual + down_proj(act_fn(gate_proj(x)) * up_proj(x))` (the vision block's MLP line, `x` the normed
    input) as one GEMM that **adds into `residual` in place**: cuBLAS's `addmm_` with the residual as its C, read
    and written in the GEMM's epilogue ([`residual_addmm_`]), instead of the GEMM's output written, read back and
    added to the residual by a pointwise kernel (a write and two reads of `[tokens, hidden]` a block). In place,
    because an out-of-place `addmm` first copies its C into its output (ATen's `addmm_out`: the copy took the pass
    the epilogue saves, 7.1 ms of the tower at 256 frames on an H100); the block's residual is its own intermediate
    (`hidden_states + attn(...)`, dead after the line), so nothing else sees the write. `down_proj`'s bias is one
    more unit of the intermediate, padded as in [`padded_mlp`]: that unit is 1 (a `where` in the kernel that
    multiplies gate and up) and meets the bias as its column of the padded `down_proj` weight, so no pass adds the
    bias either (adding it to the residual first took the pass the GEMM's C saves: 14.8 ms of the tower at 256
    frames on an H100). The same function; the rounding differs (the bias and the residual join the product in
    the GEMM's fp32 and the sum is rounded once), as between any two GEMMs. Returns `residual` (a contiguous copy
    of it when it is not contiguous, so the sum is never written into a temporary); None when `module` is not
    upstream's gated MLP, and `residual` is then untouched."""
    linears = _gated_linears(module)
    if linears is None:
        return None
    units, down = linears[0].out_features, linears[2]
    pad = -(units + (down.bias is not None)) % multiple + (down.bias is not None)  # room for the bias's unit
    hidden = _gated_product(module, hidden_states, pad)
    if down.bias is None:
        weight = F.pad(down.weight, (0, pad))
    else:
        weight = torch.cat([down.weight, down.bias[:, None], down.weight.new_zeros(down.out_features, pad - 1)], 1)
        unit = torch.arange(units + pad, device=hidden.device) == units
        hidden = hidden.masked_fill(unit, 1)
    out = residual.contiguous()
    residual_addmm_(out.view(-1, out.shape[-1]), hidden.reshape(-1, hidden.shape[-1]), weight)
    return out


def _gated_linears(module: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear] | None:
    """`module`'s `gate_proj`, `up_proj`, `down_proj` when it is upstream's gated MLP (three `nn.Linear` of
    matching sizes without hooks), else None."""
    gate, up, down = (getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj"))
    linears = (gate, up, down)
    if not all(type(m) is torch.nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in linears):
        return None
    if any(hasattr(m, "_hf_hook") for m in linears) or gate.out_features != up.out_features:
        return None
    return linears if down.in_features == gate.out_features else None


def _gated_product(module: torch.nn.Module, hidden_states: torch.Tensor, pad: int) -> torch.Tensor:
    """`act_fn(gate_proj(x)) * up_proj(x)` with the intermediate zero-padded by `pad` units."""

    def rows(linear):  # [out + pad, in] weight and [out + pad] bias (or None)
        bias = None if linear.bias is None else F.pad(linear.bias, (0, pad))
        return F.pad(linear.weight, (0, 0, 0, pad)), bias

    gate = module.act_fn(F.linear(hidden_states, *rows(module.gate_proj)))
    return gate * F.linear(hidden_states, *rows(module.up_proj))


@torch.library.custom_op("prunevid::residual_addmm_", mutates_args=("c",))
def residual_addmm_(c: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> None:
    """`c += a @ weight.T` as one in-place `addmm_` (cuBLAS: `c` read and written in the GEMM's epilogue). A custom
    op, so that `torch.compile` keeps the GEMM with its C instead of splitting it into a GEMM and a pointwise add;
    a mutating one, so that inductor writes the sum into `c`'s own buffer (it re-inplaces the op where `c` is not
    read afterwards, as a block's residual is not) instead of a copy of it."""
    c.addmm_(a, weight.t())


def attach(tower: torch.nn.Module, vision: VisionVarlenAttention | None) -> None:
    """Set `vision` (None: the stock tower) as `_prunevid_vision` on the tower and on every module with a hook: its
    `patch_embed`, every block and every block's `mlp`. Plain attributes: not in the state_dict. With `vision`, the
    tower also gets a forward pre-hook (`VisionVarlenAttention.preamble`), and with compiled blocks its `forward`
    becomes `_graphed_forward` (`VisionVarlenAttention.replay`), unless the tower has an instance `forward` already (a
    caller's wrapper: it is left alone); None removes the hook and our `forward`. The preambles' cache is kept on
    the tower (`_prunevid_preambles`), shared by the objects attached to it in turn."""
    tower._prunevid_vision = vision
    if vision is not None:  # the preambles are the tower's: a setting switched (a new object) does not recompute them
        vision._preambles = tower.__dict__.setdefault("_prunevid_preambles", vision._preambles)
    own = tower.__dict__.get("forward")
    ours = isinstance(own, functools.partial) and own.func is _graphed_forward
    if vision is not None and vision.compile_options is not None and own is None:
        tower.forward = functools.partial(_graphed_forward, tower)  # (an instance attribute over the class's forward)
    elif ours and (vision is None or vision.compile_options is None):
        del tower.forward  # (a `forward` someone else set, e.g. a wrapper of ours, stays: ours reads the setting)
    handle = getattr(tower, "_prunevid_preamble_hook", None)
    if vision is None and handle is not None:
        handle.remove()
        tower._prunevid_preamble_hook = None
    elif vision is not None and handle is None:
        tower._prunevid_preamble_hook = tower.register_forward_pre_hook(_preamble_hook, with_kwargs=True)
    tower.patch_embed._prunevid_vision = vision
    for block in tower.blocks:
        block._prunevid_vision = vision
        block.mlp._prunevid_vision = vision


# the tables `preamble` fills in, as upstream's `get_*` functions pop them from the tower's kwargs
_PREAMBLE_KEYS = ("position_ids", "cu_seqlens", "max_seqlen", "window_index", "cu_window_seqlens", "max_window_seqlen")
_TABLE_NAMES = ("cu_seqlens", "cu_window_seqlens")  # the boundaries whose int32 tables `_Preamble` keeps, in order
_PREAMBLE_FUNCTIONS = ("get_vision_position_ids", "get_vision_attention_seqlens", "get_vision_window_index",
                       "get_max_seqlen")  # fmt: skip


@functools.lru_cache(maxsize=None)
def preamble_functions(tower_class: type) -> tuple[Any, ...] | None:
    """Upstream's preamble functions as the tower forward of `tower_class` calls them (from its module), or None
    where that forward does not call all of them or one of them takes no precomputed `kwargs` (releases before
    `transformers.vision_utils`): there `VisionVarlenAttention.preamble` leaves the tower as it is."""
    namespace = vars(sys.modules[tower_class.__module__]) if tower_class.__module__ in sys.modules else {}
    functions = tuple(namespace.get(name) for name in _PREAMBLE_FUNCTIONS)
    try:
        if not all(callable(f) and "kwargs" in inspect.signature(f).parameters for f in functions):
            return None
        source = inspect.getsource(tower_class.forward)  # (follows the decorators' `__wrapped__`)
    except (OSError, TypeError, ValueError):
        return None
    return functions if all(f"{name}(" in source for name in _PREAMBLE_FUNCTIONS) else None


class _Preamble(NamedTuple):
    """One grid's preamble: the tower kwargs upstream's functions pop, and the boundaries' tables for `prepare`."""

    kwargs: dict[str, Any]
    tables: list[tuple[torch.Tensor, torch.Tensor, int]]

    @classmethod
    def compute(cls, functions: tuple[Any, ...], tower: torch.nn.Module, grid_thw: torch.Tensor) -> "_Preamble":
        """The calls of upstream's tower forward, with its arguments (and no precomputed kwargs). Upstream's
        `get_vision_window_index` builds `window_index` on the host (the others follow `grid_thw`); it is kept on
        the grid's device here, the same values: the tower's gathers by it read the same rows (without a copy to
        the GPU at each call), and a CUDA graph can own it (`replay` records nothing from a host tensor)."""
        position_ids_fn, seqlens_fn, window_fn, max_seqlen_fn = functions
        merge = tower.spatial_merge_size
        kwargs = {"position_ids": position_ids_fn(grid_thw, merge)}
        kwargs["cu_seqlens"], max_seqlen = seqlens_fn(grid_thw, tower.config)
        window_index, kwargs["cu_window_seqlens"] = window_fn(
            grid_thw, spatial_merge_size=merge, window_size=tower.window_size, patch_size=tower.patch_size
        )
        kwargs["window_index"] = window_index.to(grid_thw.device)  # (made on the host: see the docstring)
        max_window_seqlen = max_seqlen_fn(kwargs["cu_window_seqlens"], tower.config, kwarg_name="max_window_seqlen")
        for name, value in (("max_seqlen", max_seqlen), ("max_window_seqlen", max_window_seqlen)):
            if value is not None:  # (None: upstream derives None again, without reading anything back)
                kwargs[name] = value
        return cls(kwargs, [_boundary_table(kwargs[name]) for name in _TABLE_NAMES])


def _preamble_hook(tower: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
    """The tower's forward pre-hook (`attach`): `VisionVarlenAttention.preamble` for its `grid_thw`."""
    vision = getattr(tower, "_prunevid_vision", None)
    grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
    if vision is None or grid_thw is None:
        return None
    filled = vision.preamble(tower, grid_thw, kwargs)
    return None if filled is kwargs else (args, filled)


def _filled_in(entry: _Preamble, kwargs: dict[str, Any]) -> bool:
    """Whether `kwargs` carry `entry`'s preamble (its tensors themselves, its other values equal)."""
    return all(
        (kwargs.get(k) is v) if isinstance(v, torch.Tensor) else (k in kwargs and kwargs[k] == v)
        for k, v in entry.kwargs.items()
    )


def _graphed_forward(tower: torch.nn.Module, hidden_states: torch.Tensor, grid_thw: torch.Tensor | None = None,
                     **kwargs: Any) -> Any:  # fmt: skip
    """The compiled tower's `forward` (`attach`): `VisionVarlenAttention.replay`, else the class's own forward."""
    vision = getattr(tower, "_prunevid_vision", None)
    replayed = None if vision is None else vision.replay(tower, hidden_states, grid_thw, kwargs)
    return replayed if replayed is not None else type(tower).forward(tower, hidden_states, grid_thw, **kwargs)


def _tower_forward(hidden_states: torch.Tensor, grid_thw: torch.Tensor, *tensors: torch.Tensor,
                   tower: torch.nn.Module, names: tuple[str, ...], host: tuple, lens: tuple[int, ...],
                   extra: tuple, settings: tuple) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """What `VisionVarlenAttention.replay` records: upstream's tower forward on the preamble's tables given as
    `tensors` (the named ones, then the two int32 boundary tables, then the fixed weights, unread), the tables'
    longest segments `lens` and the other kwargs by value; returns the output's tensors (its structure is kept on
    the tower, per `extra`). `settings` only keys the graph."""
    tables = dict(zip(names, tensors))
    vision = tower._prunevid_vision
    vision._graph_tables = [(tables[name], cu32, n) for name, cu32, n in
                            zip(_TABLE_NAMES, tensors[len(names):], lens)]  # fmt: skip
    try:
        out = type(tower).forward(tower, hidden_states, grid_thw, **tables, **dict(host), **dict(extra))
    finally:
        vision._graph_tables = None
    if isinstance(out, torch.Tensor):
        structure, values = (type(out), None), (out,)
    else:
        structure, values = (type(out), tuple(out.keys())), tuple(out.values())
    tower.__dict__.setdefault("_prunevid_tower_output", {})[extra] = structure
    return values


def _boundary_table(cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`(cu, cu as contiguous int32, longest segment)` for the kernels (one read-back)."""
    lengths = cu[1:] - cu[:-1]
    return cu, cu.to(torch.int32).contiguous(), int(lengths.max()) if lengths.numel() else 0


def _one_length(table: tuple[torch.Tensor, torch.Tensor, int], tokens: int | None) -> bool:
    """Whether the segments of `table` (`_boundary_table`) over `tokens` tokens all have its longest length and are
    longer than the windowed kernel takes (`window_attention.MAX_SEGMENT`): `_equal_segments_sdpa` can run them.
    On the host, without a read-back: lengths of at most `max_len` adding up to `segments * max_len` are all
    `max_len`."""
    segments, max_len = table[1].numel() - 1, table[2]
    return max_len > MAX_SEGMENT and tokens == segments * max_len


def _is_patch_conv(proj: Any) -> bool:
    """Whether `proj` is what upstream builds: a `Conv3d` without bias, padding, dilation or groups, whose stride
    is its kernel (each output is one whole patch) and with no hooks that a direct read of its weight would skip
    (accelerate's offloading, forward hooks)."""
    return (
        type(proj) is torch.nn.Conv3d
        and proj.bias is None
        and tuple(proj.stride) == tuple(proj.kernel_size)
        and tuple(proj.padding) == (0, 0, 0)
        and tuple(proj.dilation) == (1, 1, 1)
        and proj.groups == 1
        and not hasattr(proj, "_hf_hook")
        and not (proj._forward_hooks or proj._forward_pre_hooks)
    )


class _PackedAttention:
    """One tower call's packed attention: the segment tables, prepared once, and the kernel call per block."""

    def __init__(self, cu_seqlens: tuple[torch.Tensor, ...], fused, owner: VisionVarlenAttention,
                 known: list[tuple[torch.Tensor, torch.Tensor, int]] = (),
                 tokens: int | None = None, like: torch.Tensor | None = None) -> None:  # fmt: skip
        self.fused = fused
        self.block = owner.block
        self.short_segments = fused is not None and owner.backend == "auto"  # `segment_attention` where it runs
        self.rotary_in_kernel = owner.rotary_in_kernel
        self.tables: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.equal: list[bool] = []  # per table: its segments all have its longest length (`equal_segments_sdpa`)
        # per table: whether `segment_attention` takes it (its segments fit the kernel, which runs for tensors like
        # `like`, the blocks' input), decided here, on the host: in a traced block `max_len` is symbolic, and the
        # reason string for a longer segment broke the graph of every full-attention block (torch 2.11)
        self._like = None if like is None else like.new_empty(0)
        self.short: list[bool] = []
        for cu in cu_seqlens:
            table = next((t for t in known if t[0] is cu), None)  # a preamble's (`VisionVarlenAttention.preamble`)
            self.tables.append(table if table is not None else _boundary_table(cu))
            equal = self.short_segments and owner.equal_segments_sdpa and _one_length(self.tables[-1], tokens)
            self.equal.append(equal)
            self.short.append(self._short(self.tables[-1][2]))

    def _table(self, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, int, bool, bool]:
        for (original, cu32, max_len), equal, short in zip(self.tables, self.equal, self.short):
            if original is cu_seqlens:
                return cu32, max_len, equal, short
        table = _boundary_table(cu_seqlens)  # a block called with boundaries not seen in prepare (the varlen kernel)
        self.tables.append(table)
        self.equal.append(False)
        self.short.append(self._short(table[2]))
        return *table[1:], False, self.short[-1]

    def _short(self, max_len: int) -> bool:
        if not (self.short_segments and 0 < max_len <= MAX_SEGMENT):
            return False
        return self._like is None or segment_attention_unavailable_reason(self._like, max_len) is None

    def __call__(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
        *, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, rotary: Any = None,
    ) -> torch.Tensor:  # fmt: skip
        """Hook 2 (attention forward, before the rotary embedding): `query`/`key`/`value` are [tokens, heads,
        head_dim], `rotary` upstream's `apply_rotary_pos_emb_vision` with its tables `cos`/`sin` [tokens, head_dim]
        (None: `query` and `key` come rotated); returns [tokens, heads * head_dim], heads concatenated per token as
        upstream's attention output. With `rotary_in_kernel` the windowed blocks' kernel rotates inside (the same
        fp32 rotation, rounded back to the input dtype; the rotated copies are never written); otherwise, and on
        every other path, `rotary` runs first. Blocks whose segments have one length go to `_equal_segments_sdpa`
        where `equal_segments_sdpa` is on (and no windowed kernel takes them)."""
        tokens = query.shape[0]
        cu32, max_len, equal, short = self._table(cu_seqlens)
        windowed = short and segment_attention_unavailable_reason(query, max_len) is None
        tables = (None, None)
        if rotary is not None and windowed and self.rotary_in_kernel:
            tables = (cos, sin)
        elif rotary is not None:
            query, key = rotary(query, key, cos, sin)
        if windowed:
            out = segment_attention(query, key, value, cu32, max_len, scale, *tables)  # the windowed blocks
        elif equal:
            out = _equal_segments_sdpa(query, key, value, max_len, scale)  # full attention over a video's frame pairs
        elif self.fused is not None:
            out = _varlen(self.fused, query, key, value, cu32, max_len, scale)
        else:
            out = packed_reference_attention(query, key, value, cu32, scale)
        return out.reshape(tokens, -1)


_RUNNERS: dict[str, Any] = {}  # compile options (repr) -> the compiled block runner


def _run_block(block: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    return block(*args, **kwargs)


def compiled_block_runner(options: dict[str, Any]) -> Any:
    """`torch.compile(lambda block, *args, **kwargs: block(*args, **kwargs), **options)`, one per process and set
    of options: every block of every tower (and every `VisionVarlenAttention`, so switching `model.prunevid` back
    and forth) goes through the same compiled function, whose module argument dynamo treats as an input, so the
    blocks share their graphs instead of compiling one each."""
    key = repr(sorted(options.items()))
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = torch.compile(_run_block, **options)
    return runner


def _varlen(fused, query, key, value, cu32, max_len, scale):
    varlen_attn, takes_scale = fused
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    if takes_scale:
        return varlen_attn(query, key, value, cu32, cu32, max_len, max_len, scale=scale)
    default = query.shape[-1] ** -0.5  # older signature: no `scale`, softmax scale is 1/sqrt(head_dim)
    if abs(scale - default) > 1e-12 * default:
        query = query * (scale / default)
    return varlen_attn(query, key, value, cu32, cu32, max_len, max_len)


# `_equal_segments_sdpa`'s kernels: cuDNN's fused attention or flash-attention, whichever torch's own order puts
# first (cuDNN on Hopper with the lent torch 2.11, as for the stock language model; flash-attention, which runs
# wherever the varlen kernel does, elsewhere); not the memory-efficient kernel, which has returned wrong values for
# strided inputs (pytorch/pytorch#112577), nor the math path (memory O(length^2) per segment and head). No
# `set_priority`: this restriction leaves torch's priority order alone (a first version wrote it, and back; in its
# one benchmark run every stock config's cuDNN prefill was 25% slower, which a direct check did not reproduce:
# docs/bench/README.md, seventeenth step)
_EQUAL_SEGMENTS_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]


def _equal_segments_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, length: int,
                         scale: float) -> torch.Tensor:  # fmt: skip
    """Attention within consecutive segments of `length` tokens each (what the varlen kernel computes over such
    boundaries), as one `sdpa` call over the segments as a batch: the packed `[tokens, heads, dim]` tensors viewed
    as `[segments, heads, length, dim]` (no copy: any row stride, e.g. strided views of one qkv output), cuDNN's
    kernel where torch picks it (`_EQUAL_SEGMENTS_BACKENDS`), which is faster than the varlen kernel on these shapes
    (a video's 1,024-token frame pairs, 16 heads of 80: 2.76 -> 1.70 ms at 256 frames on an H100,
    `tools/probe_window_attn.py --window 1024`). The same function (rounding only). Returns `[tokens, heads, dim]`."""

    def batched(t):
        return t.unflatten(0, (-1, length)).transpose(1, 2)

    with sdpa_kernel(_EQUAL_SEGMENTS_BACKENDS):
        out = F.scaled_dot_product_attention(batched(query), batched(key), batched(value), scale=scale)
    return out.transpose(1, 2).flatten(0, 1)


def packed_reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of packed segments as one block-diagonal masked `sdpa` (what varlen attention computes).

    Args: [tokens, heads, dim] tensors and the `(segments + 1,)` cumulative boundaries. Returns [tokens, heads, dim].
    """
    tokens = query.shape[0]
    bounds = cu_seqlens.to(device=query.device, dtype=torch.long)
    if not torch.compiler.is_compiling() and int(bounds[-1] - bounds[0]) != tokens:  # (traced: no host read)
        raise ValueError(f"cu_seqlens covers {int(bounds[-1] - bounds[0])} tokens, the input has {tokens}")
    # segment of each token: how many boundaries after the first lie at or before it (static shapes: traceable)
    segment = torch.searchsorted(bounds[1:].contiguous(), torch.arange(tokens, device=query.device), right=True)
    mask = segment[:, None] == segment[None, :]
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None],
        attn_mask=mask[None, None], scale=scale,
    )  # fmt: skip
    return out[0].transpose(0, 1)


def vision_attention_for(config: Any) -> VisionVarlenAttention | None:
    """The `_prunevid_vision` object for a `PruneVidConfig`: a `VisionVarlenAttention` for `vision_attention=
    "varlen"` (compiling the blocks for "varlen_compiled"), else None (the stock tower)."""
    kind = getattr(config, "vision_attention", "stock")
    if kind == "stock":
        return None
    return VisionVarlenAttention(compile=kind == "varlen_compiled")


__all__ = ["BACKENDS", "VisionVarlenAttention", "attach", "compiled_block_runner", "mlp_residual",
           "packed_reference_attention", "padded_mlp", "preamble_functions", "residual_addmm_",
           "varlen_unavailable_reason", "vision_attention_for"]  # fmt: skip
