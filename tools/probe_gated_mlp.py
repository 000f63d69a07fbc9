#!/usr/bin/env python3
"""GPU probe for issue 20: the vision MLP's `silu(gate(x)) * up(x)` as one Triton kernel against cuBLAS + inductor,
and `down_proj` with the block's residual add.

The compiled tower's MLP is two cuBLAS GEMMs (gate, up; intermediate zero-padded 3420 -> 3424, `padded_mlp`) and
inductor's `silu * up` kernel, which reads both outputs back and writes the product: 27.6 ms of the tower at 256
frames on an H100, at its memory floor. Timed here on the tower's shapes (random bf16, `[tokens, 1280]`, weights
`[3424, 1280]` with biases), CUDA events, medians of `--repeats` calls, the variants interleaved over 3 rounds:

* `cublas_inductor`: `silu(F.linear(x, Wg, bg)) * F.linear(x, Wu, bu)` under `torch.compile(dynamic=True)`, as the
  compiled tower runs it;
* `tma_<BM>x<BN>x<BK>_w<warps>_s<stages>_g<GROUP_M>`: a Triton kernel (defined here) that computes a tile of
  `silu(x Wg^T + bg) * (x Wu^T + bu)` with two fp32 accumulators, reading each tile of x once for both products and
  writing only the product, its loads and store through TMA descriptors;
* `persistent_<...>[_ws]`: the same, one program per SM taking tiles in turn (`tl.range(..., flatten=True)`), with
  Triton's warp specialisation where `_ws`;
* `mlp_cublas_inductor` / `mlp_tma`: the whole MLP (with `down`), the first compiled, the second the first TMA tile
  then `F.linear` for `down`; `mlp_down_linear_add`: `down` and the block's residual add, compiled (a GEMM, then
  inductor's add), against `mlp_down_addmm`: cuBLAS's `addmm` with the residual as its C (read in the GEMM's epilogue;
  the bias would come added to the residual by the norm before).

Each output's relative error against fp32 (on the first 4,096 rows) is written next to its time.

Measured (docs/bench/h100-2026-12-06-nineteenth/, two H100s): the best tile, 128 x 64 x 64, ran 4.31-4.48 against
cuBLAS + inductor's 4.59-4.61 ms at 131,072 tokens (the GEMMs' ~520 against cuBLAS's ~690 TFLOP/s, the saved pass
making up the rest), but the whole MLP did not gain (6.24 against 6.20 ms) nor did the compiled tower with it in
its blocks (355.4 ms at 256 frames): not kept. `down_proj` with the residual as cuBLAS `addmm`'s C: 1.85 against
2.25 ms (GEMM, then inductor's add) at 131,072 tokens, 0.47 against 0.55 at 32,768: kept (`mlp_residual`).

    python3 tools/probe_gated_mlp.py [--tokens 32768 131072] [--repeats 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

TMA_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M)
    (128, 64, 64, 8, 3, 8), (128, 64, 64, 8, 3, 4), (128, 64, 64, 8, 3, 16), (128, 64, 32, 8, 4, 8),
    (128, 64, 32, 8, 5, 8), (128, 128, 32, 8, 4, 8), (256, 64, 64, 8, 3, 8), (256, 64, 32, 8, 4, 8),
]  # fmt: skip
PERSISTENT_CONFIGS = [  # the same, persistent (one program per SM, tiles in turn), without / with warp specialisation
    (128, 64, 64, 8, 3, 8, False), (128, 64, 64, 8, 3, 8, True), (128, 128, 64, 8, 3, 8, False),
    (128, 128, 64, 8, 3, 8, True), (128, 64, 64, 8, 4, 8, False),
]  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--hidden", type=int, default=1280)
    ap.add_argument("--intermediate", type=int, default=3424)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe-gated-mlp"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    import torch.nn.functional as F
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from bench import event_times

    @triton.jit
    def one_tile(xd, gd, ud, BG, BU, od, N, K, tile, tiles_m, tiles_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):  # fmt: skip
        """Tile `tile` of the output (in groups of GROUP_M row tiles per column tile): both products over K, the
        biases, `silu(gate) * up`, stored."""
        per_group = GROUP_M * tiles_n
        first_m = (tile // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (tile % per_group) % group_m) * BLOCK_M
        off_n = ((tile % per_group) // group_m) * BLOCK_N
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            x = xd.load([off_m, k * BLOCK_K])
            gate = tl.dot(x, gd.load([off_n, k * BLOCK_K]).T, gate)
            up = tl.dot(x, ud.load([off_n, k * BLOCK_K]).T, up)
        cols = off_n + tl.arange(0, BLOCK_N)
        gate += tl.load(BG + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        up += tl.load(BU + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        od.store([off_m, off_n], (gate * tl.sigmoid(gate) * up).to(od.dtype))

    @triton.jit
    def tma_kernel(xd, gd, ud, BG, BU, od, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):  # fmt: skip
        one_tile(xd, gd, ud, BG, BU, od, N, K, tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
                 BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)  # fmt: skip

    @triton.jit
    def persistent_kernel(xd, gd, ud, BG, BU, od, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
                          WARP_SPECIALIZE: tl.constexpr):  # fmt: skip
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_SMS, flatten=True,
                             warp_specialize=WARP_SPECIALIZE):  # fmt: skip
            one_tile(xd, gd, ud, BG, BU, od, N, K, tile, tiles_m, tiles_n, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)

    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def launch(kernel, x, wg, wu, bg, bu, bm, bn, bk, warps, stages, group, programs=None, **extra):
        """`kernel` over TMA descriptors of x, the weights and a new output, on `programs` programs (default:
        one per tile)."""
        (m, k), n = x.shape, wg.shape[0]
        out = x.new_empty((m, n))
        descs = (TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(wg, [bn, bk]),
                 TensorDescriptor.from_tensor(wu, [bn, bk]))  # fmt: skip
        tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
        kernel[(min(programs or tiles, tiles),)](
            *descs, bg, bu, TensorDescriptor.from_tensor(out, [bm, bn]), m, n, k, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages, **extra,
        )  # fmt: skip
        return out

    def tma_call(x, wg, wu, bg, bu, cfg):
        return launch(tma_kernel, x, wg, wu, bg, bu, *cfg)

    def persistent_call(x, wg, wu, bg, bu, cfg):
        *tile, ws = cfg
        return launch(persistent_kernel, x, wg, wu, bg, bu, *tile, programs=sms, NUM_SMS=sms, WARP_SPECIALIZE=ws)

    device = torch.device("cuda")
    dtype = torch.bfloat16
    torch.manual_seed(0)
    hid, inter = args.hidden, args.intermediate
    wg, wu = (torch.randn(inter, hid, device=device, dtype=dtype) / hid**0.5 for _ in range(2))
    bg, bu = (torch.randn(inter, device=device, dtype=dtype) * 0.1 for _ in range(2))
    wd = torch.randn(hid, inter, device=device, dtype=dtype) / inter**0.5
    bd = torch.randn(hid, device=device, dtype=dtype) * 0.1

    def gated_ref(x):
        return F.silu(F.linear(x, wg, bg)) * F.linear(x, wu, bu)

    compiled_gated = torch.compile(gated_ref, dynamic=True)
    compiled_mlp = torch.compile(lambda x: F.linear(gated_ref(x), wd, bd), dynamic=True)
    compiled_down_add = torch.compile(lambda h, r: F.linear(h, wd, bd) + r, dynamic=True)

    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "shapes": {}}  # fmt: skip
    for tokens in args.tokens:
        x = torch.randn(tokens, hid, device=device, dtype=dtype)
        xs = x[:4096].float()
        want = F.silu(F.linear(xs, wg.float(), bg.float())) * F.linear(xs, wu.float(), bu.float())
        variants = {"cublas_inductor": lambda: compiled_gated(x)}
        for cfg in TMA_CONFIGS:
            variants["tma_{}x{}x{}_w{}_s{}_g{}".format(*cfg)] = lambda cfg=cfg: tma_call(x, wg, wu, bg, bu, cfg)
        for cfg in PERSISTENT_CONFIGS:
            name = "persistent_{}x{}x{}_w{}_s{}_g{}".format(*cfg[:6]) + ("_ws" if cfg[6] else "")
            variants[name] = lambda cfg=cfg: persistent_call(x, wg, wu, bg, bu, cfg)
        variants["mlp_cublas_inductor"] = lambda: compiled_mlp(x)
        h = compiled_gated(x)
        resid = torch.randn_like(x)
        variants["mlp_down_linear_add"] = lambda: compiled_down_add(h, resid)
        variants["mlp_down_addmm"] = lambda: torch.addmm(resid, h, wd.t())
        variants["mlp_tma"] = lambda: F.linear(tma_call(x, wg, wu, bg, bu, TMA_CONFIGS[0]), wd, bd)
        rec, errors, times = {}, {}, {name: [] for name in variants}
        for name, fn in list(variants.items()):  # warm-up (compiles), error against fp32
            try:
                out = fn()
                torch.cuda.synchronize()
            except Exception as error:  # noqa: BLE001 - a tile that does not fit: reported, not fatal
                errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
                del variants[name]
                continue
            if not name.startswith("mlp_"):
                got = out[:4096].float()
                rec[name] = {"rel_err_vs_fp32": float((got - want).norm() / want.norm())}
            else:
                rec[name] = {}
        for _ in range(3):
            for name, fn in variants.items():
                times[name] += event_times(fn, args.repeats, warmup=2)
        for name in variants:
            rec[name]["ms"] = statistics.median(times[name])
        base = rec["cublas_inductor"]["ms"]
        for name in variants:
            if not name.startswith("mlp_"):
                rec[name]["vs_cublas_inductor"] = base / rec[name]["ms"]
        results["shapes"][str(tokens)] = {"results": rec, "errors": errors}
        print(f"[{tokens} tokens]", flush=True)
        for name, r in sorted(rec.items(), key=lambda kv: kv[1]["ms"]):
            print(f"  {name:32s} {r['ms']:8.3f} ms  {r.get('vs_cublas_inductor', float('nan')):6.3f}x  "
                  f"err {r.get('rel_err_vs_fp32', float('nan')):.5f}", flush=True)  # fmt: skip
        for name, e in errors.items():
            print(f"  {name}: {e}", flush=True)
        del x
    (args.out / "probe_gated_mlp.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
