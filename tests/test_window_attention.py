"""The Triton kernel for the vision tower's windowed blocks (modeling/integration/window_attention.py).

On the CPU the kernel runs under Triton's interpreter (`TRITON_INTERPRET=1`, in a subprocess: the flag is read when
Triton compiles), in float16: the interpreter's `tl.dot` mishandles bfloat16, which the GPU test covers against
flash-attention's varlen kernel. Tolerances: float16 output against fp32 attention per segment, 2e-3 absolute on
outputs of magnitude ~1 (float16 keeps 11 bits); bfloat16 on the GPU, within 2x of the varlen kernel's own error.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import modeling.integration.vision_attention as va
import modeling.integration.window_attention as wa

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kernel_registers", ROOT / "tools" / "kernel_registers.py")
kernel_registers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_registers)


def per_segment_attention(q, k, v, lengths, scale):
    """fp32 softmax attention of each segment alone (upstream's per-window `sdpa`)."""
    outs, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        qs, ks, vs = (t[s].float().transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
        start += n
    return torch.cat(outs)


def packed(lengths, heads, head_dim, dtype, seed=0):
    """q, k, v as the tower holds them: strided views of one `[tokens, 3, heads, head_dim]` tensor; the boundaries."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=g).to(dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return (*qkv.unbind(1), cu)


def rotary_tables(tokens, head_dim, seed=2):
    """fp32 [tokens, head_dim] cos/sin tables as the tower makes them: angles repeated over the two halves."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(tokens, head_dim // 2, generator=g) * 40
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


INTERPRETED = textwrap.dedent(
    """
    import torch, torch._dynamo.testing
    import modeling.integration.window_attention as wa
    from test_window_attention import packed, per_segment_attention, rotary_tables

    worst = 0.0
    for lengths, heads, head_dim in [([64, 64, 37, 1, 5], 3, 80), ([128, 17], 2, 16), ([3], 1, 48), ([64] * 4, 4, 80),
                                     ([20, 7], 2, 8), ([9], 1, 72)]:
        q, k, v, cu = packed(lengths, heads, head_dim, torch.float16)
        assert wa.segment_attention_unavailable_reason(q, max(lengths)) is None
        out = wa.segment_attention(q, k, v, cu, max(lengths), 0.3)
        assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
        want = per_segment_attention(q, k, v, lengths, 0.3)
        worst = max(worst, float((out.float() - want).abs().max()))
    assert worst < 2e-3, worst

    # the rotary embedding inside the kernel: as upstream's function applied first (fp32, rounded back to float16)
    from modeling.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    rotated_worst = 0.0
    for lengths, heads, head_dim in [([64, 64, 37, 1, 5], 3, 80), ([128, 17], 2, 16), ([9], 1, 72)]:
        q, k, v, cu = packed(lengths, heads, head_dim, torch.float16, seed=1)
        cos, sin = rotary_tables(sum(lengths), head_dim)
        out = wa.segment_attention(q, k, v, cu, max(lengths), 0.3, cos, sin)
        rq, rk = apply_rotary_pos_emb_vision(q, k, cos, sin)
        want = per_segment_attention(rq, rk, v, lengths, 0.3)
        rotated_worst = max(rotated_worst, float((out.float() - want).abs().max()))
        unrotated = per_segment_attention(q, k, v, lengths, 0.3)
        assert float((out.float() - unrotated).abs().max()) > 20 * 2e-3  # (the rotation is not a no-op here)
    assert rotated_worst < 2e-3, rotated_worst
    for bad in ((cos[:-1], sin[:-1]), (cos, None)):
        try:
            wa.segment_attention(q, k, v, cu, 9, 0.3, *bad)
        except ValueError as error:
            assert "cos and sin" in str(error)
        else:
            raise AssertionError("bad rotary tables were accepted")

    # the head dimension in steps (`CHUNK` columns for the scores, `OUT_CHUNK` for the output, where the kernel
    # rotates): the same attention for any steps, down to 16 columns and up to the whole padded head
    q, k, v, cu = packed([64, 64, 37, 1, 5], 3, 80, torch.float16, seed=4)
    tables = rotary_tables(171, 80)
    want = per_segment_attention(*apply_rotary_pos_emb_vision(q, k, *tables), v, [64, 64, 37, 1, 5], 0.3)
    kept = wa.CHUNK, wa.OUT_CHUNK
    for steps in ((16, 16), (16, 64), (32, 64), (64, 32), (128, 128)):
        wa.CHUNK, wa.OUT_CHUNK = steps
        got = wa.segment_attention(q, k, v, cu, 64, 0.3, *tables)
        assert float((got.float() - want).abs().max()) < 2e-3, steps
    wa.CHUNK, wa.OUT_CHUNK = kept

    # the order of the programs (a window's heads side by side, or each head over all windows) changes no bit
    q, k, v, cu = packed([64, 64, 37, 1, 5], 3, 80, torch.float16, seed=3)
    tables = rotary_tables(171, 80)
    orders = []
    for inner in (True, False):
        wa.HEADS_INNER = inner
        orders.append([wa.segment_attention(q, k, v, cu, 64, 0.3, *t) for t in ((), tables)])
    wa.HEADS_INNER = True
    assert all(torch.equal(a, b) for a, b in zip(*orders))

    # schema, fake (meta) implementation and dispatch as torch checks a custom op
    q, k, v, cu = packed([64, 9], 2, 80, torch.float16)
    torch.library.opcheck(wa.segment_attention, (q, k, v, cu, 64, 0.3))
    torch.library.opcheck(wa.segment_attention, (q, k, v, cu, 64, 0.3, *rotary_tables(73, 80)))

    # under torch.compile: one opaque call, traced once for every token count (symbolic shapes)
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(lambda q, k, v, cu, n: wa.segment_attention(q, k, v, cu, n, 0.3) * 2,
                       backend=counter, dynamic=True, fullgraph=True)
    for lengths in ([64, 64, 10], [64, 64, 64, 30], [64] * 7):  # (not 2 segments: cu would duck-size with qkv)
        q, k, v, cu = packed(lengths, 2, 80, torch.float16)
        got = fn(q, k, v, cu, 64)
        assert float((got.float() - 2 * per_segment_attention(q, k, v, lengths, 0.3)).abs().max()) < 4e-3
    assert counter.frame_count == 1, counter.frame_count
    print("OK", worst, rotated_worst)
    """
)


def test_segment_attention_is_softmax_attention_per_segment_interpreted():
    """The kernel (Triton's CPU interpreter, float16) computes each segment's softmax attention: ragged segments
    of 1 to 128 tokens, head dims 8, 16, 48, 72 and 80 (padded to the next power of two inside), strided inputs;
    given rotary tables, the attention of upstream's `apply_rotary_pos_emb_vision(q, k, cos, sin)` (bad tables
    raise), for any steps over the head dimension (`CHUNK`, `OUT_CHUNK`); it passes torch's custom-op checks and
    compiles to one graph for every token count."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]


def test_unavailable_reasons():
    """Where the kernel cannot run, the reason (the caller then uses the varlen kernel)."""
    q = torch.zeros(4, 2, 16, dtype=torch.bfloat16)
    if wa.triton is None:
        assert "Triton" in wa.segment_attention_unavailable_reason(q, 4)
        return
    assert "float16 or bfloat16" in wa.segment_attention_unavailable_reason(q.float(), 4)
    assert "at most 128" in wa.segment_attention_unavailable_reason(q, 129)
    assert "at most 128" in wa.segment_attention_unavailable_reason(q, 0)
    if not wa._INTERPRETED:
        assert "CUDA" in wa.segment_attention_unavailable_reason(q, 4)
        with pytest.raises(RuntimeError, match="cannot run"):
            wa.segment_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4, 1.0)


def test_packed_attention_routes_short_segments_to_the_kernel(monkeypatch):
    """Backend "auto": blocks whose segments have at most 128 tokens go to `segment_attention`, longer ones (the
    full-attention blocks) to the varlen kernel; backend "varlen" sends every block to the varlen kernel. With the
    rotary function given, the kernel gets the tables (`rotary_in_kernel`: it rotates inside) or the rotated q/k,
    the varlen kernel the rotated q/k."""
    calls = []

    def kernel(name):
        def run(q, k, v, cu, *args, **kwargs):
            calls.append(name)
            return torch.zeros_like(q)
        return run

    monkeypatch.setattr(va, "segment_attention_unavailable_reason", lambda q, n: None if n <= 128 else "long")
    monkeypatch.setattr(va, "segment_attention", kernel("triton"))
    fused = (kernel("varlen"), True)
    windows = torch.tensor([0, 64, 128, 150])
    full = torch.tensor([0, 150])
    q = torch.zeros(150, 2, 16, dtype=torch.bfloat16)
    for backend, want in (("auto", ["triton", "varlen"]), ("varlen", ["varlen", "varlen"])):
        calls.clear()
        attention = va._PackedAttention((full, windows), fused=fused, owner=va.VisionVarlenAttention(backend))
        for cu in (windows, full):
            assert attention(q, q, q, cu, 0.25).shape == (150, 32)
        assert calls == want, (backend, calls)

    # given upstream's rotary function (the hook sits before it): the kernel gets the tables and rotates inside
    # (`rotary_in_kernel`) or gets `rotary`'s output, as the varlen kernel does
    seen = []

    def recording(name):
        def run(q, k, v, cu, *args, **kwargs):
            seen.append((name, q, args))
            return torch.zeros_like(q)
        return run

    monkeypatch.setattr(va, "segment_attention", recording("triton"))
    q = torch.randn(150, 2, 16).to(torch.bfloat16)
    cos, sin = torch.randn(2, 150, 16).unbind(0)
    turned = q + 1

    def rotary(query, key, c, s):
        assert c is cos and s is sin
        return turned, turned

    for inside in (True, False):
        seen.clear()
        owner = va.VisionVarlenAttention("auto")
        owner.rotary_in_kernel = inside
        attention = va._PackedAttention((full, windows), fused=(recording("varlen"), True), owner=owner)
        for cu in (windows, full):
            attention(q, q, q, cu, 0.25, cos=cos, sin=sin, rotary=rotary)
        (k_name, k_query, k_args), (v_name, v_query, _) = seen
        assert k_name == "triton" and v_name == "varlen" and torch.equal(v_query, turned)
        if inside:
            assert k_query is q and k_args[-2] is cos and k_args[-1] is sin
        else:
            assert torch.equal(k_query, turned) and k_args[-2:] == (None, None)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or va.varlen_unavailable_reason(torch.device("cuda"), torch.bfloat16) is not None
    or wa.triton is None,
    reason="needs CUDA, Triton and torch.nn.attention.varlen",
)
@pytest.mark.parametrize("rotary", [False, True], ids=["rotated-before", "rotary-inside"])
def test_segment_attention_on_cuda_against_the_varlen_kernel(rotary):
    """bfloat16 on the GPU, the tower's shapes (16 heads of 80, windows of 64 with ragged ones): the kernel's error
    against fp32 attention is within 2x (+1e-3) of flash-attention's varlen kernel's own; with the rotary tables
    given, against the attention of upstream's rotation applied first (what the varlen path computes). The order of
    the programs (`HEADS_INNER`) changes no bit of the output."""
    from torch.nn.attention.varlen import varlen_attn

    from modeling.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    lengths = [64] * 40 + [32, 48, 1, 64, 20]
    q, k, v, cu = (t.cuda() for t in packed(lengths, 16, 80, torch.bfloat16))
    scale = 80**-0.5
    tables = tuple(t.cuda() for t in rotary_tables(sum(lengths), 80)) if rotary else ()
    got = wa.segment_attention(q, k, v, cu, 64, scale, *tables)
    try:
        wa.HEADS_INNER = not wa.HEADS_INNER
        assert torch.equal(wa.segment_attention(q, k, v, cu, 64, scale, *tables), got)
    finally:
        wa.HEADS_INNER = not wa.HEADS_INNER
    if rotary:
        q, k = apply_rotary_pos_emb_vision(q, k, *tables)
    want = per_segment_attention(q, k, v, lengths, scale)
    flash = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, 64, 64, scale=scale)
    err, flash_err = (float((t.float() - want).abs().max()) for t in (got, flash))
    print(f"segment_attention (rotary inside: {rotary}) max abs error {err:.5f}, varlen {flash_err:.5f}")
    assert err <= 2 * flash_err + 1e-3


@pytest.mark.skipif(wa.triton is None or kernel_registers.ptxas_path() is None,
                    reason="needs Triton with its NVIDIA backend's ptxas (installed with torch's CUDA wheels)")
def test_rotating_kernel_in_steps_fits_in_registers():
    """Compiled for sm_90 (H100 / H200) on this machine by `tools/kernel_registers.py` (Triton's compiler and its
    ptxas, no GPU): with the rotation inside, the tower's heads of 80 taken in the module's steps (`CHUNK`,
    `OUT_CHUNK`) hold at most 128 registers a thread (four 4-warp programs per SM) without spilling, against
    nearly all 255 for the whole padded head in one step (what the kernel did before: two programs per SM); every
    read of q, k, v and the tables is a vector load."""
    steps = kernel_registers.compile_kernel(head_dim=80, window=64, rotary=True)
    whole = kernel_registers.compile_kernel(head_dim=80, window=64, chunk=128, out_chunk=128, rotary=True)
    assert (steps["chunk"], steps["out_chunk"]) == (wa.CHUNK, wa.OUT_CHUNK)
    assert steps["registers"] <= 128 < 200 <= whole["registers"], (steps, whole)
    assert steps["spill_store_bytes"] == steps["spill_load_bytes"] == 0, steps
    assert steps["scalar_loads"] <= 2 < steps["vector_loads"], steps  # (2: the segment's two boundaries)
