"""`layer_graphs`: the pruned prefill's decoder layers in runs, padded to bucketed lengths, replayed as CUDA graphs.

On the CPU the padded runs go through an eager runner (`LayerGraphs(runner=..., devices=("cpu",))`): the same
function the GPU records, so these tests pin what a replay computes: the same tokens as the layers one by one, the
same cache, logits within fp32 rounding, every run padded. On a GPU (`pytest -m gpu`): the same through the graphs.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import DynamicCache, StaticCache

from conftest import frame_inputs, make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration.compat import cache_of, with_cache
from modeling.integration.layer_graphs import LayerGraphs, bucket, layer_runs, pad_mask, pad_rows
from modeling.prunevid.graphs import CudaGraphs, ReplayingLengths, eager


class Spy:
    """An eager runner that records the length of every run it computes."""

    def __init__(self):
        self.lengths = []

    def __call__(self, fn, inputs, *, fixed=(), **options):
        self.lengths.append((len(options["layers"]), inputs[0].shape[1]))
        return eager(fn, inputs, fixed=fixed, **options)


def load(path, prunevid, attn="sdpa"):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation=attn).eval()


def on_cpu(model) -> Spy:
    """Make `model`'s layer graphs run (without graphs) on the CPU; returns the runner's record."""
    spy = Spy()
    model.prunevid_technique.layer_graphs = LayerGraphs(runner=spy, devices=("cpu",))
    return spy


def generate(model, inputs, n=8):
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    return out.sequences, torch.stack(out.logits)


def test_bucket_pads_at_most_a_sixteenth():
    assert (bucket(1412), bucket(554), bucket(16), bucket(1), bucket(17)) == (1472, 576, 16, 16, 32)
    previous = 0
    for n in range(1, 20_000):
        b = bucket(n)
        assert b >= n and b % 16 == 0 and b >= previous
        assert n < 16 or b - n < max(16, n / 16), n
        previous = b
    # 16 buckets per octave from 256 on
    assert len({bucket(n) for n in range(1025, 2049)}) == 16


def test_layer_runs_cut_at_the_pruning_layer():
    assert layer_runs(28, 10) == ((0, 10), (10, 11), (11, 28))
    assert layer_runs(28, 0) == ((0, 1), (1, 28))
    assert layer_runs(28, 26) == ((0, 26), (26, 27), (27, 28))
    assert layer_runs(12, None) == ((0, 12),)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_padded_attention_leaves_the_real_tokens_alone(dtype):
    """sdpa over padded q/k/v with `pad_mask` gives the real rows of sdpa over the real tokens (a left-padded
    batch mask, bool or additive), and every pad row attends to itself."""
    g = torch.Generator().manual_seed(0)
    batch, heads, length, dim, padded = 2, 3, 11, 8, 16
    q, k, v = (torch.randn(batch, heads, length, dim, generator=g) for _ in range(3))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :3] = False  # row 1 left padded
    allowed = causal[None, None] & valid[:, None, None, :]
    allowed[1, :, :3, 0] = True  # (a padding row needs one key, as transformers' masks give it)
    mask = allowed if dtype == torch.bool else torch.where(allowed, 0.0, torch.finfo(dtype).min)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    big = pad_mask(mask, length, padded)
    assert big.shape == (batch, 1, padded, padded)
    assert torch.equal(big[..., :length, :length], mask)
    pads = big[..., length:, :]
    self_only = torch.zeros(padded - length, padded, dtype=torch.bool)
    self_only[:, length:] = torch.eye(padded - length, dtype=torch.bool)
    assert torch.equal(pads == (True if dtype == torch.bool else 0.0), self_only.expand_as(pads))
    if dtype != torch.bool:  # a row blocked entirely (uniform softmax) spreads over the real keys only
        blocked = torch.full((1, 1, length, length), torch.finfo(dtype).min)
        uniform = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=blocked)
        spread = torch.nn.functional.scaled_dot_product_attention(
            *(pad_rows(t, padded) for t in (q, k, v)), attn_mask=pad_mask(blocked, length, padded)
        )
        torch.testing.assert_close(spread[..., :length, :], uniform, rtol=0, atol=1e-6)
    q2, k2, v2 = (pad_rows(t, padded) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=big)
    torch.testing.assert_close(out[..., :length, :], ref, rtol=0, atol=1e-6)
    assert pad_mask(mask, length, length) is not None and pad_rows(q, length) is q


@pytest.mark.parametrize(
    "case, preset, attn",
    [("video", "paper", "sdpa"), ("batch3", "paper", "sdpa"), ("batch3", "paper", "eager"),
     ("video", "stage1_only", "sdpa"), ("batch3", "fastv", "sdpa")],
)  # fmt: skip
def test_padded_runs_equal_the_layers(checkpoints, processor, media, case, preset, attn):
    """Greedy tokens, PruneVid's counts and the cache of the prefill as with the layers one by one; logits within
    fp32 rounding; each run of the prefill computed once, at its bucketed length."""
    inputs = make_inputs(processor, media, case)
    config = PruneVidConfig.preset(preset)
    model = load(checkpoints["gqa2"], config, attn)
    ref_tokens, ref_logits = generate(model, inputs)
    ref_stats = [s.to_dict() for s in model.prunevid_stats]

    model.prunevid = config.replace(layer_graphs=True)
    spy = on_cpu(model)
    tokens, logits = generate(model, inputs)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert [s.to_dict() for s in model.prunevid_stats] == ref_stats

    controller = model.prunevid_technique
    runs = controller.layer_runs
    assert [n for n, _ in spy.lengths] == [end - start for start, end in runs]  # one prefill: each run once
    state = controller.state
    lengths = [state.mask.shape[1]] * len(runs)
    if state.index is not None:
        lengths[-1] = state.index.shape[1]
    assert [length for _, length in spy.lengths] == [bucket(n) for n in lengths]
    assert any(bucket(n) > n for n in lengths)  # (the inputs make the padding real)

    # the cache a prefill leaves: every layer as long, the same keys and values (fp32 rounding)
    def prefill_cache(m):
        with torch.no_grad():
            return cache_of(m(**inputs, **with_cache(DynamicCache(config=m.config.text_config)), use_cache=True))

    replayed = prefill_cache(model)
    model.prunevid = config
    stock_layers = prefill_cache(model)
    for a, b in zip(replayed.layers, stock_layers.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-4)


def test_layers_run_as_they_are_where_a_replay_cannot(checkpoints, processor, media):
    """Recorded per-layer outputs, a static cache, autograd, a CPU runner not asked for: no run, the same result."""
    inputs = make_inputs(processor, media, "video")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper(layer_graphs=True))
    assert model.prunevid_technique.layer_graphs is not None  # on by the setting, but CUDA only by default
    ref_tokens, ref_logits = generate(model, inputs)
    assert model.prunevid_technique.layer_graphs.replayed_runs == 0

    spy = on_cpu(model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert spy.lengths == [] and len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    with torch.no_grad():
        cache = StaticCache(config=model.config.text_config, max_cache_len=inputs["input_ids"].shape[1] + 8)
        static_tokens = model.generate(**inputs, **with_cache(cache), do_sample=False, max_new_tokens=8,
                                       min_new_tokens=8)  # fmt: skip
    assert spy.lengths == [] and torch.equal(static_tokens, ref_tokens)
    model(**inputs).logits.sum()  # autograd on
    assert spy.lengths == []

    tokens, logits = generate(model, inputs)  # and where it can, it does
    assert len(spy.lengths) == len(model.prunevid_technique.layer_runs)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


class Replaying(Spy):
    """An eager runner that counts replays as `CudaGraphs(record_after=2)` would: a run's padded length replays
    from its second call on."""

    def __init__(self):
        super().__init__()
        self.replayed = 0

    def __call__(self, fn, inputs, *, fixed=(), **options):
        if self.lengths.count((len(options["layers"]), inputs[0].shape[1])) >= 1:
            self.replayed += 1
        return super().__call__(fn, inputs, fixed=fixed, **options)


def question_inputs(processor, media, question, prefix=None):
    """clip16 and `question` after it; with `prefix`, that text before the video."""
    from modeling import MediaOptions
    from modeling.app.inputs import build_messages, prepare_inputs

    small = MediaOptions(min_pixels=28 * 28 * 4, max_pixels=112 * 112, fps=4.0)
    conv = build_messages(question, [str(media["clip16"])], (), small)
    if prefix is not None:
        conv[0]["content"].insert(0, {"type": "text", "text": prefix})
    return prepare_inputs(processor, conv)


def test_a_new_length_replays_a_longer_bucket(checkpoints, processor, media):
    """A run whose bucket does not replay yet is padded to the shortest replaying bucket up to 1/4 longer: the same
    tokens as the layers one by one; further, or with `reuse_longer=0`, its own bucket. Its own bucket is then
    recorded while the next tower runs, and its later calls use it."""
    long_question = question_inputs(processor, media, "Describe in one sentence what moves, where it goes and how "
                                                      "fast, and what stays where it is in this short video.")
    short_question = question_inputs(processor, media, "Describe in one sentence what moves, where it goes and how "
                                                       "fast in this short video.")  # (7 tokens fewer)
    config = PruneVidConfig.paper()
    model = load(checkpoints["gqa2"], config)
    ref = {}
    for name, inputs in (("long", long_question), ("short", short_question)):
        ref[name] = generate(model, inputs)
        state = model.prunevid_technique.state
        ref[name] += ([state.mask.shape[1]] * 2 + [state.index.shape[1]],)  # the runs' lengths

    for reuse in (0.25, 0.0):
        model.prunevid = config.replace(layer_graphs=True)
        runner = Replaying()
        graphs = model.prunevid_technique.layer_graphs = LayerGraphs(runner, devices=("cpu",), reuse_longer=reuse)
        for _ in range(2):  # the long question's buckets replay from its second call on
            tokens, _ = generate(model, long_question)
        assert torch.equal(tokens, ref["long"][0])
        del runner.lengths[:]
        tokens, logits = generate(model, short_question)
        assert torch.equal(tokens, ref["short"][0])
        torch.testing.assert_close(logits, ref["short"][1], rtol=1e-4, atol=1e-4)
        expected = []
        for own, replaying in zip(map(bucket, ref["short"][2]), map(bucket, ref["long"][2])):
            expected.append(replaying if own < replaying <= own * (1 + reuse) else own)
        assert [n for _, n in runner.lengths] == expected
        assert (graphs.longer_runs > 0) == (reuse > 0)  # (the questions make it real)
    with pytest.raises(ValueError, match="reuse_longer"):
        LayerGraphs(reuse_longer=-1)

    # with the tower's window on, a run served by a longer bucket has its own one recorded while the next tower
    # runs: later calls pad less
    model._prunevid_layer_graphs = LayerGraphs(Recording(), devices=("cpu",))
    model._prunevid_layer_graphs.record_while_tower_runs = True
    model.prunevid = config.replace(layer_graphs=True)
    runner = model._prunevid_layer_graphs.runner
    for name, inputs in (("long", long_question), ("long", long_question), ("short", short_question),
                         ("short", short_question)):  # fmt: skip
        del runner.lengths[:]
        assert torch.equal(generate(model, inputs)[0], ref[name][0])
    own = list(map(bucket, ref["short"][2]))
    assert [n for _, n in runner.lengths] == own and runner.replayed == 3 * len(own)  # (calls 2, 3 and 4 replay)
    assert sorted(n for _, n in runner.recorded_ahead) == sorted(list(map(bucket, ref["long"][2])) + own)


class Steps:
    """An eager runner for Stage 1's and Stage 2's steps that buckets shapes and counts replays as
    `CudaGraphs(record_after=2)` would: a signature replays from its second call on; `calls` records each call's
    step and token count."""

    bucket_shapes = True

    def __init__(self, reuse_longer):
        self.replayed, self.calls, self._seen = 0, [], set()
        self.lengths = ReplayingLengths(reuse_longer)

    def __call__(self, fn, inputs, *, fixed=(), **options):
        key = (fn.__name__, *(tuple(t.shape) for t in inputs))
        self.replayed += key in self._seen
        self._seen.add(key)
        self.calls.append((fn.__name__, inputs[0].shape[1]))
        return eager(fn, inputs, fixed=fixed, **options)


def test_a_new_length_scores_on_a_longer_replaying_bucket(checkpoints, processor, media):
    """With `layer_graphs`, Stage 2's steps (its sizes and its scoring) of a prefill whose length after Stage 1 is
    new are padded to the shortest longer bucket whose graph replays, up to 1/4 longer (the runner's `lengths`),
    like the layers: the same tokens; with `reuse_longer=0`, to their own bucket. The question (the scored rows) is the same:
    the prefixes before the video differ."""
    question = "Describe in one sentence what moves in this short video."
    prefix = "First read this note: the clip was filmed on a quiet afternoon in the park. "
    prompts = {"long": question_inputs(processor, media, question, prefix),
               "short": question_inputs(processor, media, question)}  # fmt: skip
    config = PruneVidConfig.paper()
    model = load(checkpoints["gqa2"], config)
    ref = {}
    for name, inputs in prompts.items():
        ref[name] = generate(model, inputs)
        ref[name] += (model.prunevid_technique.state.mask.shape[1],)  # the length after Stage 1
    own, longer = bucket(ref["short"][2]), bucket(ref["long"][2])
    assert own < longer <= own * 1.25  # (the prefix makes it real: 96 and 112)

    for reuse in (0.25, 0.0):
        model.prunevid = config.replace(layer_graphs=True)
        technique = model.prunevid_technique
        technique.layer_graphs = LayerGraphs(Replaying(), devices=("cpu",), reuse_longer=reuse)
        technique.runner = Steps(reuse)
        for _ in range(2):  # the long prompt's Stage-2 buckets replay from its second call on
            assert torch.equal(generate(model, prompts["long"])[0], ref["long"][0])
        del technique.runner.calls[:]
        tokens, logits = generate(model, prompts["short"])
        assert torch.equal(tokens, ref["short"][0])
        torch.testing.assert_close(logits, ref["short"][1], rtol=1e-4, atol=1e-4)
        stage2 = [(fn, n) for fn, n in technique.runner.calls if fn in ("_stage2_sizes", "_score_and_keep")]
        expected = longer if reuse else own
        assert stage2 == [("_stage2_sizes", expected), ("_score_and_keep", expected)]
        assert technique.runner.lengths.longer == (2 if reuse else 0)


class Recording(Replaying):
    """`Replaying` with `CudaGraphs.record`: a run's padded length replays once recorded (by `record`, or inline at
    its second call); `record` runs nothing and notes what it recorded."""

    def __init__(self, fail=False):
        super().__init__()
        self.graphs, self.recorded_ahead, self.fail = set(), [], fail

    @staticmethod
    def key(inputs, options):
        return (len(options["layers"]), inputs[0].shape[1], options["masked"])

    def __call__(self, fn, inputs, *, fixed=(), **options):
        key = self.key(inputs, options)
        if key not in self.graphs and self.lengths.count(key[:2]) >= 1:
            self.graphs.add(key)  # (recorded inline at the second call)
        if key in self.graphs:
            self.replayed += 1
        self.lengths.append(key[:2])
        return eager(fn, inputs, fixed=fixed, **options)

    def record(self, fn, inputs, *, fixed=(), **options):
        if self.fail:
            raise RuntimeError("no recording here")
        self.graphs.add(self.key(inputs, options))
        self.recorded_ahead.append(self.key(inputs, options)[:2])
        return True


def test_eager_runs_are_recorded_while_the_next_tower_runs(checkpoints, processor, media):
    """A run that ran eagerly is recorded by the tower's forward hook of the next prefill (before that prefill's
    layers), so its second call replays; the same tokens. Off, it records inline at its second call; a recording
    that raises turns the window off, not the forward."""
    inputs = make_inputs(processor, media, "video")
    config = PruneVidConfig.paper()
    model = load(checkpoints["gqa2"], config)
    ref_tokens, _ = generate(model, inputs)
    for window in (True, False):
        runner = Recording()
        model._prunevid_layer_graphs = graphs = LayerGraphs(runner, devices=("cpu",))
        graphs.record_while_tower_runs = window
        model.prunevid = config.replace(layer_graphs=True)  # (wires the model's graphs to the tower too)
        assert model.model.visual._prunevid_layer_graphs is graphs
        first = [torch.equal(generate(model, inputs)[0], ref_tokens) for _ in range(3)]
        assert all(first)
        runs = [(end - start) for start, end in model.prunevid_technique.layer_runs]
        assert [n for n, _ in runner.recorded_ahead] == (runs[::-1] if window else [])  # the latest run first
        assert graphs.recorded_in_tower == (len(runs) if window else 0)
        assert runner.replayed == 2 * len(runs)  # calls 2 and 3 replay, recorded ahead or inline
    model.prunevid = config  # no layer graphs: no hook on the tower
    assert model.model.visual._prunevid_pending_hook is None and model.model.visual._prunevid_layer_graphs is None

    model._prunevid_layer_graphs = graphs = LayerGraphs(Recording(fail=True), devices=("cpu",))
    graphs.record_while_tower_runs = True
    model.prunevid = config.replace(layer_graphs=True)
    for _ in range(2):
        assert torch.equal(generate(model, inputs)[0], ref_tokens)
    assert graphs.record_while_tower_runs is False and graphs.recorded_in_tower == 0


def test_setting_is_validated_kept_per_model_and_saved(checkpoints, tmp_path):
    with pytest.raises(TypeError, match="layer_graphs"):
        PruneVidConfig(layer_graphs="yes")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper(layer_graphs=True))
    graphs = model.prunevid_technique.layer_graphs
    model.prunevid = PruneVidConfig.aggressive(layer_graphs=True)
    assert model.prunevid_technique.layer_graphs is graphs  # one set of graphs per model, across settings
    model.prunevid = PruneVidConfig.paper()
    assert model.prunevid_technique.layer_graphs is None
    model.prunevid = PruneVidConfig.paper(layer_graphs=True)
    twin = copy.deepcopy(model)  # a copy records its own graphs, one set for its settings too
    assert twin.prunevid_technique.layer_graphs is twin._prunevid_layer_graphs is not graphs
    assert twin.model.visual._prunevid_layer_graphs is twin._prunevid_layer_graphs  # (the tower's hook: the copy's)
    assert isinstance(pickle.loads(pickle.dumps(graphs)).runner, CudaGraphs)
    model.save_pretrained(tmp_path / "saved")
    assert Qwen2_5_VLPruneVid.from_pretrained(tmp_path / "saved").prunevid.layer_graphs is True


@pytest.mark.parametrize("case", ["video", "batch3"])
def test_frame_inputs_are_the_file_cases(processor, media, case):
    """The GPU test's inputs (frames in memory) are the CPU tests' (video files), up to the codec's loss."""
    ours, files = frame_inputs(processor, case), make_inputs(processor, media, case)
    assert ours.keys() == files.keys()
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(ours[key], files[key]), key
    assert (ours["pixel_values_videos"] - files["pixel_values_videos"]).abs().mean() < 0.05  # normalised pixels


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", ["video", "batch3"])
def test_replayed_runs_equal_the_layers_on_gpu(checkpoints, processor, case):
    """fp32 on the GPU: the same tokens, counts and (within rounding) logits as the eager layers; the first call's
    runs are recorded while the second call's tower runs, and replay from then on."""
    inputs = frame_inputs(processor, case).to("cuda")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper()).cuda()
    ref_tokens, ref_logits = generate(model, inputs)
    ref_stats = [s.to_dict() for s in model.prunevid_stats]
    model.prunevid = PruneVidConfig.paper(layer_graphs=True)
    graphs = model.prunevid_technique.layer_graphs
    graphs.record_while_tower_runs = True  # (off by default)
    for call in range(4):
        tokens, logits = generate(model, inputs)
        assert torch.equal(tokens, ref_tokens), call
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
        assert [s.to_dict() for s in model.prunevid_stats] == ref_stats
    runs = len(model.prunevid_technique.layer_runs)
    assert graphs.replayed_runs == 4 * runs
    # call 1 runs eagerly; its runs are recorded while call 2's tower runs, so calls 2, 3 and 4 replay
    assert graphs.runner.recorded == runs and graphs.runner.replayed == 3 * runs
    assert graphs.recorded_in_tower == runs
    assert graphs.runner.warmups == 0  # call 1 ran each run eagerly: the recording needs no warm-up run
    # the cache owns its keys and values (not views of the graphs' output buffers, which the next replay rewrites)
    with torch.no_grad():
        kept = cache_of(model.generate(**inputs, do_sample=False, max_new_tokens=1, return_dict_in_generate=True))
    buffers = {t.untyped_storage().data_ptr() for entry in graphs.runner._graphs.values() for t in entry.outputs}
    held = {t.untyped_storage().data_ptr() for layer in kept.layers for t in (layer.keys, layer.values)}
    assert len(held) == 2 * len(kept.layers) and not held & buffers


@pytest.mark.gpu
@gpu
def test_a_pruned_prefill_reads_back_only_what_its_shapes_need_on_gpu(checkpoints, processor):
    """A pruned prefill (`fast()`'s graphs, one video, fp32) makes the host wait for the GPU only where a shape depends
    on the GPU's results: before the language model, the prompt's layout (flags and positions, one read-back) and
    Stage 1's segments and output counts (two per video); Stage 2's sizes are copied behind Stage 1 and waited for at
    layer M (an event: the work queued before the copy, not the layers since), nothing else in the layers. Any
    other read-back leaves the GPU idle while the host launches what follows (`tools/probe_syncs.py` lists them for
    the 7B architecture)."""
    import warnings

    inputs = frame_inputs(processor, "video").to("cuda")
    model = load(checkpoints["gqa2"], PruneVidConfig.fast(vision_attention="stock")).cuda()
    technique = model.prunevid_technique
    phase, reads = [None], {"stage 1": [], "layers": []}
    technique.before_language_model = _announce(technique.before_language_model, phase, "stage 1")
    hooks = [model.model.language_model.register_forward_pre_hook(lambda *_: phase.__setitem__(0, "layers")),
             model.model.language_model.register_forward_hook(lambda *_: phase.__setitem__(0, None))]  # fmt: skip

    def read(message, *_, **__):
        if phase[0] is not None:
            reads[phase[0]].append(str(message).split("\n")[0])

    try:
        for _ in range(3):  # (the first calls record the graphs)
            reads["stage 1"].clear(), reads["layers"].clear()
            with warnings.catch_warnings():  # (restores `showwarning` on exit)
                warnings.simplefilter("always")
                warnings.showwarning = read
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    generate(model, inputs, n=1)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
    finally:
        for hook in hooks:
            hook.remove()
    stats = model.prunevid_stats[0]
    assert stats.after_stage1 < stats.visual_tokens and stats.kv_cache_tokens < stats.prompt_tokens
    assert technique.layer_graphs.replayed_runs > 0 and technique.state.pending_sizes is None
    assert len(reads["stage 1"]) == 1 + 2, reads
    assert len(reads["layers"]) <= 1, reads  # (at most the event's wait at layer M, if the debug mode names it)


def _announce(method, phase, value):
    """`method`, which first sets `phase[0] = value`."""

    def announced(*args, **kwargs):
        phase[0] = value
        return method(*args, **kwargs)

    return announced
