"""The guarantee: with every PruneVid stage off, `Qwen2_5_VLPruneVid` *is* the stock
`transformers.Qwen2_5_VLForConditionalGeneration`: identical greedy tokens and bitwise-identical logits.

Both models are loaded from the same `save_pretrained` directory; inputs go through the released model's processor
path (offline tokenizer, Qwen2-VL image/video processors, qwen-vl-utils with decord on generated mp4 files).

Where the installed release's *stock* model itself raises on an input (transformers 5.4.0's `get_rope_index` on a
prompt with images and videos), "ours is the stock model" means ours raises the same exception, at the same upstream
line: the test passes and records the input as unsupported by that release (`conftest.STOCK_UNSUPPORTED`, listed at
the end of the pytest run). Where the stock model works, tokens and logits must be bitwise equal.
"""

from __future__ import annotations

import traceback

import pytest
import torch
import transformers

from conftest import INPUT_CASES, SHAPES, STOCK_UNSUPPORTED, make_inputs
from modeling import PruneVidConfig, Qwen2_5_VLPruneVid

NEW_TOKENS = 32

# The full input matrix on every shape with (sdpa, fp32); every other (attention, dtype) pair on one shape.
MATRIX = [(shape, case, "sdpa", "float32") for shape in SHAPES for case in INPUT_CASES] + [
    ("gqa2", case, attn, dtype)
    for case in INPUT_CASES
    for attn, dtype in (("eager", "float32"), ("sdpa", "bfloat16"), ("eager", "bfloat16"))
]


def load_pair(path, attn: str, dtype: str):
    kwargs = dict(attn_implementation=attn, dtype=getattr(torch, dtype))
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs).eval()
    ours = Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=PruneVidConfig.disabled(), **kwargs).eval()
    return stock, ours


@torch.no_grad()
def greedy(model, inputs):
    out = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits)


@torch.no_grad()
def forward_logits(model, inputs):
    return model(**inputs).logits


def assert_same(stock, ours, inputs):
    compare_greedy(greedy(stock, inputs), greedy(ours, inputs))
    compare_prefill(forward_logits(stock, inputs), forward_logits(ours, inputs))


def compare_greedy(stock_out, ours_out):
    (tokens_s, logits_s), (tokens_o, logits_o) = stock_out, ours_out
    assert torch.equal(tokens_s, tokens_o), "generated tokens differ from stock"
    assert torch.equal(logits_s, logits_o), f"logits differ: max |diff| {(logits_s - logits_o).abs().max()}"


def compare_prefill(stock_logits, ours_logits):
    assert torch.equal(stock_logits, ours_logits), "prefill logits differ"


def raised_at(error: BaseException) -> tuple[type, str, str]:
    """An exception's type and where it was raised: the innermost function and its source line."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return type(error), frame.name, (frame.line or "").strip()


def describe(error: BaseException) -> str:
    kind, function, line = raised_at(error)
    return f"{kind.__name__} in {function} (`{line}`)"


def outcome(run, model, inputs):
    """`(result, None)`, or `(None, exception)` where the call raises."""
    try:
        return run(model, inputs), None
    except Exception as error:  # noqa: BLE001 -- any stock failure is compared with ours below
        return None, error


def assert_same_or_same_failure(stock, ours, inputs) -> str | None:
    """`assert_same`, except where the stock model itself raises: ours must then raise the same exception type at the
    same upstream line. Generate and prefill are checked each (stock first, then ours, as in `assert_same`).
    Returns what stock raised, or None where stock works (and everything was bitwise equal)."""
    failures = []
    for run, compare in ((greedy, compare_greedy), (forward_logits, compare_prefill)):
        expected, stock_error = outcome(run, stock, inputs)
        if stock_error is None:  # stock works: ours must work and agree bitwise
            compare(expected, run(ours, inputs))
            continue
        _, error = outcome(run, ours, inputs)
        assert error is not None, f"stock {run.__name__} raises {describe(stock_error)}, ours does not"
        assert raised_at(error) == raised_at(stock_error), (
            f"stock {run.__name__} raises {describe(stock_error)}, ours {describe(error)}"
        )
        failures.append(describe(stock_error))
    return "; ".join(dict.fromkeys(failures)) or None


@pytest.mark.parametrize("shape,case,attn,dtype", MATRIX)
def test_stages_off_equals_stock(request, checkpoints, processor, media, shape, case, attn, dtype):
    inputs = make_inputs(processor, media, case)
    stock, ours = load_pair(checkpoints[shape], attn, dtype)
    assert ours.model._prunevid is None and ours.prunevid_stats == []  # no prefill yet
    failure = assert_same_or_same_failure(stock, ours, inputs)
    if failure is None:  # the stats of the last prefill (the forward): every token stays, one row per sample
        stats, ids, mask = ours.prunevid_stats, inputs["input_ids"], inputs["attention_mask"].bool()
        assert [s.technique for s in stats] == ["off"] * ids.shape[0]
        assert [s.prompt_tokens for s in stats] == [s.kv_cache_tokens for s in stats] == mask.sum(dim=1).tolist()
        video = ((ids == ours.config.video_token_id) & mask).sum(dim=1).tolist()
        assert [s.visual_tokens for s in stats] == [s.cached_visual_tokens for s in stats] == video
        assert all(s.retention == (1.0 if s.visual_tokens else None) for s in stats)
    if failure is not None:  # the release's stock model cannot process this input; ours fails identically
        STOCK_UNSUPPORTED.append(
            (request.node.nodeid, f"the {case!r} input: stock raises {failure}; ours raises the same")
        )


def test_inputs_exercise_the_model(processor, media):
    """The matrix really covers what it claims: videos with time spacing, padding, images next to videos."""
    video = make_inputs(processor, media, "video")
    assert "second_per_grid_ts" in video and "mm_token_type_ids" in video
    assert (video["mm_token_type_ids"] == 2).sum() == video["video_grid_thw"].prod(-1).sum() // 4
    multi = make_inputs(processor, media, "multi")
    assert multi["video_grid_thw"].shape[0] == 2 and multi["image_grid_thw"].shape[0] == 1
    batch = make_inputs(processor, media, "batch3")
    assert batch["input_ids"].shape[0] == 3 and len(set(batch["video_grid_thw"][:, 0].tolist())) == 3
    assert (batch["attention_mask"][:, 0] == 0).any(), "expected left padding in the batch"


def test_runtime_switch_back_to_stock(checkpoints, processor, media):
    """Turning PruneVid on changes the answer's logits; reassigning `disabled()` restores stock exactly."""
    inputs = make_inputs(processor, media, "video")
    stock, ours = load_pair(checkpoints["gqa2"], "sdpa", "float32")
    ours.prunevid = PruneVidConfig.paper()
    assert not torch.equal(forward_logits(stock, inputs)[:, -1], forward_logits(ours, inputs)[:, -1])
    ours.prunevid = PruneVidConfig.disabled()
    assert_same(stock, ours, inputs)


def test_harness_catches_a_perturbed_forward(checkpoints, processor, media):
    """The comparison can fail: a 1e-6 nudge to one decoder layer's output is detected."""
    inputs = make_inputs(processor, media, "video")
    stock, ours = load_pair(checkpoints["gqa2"], "sdpa", "float32")

    def nudge(module, args, output):
        return output + 1e-6

    handle = ours.model.language_model.layers[5].register_forward_hook(nudge)
    try:
        with pytest.raises(AssertionError, match="differ"):
            assert_same(stock, ours, inputs)
    finally:
        handle.remove()
    assert_same(stock, ours, inputs)


def test_save_load_roundtrip(checkpoints, tmp_path):
    """What the drop-in class saves loads in the stock class (and keeps its PruneVid settings for itself)."""
    config = PruneVidConfig.paper(keep_ratio=0.3, pruning_layer=4)
    ours = Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], prunevid=config)
    ours.save_pretrained(tmp_path / "saved")
    reloaded = Qwen2_5_VLPruneVid.from_pretrained(tmp_path / "saved")
    assert reloaded.prunevid == config
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "saved")
    for (name, a), (_, b) in zip(ours.state_dict().items(), stock.state_dict().items()):
        assert torch.equal(a, b), name
    built = Qwen2_5_VLPruneVid(stock.config, prunevid=PruneVidConfig.disabled())
    assert built.prunevid == PruneVidConfig.disabled()


def released_layout(checkpoint, folder):
    """A copy of `checkpoint` with its weights under the released key layout (`visual.*`, `model.layers.*`),
    written here since what `save_pretrained` writes differs by release (5.4: `model.visual.*`)."""
    import shutil

    from safetensors.torch import load_file, save_file

    released = {"model.visual.": "visual.", "model.language_model.": "model."}
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights = {next((new + k[len(old) :] for old, new in released.items() if k.startswith(old)), k): v
               for k, v in weights.items()}  # fmt: skip
    shutil.copytree(checkpoint, folder)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    keys = set(weights)
    assert any(k.startswith("visual.blocks.") for k in keys) and any(k.startswith("model.layers.") for k in keys)
    return folder


def test_loads_the_released_checkpoint_layout(checkpoints, tmp_path):
    """The drop-in class renames the released layout's keys like the stock class (transformers skips the renaming
    for classes outside `transformers.` unless registered)."""
    folder = released_layout(checkpoints["gqa2"], tmp_path / "released")
    ours, info = Qwen2_5_VLPruneVid.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    stock = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    assert ours_sd.keys() == stock_sd.keys()
    for name, tensor in stock_sd.items():
        assert torch.equal(ours_sd[name], tensor), name


@pytest.mark.parametrize("name", ["Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"])
def test_vendored_classes_load_like_their_stock_namesakes(checkpoints, tmp_path, name):
    """The vendored classes get their stock namesakes' weight renamings, class by class (found by running
    transformers' own Qwen2.5-VL model tests on them: the vendored `Qwen2_5_VLModel` left the language model's
    weights of a released-layout checkpoint at their initial values)."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    from modeling import modeling_qwen2_5_vl as vendored

    folder = released_layout(checkpoints["gqa2"], tmp_path / "released")
    stock, info_stock = getattr(transformers, name).from_pretrained(folder, output_loading_info=True)
    ours, info = getattr(vendored, name).from_pretrained(folder, output_loading_info=True)
    # the same keys loaded and left out as stock (transformers 5.9-5.12 have no renaming for the base class: there
    # stock `Qwen2_5_VLModel` itself leaves a released checkpoint's language model out; the others load it whole)
    assert info == info_stock, (info, info_stock)
    assert name == "Qwen2_5_VLModel" or not info["missing_keys"], info
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    assert ours_sd.keys() == stock_sd.keys()
    for key in stock_sd.keys() - set(info["missing_keys"]):
        assert torch.equal(ours_sd[key], stock_sd[key]), key
    assert len(get_model_conversion_mapping(ours)) == len(get_model_conversion_mapping(stock))
    if name == "Qwen2_5_VLForConditionalGeneration":  # the drop-in class too: its inner model is the vendored one
        drop_in = Qwen2_5_VLPruneVid(stock.config, prunevid=PruneVidConfig.disabled())
        assert len(get_model_conversion_mapping(drop_in)) == len(get_model_conversion_mapping(stock))


def test_vendored_file_matches_installed_release():
    """The equivalence above compares against the installed transformers: it must be the vendored release."""
    import json
    from pathlib import Path

    meta = json.loads((Path(__file__).parents[1] / "upstream_snapshot" / "UPSTREAM.json").read_text())
    assert transformers.__version__ == meta["transformers_version"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_loss_and_gradients_are_stock(checkpoints, processor, media, checkpointing):
    """Stages off, training mode: the same loss and every gradient as stock, bit for bit, with and without gradient
    checkpointing (transformers' own training tests pick their labels by class name, so they give ours none: this
    checks what they would)."""
    inputs = make_inputs(processor, media, "video")
    losses, grads = [], []
    for cls, kwargs in ((transformers.Qwen2_5_VLForConditionalGeneration, {}),
                        (Qwen2_5_VLPruneVid, {"prunevid": PruneVidConfig.disabled()})):  # fmt: skip
        model = cls.from_pretrained(checkpoints["gqa2"], attn_implementation="sdpa", **kwargs).train()
        if checkpointing:  # transformers 5.25 renamed it (the old name warns); earlier releases have the old one only
            enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
            enable({"use_reentrant": False})
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(*losses)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name
