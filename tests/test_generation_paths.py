"""PruneVid on every generation path: continuing from a pruned cache (multi-turn), a static cache, the modes that
are refused, and the glue that has to work across transformers releases and saved checkpoints.

Small random-weight models, inputs through the real processor path (see conftest.py). Oracles are independent of
the code under test: hand-written forward loops with explicit positions, the stock `get_rope_index` numbering of
the whole conversation, and an uninterrupted `generate`.
"""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction

import pytest
import torch
from transformers import DynamicCache, GenerationMixin, StaticCache

from conftest import make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid
from modeling.integration import compat
from modeling.integration.compat import cache_of, with_cache
from modeling.integration.compat import gather as _gather, gather_rotary as _gather_rotary


FOLLOW_UP = "<|im_end|>\n<|im_start|>user\nAnd which way does the square move?<|im_end|>\n<|im_start|>assistant\n"
SETTINGS = {"paper": PruneVidConfig.paper(), "no_stage3": PruneVidConfig.paper(enable_stage3=False)}


def load(path, prunevid):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation="sdpa").eval()


def generate(model, n, **kwargs):
    with torch.no_grad():
        return model.generate(
            do_sample=False, max_new_tokens=n, min_new_tokens=n, return_dict_in_generate=True, output_logits=True,
            **kwargs,
        )  # fmt: skip


def cache_lengths(cache):
    return [int(layer.get_seq_length()) for layer in cache.layers]


@pytest.fixture(scope="module")
def video(processor, media):
    return make_inputs(processor, media, "video")


@pytest.fixture(scope="module", params=list(SETTINGS))
def model(request, checkpoints):
    return load(checkpoints["gqa2"], SETTINGS[request.param])


# ------------------------------------------------------------------------------------------------ multi-turn
@pytest.mark.parametrize("case", ["video", "batch3"])
def test_continuing_equals_one_uninterrupted_generate(model, processor, media, case):
    """10 tokens, then 10 more from the returned cache with the full ids == 20 at once (tokens and logits)."""
    inputs = make_inputs(processor, media, case)
    width = inputs["input_ids"].shape[1]
    whole = generate(model, 20, **inputs)
    first = generate(model, 10, **inputs)
    cache = cache_of(first)
    prompt = cache_lengths(cache)
    ids = first.sequences
    mask = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(ids.shape[0], 10)], dim=1)
    rest = generate(model, 10, input_ids=ids, attention_mask=mask, **with_cache(cache))
    assert torch.equal(rest.sequences, whole.sequences)
    assert all(torch.equal(a, b) for a, b in zip(first.logits + rest.logits, whole.logits))
    assert cache_lengths(cache) == [n + 10 for n in prompt], "exactly the new tokens were processed"
    assert max(cache_lengths(cache)) < width + 19, "the prompt is pruned"


def _follow_up(processor, ids, batch=1):
    follow = processor.tokenizer(FOLLOW_UP, return_tensors="pt")["input_ids"].expand(batch, -1)
    return torch.cat([ids, follow], dim=1), follow.shape[1]


def manual_conversation(model, video, ids, n1, n2, delta):
    """Greedy by hand over a fresh cache: the prompt, n1 answer tokens, then `ids[prompt + n1 - 1:]` (the last
    answer token and the follow-up) in one forward, then n2 tokens; every forward gets explicit positions in the
    unpruned numbering (index in the conversation + the stock rope delta) and a full 2-D mask."""
    width = video["input_ids"].shape[1]
    cache = DynamicCache(config=model.config)

    def step(tokens, begin):
        end = begin + tokens.shape[1]
        position = (torch.arange(begin, end) + delta)[None].expand(3, -1, -1)
        mask = torch.ones(1, end, dtype=torch.long)
        kwargs = dict(attention_mask=mask, position_ids=position, **with_cache(cache), use_cache=True)
        return model(input_ids=tokens, **kwargs).logits[:, -1]

    with torch.no_grad():
        logits = model(**video, **with_cache(cache), use_cache=True).logits[:, -1]
        answer = [logits.argmax(-1)]
        for k in range(1, n1):
            answer.append(step(answer[-1][:, None], width + k - 1).argmax(-1))
        logits = step(ids[:, width + n1 - 1 :], width + n1 - 1)
        tokens, all_logits = [], []
        for j in range(n2):
            all_logits.append(logits)
            tokens.append(logits.argmax(-1))
            if j < n2 - 1:
                logits = step(tokens[-1][:, None], ids.shape[1] + j)
    return torch.stack(answer, 1), torch.stack(tokens, 1), all_logits, cache


def test_follow_up_turn_matches_manual_loop_in_unpruned_numbering(model, processor, video):
    """Turn 1 (video + question, pruned, greedy answer), then a follow-up question continued from the returned
    cache == a hand-written loop with explicit positions; the follow-up gets the positions the stock model gives
    the whole conversation (the unpruned numbering)."""
    n1, n2 = 6, 8
    width = video["input_ids"].shape[1]
    turn1 = generate(model, n1, **video)
    ids, extra = _follow_up(processor, turn1.sequences)
    positions = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"][-3:]), with_kwargs=True
    )
    try:
        mask = torch.ones_like(ids)
        turn2 = generate(model, n2, input_ids=ids, attention_mask=mask, **with_cache(cache_of(turn1)))
    finally:
        hook.remove()

    # The stock numbering of the whole conversation (video, question, answer, follow-up).
    mm = torch.zeros_like(ids, dtype=video["mm_token_type_ids"].dtype)
    mm[:, :width] = video["mm_token_type_ids"]
    stock, delta = model.model.get_rope_index(
        ids, mm_token_type_ids=mm, video_grid_thw=video["video_grid_thw"],
        second_per_grid_ts=video["second_per_grid_ts"],
    )  # fmt: skip
    assert positions[0].shape[-1] == extra + 1, "the continuation processes the last answer token + the follow-up"
    assert torch.equal(positions[0], stock[:, :, width + n1 - 1 :])
    assert torch.equal(positions[1], stock[:, :, -1:] + 1)

    answer, tokens, logits, cache = manual_conversation(model, video, ids, n1, n2, delta)
    assert torch.equal(answer, turn1.sequences[:, width:])
    assert torch.equal(tokens, turn2.sequences[:, ids.shape[1] :])
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(logits, turn2.logits))
    assert cache_lengths(cache) == cache_lengths(cache_of(turn2))
    kept = model.prunevid_stats[0].kv_cache_tokens  # the prompt as held by cache layer 0
    assert cache_lengths(cache)[0] == kept + n1 + extra + n2 - 1, "exactly the new tokens were processed"
    assert cache_lengths(cache)[-1] < width + n1 + extra + n2 - 1, "the prompt is pruned"


def test_manual_forward_without_positions_or_mask_continues_the_unpruned_numbering(checkpoints, video):
    """A plain loop (no mask, no positions) over a pruned cache: the model would count from the pruned cache
    length; the continuation gives the unpruned numbering, so the loop equals `generate` (tokens and logits)."""
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    expected = generate(model, 6, **video)
    width = video["input_ids"].shape[1]
    _, delta = model.model.get_rope_index(
        video["input_ids"], mm_token_type_ids=video["mm_token_type_ids"], video_grid_thw=video["video_grid_thw"],
        second_per_grid_ts=video["second_per_grid_ts"],
    )  # fmt: skip
    cache = DynamicCache(config=model.config)
    positions = []
    with torch.no_grad():
        logits = [model(**video, **with_cache(cache), use_cache=True).logits[:, -1]]
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: positions.append(kwargs["position_ids"][-3:]), with_kwargs=True
        )
        for _ in range(5):
            logits.append(model(input_ids=logits[-1].argmax(-1)[:, None], **with_cache(cache)).logits[:, -1])
        hook.remove()
    assert torch.equal(torch.stack([x.argmax(-1) for x in logits], 1), expected.sequences[:, width:])
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(logits, expected.logits))
    for k, position in enumerate(positions):  # token k of the answer sits at index width + k
        assert torch.equal(position, (width + k + delta)[None].expand(3, -1, -1).reshape(3, 1, 1))


def test_mismatched_continuations_raise(checkpoints, processor, media, video):
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    first = generate(model, 4, **video)
    ids, _ = _follow_up(processor, first.sequences)
    mask = torch.ones_like(ids)
    # A new video in the continuation: neither merged nor positioned with the pruned prompt.
    with_video = torch.cat([ids, video["input_ids"][:, -40:]], dim=1)
    assert (with_video[:, ids.shape[1] :] == model.config.video_token_id).any()
    with pytest.raises(ValueError, match="cannot bring new images or videos"):
        generate(model, 2, input_ids=with_video, attention_mask=torch.ones_like(with_video),
                 **with_cache(cache_of(first)))  # fmt: skip
    # The processor's output for the whole conversation, video pixels included.
    again = {**video, "input_ids": ids, "attention_mask": mask}
    again["mm_token_type_ids"] = torch.zeros_like(ids, dtype=video["mm_token_type_ids"].dtype)
    again["mm_token_type_ids"][:, : video["input_ids"].shape[1]] = video["mm_token_type_ids"]
    with pytest.raises(ValueError, match="already in its cache"):
        generate(model, 2, **with_cache(cache_of(first)), **again)
    # An attention mask of the wrong length.
    with pytest.raises(ValueError, match="must cover the unpruned prompt"), torch.no_grad():
        model(input_ids=ids[:, -3:], attention_mask=mask[:, :-1], **with_cache(cache_of(first)))
    # Only the new tokens, without the mask of the whole sequence: nothing tells what the cache stands for.
    with pytest.raises(ValueError, match="leaves none of the 5 given ids"):
        generate(model, 2, input_ids=ids[:, -5:], **with_cache(cache_of(first)))
    # A cache pruned by an earlier prefill (another generate ran since).
    generate(model, 2, **make_inputs(processor, media, "video"))
    with pytest.raises(ValueError, match="another prefill"):
        generate(model, 2, input_ids=ids, attention_mask=mask, **with_cache(cache_of(first)))
    # ... or by other settings, or continued with PruneVid off.
    first = generate(model, 4, **video)
    model.prunevid = PruneVidConfig.conservative()
    with pytest.raises(ValueError, match="another prefill"):
        generate(model, 2, input_ids=ids, attention_mask=mask, **with_cache(cache_of(first)))
    model.prunevid = PruneVidConfig.disabled()
    with pytest.raises(ValueError, match="PruneVid is off"):
        generate(model, 2, input_ids=ids, attention_mask=mask, **with_cache(cache_of(first)))


# ------------------------------------------------------------------------------------------------ static cache
def test_static_cache_equals_dynamic(model, video):
    """Stage 3 moves the kept tokens to the front of each static buffer; tokens and logits equal the dynamic
    cache's, with and without Stage 3, also when continuing from the returned static cache."""
    dynamic = generate(model, 12, **video)
    static = generate(model, 12, cache_implementation="static", **video)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(static.logits, dynamic.logits))
    cache = cache_of(static)
    assert isinstance(cache, StaticCache)
    assert cache_lengths(cache) == cache_lengths(cache_of(dynamic))
    for layer, reference in zip(cache.layers, cache_of(dynamic).layers):
        n = int(layer.get_seq_length())
        assert torch.allclose(layer.keys[:, :, :n], reference.keys, atol=1e-5, rtol=0), "kept tokens at the front"
        assert not layer.keys[:, :, n:].any(), "the slots after them are unused"

    first = generate(model, 6, **with_cache(StaticCache(config=model.config, max_cache_len=400)), **video)
    ids = first.sequences
    mask = torch.ones_like(ids)
    rest = generate(model, 6, input_ids=ids, attention_mask=mask, **with_cache(cache_of(first)))
    assert torch.equal(rest.sequences, dynamic.sequences)


def test_generates_static_cache_is_fitted_to_the_pruned_prompt(model, video):
    """The static cache `generate` makes is sized for the unpruned prompt; a pruned prefill gives each layer the
    tokens it holds plus the room `generate` left for the answer (every slot used here), and never less than it gave
    before (no new shapes for a compiled step). The next call gets a fresh cache (a release that reuses `generate`'s
    cache would otherwise reuse one too small), and a continuation beyond the room is a clear error."""
    n = 6
    model.prunevid = model.prunevid  # a new controller: it has given no sizes yet
    for earlier in ("_previous_max_cache_length", "_cache"):  # nor has `generate` (the largest size it gave)
        model.__dict__.pop(earlier, None)
    static = cache_of(generate(model, n, cache_implementation="static", **video))
    room = n - 1  # the last token is not written
    sizes = [layer.max_cache_len for layer in static.layers]
    assert [layer.keys.shape[2] for layer in static.layers] == sizes
    assert sizes == [held for held in cache_lengths(static)], "every slot holds a token"
    assert max(sizes) - room < video["input_ids"].shape[1]
    second = generate(model, n, cache_implementation="static", **video)
    again = cache_of(second)
    assert again is not static and [layer.max_cache_len for layer in again.layers] == sizes
    ids = torch.cat([second.sequences, second.sequences.new_full((1, 3), 872)], dim=1)
    with pytest.raises(ValueError, match="free slots"):
        generate(model, 2, input_ids=ids, attention_mask=torch.ones_like(ids), **with_cache(again))
    with model.prunevid_override(PruneVidConfig.disabled()):
        stock = cache_of(generate(model, n, cache_implementation="static", **video))
    assert stock is not again and cache_lengths(stock) == [video["input_ids"].shape[1] + room] * len(sizes)


# ------------------------------------------------------------------------------------------------ refused modes
def test_assisted_decoding_prompt_lookup_and_chunked_prefill_are_refused(checkpoints, video):
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    for kwargs in ({"prompt_lookup_num_tokens": 3}, {"assistant_model": model}, {"prefill_chunk_size": 16}):
        with pytest.raises(ValueError, match="PruneVid"):
            generate(model, 4, **video, **kwargs)
    model.prunevid = PruneVidConfig.disabled()  # stock model: upstream's behaviour, not refused
    stock = generate(model, 4, prompt_lookup_num_tokens=3, **video).sequences
    assert stock.shape[1] == video["input_ids"].shape[1] + 4


# ------------------------------------------------------------------------------------------------ glue
@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_keep_rounding_reaches_the_selection(checkpoints, video, rounding):
    """Each Stage-2 group of n candidates keeps floor / ceil(keep_ratio * n), as `keep_rounding` says."""
    model = load(checkpoints["gqa2"], PruneVidConfig.paper(keep_rounding=rounding))
    with torch.no_grad():
        model(**video)
    state = model.model._prunevid.state
    group, keep = state.group[0], state.keep[0]
    sizes = [int((group == g).sum()) for g in group[group >= 0].unique()]
    assert any(n % 5 for n in sizes), "some group where floor and ceil differ"
    kept = [int(keep[group == g].sum()) for g in group[group >= 0].unique()]
    quota = math.floor if rounding == "floor" else math.ceil
    assert kept == [quota(Fraction(str(model.prunevid.keep_ratio)) * n) for n in sizes]


def test_generation_mixin_is_a_direct_base():
    assert GenerationMixin in Qwen2_5_VLPruneVid.__bases__
    mro = Qwen2_5_VLPruneVid.__mro__
    assert mro.index(GenerationMixin) > mro.index(Qwen2_5_VLPruneVid.__bases__[0])


def test_rotary_gather_handles_both_layouts():
    """transformers 5.17+ gives cos/sin as [B, L, D]; 5.4-5.16 as [3, B, L, D] (one table per mrope row)."""
    torch.manual_seed(0)
    batch, length, dim = 2, 7, 8
    index = torch.tensor([[0, 2, 5], [1, 3, 6]])
    per_row = torch.randn(3, batch, length, dim)
    out = _gather_rotary(per_row, index)
    assert out.shape == (3, batch, 3, dim)
    for r in range(3):
        for b in range(batch):
            assert torch.equal(out[r, b], per_row[r, b, index[b]])
    recombined = torch.randn(batch, length, dim)
    assert torch.equal(_gather_rotary(recombined, index), _gather(recombined, index))
    three = torch.randn(3, length, dim)  # a batch of 3 in the new layout is not mistaken for the old one
    assert torch.equal(_gather_rotary(three, index[:1].expand(3, -1)), three[:, [0, 2, 5]])


@pytest.mark.parametrize("name", list(SETTINGS))
def test_layer_masks_without_layer_idx(checkpoints, video, monkeypatch, name):
    """Mask functions without `layer_idx` (transformers < 5.14) size masks by the first cache layer; the layers
    after M see a cache view sized by their own layer, and give the same tokens and logits."""
    model = load(checkpoints["gqa2"], SETTINGS[name])
    reference = generate(model, 8, **video)
    monkeypatch.setattr(compat, "MASKS_TAKE_LAYER", False)
    views = []
    monkeypatch.setattr(compat, "_LayerView", lambda cache, i: views.append(i) or _RealView(cache, i))
    again = generate(model, 8, **video)
    assert views and set(views) == {model.model._prunevid.layer + 1}
    assert torch.equal(again.sequences, reference.sequences)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(again.logits, reference.logits))


_RealView = compat._LayerView


def test_saved_settings_with_unknown_or_bad_keys(checkpoints, tmp_path):
    """A newer release's keys load with a warning; an explicit `prunevid=` wins without parsing the saved dict."""
    config_path = tmp_path / "config.json"
    model = load(checkpoints["gqa2"], PruneVidConfig.fastv())
    model.save_pretrained(tmp_path)
    saved = json.loads(config_path.read_text())
    saved["prunevid"]["future_knob"] = 3
    config_path.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="future_knob"):
        loaded = Qwen2_5_VLPruneVid.from_pretrained(tmp_path)
    assert loaded.prunevid == PruneVidConfig.fastv()
    saved["prunevid"]["keep_ratio"] = 7
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="keep_ratio.*pass `prunevid=`"), pytest.warns(UserWarning, match="future"):
        Qwen2_5_VLPruneVid.from_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = Qwen2_5_VLPruneVid.from_pretrained(tmp_path, prunevid=PruneVidConfig.aggressive())
    assert loaded.prunevid == PruneVidConfig.aggressive()
    assert not [w for w in caught if "future_knob" in str(w.message)], "the saved dict is not even read"
    assert loaded.config.prunevid == PruneVidConfig.aggressive().to_dict()
    with pytest.raises(ValueError, match="unknown"):
        loaded.prunevid = {**PruneVidConfig.paper().to_dict(), "future_knob": 3}  # explicit input stays strict


def test_assigning_a_config_validates_it(checkpoints):
    """A config whose fields were changed after construction (here past any protection) is validated again when
    attached; the model keeps its settings."""
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    config = PruneVidConfig.paper()
    object.__setattr__(config, "keep_ratio", 5.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        model.prunevid = config
    assert model.prunevid == PruneVidConfig.paper()


def test_a_reset_cache_forgets_its_pruned_layout(checkpoints, video):
    """A cache emptied with `reset()` and filled again (as `generate` reuses its static cache before transformers
    5.16) holds no pruned prompt any more: the stock model continues it."""
    model = load(checkpoints["gqa2"], PruneVidConfig.paper())
    cache = StaticCache(config=model.config, max_cache_len=400)
    generate(model, 3, **with_cache(cache), **video)
    assert getattr(cache, "_prunevid_layout", None) is not None
    cache.reset()
    model.prunevid = PruneVidConfig.disabled()
    out = generate(model, 3, **with_cache(cache), **video)  # raised "PruneVid is off" with the stale tag
    assert getattr(cache, "_prunevid_layout", None) is None
    assert out.sequences.shape[1] == video["input_ids"].shape[1] + 3
