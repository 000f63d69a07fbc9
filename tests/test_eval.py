"""The moving-shapes benchmark, the trained demo model, and the evidence that pruned answers stay right.

The accuracy tests run the trained demo model (`modeling.demo`) through the released input path on a fixed sample of
the held-out test split; the pinned numbers come from `docs/accuracy/` (same items, same code, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling.demo import ASSET, checkpoint_path, load_asset
from modeling.eval import benchmark
from modeling.eval.run import Evaluation, summarise, wilson_interval


ROOT = Path(__file__).resolve().parent.parent
N_ACCURACY = 150  # questions of the held-out split in the accuracy tests
#: The committed table (`python -m modeling.eval --limit 300`): its answers to the first N_ACCURACY questions.
TABLE = json.loads((ROOT / "docs" / "accuracy" / "accuracy.json").read_text())


def pinned_accuracy(config: str) -> float:
    items = {it.id: it for it in benchmark.load_split("test", limit=N_ACCURACY)}
    answers = [(i, p) for i, p in zip(TABLE["items"], TABLE["predictions"][config]) if i in items]
    assert len(answers) == N_ACCURACY
    return sum(items[i].answer == p for i, p in answers) / N_ACCURACY


# ------------------------------------------------------------------------------------------------ benchmark
def test_items_are_deterministic_and_splits_disjoint():
    a, b = benchmark.load_split("test", limit=40), benchmark.load_split("test", limit=40)
    assert a == b
    assert [it.kind for it in a[:5]] == list(benchmark.KINDS)
    train = benchmark.load_split("train", limit=2000)
    held_out = benchmark.load_split("test") + benchmark.load_split("val")
    assert not {it.digest() for it in train} & {it.digest() for it in held_out}  # no clip is shared
    assert len(benchmark.load_split("test")) == benchmark.SPLIT_SIZES["test"]
    with pytest.raises(ValueError, match="unknown split"):
        benchmark.load_split("dev")
    with pytest.raises(IndexError):
        benchmark.make_item("test", benchmark.SPLIT_SIZES["test"])


def test_questions_need_the_video_over_time():
    """Version 1's questions (version 2's: tests/test_benchmark_v2.py)."""
    items = benchmark.load_split("test", limit=200, version=1)
    for it in items:
        first_scene = it.scenes[0]
        assert it.question.startswith("Question: ") and it.question.endswith(benchmark.INSTRUCTION)
        assert it.answer in benchmark.LETTERS[: len(it.options)]
        if it.kind == "moving_colour":
            assert sum(s.moves for s in first_scene) == 1 and len(first_scene) >= 2  # a still distractor
            assert it.answer_text == next(s.colour for s in first_scene if s.moves)
        elif it.kind == "count_moving":
            assert it.answer_text == str(sum(s.moves for s in first_scene))
        elif it.kind == "scene_change":
            assert (it.cut is not None) == (it.answer_text == "yes")
        elif it.kind in ("direction", "final_position"):
            target = first_scene[0]
            assert target.moves and target.name in it.question
            if it.kind == "final_position":  # it starts in another quadrant than where it ends
                assert benchmark._quadrant(target, 0) != it.answer_text
    # every kind's answers use every option
    for kind in benchmark.KINDS:
        answers = {it.answer for it in items if it.kind == kind}
        assert len(answers) == (2 if kind == "scene_change" else 4)


def test_rendered_clip_matches_its_description_and_token_labels():
    item = next(it for it in benchmark.load_split("test", limit=20, version=1) if it.kind == "direction")
    frames = item.frames_array()
    assert frames.shape == (item.frames, benchmark.SIZE, benchmark.SIZE, 3) and frames.dtype == np.uint8
    target = item.scenes[0][0]
    colour = np.array(benchmark.COLOURS[target.colour])
    for t in (0, item.frames - 1):
        top, left = target.box(t)
        patch = frames[t, top : top + benchmark.SHAPE_SIZE, left : left + benchmark.SHAPE_SIZE]
        assert (np.abs(patch.astype(int) - colour).sum(-1) == 0).mean() > 0.4  # the shape is where it says
    colours, motion = benchmark.token_labels(item)
    assert colours.shape == (item.frames // 2, 8, 8)
    moving = motion[motion > 0]
    direction = list(benchmark.DIRECTIONS).index(item.answer_text) + 1
    assert moving.size and (moving == direction).all()


def test_video_file_reaches_the_model_at_the_training_size(processor_demo, tmp_path):
    from modeling.app.inputs import build_messages, prepare_inputs

    item = benchmark.load_split("test", limit=1)[0]
    path = item.video_path(tmp_path)
    assert path.is_file() and path.parent == tmp_path
    inputs = prepare_inputs(processor_demo, build_messages(item.question, [str(path)], options=benchmark.MEDIA))
    assert inputs["video_grid_thw"].tolist() == [[item.frames // 2, 16, 16]]
    assert int((inputs["input_ids"] == 151656).sum()) == item.frames // 2 * 64


# ------------------------------------------------------------------------------------------------ demo model
@pytest.mark.slow
def test_asset_is_compact_and_expands_to_a_standard_checkpoint(tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from modeling import Qwen2_5_VLPruneVid

    assert ASSET.stat().st_size <= 10 * 2**20
    state, metadata = load_asset()
    assert metadata["val_accuracy"] and int(metadata["step"]) > 0
    path = checkpoint_path(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {p.name for p in path.iterdir()}
    assert checkpoint_path(tmp_path) == path  # written once
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    ours = Qwen2_5_VLPruneVid.from_pretrained(path)
    for name, tensor in stock.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[name]), name
        assert torch.equal(tensor, state[name]), name
    AutoProcessor.from_pretrained(path)
    rows = stock.get_input_embeddings().weight.abs().sum(-1) > 0
    assert 50 < int(rows.sum()) < 200  # only the task's tokens have embedding rows


# ------------------------------------------------------------------------------------------------ accuracy
@pytest.fixture(scope="module")
def processor_demo():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint_path())


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory):
    items = benchmark.load_split("test", limit=N_ACCURACY)
    evaluation = Evaluation.from_pretrained(checkpoint_path(), items, clip_cache=tmp_path_factory.mktemp("clips"),
                                            progress=False)  # fmt: skip
    outcomes = evaluation.run(["stock", "paper", "random", "paper_sysprompt", "stage2", "stage2_sysprompt"])
    return {row["config"]: row for row in summarise(outcomes)}, outcomes


@pytest.mark.slow
def test_stock_answers_the_held_out_questions(accuracy):
    rows, _ = accuracy
    assert rows["stock"]["n"] == N_ACCURACY
    assert rows["stock"]["accuracy"] >= 0.90
    assert rows["stock"]["retention"] == 1.0


@pytest.mark.slow
def test_paper_accuracy_and_retention_are_the_measured_ones(accuracy):
    rows, _ = accuracy
    assert abs(rows["paper"]["accuracy"] - pinned_accuracy("paper")) <= 0.03
    assert abs(rows["stock"]["accuracy"] - pinned_accuracy("stock")) <= 0.03
    assert rows["paper"]["retention"] < 0.5  # it really prunes


#: Answers that may differ from the committed table's, per config, out of N_ACCURACY: float noise between machines
#: and thread counts can move a near-tie between two letters; more than this is a change of behaviour.
MAX_FLIPS = 2


@pytest.mark.slow
def test_answers_are_the_committed_ones_item_by_item(accuracy):
    """Not only the accuracy: each answer of every config of the fixture (stock, paper, random dropping and the
    question / system-prompt pairs) equals the committed table's (`docs/accuracy/accuracy.json`), item by item, up to
    `MAX_FLIPS` per config."""
    _, outcomes = accuracy
    committed = dict(zip(TABLE["items"], zip(*(TABLE["predictions"][c] for c in outcomes))))
    for column, (config, results) in enumerate(outcomes.items()):
        assert len(results) == N_ACCURACY
        flips = [(o.id, committed[o.id][column], o.predicted) for o in results if committed[o.id][column] != o.predicted]
        assert len(flips) <= MAX_FLIPS, (config, flips)


@pytest.mark.slow
def test_random_dropping_at_the_same_budget_is_worse(accuracy):
    rows, outcomes = accuracy
    budget = {o.id: o.kept_visual_tokens for o in outcomes["paper"]}
    assert all(o.kept_visual_tokens == max(1, budget[o.id]) for o in outcomes["random"])  # same tokens kept
    assert rows["random"]["accuracy"] < rows["paper"]["accuracy"]


#: How far below the question's the system prompt's Stage 2 must stay on the pinned questions (issue 22's control).
CONTROL_GAP = 0.10


@pytest.mark.slow
@pytest.mark.parametrize("config", ["paper", "stage2"])
def test_the_question_matters(accuracy, config):
    """The negative control: the same pruning with Stage 2 scored by the system prompt instead of the question keeps
    as many tokens and answers at least `CONTROL_GAP` worse. Benchmark version 2 names one of 2-3 moving shapes, so a
    question-blind choice of which to keep loses the named shape where the budget cannot hold them all (the
    committed table, 300 questions: `paper` 80.3 / 66.0%, `stage2` 85.7 / 73.7%). Fails if Stage 2 stops reading the
    question's rows (the earlier port's bug), or if the model or benchmark stop needing it."""
    rows, outcomes = accuracy
    control = f"{config}_sysprompt"
    assert [o.kept_visual_tokens for o in outcomes[control]] == [o.kept_visual_tokens for o in outcomes[config]]
    assert rows[control]["accuracy"] <= rows[config]["accuracy"] - CONTROL_GAP, (rows[config], rows[control])


def test_system_prompt_control_selects_other_tokens():
    """The control is a technique set through the public extension point: `prunevid_override` runs it and puts the
    model's own settings back; the stats name it."""
    from modeling import PruneVidConfig
    from modeling.eval.baselines import SystemPromptQuery, TokenDrop

    items = benchmark.load_split("test", limit=3)
    evaluation = Evaluation.from_pretrained(checkpoint_path(), items, progress=False)
    model = evaluation.model
    model.prunevid = PruneVidConfig.paper()
    for item in items:
        inputs = evaluation.inputs(item)
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        question = model.prunevid_technique.state
        with model.prunevid_override(SystemPromptQuery()) as control:
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            assert model.prunevid_stats[0].technique == "system_prompt_query"
        assert model.prunevid_technique is not control and model.prunevid == PruneVidConfig.paper()
        assert not (question.query & control.state.query).any()  # disjoint query tokens
        assert control.state.query.sum() > 5 and question.query.sum() > 20
        assert not torch.equal(question.keep, control.state.keep)
        with model.prunevid_override(TokenDrop("random", budget=10)):
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            (stats,) = model.prunevid_stats
            assert stats.technique == "random" and stats.cached_visual_tokens == stats.after_stage1 == 10


def test_stage2_alone_and_its_control_differ_only_in_the_scoring_rows():
    """`stage2` is Stage 2 alone keeping 4 of each temporal patch's 64 tokens; `stage2_sysprompt` the same config
    scored by the system prompt (the negative control, `test_the_question_matters`)."""
    from modeling import PruneVidConfig
    from modeling.eval.baselines import SystemPromptQuery

    evaluation = Evaluation.from_pretrained(checkpoint_path(), benchmark.load_split("test", limit=1), progress=False)
    question, control = evaluation.technique("stage2"), evaluation.technique("stage2_sysprompt")
    assert question == PruneVidConfig.paper(enable_stage1=False, keep_ratio=0.0625)
    assert isinstance(control, SystemPromptQuery) and control.config == question


def test_wilson_interval():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95


def test_eval_cli_rejects_bad_arguments(capsys):
    from modeling.eval.run import main

    for argv in (["--configs", "bogus"], ["--limit", "0"], ["--json", "/no/such/folder/x.json"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
