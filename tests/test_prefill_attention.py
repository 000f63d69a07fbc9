"""A pruned prefill's attention without kernels planned per sequence length (modeling/integration/prefill_attention.py).

On the CPU the restriction never applies (the same kernels as before, bit for bit); which layers go through it and
what it sets are checked here, the effect on the GPU by `test_pruned_prefill_attends_without_cudnn_on_gpu` and
`tools/probe_new_videos.py` (closing notes).
"""

from __future__ import annotations

import pytest
import torch

from conftest import frame_inputs, make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration import prefill_attention
from modeling.integration.layer_graphs import LayerGraphs
from modeling.prunevid.graphs import eager


def backends() -> dict[str, bool]:
    cuda = torch.backends.cuda
    return {"cudnn": cuda.cudnn_sdp_enabled(), "flash": cuda.flash_sdp_enabled(),
            "efficient": cuda.mem_efficient_sdp_enabled(), "math": cuda.math_sdp_enabled()}  # fmt: skip


class OnCuda:
    """Stands in for hidden states on a GPU (all the wrapper reads of them)."""

    is_cuda = True


def test_the_wrapper_keeps_sdpa_off_cudnn_on_cuda_only():
    seen = []

    def layer(hidden_states, *args, **kwargs):
        seen.append((backends(), args, kwargs))
        return hidden_states

    before = backends()
    wrapped = prefill_attention.without_length_plans(layer)
    x = torch.zeros(1, 2, 4)
    assert wrapped(x, 1, mask="m") is x
    stand_in = OnCuda()
    assert wrapped(stand_in, 2, mask=None) is stand_in
    assert seen[0] == (before, (1,), {"mask": "m"})  # CPU: untouched
    assert seen[1] == ({"cudnn": False, "flash": True, "efficient": True, "math": True}, (2,), {"mask": None})
    assert backends() == before  # restored after the call


def load(path, prunevid):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation="sdpa").eval()


class Count:
    """Counts the layer calls that go through the wrapper."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = prefill_attention._call

        def call(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(prefill_attention, "_call", call)


@pytest.mark.parametrize("layer_graphs", [False, True])
def test_every_layer_of_a_pruned_prefill_and_nothing_else(checkpoints, processor, media, monkeypatch, layer_graphs):
    """A pruned prefill calls each decoder layer (or each replayed run, with `layer_graphs`) through the wrapper;
    the decoding steps, and a prefill with every stage off, call none."""
    inputs = make_inputs(processor, media, "video")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper(layer_graphs=layer_graphs))
    if layer_graphs:  # (the runs, without graphs, on the CPU)
        model.prunevid_technique.layer_graphs = LayerGraphs(runner=eager, devices=("cpu",))
    count = Count(monkeypatch)
    with torch.no_grad():
        model.generate(**inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    technique = model.prunevid_technique
    expected = len(technique.layer_runs) if layer_graphs else model.config.text_config.num_hidden_layers
    assert count.calls == expected
    count.calls = 0
    model.prunevid = PruneVidConfig.disabled()
    with torch.no_grad():
        model.generate(**inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert count.calls == 0


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layer_graphs", [False, True])
def test_pruned_prefill_attends_without_cudnn_on_gpu(checkpoints, processor, layer_graphs):
    """bf16 on the GPU: every attention call of a pruned prefill runs with cuDNN's backend off, of a stock prefill
    with the defaults; the decoding steps with the defaults in both."""
    inputs = frame_inputs(processor, "video").to("cuda")
    flags = []

    def record(module, args, kwargs):
        flags.append((kwargs["hidden_states"].shape[1] if "hidden_states" in kwargs else args[0].shape[1],
                      torch.backends.cuda.cudnn_sdp_enabled()))  # fmt: skip

    for cfg, pruned in ((PruneVidConfig.paper(layer_graphs=layer_graphs), True), (PruneVidConfig.disabled(), False)):
        model = load(checkpoints["gqa2"], cfg).to("cuda", torch.bfloat16)
        hooks = [layer.self_attn.register_forward_pre_hook(record, with_kwargs=True)
                 for layer in model.model.language_model.layers]  # fmt: skip
        flags.clear()
        for _ in range(3):  # (with layer_graphs: eager, recorded, replayed; a replay calls no Python)
            with torch.no_grad():
                model.generate(**inputs, do_sample=False, max_new_tokens=2, min_new_tokens=2)
        for hook in hooks:
            hook.remove()
        prefill = [enabled for length, enabled in flags if length > 1]
        decode = [enabled for length, enabled in flags if length == 1]
        assert prefill and decode
        assert all(enabled is not pruned for enabled in prefill)
        assert all(decode)
