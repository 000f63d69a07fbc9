"""Issue 21, target 1: decoding from a pruned cache compiles without graph breaks, once, and with the eager tokens.

`generate` prepares each forward over a pruned cache eagerly (`PruneVidController.generation_inputs`, called from
`prepare_inputs_for_generation`): the positions and the masks of the pruned layout, so that the forward reads
nothing back and, on a static cache, has the same shapes at every step.

* Static cache: `generate(..., cache_implementation="static")` compiles the decoding step itself (transformers'
  auto-compile; on the CPU only when `CompileConfig._compile_all_devices` is set); the prefill runs eagerly. Here it
  compiles with `fullgraph=True` (any graph break raises), transformers' default `dynamic=None` (a shape or value
  that changes between steps recompiles, and the recompiled graph turns it symbolic, where a read of it breaks)
  and a counting backend that runs the graph eagerly (no code generation: cheap on the CPU).
* Dynamic cache: the decoding forward compiled by hand (`torch.compile(forward, dynamic=True, fullgraph=True)`),
  the prefill eager: one graph for all steps, the cache growing.
* Per-step host work: the operators PruneVid adds to a decoding step (prepare + forward, counted at the dispatcher)
  do not grow with the step or with the model's depth.

Settings: paper with and without Stage 3, Stage 1 alone, the glue alone (a controller with every stage off, as with
the varlen tower alone on a GPU) and stock; one video (no padding) and a batch of three videos of different sizes
(left padded before and after pruning)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo.testing
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig

from conftest import make_inputs
from modeling import PruneVidConfig, PruneVidController, Qwen2_5_VLPruneVid
from modeling.integration.compat import CACHE_KWARG
from modeling.prunevid.config import PRESETS


SETTINGS = {
    "paper": lambda: PruneVidConfig.paper(),
    "no_stage3": lambda: PruneVidConfig.paper(enable_stage3=False),
    "stage1_only": lambda: PruneVidConfig.paper(enable_stage2=False, enable_stage3=False),
    # the glue active with every stage off (as with the varlen tower on a GPU, where it is available)
    "glue_only": lambda: PruneVidController(PruneVidConfig.disabled()),
    "off": lambda: PruneVidConfig.disabled(),
}
STATIC_CASES = [("video", "paper"), ("video", "glue_only"), ("batch3", "paper"), ("batch3", "no_stage3"),
                ("batch3", "stage1_only"), ("batch3", "off")]  # fmt: skip
STEPS = 8


@pytest.fixture(scope="module")
def inputs(processor, media):
    return {case: make_inputs(processor, media, case) for case in ("video", "batch3")}


@pytest.fixture(scope="module")
def model(checkpoints):
    return Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], attn_implementation="sdpa").eval()


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=STEPS, min_new_tokens=STEPS, **kwargs)


def counting_backend():
    counter = torch._dynamo.testing.CompileCounter()

    def backend(graph, example_inputs, **options):  # generate passes its compile mode along
        return counter(graph, example_inputs)

    return counter, backend


@pytest.fixture(scope="module", params=STATIC_CASES, ids=lambda c: "-".join(c))
def static_run(request, model, inputs):
    """(case, eager tokens, compiled tokens, graphs traced) on a static cache."""
    case, setting = request.param
    model.prunevid = SETTINGS[setting]()
    eager = generate(model, inputs[case], cache_implementation="static")
    counter, backend = counting_backend()
    config = CompileConfig(fullgraph=True, backend=backend)  # dynamic=None: a second shape would turn symbolic
    config._compile_all_devices = True  # auto-compile on the CPU too
    torch._dynamo.reset()
    compiled = generate(model, inputs[case], cache_implementation="static", compile_config=config)
    model.prunevid = PruneVidConfig.paper()
    return request.param, eager, compiled, counter.frame_count


def test_static_decoding_compiles_fullgraph_with_the_eager_tokens(static_run):
    case, eager, compiled, graphs = static_run
    assert torch.equal(compiled, eager), case
    assert graphs >= 1, "the decoding steps were not compiled"


def test_static_decoding_compiles_once(static_run):
    case, _, _, graphs = static_run
    assert graphs == 1, f"{graphs} graphs for {STEPS - 1} decoding steps of {case}"


def test_every_preset_decodes_the_same_tokens_on_the_static_cache(model, inputs):
    """Static (fitted) cache and dynamic cache, every preset, a padded batch: the same tokens."""
    for name in PRESETS:
        model.prunevid = PruneVidConfig.preset(name)
        dynamic = generate(model, inputs["batch3"])
        static = generate(model, inputs["batch3"], cache_implementation="static")
        assert torch.equal(static, dynamic), name
    model.prunevid = PruneVidConfig.paper()


@pytest.mark.parametrize("setting", ["no_stage3"])  # (the masks of both layer groups)
def test_dynamic_cache_decoding_compiles_once(model, inputs, setting):
    model.prunevid = SETTINGS[setting]()
    eager = generate(model, inputs["batch3"])
    counter, backend = counting_backend()
    forward = model.forward
    compiled = torch.compile(forward, fullgraph=True, dynamic=True, backend=backend)

    @functools.wraps(forward)  # `generate` checks its keyword arguments against the forward's signature
    def decode_compiled(*args, **kwargs):
        cache = kwargs.get(CACHE_KWARG)
        return (compiled if cache is not None and cache.get_seq_length() > 0 else forward)(*args, **kwargs)

    torch._dynamo.reset()
    model.forward = decode_compiled
    try:
        again = generate(model, inputs["batch3"])
    finally:
        del model.forward
        model.prunevid = PruneVidConfig.paper()
    assert torch.equal(again, eager), setting
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for {STEPS - 1} decoding steps"


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(model, inputs) -> list[int]:
    """Operators dispatched per decoding step (from one forward's start to the next's: prepare + forward)."""
    marks = []
    counter = _OpCounter()
    handle = model.register_forward_pre_hook(lambda *_: marks.append(counter.count))
    try:
        with counter:
            generate(model, inputs)
    finally:
        handle.remove()
    marks.append(counter.count)
    return [b - a for a, b in zip(marks[1:], marks[2:])][:-1]  # decoding steps (not the prefill, nor the last)


@pytest.mark.parametrize("setting", ["paper", "no_stage3"])
def test_pruning_adds_a_constant_per_step_cost(checkpoints, inputs, setting):
    """PruneVid's work per decoding step grows neither with the step nor with the number of layers: the operators
    it adds to stock's step are the same at every step, for models of 12 and of 14 layers."""
    added = {}
    for name in ("gqa2", "mha"):  # 12 and 14 layers
        model = Qwen2_5_VLPruneVid.from_pretrained(checkpoints[name], attn_implementation="sdpa").eval()
        assert model.config.text_config.num_hidden_layers == {"gqa2": 12, "mha": 14}[name]
        model.prunevid = PruneVidConfig.disabled()
        stock = ops_per_step(model, inputs["batch3"])
        model.prunevid = SETTINGS[setting]()
        pruned = ops_per_step(model, inputs["batch3"])
        assert len(stock) == len(pruned) == STEPS - 2
        added[name] = {p - s for p, s in zip(pruned, stock)}
        assert len(added[name]) == 1, f"{name}: PruneVid's operators per step change with the step: {added[name]}"
    assert added["gqa2"] == added["mha"], f"PruneVid's operators per step change with the depth: {added}"
    assert 0 < added["gqa2"].pop() < 60  # the masks of the pruned layout, built by `generate` (stock builds one)


def test_glue_without_a_stage_reads_nothing_from_the_cache(model):
    """With every stage off (e.g. only the varlen tower set) the glue passes a decoding step through without reading
    the cache's length: on a GPU (torch 2.11) that read broke the compiled step once its length turned symbolic."""

    class Unreadable:
        def get_seq_length(self, *args):
            raise AssertionError("the cache's length was read")

    controller = PruneVidController(PruneVidConfig.disabled(), model.config)
    ids = torch.tensor([[11, 12]])
    embeds, positions = torch.zeros(1, 2, 4), torch.zeros(3, 1, 2, dtype=torch.long)
    out = controller.before_language_model(ids, embeds, positions, None, Unreadable(), None, None)
    assert out[0] is embeds and out[1] is positions and out[2] is None
