"""The opt-in fused vision attention (`PruneVidConfig(vision_attention="varlen")`, modeling/integration/vision_attention.py).

On the CPU torch's varlen kernel cannot run, so the packed computation is checked through the "reference" backend
(one block-diagonal masked sdpa over the packed tokens: the same segments, the same index bookkeeping) and through a
stand-in kernel with varlen_attn's signature (the call plumbing: int32 boundaries, max length, scale, layout). The
real kernel is checked on the GPU by `tools/bench.py` (relative error of the tower output) and by
`test_real_varlen_kernel_on_cuda` where CUDA is present.

Tolerances: fp32, 1e-5 relative (the same function, summed in another order). bf16: the fused tower's error against
an fp32 stock tower must stay within 1.5x (+1e-3) of the stock bf16 tower's own error, i.e. the fused path is about
as accurate as the stock bf16 path; both are ~1e-2 here (bf16 keeps 8 bits of mantissa).
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen2_5_vl_upstream  # top-level only from 5.20

import modeling.integration.vision_attention as va
import modeling.integration.window_attention as wa
from modeling.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLMLP
from modeling.demo.offline import tiny_config
from modeling.prunevid.config import PruneVidConfig


# One video of 2 temporal patches at 224x196 (16x14 patches: windows of 8x8 patches with ragged edges) and one
# 112x168 image: full-attention segments of 224 and 96 tokens, windowed segments of 64 and fewer.
GRID = torch.tensor([[2, 16, 14], [1, 8, 12]])


def make_tower(dtype=torch.float32, depth=3, seed=0, **overrides):
    config = tiny_config(
        vision_depth=depth, vision_hidden_size=64, vision_num_heads=4, fullatt_block_indexes=[1], **overrides
    )
    torch.manual_seed(seed)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config, attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in tower.named_parameters():  # larger weights than the default init: a peaky attention
            if p.ndim > 1:
                p.normal_(0.0, 0.15)
    return tower.to(dtype).eval(), config


def pixels(config, dtype=torch.float32, seed=1, grid=GRID):
    v = config.vision_config
    rows = int(grid.prod(-1).sum())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, v.in_channels * v.temporal_patch_size * v.patch_size**2, generator=g).to(dtype)


@torch.no_grad()
def run(tower, x, attention=None, grid=GRID):
    va.attach(tower, attention)  # as `Qwen2_5_VLPruneVid.prunevid` does
    try:
        out = tower(x, grid_thw=grid.to(x.device))
    finally:
        va.attach(tower, None)
    return out.pooler_output, out.last_hidden_state


def spy_patch_embed(monkeypatch):
    """Record what every `VisionVarlenAttention.patch_embed` call returns (None: the stock conv ran)."""
    results = []
    original = va.VisionVarlenAttention.patch_embed

    def patch_embed(self, module, hidden_states):
        out = original(self, module, hidden_states)
        results.append(out)
        return out

    monkeypatch.setattr(va.VisionVarlenAttention, "patch_embed", patch_embed)
    return results


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def recording_backend():
    """A `torch.compile` backend that runs every graph as traced (no compiler), and the list it records them in."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend, graphs


# the GPU tests' condition: CUDA and torch's varlen attention for bf16
needs_varlen_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or va.varlen_unavailable_reason(torch.device("cuda"), torch.bfloat16) is not None,
    reason="needs CUDA and torch.nn.attention.varlen",
)


def bf16_tower_on_cuda(grid=GRID):
    """A tiny tower on CUDA (60 MLP units: the compiled blocks pad them) for the GPU tests: the tower and pixels in
    bf16, the fp32 tower's output (exact) and the stock bf16 tower's."""
    tower, config = make_tower(vision_intermediate_size=60)
    tower = tower.cuda()
    x = pixels(config, grid=grid).cuda()
    exact = run(tower, x, grid=grid)[0]
    tower16, x16 = tower.to(torch.bfloat16), x.bfloat16()
    return tower16, x16, exact, run(tower16, x16, grid=grid)[0]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    va._warned.clear()
    yield
    va._warned.clear()


def test_reference_packed_attention_equals_stock_fp32():
    tower, config = make_tower()
    x = pixels(config)
    stock = run(tower, x)
    fused = run(tower, x, va.VisionVarlenAttention("reference"))
    for s, f in zip(stock, fused):
        assert s.shape == f.shape
        assert rel(f, s) < 1e-5


def test_patch_embed_matmul_equals_the_conv_fp32(monkeypatch):
    """The patch embedding as one matmul (patch `vision-patch-embed-matmul`): the stock `Conv3d`'s function, in the
    same flattening order (input as upstream's `view(-1, C, T, P, P)`, weight [E, C, T, P, P]), and the tower uses
    it once per call."""
    tower, config = make_tower()
    x = pixels(config)
    embed = tower.patch_embed
    with torch.no_grad():
        want = embed(x)  # no `_prunevid_vision`: the stock conv
        got = va.VisionVarlenAttention("reference").patch_embed(embed, x)
    assert got is not None and got.shape == want.shape == (x.shape[0], config.vision_config.hidden_size)
    assert got.dtype == embed.proj.weight.dtype
    assert rel(got, want) < 1e-5
    results = spy_patch_embed(monkeypatch)
    stock = run(tower, x)
    assert results == []
    fused = run(tower, x, va.VisionVarlenAttention("reference"))
    assert len(results) == 1 and results[0] is not None  # the hook ran and its result was used
    for s, f in zip(stock, fused):
        assert rel(f, s) < 1e-5


def test_patch_embed_matmul_only_for_the_stock_conv():
    """Anything but upstream's bias-free Conv3d with stride == kernel (or a hooked one) keeps the stock conv."""
    tower, config = make_tower()
    x = pixels(config)
    attention = va.VisionVarlenAttention("reference")
    embed = tower.patch_embed
    proj = embed.proj
    assert attention.patch_embed(embed, x) is not None
    with_bias = torch.nn.Conv3d(proj.in_channels, proj.out_channels, proj.kernel_size, stride=proj.stride, bias=True)
    overlapping = torch.nn.Conv3d(proj.in_channels, proj.out_channels, proj.kernel_size, stride=1, bias=False)
    for other in (with_bias, overlapping):
        embed.proj = other
        assert attention.patch_embed(embed, x) is None
    embed.proj = proj
    handle = proj.register_forward_pre_hook(lambda module, args: None)
    try:
        assert attention.patch_embed(embed, x) is None
    finally:
        handle.remove()


def test_reference_packed_attention_bf16_within_documented_tolerance():
    tower, config = make_tower()
    x = pixels(config)
    exact = run(tower, x)[0]
    tower16 = make_tower(torch.bfloat16)[0]
    stock16 = run(tower16, x.bfloat16())[0]
    fused16 = run(tower16, x.bfloat16(), va.VisionVarlenAttention("reference"))[0]
    err_stock, err_fused = rel(stock16, exact), rel(fused16, exact)
    assert 0 < err_stock < 5e-2
    assert err_fused <= 1.5 * err_stock + 1e-3, (err_fused, err_stock)


def test_packed_reference_attention_is_per_segment_sdpa():
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 6, 17, 40], dtype=torch.int32)
    q, k, v = (torch.randn(40, 3, 8, dtype=torch.float64) for _ in range(3))
    out = va.packed_reference_attention(q, k, v, cu, 0.3)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        want = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=0.3)
        torch.testing.assert_close(out[a:b], want.transpose(0, 1), rtol=1e-12, atol=1e-12)


def test_equal_segments_sdpa_is_per_segment_attention_on_strided_views():
    """`_equal_segments_sdpa`: the segments of one length as a batch of one `sdpa` call, on the strided q/k/v views
    of one qkv output as the blocks hold them, computes what the per-segment reference computes (fp64: the same
    function), and returns packed [tokens, heads, dim]."""
    torch.manual_seed(0)
    qkv = torch.randn(4 * 24, 3, 5, 8, dtype=torch.float64)
    q, k, v = qkv.unbind(1)
    assert q.stride(0) == 3 * 5 * 8  # (views into qkv: not contiguous)
    cu = torch.arange(0, 4 * 24 + 1, 24, dtype=torch.int32)
    out = va._equal_segments_sdpa(q, k, v, 24, 0.3)
    assert out.shape == q.shape
    torch.testing.assert_close(out, va.packed_reference_attention(q, k, v, cu, 0.3), rtol=1e-12, atol=1e-12)


def test_packed_attention_routes_equal_segments_to_sdpa(monkeypatch):
    """Backend "auto": a block whose segments all have one length (known on the host from the token count, the
    segment count and the longest segment: no read-back) goes to `_equal_segments_sdpa`, unequal ones to the varlen
    kernel; `equal_segments_sdpa = False` and backend "varlen" send both to the varlen kernel."""
    calls = []

    def kernel(name):
        def run(q, k, v, *args, **kwargs):
            calls.append(name)
            return torch.zeros_like(q)
        return run

    monkeypatch.setattr(va, "_equal_segments_sdpa", kernel("sdpa"))
    equal = torch.tensor([0, 224, 448])
    unequal = torch.tensor([0, 224, 448, 544])
    for cu, backend, flag, want in ((equal, "auto", True, "sdpa"), (unequal, "auto", True, "varlen"),
                                    (equal, "auto", False, "varlen"), (equal, "varlen", True, "varlen")):  # fmt: skip
        calls.clear()
        owner = va.VisionVarlenAttention(backend)
        monkeypatch.setattr(owner, "equal_segments_sdpa", flag)
        tokens = int(cu[-1])
        attention = va._PackedAttention((cu,), fused=(kernel("varlen"), True), owner=owner, tokens=tokens)
        q = torch.zeros(tokens, 2, 16, dtype=torch.bfloat16)
        assert attention(q, q, q, cu, 0.25).shape == (tokens, 32)
        assert calls == [want], (cu, backend, flag, calls)
    # boundaries a block brings that `prepare` did not see: the varlen kernel
    calls.clear()
    attention = va._PackedAttention((), fused=(kernel("varlen"), True), owner=va.VisionVarlenAttention(), tokens=448)
    attention(torch.zeros(448, 2, 16), torch.zeros(448, 2, 16), torch.zeros(448, 2, 16), equal, 0.25)
    assert calls == ["varlen"]


def test_packed_attention_traces_whole_for_long_and_short_segments():
    """Traced as the compiled blocks call it (the attention object in the block's kwargs, `dynamic=True`, so its
    longest-segment lengths are symbolic), backend "auto" takes a full-attention block (segments longer than the
    windowed kernel's `MAX_SEGMENT`) and a windowed one without a graph break (`fullgraph=True`), to the same outputs
    as eagerly: whether the windowed kernel takes a block is decided on the host. (It was decided in the trace, and
    the reason string with a symbolic length broke the graph of every full-attention block: the rest of the block,
    MLP included, ran outside the compiled graph, so `residual_in_gemm` never took effect on a GPU.)"""
    full = torch.tensor([0, 224, 448])  # two frame pairs of 224 tokens: longer than MAX_SEGMENT
    windows = torch.tensor([0, 16, 64, 112, 160, 208, 256, 304, 352, 400, 448])  # short: the windowed kernel's
    assert int((full[1:] - full[:-1]).max()) > wa.MAX_SEGMENT >= int((windows[1:] - windows[:-1]).max())

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None):  # a traceable stand-in for torch's varlen kernel
        return va.packed_reference_attention(q, k, v, cu_q, scale)

    def attention_owner():
        return va.VisionVarlenAttention("auto")

    attention = va._PackedAttention((full, windows), fused=(varlen, True), owner=attention_owner(), tokens=448)
    assert attention.short == [False, True] and attention.equal == [True, False]
    q, k, v = (torch.randn(448, 2, 16, dtype=torch.bfloat16) for _ in range(3))
    # with the blocks' input known (`prepare` passes it), also whether the kernel runs for it (not on this CPU)
    def short(like):
        return va._PackedAttention((full, windows), fused=(varlen, True), owner=attention_owner(), like=like).short

    assert short(q) == [False, wa.segment_attention_unavailable_reason(q, 48) is None]
    assert short(q.float()) == [False, False]  # (the kernel takes float16 and bfloat16)

    def call(q, k, v, cu, **kwargs):
        return kwargs["prunevid_vision"](q, k, v, cu, 0.25)

    torch._dynamo.reset()
    traced = torch.compile(call, backend="eager", fullgraph=True, dynamic=True)
    for cu in (windows, full, windows, full):  # (a length seen to change is traced symbolic: automatic dynamic)
        assert torch.equal(traced(q, k, v, cu, prunevid_vision=attention), call(q, k, v, cu, prunevid_vision=attention))


@pytest.mark.parametrize("compiled", [False, True])
def test_equal_segments_sdpa_leaves_torchs_sdpa_settings_as_they_were(compiled):
    """`_equal_segments_sdpa` restricts `sdpa`'s kernels for its own call only: torch's enabled kernels and their
    priority order are the same after it, eagerly and compiled (as the blocks call it)."""
    def state():
        return torch._C._get_sdp_priority_order(), torch.nn.attention._cur_sdpa_kernel_backends()

    before = state()
    q = torch.randn(4 * 24, 5, 8)
    fn = torch.compile(va._equal_segments_sdpa, backend="aot_eager", fullgraph=True) if compiled else (
        va._equal_segments_sdpa)  # fmt: skip
    for _ in range(2):
        fn(q, q, q, 24, 0.3)
        assert state() == before


def _segment_loop_kernel(calls, with_scale=True):
    """A stand-in for torch's varlen_attn (same arguments; per-segment sdpa) that records its calls."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        assert q.ndim == 3 and q.shape == k.shape == v.shape and q.stride(-1) == 1
        assert cu_q.dtype == torch.int32 and cu_q is cu_k and int(cu_q[-1]) == q.shape[0]
        assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        calls.append((cu_q.numel() - 1, max_q, kw.get("scale")))
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            o = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=kw.get("scale"))
            out[a:b] = o.transpose(0, 1)
        return out

    if with_scale:
        return kernel

    def old_kernel(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):  # torch <= 2.9 signature
        assert is_causal is False
        return kernel(q, k, v, cu_q, cu_k, max_q, max_k)

    return old_kernel


@pytest.mark.parametrize("with_scale", [True, False])
def test_fused_call_plumbing_with_a_stand_in_kernel(monkeypatch, with_scale):
    calls = []
    kernel = _segment_loop_kernel(calls, with_scale)
    monkeypatch.setattr(va, "_load_varlen", lambda: ((kernel, with_scale), None))
    monkeypatch.setattr(va, "_FUSED_DTYPES", (torch.float32,))
    monkeypatch.setattr(va, "varlen_unavailable_reason", lambda device, dtype: None)
    tower, config = make_tower()
    x = pixels(config)
    stock = run(tower, x)
    fused = run(tower, x, va.VisionVarlenAttention("varlen"))
    for s, f in zip(stock, fused):
        assert rel(f, s) < 1e-5
    # one kernel call per block: full-attention blocks over the 3 frame pairs / image, the others over windows
    assert len(calls) == 3
    full = [c for c in calls if c[1] == 224]
    assert len(full) == 1 and full[0][0] == 3
    windows = [c for c in calls if c[1] == 64]
    assert len(windows) == 2 and all(c[0] > 3 for c in windows)
    if with_scale:
        assert all(c[2] == pytest.approx(16**-0.5) for c in calls)


def test_fallback_to_stock_with_one_warning(caplog, monkeypatch):
    tower, config = make_tower()
    x = pixels(config)
    stock = run(tower, x)
    results = spy_patch_embed(monkeypatch)
    attention = va.VisionVarlenAttention()  # "auto"
    with caplog.at_level(logging.WARNING, logger=va.__name__):
        first = run(tower, x, attention)
        second = run(tower, x, attention)
    for s, a, b in zip(stock, first, second):
        assert torch.equal(s, a) and torch.equal(s, b)  # the stock path, bitwise
    assert results == [None, None]  # the patch embedding hook ran and left the stock conv to run
    messages = [r.getMessage() for r in caplog.records if r.name == va.__name__]
    assert len(messages) == 1, messages
    assert "vision_attention='varlen' is not available" in messages[0] and "stock attention" in messages[0]
    reason = va.varlen_unavailable_reason(x.device, x.dtype)
    assert reason is not None and reason in messages[0]


def test_fallback_message_names_old_torch(monkeypatch, caplog):
    monkeypatch.setattr(va, "_load_varlen", lambda: (None, "torch 2.4 has no torch.nn.attention.varlen"))
    tower, config = make_tower()
    x = pixels(config)
    with caplog.at_level(logging.WARNING, logger=va.__name__):
        out = run(tower, x, va.VisionVarlenAttention())
    assert torch.equal(out[0], run(tower, x)[0])
    assert any("has no torch.nn.attention.varlen" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="cannot run"):
        run(tower, x, va.VisionVarlenAttention("varlen"))


def test_stock_setting_is_bitwise_upstream():
    """`vision_attention="stock"` attaches nothing, and the tower is then upstream's, bit for bit."""
    assert va.vision_attention_for(PruneVidConfig.paper()) is None
    assert va.vision_attention_for(PruneVidConfig.disabled()) is None
    assert isinstance(va.vision_attention_for(PruneVidConfig.paper(vision_attention="varlen")), va.VisionVarlenAttention)
    ours, config = make_tower(depth=4)
    upstream = qwen2_5_vl_upstream.Qwen2_5_VisionTransformerPretrainedModel._from_config(
        config.vision_config, attn_implementation="sdpa"
    ).eval()
    upstream.load_state_dict(ours.state_dict())
    x = pixels(config)
    with torch.no_grad():
        want = upstream(x, grid_thw=GRID)
    got = run(ours, x, va.vision_attention_for(PruneVidConfig.paper()))
    assert torch.equal(got[0], want.pooler_output) and torch.equal(got[1], want.last_hidden_state)


def test_model_setter_wires_the_tower():
    """Once `Qwen2_5_VLPruneVid.prunevid` sets `visual._prunevid_vision`, it follows `vision_attention`."""
    from modeling import Qwen2_5_VLPruneVid

    model = Qwen2_5_VLPruneVid(tiny_config(num_hidden_layers=4), prunevid=PruneVidConfig.disabled())
    visual = model.model.visual
    keys = list(model.state_dict())
    def hooks():  # every module with a hook: the tower, its patch embedding, each block's MLP
        return [visual._prunevid_vision, visual.patch_embed._prunevid_vision] + [
            block.mlp._prunevid_vision for block in visual.blocks
        ]

    assert hooks() == [None] * (2 + len(visual.blocks))
    model.prunevid = PruneVidConfig.paper(vision_attention="varlen")
    assert isinstance(visual._prunevid_vision, va.VisionVarlenAttention)
    assert all(hook is visual._prunevid_vision for hook in hooks())  # the patch embedding and MLP hooks too
    assert visual._prunevid_vision.compile_options is None
    assert list(model.state_dict()) == keys  # plain attributes, not submodules: nothing saved
    model.prunevid = PruneVidConfig.paper(vision_attention="varlen_compiled")
    assert visual._prunevid_vision.compile_options == {"dynamic": True}
    assert all(hook is visual._prunevid_vision for hook in hooks())
    model.prunevid = PruneVidConfig.paper()
    assert hooks() == [None] * (2 + len(visual.blocks))


def test_model_with_varlen_on_cpu_is_bitwise_stock(monkeypatch):
    """`vision_attention="varlen"` where the fused path cannot run (the CPU): the tower of the model, patch
    embedding included, is the stock one bit for bit (the patch embedding hook returns None)."""
    from modeling import Qwen2_5_VLPruneVid

    config = tiny_config(num_hidden_layers=4)
    torch.manual_seed(0)
    model = Qwen2_5_VLPruneVid(config, prunevid=PruneVidConfig.disabled()).eval()
    x = pixels(config)
    with torch.no_grad():
        want = model.model.visual(x, grid_thw=GRID)
    results = spy_patch_embed(monkeypatch)
    model.prunevid = PruneVidConfig.disabled().replace(vision_attention="varlen")
    with torch.no_grad():
        got = model.model.visual(x, grid_thw=GRID)
    assert results == [None]
    assert torch.equal(got.pooler_output, want.pooler_output)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)


OTHER_GRID = torch.tensor([[3, 8, 12]])  # another video: another preamble


@pytest.fixture
def uncached(monkeypatch):
    """Run with `preamble` off, as on a release whose tower takes no precomputed tables."""

    def off():
        monkeypatch.setattr(va, "preamble_functions", lambda tower_class: None)

    return off


def count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_preamble_is_the_same_tower_and_computed_once_per_grid(monkeypatch, uncached):
    """`VisionVarlenAttention.preamble` (the tower's forward pre-hook): upstream's grid tables computed once per
    grid by upstream's own functions and passed as precomputed kwargs; the tower's output is the one computed
    without them, bit for bit (fp32, "reference" packed path), over two grids and repeats."""
    tower, config = make_tower(depth=4)
    x = pixels(config)
    other = torch.randn(int(OTHER_GRID.prod(-1).sum()), x.shape[1], generator=torch.Generator().manual_seed(2))
    vision = va.VisionVarlenAttention(backend="reference")
    supported = va.preamble_functions(type(tower)) is not None
    computed = count_calls(monkeypatch, va._Preamble, "compute")
    tables = count_calls(monkeypatch, va, "_boundary_table")

    def both(attention):
        first = run(tower, x, attention)
        va.attach(tower, attention)
        try:
            with torch.no_grad():
                out = tower(other, OTHER_GRID)  # the grid passed by position
        finally:
            va.attach(tower, None)
        return first, (out.pooler_output, out.last_hidden_state)

    got = [both(vision) for _ in range(3)]
    n_computed, n_tables = len(computed), len(tables)
    uncached()
    want = both(va.VisionVarlenAttention(backend="reference"))
    for outputs in got:
        for g, w in zip(outputs, want):
            assert torch.equal(g[0], w[0]) and torch.equal(g[1], w[1])
    if supported:  # transformers with `vision_utils` (5.2x): two grids, each computed once, then reused
        assert n_computed == 2 and len(vision._preambles) == 2
        assert n_tables == 4  # two boundary tables per grid, made with the preamble: no read-back per call after it
    else:
        assert n_computed == 0 and not vision._preambles
    assert not tower._forward_pre_hooks  # `attach(tower, None)` took the hook off


def test_preamble_respects_the_callers_tables_and_stays_bounded():
    """Tables the caller passed (upstream's `video_cu_seqlens` & co.) win: no preamble is filled in; the cache
    keeps `max_preambles` grids; `attach` registers one hook however often it is called; off the fused path
    (the CPU with backend "auto") nothing is filled in."""
    tower, config = make_tower(depth=2)
    if va.preamble_functions(type(tower)) is None:
        pytest.skip("this transformers' tower takes no precomputed tables (before transformers.vision_utils)")
    x = pixels(config)
    vision = va.VisionVarlenAttention(backend="reference")
    va.attach(tower, vision)
    va.attach(tower, vision)
    try:
        assert len(tower._forward_pre_hooks) == 1
        cu = va._Preamble.compute(va.preamble_functions(type(tower)), tower, GRID).kwargs["cu_seqlens"]
        assert vision.preamble(tower, GRID, {"cu_seqlens": cu}) == {"cu_seqlens": cu}
        with torch.no_grad():
            tower(x, grid_thw=GRID, cu_seqlens=cu)
        assert not vision._preambles
        vision.max_preambles = 1
        for grid in (GRID, OTHER_GRID, GRID):
            filled = vision.preamble(tower, grid, {})
            assert set(filled) >= {"position_ids", "cu_seqlens", "window_index", "cu_window_seqlens"}
        assert len(vision._preambles) == 1 and next(iter(vision._preambles))[0] == tuple(map(tuple, GRID.tolist()))
        again = va.VisionVarlenAttention(backend="reference")  # a setting switched: the tower's preambles stay
        va.attach(tower, again)
        assert again._preambles is vision._preambles
        assert all(value is filled[key] for key, value in again.preamble(tower, GRID, {}).items())  # not recomputed
        assert va.VisionVarlenAttention().preamble(tower, GRID, {}) == {}  # "auto" on the CPU: the stock tower
    finally:
        va.attach(tower, None)
    assert not tower._forward_pre_hooks and tower._prunevid_preamble_hook is None
    assert va.preamble_functions(torch.nn.Linear) is None  # a forward that calls none of upstream's functions


# A custom op with varlen_attn's arguments (as torch registers varlen_attn): dynamo traces it with symbolic sizes.
@torch.library.custom_op("prunevid_test::varlen_attn", mutates_args=())
def _op_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
               max_q: int, max_k: int, scale: float) -> torch.Tensor:  # fmt: skip
    assert cu_q.dtype == torch.int32 and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    return _segment_loop_kernel([])(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale)


@_op_varlen.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    return torch.empty_like(q)


def _traceable_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
    return _op_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)


# Videos of 2, 4 and 6 temporal patches at one resolution, then other resolutions: one compiled graph per attention
# kind (windowed, full) and block code, whatever the length, the resolution or the block.
LENGTHS = [(2, 16, 14), (4, 16, 14), (6, 16, 14), (3, 8, 12), (5, 16, 16)]


@pytest.mark.parametrize("backend", ["reference", "stand-in kernel", "auto"])
def test_compiled_blocks_fullgraph_and_no_recompile_per_length(monkeypatch, backend):
    """`vision_attention="varlen_compiled"`: each block through `torch.compile(dynamic=True)`, with no graph break
    (fullgraph) and no recompilation over video lengths and resolutions; fp32 output as the stock tower's. The MLP
    has 60 units, so the compiled blocks run it padded (`padded_mlp`), inside the same graphs. Backend "auto" (the
    stand-in varlen kernel for the windows, as on a GPU without Triton): the full-attention blocks of a single video
    whose frame pairs have more than 128 tokens run `_equal_segments_sdpa` inside the graph; the one resolution
    with 96-token frame pairs compiles that block once more, for the varlen kernel (on a GPU the Triton kernel
    takes them), which a batch of a video and an image (segments of two lengths) reuses."""
    import torch._dynamo.testing

    if backend != "reference":  # ("auto": the same stand-in, and `sdpa` for the full blocks of one video)
        monkeypatch.setattr(va, "_load_varlen", lambda: ((_traceable_kernel, True), None))
        monkeypatch.setattr(va, "_FUSED_DTYPES", (torch.float32,))
        monkeypatch.setattr(va, "varlen_unavailable_reason", lambda device, dtype: None)
    torch._dynamo.reset()
    tower, config = make_tower(depth=5, vision_intermediate_size=60)
    v = config.vision_config
    graphs = []

    class Counter(torch._dynamo.testing.CompileCounter):  # (and the graphs, to look for the `sdpa` call)
        def __call__(self, gm, example_inputs):
            graphs.append(gm)
            return super().__call__(gm, example_inputs)

    counter = Counter()
    names = {"reference": "reference", "stand-in kernel": "varlen", "auto": "auto"}
    attention = va.VisionVarlenAttention(names[backend], compile={"backend": counter, "fullgraph": True})
    frames = []
    for t, h, w in LENGTHS:
        grid = torch.tensor([[t, h, w]])
        x = torch.randn(t * h * w, v.in_channels * v.temporal_patch_size * v.patch_size**2)
        with torch.no_grad():
            want = tower(x, grid_thw=grid)
            va.attach(tower, attention)
            got = tower(x, grid_thw=grid)
            va.attach(tower, None)
        assert rel(got.pooler_output, want.pooler_output) < 1e-5
        assert rel(got.last_hidden_state, want.last_hidden_state) < 1e-5
        frames.append(counter.frame_count)
    assert 1 <= frames[0] <= 3, frames  # windowed and full blocks (and one re-trace of the first call's kwargs)
    # (the full blocks of (3, 8, 12): 96-token frame pairs, not for `sdpa`: one graph more, reused after)
    more = [0, 0, 0, 1, 1] if backend == "auto" else [0] * len(LENGTHS)
    assert frames == [frames[0] + m for m in more], f"recompiled for a new length or resolution: {frames}"
    sdpa = ["scaled_dot_product_attention" in gm.code for gm in graphs]
    assert any(sdpa) == (backend != "stand-in kernel"), sdpa  # ("reference": its masked sdpa)
    # one compiled function for every block, kept per process and options: a new setting object reuses it
    again = va.VisionVarlenAttention(attention.backend, compile={"backend": counter, "fullgraph": True})
    assert again.block(tower.blocks[0]).func is attention.block(tower.blocks[3]).func
    with torch.no_grad():
        run(tower, pixels(config), again)
    assert counter.frame_count == frames[-1]



def _vision_mlp(units=60, seed=0):
    config = tiny_config(vision_intermediate_size=units)
    torch.manual_seed(seed)
    mlp = qwen2_5_vl_upstream.Qwen2_5_VLMLP(config.vision_config, bias=True).eval()
    ours = Qwen2_5_VLMLP(config.vision_config, bias=True).eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0.0, 0.3)
    ours.load_state_dict(mlp.state_dict())
    return mlp, ours, torch.randn(37, config.vision_config.hidden_size)


def test_padded_mlp_is_the_same_function_fp32():
    """`padded_mlp`: 60 units padded to 64 (zero rows of gate and up, zero columns of down) compute upstream's MLP;
    an aligned size, or modules that are not upstream's plain linears, give None (the stock line runs)."""
    upstream, ours, x = _vision_mlp()
    with torch.no_grad():
        want = upstream(x)
        got = va.padded_mlp(ours, x)
    assert got is not None and got.shape == want.shape
    assert rel(got, want) < 1e-6
    assert va.padded_mlp(ours, x, multiple=4) is None  # 60 is a multiple of 4: nothing to pad
    ours.down_proj.register_forward_hook(lambda *args: None)  # e.g. a user's hook: it must keep running
    assert va.padded_mlp(ours, x) is None


def test_mlp_hook_is_stock_eagerly_and_pads_while_compiling(monkeypatch):
    """The `vision-mlp-padded` hook: eagerly, the stock line (bitwise); under `torch.compile`, the padded MLP in the
    graph (a pad op traced, the same values), and a new setting object (switching `model.prunevid`) reuses the
    graph, also for another number of tokens."""
    upstream, ours, x = _vision_mlp()
    with torch.no_grad():
        want = upstream(x)
        ours._prunevid_vision = va.VisionVarlenAttention(compile=True)
        with monkeypatch.context() as patched:
            patched.setattr(va, "padded_mlp", lambda *args, **kwargs: pytest.fail("padded in an eager call"))
            assert torch.equal(ours(x), want)  # eager: the hook returns None, the stock line runs
        backend, graphs = recording_backend()
        compiled = torch.compile(lambda module, h: module(h), backend=backend, dynamic=True, fullgraph=True)
        assert rel(compiled(ours, x), want) < 1e-6
        assert len(graphs) == 1 and "pad" in graphs[0].code
        ours._prunevid_vision = va.VisionVarlenAttention(compile=True)  # a new object, as a new setting makes
        y = torch.randn(53, x.shape[1])
        assert rel(compiled(ours, y), upstream(y)) < 1e-6
        assert len(graphs) == 1, "recompiled for a new setting object or length"


def test_mlp_residual_is_the_block_mlp_line_fp32():
    """`mlp_residual`: `residual + mlp(x)` as one GEMM written into the residual in place (`residual_addmm_`: the
    residual itself as its C, the bias a unit of the padded intermediate), 60 units (padded to 64, the bias in the
    padding), 63 (the bias fills the last unit) or 64 (padded to 72), for 2-D and 3-D inputs, with or without a bias;
    nothing added outside the GEMM; a residual that is not contiguous is left as it is (the sum in a new tensor);
    None for a module that is not upstream's plain gated MLP, its residual untouched."""
    from torch.fx.experimental.proxy_tensor import make_fx

    for units, bias in ((60, True), (63, True), (64, True), (60, False)):
        upstream, ours, x = _vision_mlp(units)
        if not bias:
            upstream.down_proj.bias = ours.down_proj.bias = None
        residual = torch.randn_like(x)
        with torch.no_grad():
            want = residual + upstream(x)
            inplace = residual.clone()
            got = va.mlp_residual(ours, x, inplace)
            assert got is inplace and rel(got, want) < 1e-6, (units, bias)
            inplace = residual.clone().view(1, *x.shape)
            got3 = va.mlp_residual(ours, x.view(1, *x.shape), inplace)
            assert got3 is inplace and rel(got3[0], want) < 1e-6
            strided = residual.t().contiguous().t()  # the same values, column-major
            got_t = va.mlp_residual(ours, x, strided)
            assert got_t.is_contiguous() and rel(got_t, want) < 1e-6 and torch.equal(strided, residual)
            graph = make_fx(lambda h, r: va.mlp_residual(ours, h, r))(x, residual.clone()).graph
        (gemm,) = [n for n in graph.nodes if n.target is torch.ops.prunevid.residual_addmm_.default]
        c, a, weight = gemm.args
        while c.op != "placeholder" and c.target in (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default):
            c = c.args[0]
        assert c.op == "placeholder" and c.name == "r_1" and weight.meta["val"].shape[1] % 8 == 0, (units, bias)
        assert not [n for n in graph.nodes if n.target is torch.ops.aten.add.Tensor]  # (gate and up: two addmm)
    ours.up_proj.register_forward_pre_hook(lambda *args: None)
    untouched = residual.clone()
    assert va.mlp_residual(ours, x, untouched) is None and torch.equal(untouched, residual)


def test_block_mlp_hook_is_stock_eagerly_and_sums_in_the_gemm_while_compiling(monkeypatch):
    """The `vision-mlp-residual` hook: eagerly, None (the stock line runs); in the compiled blocks
    (`varlen_compiled`, backend "reference" on the CPU), every block's MLP residual added by `residual_addmm`, the
    tower's output as the stock tower's (fp32); with `residual_in_gemm` off, no block calls it (stock's add)."""
    tower, config = make_tower(depth=3)
    x = pixels(config)
    want = run(tower, x)
    with torch.no_grad(), monkeypatch.context() as patched:
        patched.setattr(va, "mlp_residual", lambda *args, **kwargs: pytest.fail("summed in an eager call"))
        eager = va.VisionVarlenAttention("reference")
        assert eager.block_mlp(tower.blocks[0], torch.randn(4, config.vision_config.hidden_size)) is None
        assert all(rel(a, b) < 1e-5 for a, b in zip(run(tower, x, eager), want))
    for in_gemm in (True, False):
        torch._dynamo.reset()
        backend, graphs = recording_backend()
        attention = va.VisionVarlenAttention("reference", compile={"backend": backend, "fullgraph": True})
        monkeypatch.setattr(va.VisionVarlenAttention, "residual_in_gemm", in_gemm)
        with torch.no_grad():
            got = run(tower, x, attention)
        assert graphs and all(("residual_addmm" in gm.code) == in_gemm for gm in graphs), in_gemm
        assert all(rel(a, b) < 1e-5 for a, b in zip(got, want))
    # an MLP with a hook of its own (e.g. a user's, reading its output) is called as a module: its hook runs (set
    # before compiling: dynamo does not guard on hooks added later)
    monkeypatch.setattr(va.VisionVarlenAttention, "residual_in_gemm", True)
    torch._dynamo.reset()
    seen = []
    handle = tower.blocks[1].mlp.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            got = run(tower, x, va.VisionVarlenAttention("reference", compile={"backend": backend, "fullgraph": True}))
    finally:
        handle.remove()
    assert len(seen) == 1 and all(rel(a, b) < 1e-5 for a, b in zip(got, want))


def test_block_mlp_hook_leaves_the_stock_line_with_autograd_on():
    """With autograd on, the compiled blocks keep the stock MLP line (`residual_addmm_` has no backward): the
    tower's gradients are the stock tower's, none lost (with the GEMM line they were None, without an error)."""
    assert va.VisionVarlenAttention.residual_in_gemm  # the default
    tower, config = make_tower(depth=2)
    x = pixels(config)

    def mlp_grads(attention):
        tower.zero_grad(set_to_none=True)
        va.attach(tower, attention)
        try:
            tower(x, grid_thw=GRID).last_hidden_state.pow(2).mean().backward()
        finally:
            va.attach(tower, None)
        return [p.grad for p in tower.blocks[0].mlp.parameters()]

    torch._dynamo.reset()
    backend, graphs = recording_backend()
    want = mlp_grads(None)
    assert not graphs
    got = mlp_grads(va.VisionVarlenAttention("reference", compile={"backend": backend, "fullgraph": True}))
    assert graphs and not any("residual_addmm" in gm.code for gm in graphs)
    assert all(g is not None for g in got) and all(rel(a, b) < 1e-5 for a, b in zip(got, want))


def test_compiled_setting_falls_back_uncompiled_where_the_kernel_cannot_run(caplog):
    """On the CPU (no varlen kernel) "varlen_compiled" runs the stock tower, bitwise, with nothing compiled."""
    tower, config = make_tower()
    x = pixels(config)
    attention = va.vision_attention_for(PruneVidConfig.disabled().replace(vision_attention="varlen_compiled"))
    assert attention.compile_options == {"dynamic": True}
    with caplog.at_level(logging.WARNING, logger=va.__name__):
        got = run(tower, x, attention)
    assert all(torch.equal(a, b) for a, b in zip(got, run(tower, x)))
    assert repr(sorted(attention.compile_options.items())) not in va._RUNNERS  # nothing was compiled
    assert any("not available" in r.getMessage() for r in caplog.records)


class _StandInGraphs:
    """A stand-in for `CudaGraphs` on the CPU, with its contract: per key (the function, its options, the input
    signatures, the fixed tensors' addresses) the first call runs eagerly, the second "records" (keeps its
    outputs as the graph's buffers), and every call after it rewrites those buffers and returns them (a replay)."""

    made: list["_StandInGraphs"] = []

    def __init__(self, max_graphs):
        self.max_graphs, self.replayed, self.keys, self.buffers = max_graphs, 0, [], {}
        _StandInGraphs.made.append(self)

    def __call__(self, fn, inputs, *, fixed=(), **options):
        key = (fn, tuple(sorted(options.items())), tuple((t.shape, t.dtype) for t in inputs),
               tuple(t.data_ptr() for t in fixed))  # fmt: skip
        self.keys.append(key)
        outputs = fn(*inputs, *fixed, **options)
        if self.keys.count(key) == 1:
            return outputs
        buffers = self.buffers.setdefault(key, tuple(torch.empty_like(t) for t in outputs))
        for buffer, t in zip(buffers, outputs):
            buffer.copy_(t)
        self.replayed += 1
        return buffers


def test_compiled_tower_runs_through_a_runner_kept_on_the_tower(monkeypatch):
    """`VisionVarlenAttention.replay` (the tower's `forward` while compiled blocks are attached): the compiled
    tower runs through one runner kept on the tower, under one key across setting switches (new objects) and
    across pixels; its outputs are the tower's, bit for bit, and copied out of the runner's buffers (a later call
    does not overwrite them)."""
    monkeypatch.setattr(va, "CudaGraphs", _StandInGraphs)
    _StandInGraphs.made.clear()
    tower, config = make_tower(depth=3)
    if va.preamble_functions(type(tower)) is None:
        pytest.skip("this transformers' tower takes no precomputed tables (before transformers.vision_utils)")
    x, y = pixels(config), pixels(config, seed=5)
    want_x, want_y = (run(tower, p, va.VisionVarlenAttention("reference")) for p in (x, y))
    compiled = {"backend": "eager"}
    got = [run(tower, p, va.VisionVarlenAttention("reference", compile=compiled)) for p in (x, y, x, y)]
    assert len(_StandInGraphs.made) == 1 and tower._prunevid_tower_graphs is _StandInGraphs.made[0]
    assert "forward" not in tower.__dict__  # `attach(tower, None)` gave the tower its class's forward back
    runner = _StandInGraphs.made[0]
    assert len(set(runner.keys)) == 1 and len(runner.keys) == 4 and runner.replayed == 3
    for (pooled, hidden), (want_pooled, want_hidden) in zip(got, [want_x, want_y, want_x, want_y]):
        assert torch.equal(pooled, want_pooled) and torch.equal(hidden, want_hidden)
    assert got[2][0] is not got[3][0] and not torch.equal(got[2][0], got[3][0])
    # not through the runner: the blocks not compiled, the switch off, the caller's own tables, hidden states asked
    monkeypatch.setattr(va.VisionVarlenAttention, "tower_graphs", False)
    run(tower, x, va.VisionVarlenAttention("reference", compile=compiled))
    monkeypatch.setattr(va.VisionVarlenAttention, "tower_graphs", True)
    run(tower, x, va.VisionVarlenAttention("reference"))
    assert len(runner.keys) == 4
    vision = va.VisionVarlenAttention("reference", compile=compiled)
    va.attach(tower, vision)
    try:
        filled = vision.preamble(tower, GRID, {})
        other = va.VisionVarlenAttention("reference", compile=compiled)
        assert other.replay(tower, x, GRID, filled) is None  # (not the object attached to this tower)
        with torch.no_grad():
            assert vision.replay(tower, x, GRID, {**filled, "output_hidden_states": True}) is None
            assert vision.replay(tower, x, GRID, {**filled, "cu_seqlens": filled["cu_seqlens"].clone()}) is None
            assert vision.replay(tower, x, GRID, {**filled, "unhashable": [1]}) is None
            assert len(runner.keys) == 4
            out = vision.replay(tower, x, GRID, filled)
    finally:
        va.attach(tower, None)
    assert torch.equal(out.pooler_output, want_x[0]) and len(runner.keys) == 5


def test_the_towers_forward_is_ours_only_where_nobody_set_one():
    """`attach` gives the tower `_graphed_forward` for compiled blocks only where the tower has no instance
    `forward` of its own, and takes off only its own: a caller's wrapper (the evaluation's feature reuse wraps
    whatever `forward` it finds) survives setting switches, and ours, wrapped, follows the current setting."""
    tower, config = make_tower()
    want = run(tower, pixels(config))[0]
    compiled = va.VisionVarlenAttention("reference", compile={"backend": "eager"})
    va.attach(tower, compiled)
    ours = tower.forward
    assert ours.func is va._graphed_forward
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return ours(*args, **kwargs)

    tower.forward = wrapper
    try:
        for vision in (va.VisionVarlenAttention("reference"), None, compiled):
            va.attach(tower, vision)
            assert tower.forward is wrapper
            with torch.no_grad():
                got = tower(pixels(config), grid_thw=GRID).pooler_output
            assert torch.equal(got, want) if vision is None else rel(got, want) < 1e-5
        assert len(calls) == 3
    finally:
        del tower.forward
        va.attach(tower, None)
    assert "forward" not in tower.__dict__ and not tower._forward_pre_hooks


def test_backend_validation():
    with pytest.raises(ValueError, match="backend"):
        va.VisionVarlenAttention("flash")
    with pytest.raises(TypeError, match="compile"):
        va.VisionVarlenAttention(compile="yes")
    with pytest.raises(ValueError, match="vision_attention"):
        PruneVidConfig(vision_attention="compiled")


@pytest.mark.gpu
@needs_varlen_cuda
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("backend", ["varlen", "auto"])
def test_real_varlen_kernel_on_cuda(compiled, backend):
    """The real kernel, plain and compiled (the compiled tower's MLP of 60 units runs padded), about as accurate
    as the stock bf16 tower; "auto" runs the windowed blocks through the Triton kernel (`window_attention`)."""
    tower16, x16, exact, stock16 = bf16_tower_on_cuda()
    fused16 = run(tower16, x16, va.VisionVarlenAttention(backend, compile=compiled))[0]
    assert rel(fused16, exact) <= 1.5 * rel(stock16, exact) + 1e-3


@pytest.mark.gpu
@needs_varlen_cuda
def test_compiled_tower_whole_blocks_on_cuda(monkeypatch):
    """The compiled tower (bf16, "auto": the windowed kernel, `sdpa` for the full blocks) traces every block whole
    (`fullgraph=True`: a graph break raises) on this torch, and with `residual_in_gemm` every block's MLP line is
    `residual_addmm_` in the generated code (torch 2.11 broke the full blocks' graphs at the windowed kernel's reason
    string, and their MLP lines ran outside the graph), written into the block's residual itself (no copy of it)."""
    from torch._inductor.utils import run_and_get_code

    tower16, x16, exact, stock16 = bf16_tower_on_cuda()
    monkeypatch.setattr(va.VisionVarlenAttention, "residual_in_gemm", True)
    torch._dynamo.reset()
    attention = va.VisionVarlenAttention("auto", compile={"fullgraph": True})
    with torch.no_grad():
        out, codes = run_and_get_code(lambda: run(tower16, x16, attention)[0])
    assert codes and all("residual_addmm_" in code for code in codes), len(codes)
    # written into the residual's own buffer (inductor re-inplaces the op; a copy of C first is what it saves)
    for code in codes:
        for buffer in re.findall(r"residual_addmm_\.default\((buf\d+),", code):
            assert f"return ({buffer}, )" in code and not re.search(rf"{buffer} = .*(clone|copy|empty)", code), buffer
    assert rel(out, exact) <= 1.5 * rel(stock16, exact) + 1e-3


@pytest.mark.gpu
@needs_varlen_cuda
def test_residual_in_gemm_on_cuda(monkeypatch):
    """The compiled tower (bf16, "auto") with every block's MLP residual added by cuBLAS's `addmm`
    (`residual_in_gemm`; the CPU test shows it traced in every block): about as accurate as the stock bf16 tower and
    as the compiled tower without it."""
    tower16, x16, exact, stock16 = bf16_tower_on_cuda()
    got = {}
    for in_gemm in (False, True):
        monkeypatch.setattr(va.VisionVarlenAttention, "residual_in_gemm", in_gemm)
        torch._dynamo.reset()
        got[in_gemm] = run(tower16, x16, va.VisionVarlenAttention("auto", compile=True))[0]
    print(f"relative error: stock bf16 {rel(stock16, exact):.5f}, compiled {rel(got[False], exact):.5f}, "
          f"residual in the GEMM {rel(got[True], exact):.5f}")
    assert rel(got[True], exact) <= 1.5 * rel(stock16, exact) + 1e-3
    assert rel(got[True], exact) <= 1.5 * rel(got[False], exact) + 1e-3


@pytest.mark.gpu
@needs_varlen_cuda
@pytest.mark.parametrize("compiled", [False, True])
def test_equal_segments_sdpa_on_cuda(monkeypatch, compiled):
    """One video (4 frame pairs of 224 tokens: one length): its full-attention blocks through `_equal_segments_sdpa`
    (cuDNN's kernel on Hopper), plain and compiled, about as accurate as the stock bf16 tower and within bf16
    rounding of the tower whose full-attention blocks run the varlen kernel (`equal_segments_sdpa = False`). The
    kernel `sdpa` picks afterwards for the language model's shapes is the one it picked before. Compiled, the
    tower's CUDA graph replays the same output bit for bit."""
    grid = torch.tensor([[4, 16, 14]])
    tower16, x16, exact, stock16 = bf16_tower_on_cuda(grid)
    lm = [torch.randn(1, 28, 2048, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    choice = [torch._fused_sdp_choice(*lm, is_causal=causal) for causal in (True, False)]
    calls = []
    original = va._equal_segments_sdpa
    if not compiled:  # (eagerly: the call is seen; compiled, the graph holds it)
        monkeypatch.setattr(va, "_equal_segments_sdpa", lambda *a: calls.append(a[3]) or original(*a))
    fused = {}
    for flag in (True, False):
        monkeypatch.setattr(va.VisionVarlenAttention, "equal_segments_sdpa", flag)
        fused[flag] = run(tower16, x16, va.VisionVarlenAttention("auto", compile=compiled), grid=grid)[0]
    assert compiled or calls == [224]  # the one full-attention block of the three
    for out in fused.values():
        assert rel(out, exact) <= 1.5 * rel(stock16, exact) + 1e-3
    assert rel(fused[True], fused[False]) <= rel(stock16, exact) + 1e-3
    assert [torch._fused_sdp_choice(*lm, is_causal=causal) for causal in (True, False)] == choice
    if compiled:  # the tower's CUDA graph over the batched kernel: recorded at the second call, replayed after
        monkeypatch.setattr(va.VisionVarlenAttention, "equal_segments_sdpa", True)
        again = [run(tower16, x16, va.VisionVarlenAttention("auto", compile=True), grid=grid)[0]
                 for _ in range(2)]  # fmt: skip
        runner = tower16._prunevid_tower_graphs
        assert (runner.recorded, runner.replayed) == (1, 2)
        assert all(torch.equal(out, fused[True]) for out in again)  # (the same kernels)


@pytest.mark.gpu
@needs_varlen_cuda
def test_preamble_on_cuda_is_the_same_tower(monkeypatch):
    """On the fused path of the GPU (the grid on the GPU, as `generate` passes it), the tower with its preamble
    filled in computes what it computes without, bit for bit (the same kernels on the same tables)."""
    tower, config = make_tower(vision_intermediate_size=60)
    tower = tower.cuda().to(torch.bfloat16)
    x = pixels(config).cuda().bfloat16()
    vision = va.VisionVarlenAttention("auto")
    va.attach(tower, vision)
    try:
        with torch.no_grad():
            got = [tower(x, grid_thw=GRID.cuda()).pooler_output for _ in range(2)]
    finally:
        va.attach(tower, None)
    assert len(vision._preambles) == (va.preamble_functions(type(tower)) is not None)
    monkeypatch.setattr(va, "preamble_functions", lambda tower_class: None)
    want = run(tower, x, va.VisionVarlenAttention("auto"))[0]
    assert all(torch.equal(g, want) for g in got)


@pytest.mark.gpu
@needs_varlen_cuda
def test_compiled_tower_replayed_as_a_cuda_graph_on_cuda(monkeypatch):
    """The compiled tower through its CUDA graph (`VisionVarlenAttention.replay`): recorded at the grid's second
    call and replayed after, also across setting switches (a new object per call here) and pixels; every output
    equals the compiled tower's without the graph, bit for bit (the same kernels), and a replay's output is its
    own (the next replay does not overwrite it)."""
    tower, config = make_tower(vision_intermediate_size=60)
    tower = tower.cuda().to(torch.bfloat16)
    xs = [pixels(config, seed=seed).cuda().bfloat16() for seed in (1, 2, 3, 4)]
    grid = GRID.cuda()

    def call(x):
        vision = va.VisionVarlenAttention("auto", compile=True)
        va.attach(tower, vision)
        try:
            with torch.no_grad():
                out = tower(x, grid_thw=grid)
        finally:
            va.attach(tower, None)
        return out.pooler_output, out.last_hidden_state

    monkeypatch.setattr(va.VisionVarlenAttention, "tower_graphs", False)
    want = [call(x) for x in xs]
    assert "_prunevid_tower_graphs" not in tower.__dict__
    monkeypatch.setattr(va.VisionVarlenAttention, "tower_graphs", True)
    compiled = counters["stats"]["unique_graphs"]
    got = [call(x) for x in xs]
    assert counters["stats"]["unique_graphs"] == compiled  # (the capture saw what the eager calls saw)
    tensors = [v for entry in tower._prunevid_preambles.values() for v in entry.kwargs.values() if torch.is_tensor(v)]
    assert tensors and all(t.device == grid.device for t in tensors)  # (a host table: nothing could be recorded)
    runner = tower._prunevid_tower_graphs
    assert (runner.recorded, runner.replayed) == (1, 3)  # (the recording call replays too)
    for (pooled, hidden), (want_pooled, want_hidden) in zip(got, want):
        assert torch.equal(pooled, want_pooled) and torch.equal(hidden, want_hidden)
    assert got[2][0].data_ptr() != got[3][0].data_ptr() and not torch.equal(got[2][0], got[3][0])
