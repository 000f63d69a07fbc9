"""The public extension point and the stats (issue 19): a technique is a `PruneVidController` subclass set through
`model.prunevid` or `model.prunevid_override`; `model.prunevid_stats` is always a list of frozen `PruneVidStats`.

Tiny random-weight models on the CPU, inputs through the real processor path (see conftest.py).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from conftest import STOCK_UNSUPPORTED, make_inputs
from modeling import PruneVidConfig, PruneVidController, PruneVidStats, Qwen2_5_VLPruneVid
from modeling.integration.compat import cache_of, with_cache


def load(path, prunevid, attn="sdpa"):
    return Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=prunevid, attn_implementation=attn).eval()


class FirstK(PruneVidController):
    """Stage 2 keeps the first `k` candidates of every group (in the layout after Stage 1); records its calls."""

    name = "first_k"

    def __init__(self, config: PruneVidConfig | None = None, k: int = 1) -> None:
        super().__init__(config)
        self.k = k
        self.calls: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def select(self, layer, hidden_states, state):
        keep = first_k(state.group, self.k)
        self.calls.append((layer, keep))
        return keep


def first_k(group: torch.Tensor, k: int) -> torch.Tensor:
    keep = group < 0
    for b in range(group.shape[0]):
        for g in group[b].unique().tolist():
            if g >= 0:
                keep[b, (group[b] == g).nonzero().flatten()[:k]] = True
    return keep


class LastToken(PruneVidController):
    """Stage 2 scored by the last token only (what `selection_query="last"` does), through `query_mask`."""

    name = "last_token"

    def query_mask(self, origin, mask, is_video, is_image):
        query = torch.zeros_like(mask, dtype=torch.bool)
        query[:, -1] = mask[:, -1].bool()  # left padded: the last column is every row's last token
        return query


@pytest.fixture(scope="module")
def path(checkpoints):
    return checkpoints["gqa2"]


@pytest.fixture(scope="module")
def video(processor, media):
    return make_inputs(processor, media, "video")


@pytest.fixture(scope="module")
def shared(path):
    return load(path, PruneVidConfig.paper())


@pytest.fixture
def model(shared):
    """The module's model, with the paper's settings at the start of each test."""
    shared.prunevid = PruneVidConfig.paper()
    return shared


def forward(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


# ------------------------------------------------------------------------------------------------ techniques
def test_select_override_runs_in_the_forward(model, video):
    technique = FirstK(PruneVidConfig.paper(), k=1)
    model.prunevid = technique
    assert model.prunevid_technique is technique and model.prunevid is technique.config
    assert model.config.prunevid == technique.config.to_dict()
    assert model.prunevid_stats == []  # nothing ran under it yet

    layers = model.model.language_model.layers
    m = technique.layer
    seen = {}

    def output_of_m(module, args, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    def input_of_next(module, args, kwargs):
        seen["in"] = args[0] if args else kwargs["hidden_states"]

    handles = [
        layers[m].register_forward_hook(output_of_m),
        layers[m + 1].register_forward_pre_hook(input_of_next, with_kwargs=True),
    ]
    try:
        forward(model, video)
    finally:
        for handle in handles:
            handle.remove()

    state = technique.state
    assert len(technique.calls) == 1 and technique.calls[0][0] is layers[m]  # called once, with layer M
    expected = first_k(state.group, 1)
    assert torch.equal(state.keep, expected) and torch.equal(technique.calls[0][1], expected)
    columns = (expected & state.mask.bool())[0].nonzero().flatten()
    assert torch.equal(state.index[0], columns)
    assert torch.equal(seen["in"][0], seen["out"][0, columns]), "layer M+1 must see exactly the chosen tokens"

    (stats,) = model.prunevid_stats
    groups = int((state.group[0] >= 0).any() and state.group[0].max() + 1)
    assert stats.technique == "first_k" and stats.pruning_layer == m
    assert stats.after_stage2 == stats.cached_visual_tokens == int((expected & state.visual)[0].sum()) == groups
    assert stats.after_stage2 < stats.after_stage1 < stats.visual_tokens

    with model.prunevid_override(PruneVidConfig.paper()) as paper:  # the built-in selection keeps other tokens
        forward(model, video)
        assert not torch.equal(paper.state.keep, expected) and model.prunevid_stats[0].technique == "prunevid"


def test_query_mask_override_equals_the_builtin_last_token_query(model, video):
    technique = LastToken(PruneVidConfig.paper())
    model.prunevid = technique
    logits = forward(model, video).logits
    state = technique.state
    query = torch.zeros_like(state.query)
    query[:, -1] = True
    assert torch.equal(state.query, query)
    assert model.prunevid_stats[0].technique == "last_token"

    model.prunevid = PruneVidConfig.paper(selection_query="last")
    assert torch.equal(forward(model, video).logits, logits)  # same scoring tokens: same selection, same logits
    assert torch.equal(model.prunevid_technique.state.keep, state.keep)


def test_technique_given_to_from_pretrained(path):
    technique = FirstK(PruneVidConfig.paper(keep_ratio=0.3))
    model = load(path, technique)
    assert model.prunevid_technique is technique and model.prunevid is technique.config
    assert technique.model_config is model.config and model.config.prunevid["keep_ratio"] == 0.3


def test_override_restores_config_and_controller(model, video):
    previous = FirstK(PruneVidConfig.paper(keep_ratio=0.3), k=2)
    model.prunevid = previous
    config = model.prunevid
    forward(model, video)
    assert previous.state is not None

    inner = LastToken()
    with model.prunevid_override(inner) as active:
        assert active is inner and model.prunevid_technique is inner and model.prunevid is inner.config
        assert model.prunevid_stats == []
        forward(model, video)
        assert model.prunevid_stats[0].technique == "last_token"
    assert model.prunevid_technique is previous and model.prunevid is config
    assert model.config.prunevid == config.to_dict()
    assert model.prunevid_stats == [] and previous.state is None  # set again: its last prefill is forgotten
    assert inner.state is not None  # the technique keeps what it ran (for analysis after the block)

    with pytest.raises(RuntimeError, match="boom"):
        with model.prunevid_override(PruneVidConfig.disabled()) as active:
            assert active is None and model.prunevid_technique is None
            raise RuntimeError("boom")
    assert model.prunevid_technique is previous and model.prunevid is config

    with model.prunevid_override(PruneVidConfig.disabled()):  # nested: each block restores its own
        with model.prunevid_override(inner):
            assert model.prunevid_technique is inner
        assert model.prunevid_technique is None and model.prunevid == PruneVidConfig.disabled()
    assert model.prunevid_technique is previous and model.prunevid is config

    model.prunevid = PruneVidConfig.paper()  # PruneVid's own controller is restored as the same object too
    own = model.prunevid_technique
    with model.prunevid_override(inner):
        pass
    assert model.prunevid_technique is own and model.prunevid == PruneVidConfig.paper()

    model.prunevid = PruneVidConfig.disabled()  # and "off" stays off
    with model.prunevid_override(FirstK()):
        pass
    assert model.prunevid_technique is None and model.prunevid == PruneVidConfig.disabled()


def test_a_controller_runs_in_one_model(model, path, video):
    technique = FirstK()
    model.prunevid = technique
    other = load(path, PruneVidConfig.paper())
    forward(other, video)
    before = (other.prunevid, other.prunevid_technique, other.prunevid_stats)
    with pytest.raises(ValueError, match="another model"):
        other.prunevid = technique
    with pytest.raises(ValueError, match="another model"):
        with other.prunevid_override(technique):
            pytest.fail("the block must not run")
    assert (other.prunevid, other.prunevid_technique, other.prunevid_stats) == before  # untouched, stats too
    assert before[1] is other.prunevid_technique
    model.prunevid = technique  # still good for the model it runs in
    assert model.prunevid_technique is technique


def test_setting_a_controller_resets_its_last_prefill(model, video):
    technique = FirstK()
    model.prunevid = technique
    cache = cache_of(forward(model, video, use_cache=True))
    assert technique.state is not None and technique.pruned_state(cache) is technique.state
    model.prunevid = technique
    assert technique.state is None and model.prunevid_stats == []
    with pytest.raises(ValueError, match="another prefill"):
        technique.pruned_state(cache)  # that prefill's cache can no longer be continued


# ------------------------------------------------------------------------------------------------ PruneVidStats
def stats_row(**overrides) -> PruneVidStats:
    values = dict(prompt_tokens=50, visual_tokens=30, after_stage1=12, after_stage2=5, kv_cache_tokens=25,
                  cached_visual_tokens=10, static_ratio=0.6, segments=(((0, 2), (2, 4)),), pruning_layer=4,
                  technique="prunevid")  # fmt: skip
    return PruneVidStats(**{**values, **overrides})


def test_stats_are_frozen_and_serialise():
    stats = stats_row()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.prompt_tokens = 1
    out = stats.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["retention"] == 0.3333 and stats.retention == pytest.approx(1 / 3)
    assert out["segments"] == [[[0, 2], [2, 4]]]
    assert set(out) == {f.name for f in dataclasses.fields(PruneVidStats)} | {"retention"}
    empty = stats_row(visual_tokens=0, after_stage1=0, after_stage2=0, cached_visual_tokens=0, segments=())
    assert empty.retention is None and empty.to_dict()["retention"] is None
    assert json.loads(json.dumps(empty.to_dict()))["retention"] is None


def test_stats_through_a_model(model, processor, media):
    batch = make_inputs(processor, media, "batch3")
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    assert model.prunevid_stats == []  # before any prefill under these settings
    forward(model, batch)
    stats = model.prunevid_stats
    assert len(stats) == 3 and all(isinstance(s, PruneVidStats) for s in stats)
    assert [s.technique for s in stats] == ["prunevid"] * 3
    assert all(json.loads(json.dumps(s.to_dict())) == s.to_dict() for s in stats)
    assert all(0 < s.retention < 1 for s in stats)

    model.prunevid = PruneVidConfig.disabled()
    assert model.prunevid_stats == []  # cleared: the stats describe a prefill of the current settings only
    forward(model, batch)
    video = ((ids == model.config.video_token_id) & mask).sum(dim=1).tolist()
    prompt = mask.sum(dim=1).tolist()
    assert [s.technique for s in model.prunevid_stats] == ["off"] * 3
    for s, p, v in zip(model.prunevid_stats, prompt, video):
        assert s == PruneVidStats(prompt_tokens=p, visual_tokens=v, after_stage1=v, after_stage2=v,
                                  kv_cache_tokens=p, cached_visual_tokens=v)  # fmt: skip
        assert s.retention == 1.0 and s.pruning_layer is None and s.segments == ()

    forward(model, make_inputs(processor, media, "text"))
    (text,) = model.prunevid_stats
    assert text.visual_tokens == 0 and text.retention is None and text.to_dict()["retention"] is None

    model.prunevid = model.prunevid  # set again, even to the same settings
    assert model.prunevid_stats == []


@pytest.mark.parametrize("settings", ["paper", "disabled"])
def test_stats_empty_after_a_prefill_without_input_ids(model, processor, media, video, settings):
    model.prunevid = getattr(PruneVidConfig, settings)()
    forward(model, video)
    assert len(model.prunevid_stats) == 1
    text = make_inputs(processor, media, "text")
    embeds = model.get_input_embeddings()(text["input_ids"])
    forward(model, {"inputs_embeds": embeds, "attention_mask": text["attention_mask"]})
    assert model.prunevid_stats == []  # not the previous prefill's


# ------------------------------------------------------------------------------------------------ the pre-hook
def test_prefill_hook_leaves_the_stock_logits_unchanged(path, video):
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = load(path, PruneVidConfig.disabled())
    assert torch.equal(forward(ours, video).logits, forward(stock, video).logits)
    assert ours._last_prefill[0] is video["input_ids"]  # kept by reference: nothing copied, nothing read

    def greedy(model):
        with torch.no_grad():
            out = model.generate(**video, do_sample=False, max_new_tokens=4, min_new_tokens=4, output_logits=True,
                                 return_dict_in_generate=True)  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    (tokens_s, logits_s), (tokens_o, logits_o) = greedy(stock), greedy(ours)
    assert torch.equal(tokens_s, tokens_o) and torch.equal(logits_s, logits_o)
    (stats,) = ours.prunevid_stats  # the prompt's counts, not the last decoding step's
    assert stats.prompt_tokens == int(video["attention_mask"].sum())


# ------------------------------------------------------------------------------------- how a prefill is read
def test_stats_of_a_chunked_prefill_describe_the_whole_prompt(request, model, path, processor, media):
    """`generate(prefill_chunk_size=...)` runs the prompt in chunks over a filling cache; with PruneVid off it gives
    stock's tokens, the stats describe every chunk together, and the decoding steps that follow add nothing. Where
    the installed release's stock model cannot run a chunked prefill (5.4.0 and 5.16.1 raise in the cache), ours raises
    the same."""
    model.prunevid = PruneVidConfig.disabled()
    text = make_inputs(processor, media, "text")
    assert text["input_ids"].shape[1] > 2 * 8  # at least three chunks

    def chunked(m):
        with torch.no_grad():
            return m.generate(**text, do_sample=False, max_new_tokens=3, min_new_tokens=3, prefill_chunk_size=8)

    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa")
    try:
        expected = chunked(stock.eval())
    except Exception as error:  # noqa: BLE001 -- ours must fail the same way
        with pytest.raises(type(error)):
            chunked(model)
        STOCK_UNSUPPORTED.append((request.node.nodeid, f"chunked prefill: stock raises {type(error).__name__}"))
        return
    assert torch.equal(chunked(model), expected)
    (stats,) = model.prunevid_stats
    assert stats.prompt_tokens == int(text["attention_mask"].sum())
    assert torch.equal(model._last_prefill[0], text["input_ids"])
    with torch.no_grad():  # a plain forward over a filled cache outside `generate` is not taken for a chunk
        out = model(**text, use_cache=True)
        model(text["input_ids"][:, -1:], **with_cache(cache_of(out)))
    assert torch.equal(model._last_prefill[0], text["input_ids"])


def test_stats_of_a_positional_attention_mask_exclude_padding(model, processor, media):
    model.prunevid = PruneVidConfig.disabled()
    batch = make_inputs(processor, media, "batch3")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        model(ids, mask, pixel_values_videos=batch["pixel_values_videos"], video_grid_thw=batch["video_grid_thw"],
              mm_token_type_ids=batch["mm_token_type_ids"], second_per_grid_ts=batch["second_per_grid_ts"])
    assert [s.prompt_tokens for s in model.prunevid_stats] == mask.sum(dim=1).tolist()


class Wrapped(PruneVidController):
    """The built-in selection behind an override (as the benchmark's timed technique), not saying so."""

    name = "wrapped"

    def select(self, layer, hidden_states, state):
        return super().select(layer, hidden_states, state)


class WrappedKeepsQuotas(Wrapped):
    """The same, saying that it keeps the built-in quotas."""

    name = "wrapped, keeps quotas"
    select_keeps_quotas = True


def test_a_select_that_keeps_the_quotas_keeps_the_predicted_width(model, video):
    """A `select` override predicts Stage 2's width after Stage 1 only when its class says it keeps the base's quotas
    (`select_keeps_quotas`); the tokens are the built-in selection's either way (on the CPU the prediction is checked
    against the selection, so a wrong one raises)."""
    widths, keeps = {}, {}
    for cls in (PruneVidController, Wrapped, WrappedKeepsQuotas):
        model.prunevid = technique = cls(PruneVidConfig.paper())
        forward(model, video)
        widths[cls], keeps[cls] = technique.state.kept_width, technique.state.keep
    assert widths[PruneVidController] is not None and widths[Wrapped] is None
    assert widths[WrappedKeepsQuotas] == widths[PruneVidController]
    assert torch.equal(keeps[Wrapped], keeps[PruneVidController])
    assert torch.equal(keeps[WrappedKeepsQuotas], keeps[PruneVidController])
