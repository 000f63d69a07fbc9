#!/usr/bin/env python3
"""The window kernel's registers, spills and global loads per thread, compiled for a GPU without one (issue 20).

`modeling/integration/window_attention.py`'s `_segment_attention_kernel` is compiled by Triton's own compiler for
a target (default sm_90, the H100 / H200) and assembled by the `ptxas` that ships with Triton (`-v`), on any
machine: no GPU, no device time. The arguments are specialised as a launch on the tower's tensors specialises them
(pointers and strides divisible by 16). What it shows is what the GPU probe cannot: why a variant is slow (a kernel
that holds 254 registers a thread runs two programs per SM; spills go through local memory).

    python3 tools/kernel_registers.py [--head-dim 80] [--window 64] [--steps 32,64 128,128] [--target 90]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ptxas_path() -> Path | None:
    """Triton's bundled `ptxas`, or None (a Triton without its NVIDIA backend)."""
    try:
        import triton
    except Exception:  # noqa: BLE001 - no Triton at all
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


def compile_kernel(head_dim: int = 80, window: int = 64, chunk: int | None = None, out_chunk: int | None = None,
                   rotary: bool = True, target: int = 90, num_warps: int | None = None) -> dict:  # fmt: skip
    """Registers, spill bytes and vector / scalar global loads per thread of the window kernel for these shapes and
    steps (`chunk` / `out_chunk`: the module's `CHUNK` / `OUT_CHUNK` where None, capped as the launch caps them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from modeling.integration import window_attention as wa

    kernel = wa._segment_attention_kernel
    steps = (wa.CHUNK if chunk is None else chunk, wa.OUT_CHUNK if out_chunk is None else out_chunk)
    constants = wa._constants(head_dim, window, rotary, steps)  # (as `segment_attention` launches it)
    chunk, out_chunk = constants["CHUNK"], constants["OUT_CHUNK"]
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("Q", "K", "V", "O"):
            signature[name] = "*bf16"
        elif name == "CU":
            signature[name] = "*i32"
        elif name in ("COS", "SIN"):
            signature[name] = "*fp32"
        elif name == "scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if name.startswith("n_") else "i64"
    missing = set(constants) - set(kernel.arg_names)
    if missing:
        raise RuntimeError(f"the kernel has no parameters {sorted(missing)}: update this tool")
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
               if signature[n] not in ("constexpr", "fp32")}  # fmt: skip
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned)
    options = {"num_warps": num_warps or wa.NUM_WARPS, "num_stages": 1}
    compiled = triton.compile(source, target=GPUTarget("cuda", target, 32), options=options)
    ptx = compiled.asm["ptx"]
    ptxas = ptxas_path()
    if ptxas is None:
        raise RuntimeError("Triton's ptxas is not installed (a Triton without its NVIDIA backend)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        arch = f"sm_{target}a" if target >= 90 else f"sm_{target}"
        done = subprocess.run([str(ptxas), f"-arch={arch}", "-v", "k.ptx", "-o", "k.cubin"], cwd=tmp,
                              capture_output=True, text=True, check=True)  # fmt: skip
    info = done.stderr
    loads = re.findall(r"ld\.global[.\w]*", ptx)
    vector = [op for op in loads if re.search(r"\.v\d", op)]
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    return {
        "head_dim": head_dim, "window": window, "rotary": rotary, "chunk": chunk, "out_chunk": out_chunk,
        "registers": registers, "spill_store_bytes": int(spills.group(1)) if spills else 0,
        "spill_load_bytes": int(spills.group(2)) if spills else 0,
        "vector_loads": len(vector), "scalar_loads": len(loads) - len(vector),
        "mma": len(re.findall(r"wgmma\.mma_async|mma\.sync", ptx)),
    }  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=80)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--steps", nargs="+", default=["16,16", "32,64", "32,128", "64,64", "128,128"],
                    help="CHUNK,OUT_CHUNK pairs to compile (the rotating kernel)")  # fmt: skip
    ap.add_argument("--target", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 80 (A100)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [compile_kernel(args.head_dim, args.window, rotary=False, target=args.target)]
    for pair in args.steps:
        chunk, out_chunk = map(int, pair.split(","))
        rows.append(compile_kernel(args.head_dim, args.window, chunk, out_chunk, rotary=True, target=args.target))
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
