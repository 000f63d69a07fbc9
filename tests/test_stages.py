"""PruneVid inside the model: each stage does what the paper says, with Qwen2.5-VL's 3-D positions.

Small random-weight models, inputs through the real processor path (see conftest.py).
"""

from __future__ import annotations

import json
import math
import traceback

import pytest
import torch
import transformers
from transformers import DynamicCache

from conftest import STOCK_UNSUPPORTED, make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration.compat import with_cache


def load(path, prunevid, attn="sdpa"):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation=attn).eval()


class Capture:
    """Records the keyword arguments a module is called with (forward pre-hook)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append((args, dict(kwargs)))

    def remove(self):
        self.handle.remove()


def greedy(model, inputs, n=12):
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n)


def skip_unless_stock_processes(request, checkpoint, inputs, case):
    """Skip, naming the failure, only where the installed release's stock model itself raises on this exact input
    (transformers 5.4.0 on a prompt with images and videos); where stock works, nothing happens."""
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="sdpa")
    try:
        with torch.no_grad():
            stock.eval()(**inputs)
    except Exception as error:  # noqa: BLE001 -- reported in the skip reason
        frame = traceback.extract_tb(error.__traceback__)[-1]
        what = (
            f"the {case!r} input: stock transformers {transformers.__version__} Qwen2_5_VLForConditionalGeneration "
            f"raises {type(error).__name__} in {frame.name} (`{(frame.line or '').strip()}`)"
        )
        STOCK_UNSUPPORTED.append((request.node.nodeid, what))
        pytest.skip(f"{what}: the stock model of this release cannot process it")


# ------------------------------------------------------------------------------------------------ Stage 1
def test_stage1_alone_is_exact(checkpoints, processor, media):
    """Stage 1 only == the stock model fed the same merged embeddings and 3-D positions (bitwise)."""
    inputs = make_inputs(processor, media, "video")
    ours = load(checkpoints["gqa2"], PruneVidConfig.stage1_only())
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoints["gqa2"], attn_implementation="sdpa"
    ).eval()
    cap = Capture(ours.model.language_model)
    with torch.no_grad():
        logits = ours(**inputs).logits
    cap.remove()
    kw = cap.calls[0][1]
    assert kw["inputs_embeds"].shape[1] < inputs["input_ids"].shape[1], "Stage 1 merged nothing"
    with torch.no_grad():
        ref = stock(
            inputs_embeds=kw["inputs_embeds"], position_ids=kw["position_ids"], attention_mask=kw["attention_mask"]
        ).logits
    assert torch.equal(logits, ref)


def test_positions_are_those_of_real_tokens(request, checkpoints, processor, media):
    """Every kept/merged token carries the unpruned 3-D position of a real member; text keeps its own exactly."""
    inputs = make_inputs(processor, media, "multi")
    skip_unless_stock_processes(request, checkpoints["gqa2"], inputs, "multi")
    ours = load(checkpoints["gqa2"], PruneVidConfig.stage1_only())
    full, _ = ours.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
        inputs["video_grid_thw"], inputs.get("second_per_grid_ts"), inputs["attention_mask"],
    )  # fmt: skip
    cap = Capture(ours.model.language_model)
    with torch.no_grad():
        ours(**inputs)
    cap.remove()
    pos = cap.calls[0][1]["position_ids"][-3:, 0]
    state = ours.model._prunevid.state
    origin = state.origin[0]
    assert torch.equal(pos, full[:, 0, origin])
    ids = inputs["input_ids"][0]
    text = ids[origin] != ours.config.video_token_id
    assert torch.equal(origin[text], (ids != ours.config.video_token_id).nonzero().flatten())
    for record in state.videos:  # static tokens sit at the first temporal patch of their segment
        m = record.merge
        frame_of_source = m.source // (record.grid[1] * record.grid[2])
        assert set(frame_of_source[m.is_static].tolist()) <= {start for start, _ in m.segments}


def test_moving_square_is_dynamic_background_static(processor, tmp_path):
    """Stage 1 on a generated clip (static textured background, one moving square): the square's cells are dynamic,
    the background static, and the merged count follows the algorithm's arithmetic.

    Features are the clip's own pixel patches as the processor gives them (one row per LLM token, codec noise
    included): a random-weight vision tower would mix the whole frame and says nothing about the clip.
    """
    from modeling.demo.clips import make_clip, square_boxes
    from modeling import MediaOptions
    from modeling.app.inputs import build_messages, prepare_inputs
    from modeling.prunevid.merge import merge_video

    size, frames = (224, 224), 16
    clip = make_clip(tmp_path / "square.mp4", frames=frames, size=size, fps=4.0, seed=5)
    messages = build_messages("?", [str(clip)], options=MediaOptions(fps=4.0, min_pixels=224 * 224, max_pixels=224 * 224))
    inputs = prepare_inputs(processor, messages)
    t, gh, gw = inputs["video_grid_thw"][0].tolist()
    h, w = gh // 2, gw // 2
    assert (t, h, w) == (8, 8, 8)
    features = inputs["pixel_values_videos"].view(t * h * w, -1)  # processor order = raster order of LLM tokens
    merge = merge_video(features, (t, h, w), tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, k=7)

    cell = 28  # one LLM token covers 28x28 pixels
    cover = torch.zeros(t, h * w)  # largest share of each cell the square covers in each temporal patch
    for f, (top, left, bottom, right) in enumerate(square_boxes(frames=frames, size=size, squares=1, seed=5)[:, 0]):
        for y in range(h):
            for x in range(w):
                dy = max(0, min(bottom, (y + 1) * cell) - max(top, y * cell))
                dx = max(0, min(right, (x + 1) * cell) - max(left, x * cell))
                cover[f // 2, y * w + x] = max(cover[f // 2, y * w + x], dy * dx / cell**2)
    square, background = torch.zeros(t, h * w, dtype=torch.bool), torch.zeros(t, h * w, dtype=torch.bool)
    for s, e in merge.segments:
        if e - s > 1:  # static/dynamic is decided per segment; one-patch segments are all dynamic
            square[s:e] = (cover[s:e] >= 0.5).any(dim=0)
            background[s:e] = (cover[s:e] == 0).all(dim=0)
    assert square.any() and background.any()
    assert not merge.static_mask[square].any(), "a cell the square covers was called static"
    assert merge.static_mask[background].all(), "the untouched textured background must be static"

    expected = 0
    for s, e in merge.segments:
        expected += _clustered(int(merge.static_mask[s].sum()))
        expected += sum(_clustered(h * w - int(merge.static_mask[f].sum())) for f in range(s, e))
    assert merge.features.shape[0] == expected


def _clustered(n, ratio=0.5, threshold=14):
    return max(1, int(n * ratio)) if n > threshold else n


# ------------------------------------------------------------------------------------------------ Stage 2
@pytest.mark.parametrize("stage1", [True, False])
def test_stage2_keeps_topk_of_independent_eager_attention(checkpoints, processor, media, stage1):
    """The kept set equals the per-group top-alpha of pre-RoPE attention computed here with eager math."""
    inputs = make_inputs(processor, media, "video")
    config = PruneVidConfig.paper(enable_stage1=stage1)
    ours = load(checkpoints["gqa2"], config, attn="eager")
    layer_idx = ours.model._prunevid.layer
    assert layer_idx == round(10 * 12 / 28)
    layer = ours.model.language_model.layers[layer_idx]
    cap = Capture(layer)
    with torch.no_grad():
        ours(**inputs)
    cap.remove()
    hidden = cap.calls[0][0][0] if cap.calls[0][0] else cap.calls[0][1]["hidden_states"]
    state = ours.model._prunevid.state
    attn = layer.self_attn
    with torch.no_grad():
        x = layer.input_layernorm(hidden)[0].double()
        q = (x @ attn.q_proj.weight.double().T + attn.q_proj.bias.double()).view(x.shape[0], -1, attn.head_dim)
        k = (x @ attn.k_proj.weight.double().T + attn.k_proj.bias.double()).view(x.shape[0], -1, attn.head_dim)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    queries = state.query[0].nonzero().flatten()
    ids = inputs["input_ids"][0]
    last_video = (ids == ours.config.video_token_id).nonzero().max()
    assert (state.origin[0, queries] > last_video).all(), "queries must be the tokens after the video"
    assert len(queries) == int((ids[last_video + 1 :] != ours.config.video_token_id).sum())
    probs = torch.softmax(torch.einsum("qhd,khd->hqk", q[queries], k) * attn.head_dim**-0.5, dim=-1)
    importance = probs.amax(dim=0).amax(dim=0)  # max over heads, then over queries
    group = state.group[0]
    expected = group < 0
    for g in group.unique():
        if g < 0:
            continue
        members = (group == g).nonzero().flatten()
        n_keep = math.floor(config.keep_ratio * len(members) + 1e-9)  # the authors' int(alpha * n)
        top = members[torch.argsort(importance[members], descending=True, stable=True)[:n_keep]]
        expected[top] = True
    assert torch.equal(state.keep[0], expected)
    (stats,) = ours.prunevid_stats
    assert stats.after_stage2 == int((expected & state.visual[0]).sum()) < stats.after_stage1
    assert stats.technique == "prunevid" and stats.pruning_layer == ours.model._prunevid.layer


def test_images_untouched_by_default(request, checkpoints, processor, media):
    """An image-only prompt (and a text-only one) gives the stock logits; images are never merged."""
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoints["gqa2"]).eval()
    ours = load(checkpoints["gqa2"], PruneVidConfig.paper())
    for case in ("image", "text"):
        inputs = make_inputs(processor, media, case)
        with torch.no_grad():
            assert torch.equal(ours(**inputs).logits, stock(**inputs).logits), case
        (stats,) = ours.prunevid_stats  # nothing pruned: the unpruned counts, named after the technique
        assert stats.kv_cache_tokens == stats.prompt_tokens and stats.pruning_layer is None, case
        assert stats.technique == "prunevid" and stats.image_tokens == stats.image_tokens_after_stage2, case
    inputs = make_inputs(processor, media, "multi")
    skip_unless_stock_processes(request, checkpoints["gqa2"], inputs, "multi")  # after the image and text checks
    with torch.no_grad():
        ours(**inputs)
    state = ours.model._prunevid.state
    image_tokens = inputs["input_ids"][0] == ours.config.image_token_id
    assert int(image_tokens[state.origin[0]].sum()) == int(image_tokens.sum())  # all image tokens still there
    assert not (state.group[0][image_tokens[state.origin[0]]] >= 0).any()  # and not candidates


# ------------------------------------------------------------------------------------------------ Stage 3
def manual_decode(model, inputs, n, cache):
    """Greedy decoding by hand over `cache`: prefill, then one token a step with the unpruned 2-D mask."""
    with torch.no_grad():
        out = model(**inputs, **with_cache(cache), use_cache=True)
        mask = inputs["attention_mask"]
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(n - 1):  # the unpruned 2-D mask grows as usual; positions continue the unpruned numbering
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            # Explicit positions, as `generate` passes them: stock 5.23 derives [3, B, len(mask)] positions from a
            # 2-D mask alone and fails on a one-token step (an upstream bug, unrelated to PruneVid).
            position = (mask.sum(dim=1, keepdim=True) - 1 + model.model.rope_deltas).expand(3, -1, -1)
            out = model(
                input_ids=tokens[-1][:, None],
                attention_mask=mask,
                position_ids=position,
                **with_cache(cache),
                use_cache=True,
            )
            tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def test_stage3_cache_holds_kept_tokens_and_decoding_matches_manual_loop(checkpoints, processor, media):
    inputs = make_inputs(processor, media, "video")
    ours = load(checkpoints["gqa2"], PruneVidConfig.paper())
    n = 10
    generated = greedy(ours, inputs, n)[:, inputs["input_ids"].shape[1] :]
    cache = DynamicCache(config=ours.config)
    tokens = manual_decode(ours, inputs, 1, cache)
    kept = ours.prunevid_stats[0].kv_cache_tokens
    assert kept < inputs["input_ids"].shape[1]
    assert all(layer.keys.shape[-2] == kept for layer in cache.layers), "every layer caches the kept set"
    cache = DynamicCache(config=ours.config)
    tokens = manual_decode(ours, inputs, n, cache)
    assert all(layer.keys.shape[-2] == kept + n - 1 for layer in cache.layers), "decoding must not prune"
    assert torch.equal(tokens, generated)


def test_stage3_cut_follows_layer_m_plus_1_with_the_same_result(checkpoints, processor, media):
    """The cache of layers 0..M is cut before layer M+2, once layer M+1 (or its replayed run) is queued, so that
    the cut's host work overlaps GPU work; the cache, logits and greedy tokens are those of a cut before layer M+1,
    bit for bit."""
    inputs = make_inputs(processor, media, "video")
    ours = load(checkpoints["gqa2"], PruneVidConfig.paper())
    controller = ours.model._prunevid
    m, layers = controller.layer, ours.model.language_model.layers
    assert controller.cut_layer == m + 2 < len(layers)
    cache = DynamicCache(config=ours.config)
    held = {}  # tokens that cache layer 0 holds when layers M+1 and M+2 are called

    def note(i):
        def hook(module, args):
            held[i] = cache.layers[0].keys.shape[-2]

        return layers[i].register_forward_pre_hook(hook)

    hooks = [note(i) for i in (m + 1, m + 2)]
    with torch.no_grad():
        logits = ours(**inputs, **with_cache(cache), use_cache=True).logits
    for hook in hooks:
        hook.remove()
    stats = ours.prunevid_stats[0]
    assert held == {m + 1: stats.after_stage1 + inputs["input_ids"].shape[1] - stats.visual_tokens,
                    m + 2: stats.kv_cache_tokens}  # fmt: skip
    tokens = greedy(ours, inputs, 6)
    controller.cut_layer = m + 1  # the cut before layer M+1
    early = DynamicCache(config=ours.config)
    with torch.no_grad():
        early_logits = ours(**inputs, **with_cache(early), use_cache=True).logits
    assert torch.equal(early_logits, logits)
    for a, b in zip(early.layers, cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert torch.equal(greedy(ours, inputs, 6), tokens)


def test_stage2_without_stage3_decodes_with_per_layer_masks(checkpoints, processor, media):
    """Without cache compression layers 0..M keep every token; generate still equals the manual loop."""
    inputs = make_inputs(processor, media, "video")
    ours = load(checkpoints["gqa2"], PruneVidConfig.paper(enable_stage3=False))
    m = ours.model._prunevid.layer
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(**inputs, **with_cache(cache), use_cache=True)
    stats = ours.prunevid_stats
    lengths = [layer.keys.shape[-2] for layer in cache.layers]
    assert lengths[: m + 1] == [lengths[0]] * (m + 1) and lengths[m + 1 :] == [lengths[-1]] * (len(lengths) - m - 1)
    assert lengths[-1] < lengths[0]
    assert stats[0].kv_cache_tokens == lengths[0]
    assert stats[0].cached_visual_tokens == stats[0].after_stage1 > stats[0].after_stage2  # layer 0 keeps them all
    generated = greedy(ours, inputs, 8)[:, inputs["input_ids"].shape[1] :]
    cache = DynamicCache(config=ours.config)
    assert torch.equal(manual_decode(ours, inputs, 8, cache), generated)
    assert [layer.keys.shape[-2] for layer in cache.layers] == [n + 7 for n in lengths]


# ------------------------------------------------------------------------------------------------ batches
def test_batched_equals_per_sample_and_deterministic(checkpoints, processor, media):
    """A padded batch gives each sample the tokens (and stats) it gets alone; two runs agree exactly."""
    from modeling.app.inputs import prepare_inputs

    batch = make_inputs(processor, media, "batch3")
    ours = load(checkpoints["gqa2"], PruneVidConfig.paper())
    out = greedy(ours, batch)
    stats = ours.prunevid_stats
    assert torch.equal(out, greedy(ours, batch)) and ours.prunevid_stats == stats
    width = batch["input_ids"].shape[1]
    for b in range(3):
        single = _single(batch, b)
        alone = greedy(ours, single)
        assert torch.equal(alone[0, single["input_ids"].shape[1] :], out[b, width:]), f"sample {b}"
        assert ours.prunevid_stats == [stats[b]], f"sample {b}"


def _single(batch, b):
    """Sample b of a processor batch, with its padding removed (what the processor gives for it alone)."""
    keep = batch["attention_mask"][b].bool()
    grid = batch["video_grid_thw"]
    patches = grid.prod(-1)
    start = int(patches[:b].sum())
    out = {
        "input_ids": batch["input_ids"][b : b + 1, keep],
        "attention_mask": batch["attention_mask"][b : b + 1, keep],
        "mm_token_type_ids": batch["mm_token_type_ids"][b : b + 1, keep],
        "pixel_values_videos": batch["pixel_values_videos"][start : start + int(patches[b])],
        "video_grid_thw": grid[b : b + 1],
        "second_per_grid_ts": batch["second_per_grid_ts"][b : b + 1],
    }
    return out


# ------------------------------------------------------------------------------------------------ config
def test_config_validation_and_roundtrip(checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"keep_ratio=1.5 .*\(0.0, 1.0\]"):
        PruneVidConfig(keep_ratio=1.5)
    with pytest.raises(ValueError, match="tau"):
        PruneVidConfig(tau=2)
    with pytest.raises(ValueError, match="dpc_knn_k"):
        PruneVidConfig(dpc_knn_k=0)
    with pytest.raises(ValueError, match="attention_aggregation"):
        PruneVidConfig(attention_aggregation="median")
    with pytest.raises(ValueError, match="unknown PruneVid preset"):
        PruneVidConfig.preset("fastest")
    model = load(checkpoints["gqa2"], PruneVidConfig.disabled())
    with pytest.raises(ValueError, match=r"pruning_layer=11 .*12 layers"):
        model.prunevid = PruneVidConfig(pruning_layer=11)
    assert model.prunevid == PruneVidConfig.disabled()  # a rejected config leaves the model as it was
    config = PruneVidConfig.fastv()
    model.prunevid = config
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["prunevid"]
    assert PruneVidConfig.from_dict(saved) == config
    assert Qwen2_5_VLPruneVid.from_pretrained(tmp_path).prunevid == config


def test_presets_prune_as_named(checkpoints, processor, media):
    inputs = make_inputs(processor, media, "video")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    kept = {}
    for name in ("conservative", "paper", "aggressive", "stage1_only", "fastv"):
        model.prunevid = PruneVidConfig.preset(name)
        with torch.no_grad():
            model(**inputs)
        kept[name] = model.prunevid_stats[0].kv_cache_tokens
    assert kept["aggressive"] < kept["paper"] < kept["conservative"]
    assert kept["paper"] < kept["stage1_only"]
    (stats,) = model.prunevid_stats
    assert stats.after_stage1 == stats.visual_tokens  # fastv: no merging
    assert stats.after_stage2 == stats.cached_visual_tokens == stats.visual_tokens // 2  # 50% chosen globally, floor
    assert stats.retention == (stats.visual_tokens // 2) / stats.visual_tokens


def test_a_mask_that_does_not_fit_the_input_ids_is_refused(checkpoints, processor, media):
    """Stage 1 re-packs the sequence by the 2-D (batch, length) mask of the input ids: a mask of another shape is a
    clear error, not a silent misreading; the same call with the processor's mask runs."""
    inputs = make_inputs(processor, media, "video")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    mask = inputs["attention_mask"]
    positions, _ = model.model.get_rope_index(**{k: inputs.get(k) for k in (
        "input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "attention_mask")})  # fmt: skip
    for bad in (torch.cat([mask, mask[:, :1]], dim=1), mask[:, None, None, :].float()):
        with pytest.raises(ValueError, match=r"2-D \(batch, length\) attention mask of the input ids"), torch.no_grad():
            model(**{**inputs, "attention_mask": bad, "position_ids": positions})
    with torch.no_grad():
        model(**inputs)
    assert model.prunevid_stats[0].after_stage1 < model.prunevid_stats[0].visual_tokens


def test_video_fates_agree_with_stats(request, checkpoints, processor, media):
    """The per-token picture data accounts for every token and matches the counts."""
    inputs = make_inputs(processor, media, "multi")
    skip_unless_stock_processes(request, checkpoints["gqa2"], inputs, "multi")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    with torch.no_grad():
        model(**inputs)
    fates = model.prunevid_video_fates()
    (stats,) = model.prunevid_stats
    assert len(fates) == 2 and len(stats.segments) == 2  # one segment list per video
    assert sum(int(f["carrier"].sum()) for f in fates) == stats.after_stage2
    assert sum(f["static"].numel() for f in fates) == stats.visual_tokens
    assert [list(f["segments"]) for f in fates] == [list(s) for s in stats.segments]
    for f in fates:
        assert not (f["carrier"] & ~f["kept"]).any()  # a carrier cell always belongs to a kept token


def test_sampling_and_beam_search_run_on_the_pruned_cache(checkpoints, processor, media):
    """`generate` strategies other than greedy work unchanged; every beam row is pruned like its prompt."""
    inputs = make_inputs(processor, media, "batch3")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    with torch.no_grad():
        model(**inputs)
    kept = [s.kv_cache_tokens for s in model.prunevid_stats]
    with torch.no_grad():
        beams = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, num_beams=2, do_sample=False)
    assert [s.kv_cache_tokens for s in model.prunevid_stats] == [n for n in kept for _ in range(2)]
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=True, top_k=20)
    width = inputs["input_ids"].shape[1]
    assert beams.shape == sampled.shape == (3, width + 5)


def test_include_images_makes_image_tokens_candidates(request, checkpoints, processor, media):
    """With `include_images`, each image is one Stage-2 group (never merged) and loses tokens like a video frame."""
    inputs = make_inputs(processor, media, "multi")
    skip_unless_stock_processes(request, checkpoints["gqa2"], inputs, "multi")
    model = load(checkpoints["gqa2"], PruneVidConfig.paper(include_images=True))
    with torch.no_grad():
        model(**inputs)
    state = model.model._prunevid.state
    image = (inputs["input_ids"][0] == model.config.image_token_id)[state.origin[0]]
    assert int(image.sum()) == int((inputs["input_ids"] == model.config.image_token_id).sum())  # not merged
    groups = state.group[0][image].unique()
    assert len(groups) == 1 and groups.item() >= 0
    kept = int((state.keep[0] & image).sum())
    assert kept == math.floor(0.4 * int(image.sum()) + 1e-9)


def test_row_runs_match_runs_per_row() -> None:
    """`row_runs` (one read-back for the whole batch) finds the runs that `runs` finds row by row, edges included."""
    from modeling.integration.state import row_runs, runs

    g = torch.Generator().manual_seed(0)
    flags = torch.rand(6, 40, generator=g) < 0.5
    flags[0] = False  # no run
    flags[1] = True  # one run over the whole row
    flags[2, :] = False
    flags[2, 0], flags[2, -1] = True, True  # runs of one at both edges
    assert row_runs(flags) == [runs(row) for row in flags]
    assert row_runs(flags)[:3] == [[], [(0, 40)], [(0, 1), (39, 40)]]
    assert row_runs(torch.zeros(0, 5, dtype=torch.bool)) == []
