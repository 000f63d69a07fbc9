#!/usr/bin/env python3
"""GPU probe for issue 20: the vision tower's windowed attention, kernel against kernel (random bf16 tensors).

The compiled varlen tower spends 8.9 of its 84 ms of kernels at 64 frames in flash-attention's varlen kernel
(docs/bench/h200-2026-12-05-layers/probe_prefill.json), 28 of its 32 calls over windows of 64 tokens: a kernel
whose query tile is 128 rows does half its work on nothing there, and head_dim 80 runs as 96. Timed here, on the
tower's shapes ([tokens, 16 heads, 80], windows of 64 tokens, the packed layout the blocks hold), CUDA events,
medians of `--repeats` calls after warm-up (the variants interleaved over 3 rounds), each variant's output against
varlen's:

* `varlen`: what the tower runs (`torch.nn.attention.varlen.varlen_attn` over `cu_seqlens`);
* `sdpa_<backend>`: the equal windows as a batch, `[windows, heads, 64, 80]` views of the packed tensors, through
  `scaled_dot_product_attention` restricted to one backend (flash, efficient, cudnn), output made packed again;
* `compiled_sdpa` / `compiled_math`: the same under `torch.compile` (inductor picks; and the explicit softmax);
* `segment_attention`: the Triton kernel of modeling/integration/window_attention.py (one program per window and
  head), what `vision_attention="varlen"` runs for these blocks since it was added;
* `rotary_then_segment_attention` / `segment_attention_rotary_inside`: with the rotary embedding, q, k, v the
  strided views of one qkv output: upstream's `apply_rotary_pos_emb_vision` compiled (one pointwise kernel, as in
  the compiled blocks) then the kernel, against the kernel given the tables (it rotates q and k as it loads them);
  their difference is compared with the varlen kernel on the rotated inputs;
  `segment_attention_rotary_inside_heads_outer`: the same kernel with its programs in the order used before
  `window_attention.HEADS_INNER` (each head over all windows, so the rotary tables come from memory once per head);
  `segment_attention_rotary_inside_chunks_<a>_<b>`: the kernel taking the head dimension `a` columns a step for
  the scores and `b` for the output (`window_attention.CHUNK`, `OUT_CHUNK`);
* `before_rotary_inside` (with `--before FILE`): the same call through another copy of window_attention.py (e.g.
  `git show <commit>:modeling/integration/window_attention.py`), interleaved with this one's.

`--only NAME ...` times the variants whose names contain one of the NAMEs (and `varlen`, the reference).

    python3 tools/probe_window_attn.py [--tokens 32768 131072] [--before FILE] [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--before", type=Path, help="another copy of window_attention.py to time against this one")
    ap.add_argument("--only", nargs="+", help="time only the variants whose names contain one of these")
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-window"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.varlen import varlen_attn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling.integration import window_attention
    from modeling.integration.window_attention import segment_attention

    from bench import event_times

    before = None
    if args.before is not None:  # its custom op renamed, so that both register
        import importlib.util

        source = args.before.read_text()
        source = source.replace('"prunevid::segment_attention"', '"prunevid_before::segment_attention"')
        copy = args.out / "window_attention_before.py"
        copy.write_text(source)
        spec = importlib.util.spec_from_file_location("window_attention_before", copy)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)

    def with_settings(call, **settings):  # `call` with some of window_attention's settings changed while it runs
        def run():
            kept = {name: getattr(window_attention, name) for name in settings}
            for name, value in settings.items():
                setattr(window_attention, name, value)
            try:
                return call()
            finally:
                for name, value in kept.items():
                    setattr(window_attention, name, value)
        return run

    dev, dt = torch.device("cuda"), torch.bfloat16
    H, D, W = args.heads, args.head_dim, args.window
    scale = D**-0.5

    def batched(t):  # [T, H, D] packed -> [T/W, H, W, D] view
        return t.view(-1, W, H, D).transpose(1, 2)

    def unbatch(o):  # [T/W, H, W, D] -> [T, H * D]
        return o.transpose(1, 2).reshape(-1, H * D)

    def sdpa(q, k, v):
        return unbatch(F.scaled_dot_product_attention(batched(q), batched(k), batched(v), scale=scale))

    def math(q, k, v):
        qb, kb, vb = batched(q), batched(k), batched(v)
        s = (qb @ kb.transpose(-1, -2)).float() * scale
        return unbatch((s.softmax(-1).to(q.dtype)) @ vb)

    from modeling.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    compiled_rotary = torch.compile(apply_rotary_pos_emb_vision, dynamic=True)
    compiled_sdpa = torch.compile(sdpa, dynamic=True)
    compiled_math = torch.compile(math, dynamic=True)
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "shapes": {}}
    for T in args.tokens:
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(T, H, D, device=dev, dtype=dt, generator=g) for _ in range(3))
        cu = torch.arange(0, T + 1, W, device=dev, dtype=torch.int32)
        variants = {"varlen": lambda: varlen_attn(q, k, v, cu, cu, W, W, scale=scale).reshape(T, -1)}
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):  # fmt: skip
            def call(backend=backend):
                with sdpa_kernel([backend]):
                    return sdpa(q, k, v)
            variants[f"sdpa_{name}"] = call
        variants["segment_attention"] = lambda: segment_attention(q, k, v, cu, W, scale).reshape(T, -1)
        for warps in (2, 8):
            variants[f"segment_attention_{warps}warps"] = with_settings(variants["segment_attention"], NUM_WARPS=warps)
        # with the rotary embedding (the tower's blocks): upstream's rotation compiled (one fused pointwise kernel,
        # as inside the compiled blocks) then the kernel, against the kernel rotating q and k itself; q, k, v as
        # the strided views of one qkv projection output that the blocks hold
        qkv = torch.randn(T, 3, H, D, device=dev, dtype=dt, generator=g)
        qs, ks, vs = qkv.unbind(1)
        angles = torch.rand(T, D // 2, device=dev, generator=g) * 40
        emb = torch.cat([angles, angles], -1)
        cos, sin = emb.cos(), emb.sin()
        variants["rotary_then_segment_attention"] = lambda: segment_attention(
            *compiled_rotary(qs, ks, cos, sin), vs, cu, W, scale).reshape(T, -1)
        inside = variants["segment_attention_rotary_inside"] = lambda: segment_attention(
            qs, ks, vs, cu, W, scale, cos, sin).reshape(T, -1)
        # the programs' order before: each head over all windows (the tables read 16 times)
        variants["segment_attention_rotary_inside_heads_outer"] = with_settings(inside, HEADS_INNER=False)
        for chunk, out_chunk in ((16, 16), (32, 64), (32, 128), (64, 64), (16, 64), (32, 32)):  # other steps
            variants[f"segment_attention_rotary_inside_chunks_{chunk}_{out_chunk}"] = with_settings(
                inside, CHUNK=chunk, OUT_CHUNK=out_chunk)
        if before is not None:
            variants["before_rotary_inside"] = lambda: before.segment_attention(
                qs, ks, vs, cu, W, scale, cos, sin).reshape(T, -1)
            variants["before_no_rotary"] = lambda: before.segment_attention(q, k, v, cu, W, scale).reshape(T, -1)
        variants["compiled_sdpa"] = lambda: compiled_sdpa(q, k, v)
        variants["compiled_math"] = lambda: compiled_math(q, k, v)
        if args.only:
            variants = {n: f for n, f in variants.items() if n == "varlen" or any(o in n for o in args.only)}
        ref = variants["varlen"]().float()
        rotated_ref = varlen_attn(*(t.contiguous() for t in (*apply_rotary_pos_emb_vision(qs, ks, cos, sin), vs)),
                                  cu, cu, W, W, scale=scale).reshape(T, -1).float()  # fmt: skip
        rows, times = {}, {}
        for name, fn in variants.items():  # warm-up (compiles) and each output against the varlen kernel's
            try:
                for _ in range(3):
                    out = fn()
                err = float((out.float() - (rotated_ref if "rotary" in name else ref)).abs().max())
                rows[name], times[name] = {"max_abs_diff_vs_varlen": err}, []
            except Exception as exc:  # noqa: BLE001 - a backend that cannot run these shapes
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rounds = 3  # the variants interleaved: each round times every one of them
        for _ in range(rounds):
            for name in times:
                times[name] += event_times(variants[name], max(1, args.repeats // rounds))
        for name, row in rows.items():
            if name in times:
                row.update(ms=round(statistics.median(times[name]), 4), min_ms=round(min(times[name]), 4))
            print(f"[{T} tokens] {name:16s} {row}", flush=True)
        report["shapes"][str(T)] = rows
        (args.out / "probe_window_attn.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
