"""`rope_index="vectorized"` (modeling/integration/rope_index.py, patch `rope-index`): the prompt's 3-D positions
equal upstream's `get_rope_index` element for element (processor inputs and random layouts: images, videos,
fractional seconds, padded rows), on every release the sync matrix runs; a release whose method matches no known
rule gets its own method; the model's outputs with the option are stock's (stages off) and paper's (stages on),
bit for bit."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from conftest import INPUT_CASES, make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration import rope_index as rope
from modeling.modeling_qwen2_5_vl import Qwen2_5_VLModel

KEYS = ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
VECTORIZED = PruneVidConfig.disabled().replace(rope_index="vectorized")


def load(path, prunevid):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation="sdpa").eval()


def assert_equal(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def random_layout(rng: random.Random, merge: int, rows: int):
    """Rows of text / image / video runs (a vision run starts the row or follows text, as the processor lays them
    out), left padded to one width (padding masked out, or without a mask plain text); `get_rope_index`'s keyword
    arguments."""
    types, images, videos, seconds = [], [], [], []
    for _ in range(rows):
        row = [0] * rng.randint(0, 3)
        for _ in range(rng.randint(0, 4)):
            if row and row[-1] != 0:
                row += [0] * rng.randint(1, 4)
            if rng.random() < 0.4:
                kind, grid = 1, [1, merge * rng.randint(1, 3), merge * rng.randint(1, 3)]
                images.append(grid)
            else:
                kind, grid = 2, [rng.randint(1, 4), merge * rng.randint(1, 3), merge * rng.randint(1, 3)]
                videos.append(grid)
            # one entry per image or video: 5.4 gives images an entry too (later releases read the videos' only)
            seconds.append(rng.choice([0.25, 0.5, 1.0, 1.5, 2.0, 3.7]))
            row += [kind] * (grid[0] * grid[1] * grid[2] // merge**2)
        types.append(row + [0] * rng.randint(1, 3))
    width = max(len(r) for r in types)
    masked = rng.random() < 0.8
    return {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[0] * (width - len(r)) + r for r in types], dtype=torch.int32),
        "image_grid_thw": torch.tensor(images) if images else None,
        "video_grid_thw": torch.tensor(videos) if videos else None,
        "second_per_grid_ts": torch.tensor(seconds) if seconds and rng.random() < 0.8 else None,
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in types]) if masked else None,
    }


def outcome(fn, **kwargs):
    try:
        return fn(**kwargs), None
    except Exception as error:  # noqa: BLE001 - compared below
        return None, error


@pytest.fixture(scope="module")
def model(checkpoints):
    return load(checkpoints["gqa2"], VECTORIZED)


def test_the_installed_release_has_a_rule_and_the_probe_tells_the_rules_apart(model):
    rule = rope.resolve_rule(model.model)
    assert rule in rope.RULES
    probe = rope._probe_inputs(model.model)
    assert_equal(rope.rope_index(model.model, **probe, rule=rule), rope.upstream_rope_index(model.model, **probe))
    outputs = [out[0] for r in rope.RULES if (out := outcome(rope.rope_index, model=model.model, **probe, rule=r)[0])]
    # the rules that run here (before 5.24, fractional seconds without `int` give float positions, which fail) give
    # different positions: the probe picks one rule, never two
    assert len(outputs) >= 2
    assert all(not torch.equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])


@pytest.mark.parametrize("case", INPUT_CASES)
def test_positions_equal_upstream_on_processor_inputs(model, processor, media, case):
    inputs = make_inputs(processor, media, case)
    kwargs = {k: inputs.get(k) for k in KEYS}
    expected, error = outcome(lambda **kw: rope.upstream_rope_index(model.model, **kw), **kwargs)
    if error is not None:  # 5.4 on the "multi" input: the image takes the second video's seconds
        assert type(outcome(model.model.get_rope_index, **kwargs)[1]) is type(error)
        pytest.skip(f"this release's get_rope_index raises {type(error).__name__} on it; the vectorised one too")
    assert_equal(model.model.get_rope_index(**kwargs), expected)  # through the patch's hook
    assert_equal(rope.rope_index(model.model, **kwargs, rule=rope.resolve_rule(model.model)), expected)


def test_positions_equal_upstream_on_random_layouts(model):
    rng = random.Random(0)
    merge = model.config.vision_config.spatial_merge_size
    compared = 0
    for _ in range(200):
        kwargs = random_layout(rng, merge, rows=rng.randint(1, 4))
        expected, error = outcome(lambda **kw: rope.upstream_rope_index(model.model, **kw), **kwargs)
        got, our_error = outcome(model.model.get_rope_index, **kwargs)
        if error is not None:  # (none expected: every release runs these layouts) the same failure
            assert type(our_error) is type(error)
            continue
        assert_equal(got, expected)
        compared += 1
    assert compared == 200


def test_a_release_that_matches_no_rule_gets_its_own_method(model, monkeypatch):
    original = Qwen2_5_VLModel.get_rope_index

    def changed(self, *args, **kwargs):  # a "future release": positions one further along
        positions, deltas = original(self, *args, **kwargs)
        return positions + 1, deltas

    monkeypatch.setattr(Qwen2_5_VLModel, "get_rope_index", changed)
    probe = rope._probe_inputs(model.model)
    assert rope.resolve_rule(model.model) is None
    assert model.model._prunevid.rope_index(model.model, **probe) is None  # upstream's lines run
    assert_equal(model.model.get_rope_index(**probe), changed(model.model, **probe))


def test_stages_off_with_the_option_is_stock_and_fast_is_paper(checkpoints, processor, media):
    """Positions are the only thing the option changes: with every stage off the model is stock's bit for bit, and
    on the CPU (no graphs, the stock tower) `fast()` prunes and answers exactly as `paper()`."""
    inputs = make_inputs(processor, media, "batch3")
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoints["gqa2"], attn_implementation="sdpa").eval()
    ours = load(checkpoints["gqa2"], VECTORIZED)
    assert ours.model._prunevid is not None  # the option alone attaches the controller (the hook runs)

    def run(m):
        with torch.no_grad():
            out = m.generate(**inputs, do_sample=False, max_new_tokens=6, min_new_tokens=6, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    for a, b in zip(run(stock), run(ours), strict=True):
        assert torch.equal(a, b)
    ours.prunevid = PruneVidConfig.paper()
    paper, paper_stats = run(ours), ours.prunevid_stats
    ours.prunevid = PruneVidConfig.fast()
    assert ours.prunevid.rope_index == "vectorized"
    for a, b in zip(paper, run(ours), strict=True):
        assert torch.equal(a, b)
    assert ours.prunevid_stats == paper_stats


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_positions_equal_upstream_on_the_gpu(checkpoints):
    """With CUDA inputs the positions equal upstream's, on the device: random layouts with fractional seconds and
    padded rows."""
    model = load(checkpoints["gqa2"], VECTORIZED).cuda()
    rng = random.Random(1)
    merge = model.config.vision_config.spatial_merge_size
    for _ in range(50):
        kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v
                  for k, v in random_layout(rng, merge, rows=rng.randint(1, 4)).items()}  # fmt: skip
        expected = rope.upstream_rope_index(model.model, **kwargs)
        got = model.model.get_rope_index(**kwargs)
        assert all(t.device.type == "cuda" for t in got)
        assert_equal(got, expected)
