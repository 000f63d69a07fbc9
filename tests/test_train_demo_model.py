"""The demo model's training-only losses (`tools/train_demo_model.py`): what they supervise is Stage 2's own score.

`stage2_score` must equal `modeling.prunevid.select.attention_importance` (the paper's max over heads and question
rows, pre-RoPE, no causal mask) on the same layer, or the selection loss would train something Stage 2 never reads;
`attend_loss` is the same quantity for one row; `named_cells` marks the tokens of the shape the question names.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import train_demo_model as train  # noqa: E402

from modeling import PruneVidConfig, Qwen2_5_VLPruneVid  # noqa: E402
from modeling.demo.offline import tiny_config  # noqa: E402
from modeling.eval import benchmark  # noqa: E402
from modeling.prunevid.select import attention_importance  # noqa: E402


@pytest.fixture(scope="module")
def layer() -> torch.nn.Module:
    torch.manual_seed(0)
    model = Qwen2_5_VLPruneVid(tiny_config(num_hidden_layers=2), prunevid=PruneVidConfig.disabled())
    return model.model.language_model.layers[1].eval()


def _batch(seed: int = 0):
    """Two rows of 30 tokens: video at 5..19 (row 0) and 5..14 (row 1, padded after 25); the answer row last."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 30, 64, generator=g) * 3
    positions = torch.arange(30)[None]
    video = torch.stack([(positions[0] >= 5) & (positions[0] < 20), (positions[0] >= 5) & (positions[0] < 15)])
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 26:] = False
    rows = torch.tensor([29, 25])
    return hidden, rows, valid, video


def _reference(layer, hidden, rows, valid, video, *, query_rows=None):
    """`attention_importance` row by row, as `_score_and_keep` calls it."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    out = []
    for b in range(hidden.shape[0]):
        last_video = int(video[b].nonzero().max())
        picks = list(range(last_video + 1, int(rows[b]) + 1)) if query_rows is None else [int(rows[b])]
        keys = valid[b] & (torch.arange(hidden.shape[1]) <= rows[b])
        q = attn.q_proj(normed[b, picks]).view(1, len(picks), -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(normed[b]).view(1, hidden.shape[1], -1, attn.head_dim).transpose(1, 2)
        out.append(attention_importance(q, k, query_mask=torch.ones(1, len(picks), dtype=torch.bool),
                                        key_mask=keys[None], scaling=attn.scaling)[0])  # fmt: skip
    return torch.stack(out)


@torch.no_grad()
def test_stage2_score_is_attention_importance(layer):
    hidden, rows, valid, video = _batch()
    score, keys = train.stage2_score(layer, hidden, rows, valid, video)
    assert torch.equal(keys[1], valid[1] & (torch.arange(30) <= 25))
    torch.testing.assert_close(score, _reference(layer, hidden, rows, valid, video), rtol=1e-5, atol=1e-7)
    assert score[1, 26:].abs().max() == 0  # padding and tokens after the answer row score nothing


@torch.no_grad()
def test_attend_loss_is_the_answer_rows_best_head(layer):
    hidden, rows, valid, video = _batch(1)
    target = torch.zeros(2, 30, dtype=torch.bool)
    target[0, 7], target[1, 9] = True, True
    ref = _reference(layer, hidden, rows, valid, video, query_rows="answer")  # max over heads, that row only
    expected = -(ref[0, 7].log() + ref[1, 9].log()) / 2
    torch.testing.assert_close(train.attend_loss(layer, hidden, rows, valid, target), expected, rtol=1e-5, atol=1e-6)
    assert train.attend_loss(layer, hidden, rows, valid, torch.zeros_like(target)) == 0  # no target, no loss


@torch.no_grad()
def test_select_loss_is_minus_log_share_per_frame_and_per_clip(layer):
    hidden, rows, valid, video = _batch(2)
    score, _ = train.stage2_score(layer, hidden, rows, valid, video)
    assert train.select_loss(layer, hidden, rows, valid, video, video).abs() < 1e-6  # all of it on the target
    assert train.select_loss(layer, hidden, rows, valid, video, video, per_frame=4).abs() < 1e-6
    target = torch.zeros(2, 30, dtype=torch.bool)
    target[0, [5, 6, 12]] = True  # row 1 has none: left out of the mean
    clip = -math.log(score[0, [5, 6, 12]].sum() / score[0, 5:20].sum())
    assert train.select_loss(layer, hidden, rows, valid, video, target).item() == pytest.approx(clip, rel=1e-5)
    # per frame of 4 video tokens (5-8, 9-12, ...): frames 0 and 1 show the target
    frames = [-math.log(score[0, [5, 6]].sum() / score[0, 5:9].sum()), -math.log(score[0, 12] / score[0, 9:13].sum())]
    got = train.select_loss(layer, hidden, rows, valid, video, target, per_frame=4).item()
    assert got == pytest.approx(sum(frames) / 2, rel=1e-5)


def test_select_loss_gradient_reaches_the_layer(layer):
    hidden, rows, valid, video = _batch(3)
    target = torch.zeros(2, 30, dtype=torch.bool)
    target[:, 6] = True
    layer.zero_grad()
    train.select_loss(layer, hidden, rows, valid, video, target, per_frame=4).backward()
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    layer.zero_grad()


def test_named_cells_cover_the_named_shape_only():
    named_kinds = ("moving_colour", "direction", "final_position")
    items = benchmark.load_split("val", limit=40, version=2)
    assert {it.kind for it in items} == set(benchmark.KINDS)
    for item in items:
        cells = train.named_cells(item)
        assert cells.shape == (item.frames // 2, benchmark.SIZE // 28, benchmark.SIZE // 28) and cells.dtype == bool
        if item.kind not in named_kinds:
            assert not cells.any()
            continue
        assert cells.any(axis=(1, 2)).all()  # the named shape shows in every temporal patch
        colour, motion = benchmark.token_labels(item)
        shape = item.scenes[0][0]
        agree = colour[cells] == list(benchmark.COLOURS).index(shape.colour)
        assert agree.mean() >= 0.9, (item.id, agree.mean())
        direction = 1 + list(benchmark.DIRECTIONS.values()).index(
            (int(np.sign(shape.velocity[0])), int(np.sign(shape.velocity[1]))))  # fmt: skip
        assert (motion[cells] == direction).mean() >= 0.9
    for item in benchmark.load_split("val", limit=10, version=1):
        assert not train.named_cells(item).any()


@torch.no_grad()
def test_late_token_drop_is_stage2_removing_the_same_tokens(processor, media):
    """`LateTokenDrop` masks the dropped tokens as keys after layer M; the model's own Stage 2, made to keep the same
    tokens, removes them after layer M: the logits at the kept positions agree. A mask that left one dropped token
    visible, or started a layer early or late, fails it; without dropping the forward is the stock one."""
    from conftest import make_inputs

    inputs = make_inputs(processor, media, "video")
    torch.manual_seed(0)
    model = Qwen2_5_VLPruneVid(tiny_config(), prunevid=PruneVidConfig.disabled()).eval()
    ids = inputs["input_ids"]
    video = ids == model.config.video_token_id
    g = torch.Generator().manual_seed(1)
    chosen = video & (torch.rand(video.shape, generator=g) < 0.3)
    layer = 2
    stock = model(**inputs).logits
    drop = train.LateTokenDrop(model.model.language_model.layers, layer + 1, prob=1.0)
    drop.set(video & ~chosen, inputs["attention_mask"].bool())
    dropped = model(**inputs).logits
    drop.set(None)
    assert torch.equal(model(**inputs).logits, stock)

    model.prunevid = PruneVidConfig(enable_stage1=False, enable_stage3=False, pruning_layer=layer, keep_ratio=0.3)
    controller = model.model._prunevid
    controller.select = lambda mod, hidden, state: (state.group < 0) | chosen
    pruned = model(**inputs).logits
    kept = ~(video & ~chosen)
    assert pruned.shape[1] == int(kept.sum()) < ids.shape[1]
    torch.testing.assert_close(dropped[0, kept[0]][None], pruned, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dropped[:, -1], stock[:, -1], atol=1e-4)


def test_late_token_drop_samples_a_share_of_the_video():
    video = torch.zeros(4, 200, dtype=torch.bool)
    video[:, 20:180] = True
    drop = train.LateTokenDrop([], 0, prob=1.0, low=0.1, high=0.1)
    dropped = drop.sample(video, torch.Generator().manual_seed(0))
    assert not (dropped & ~video).any()
    assert (dropped.sum(dim=1) == 160 - 16).all()
    assert train.LateTokenDrop([], 0, prob=0.0).sample(video).sum() == 0
