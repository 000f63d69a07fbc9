"""Version 2 of the moving-shapes benchmark: the question names one of several moving shapes, so it decides which
tokens matter (`modeling.eval.benchmark`, module docstring). It is the default: what the shipped demo model was
trained on and the committed table and curves measure (`tests/test_eval.py`); version 1 stays reproducible."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from modeling.eval import benchmark


NAMED = ("moving_colour", "direction", "final_position")


@pytest.fixture(scope="module")
def items():
    return benchmark.load_split("test", limit=200, version=2)


def test_versions_are_separate_and_deterministic(items):
    assert benchmark.DEFAULT_VERSION == 2 and benchmark.VERSIONS == (1, 2)
    assert benchmark.load_split("test", limit=10) == benchmark.load_split("test", limit=10, version=2) == items[:10]
    assert all(it.version == 2 for it in items) and benchmark.make_item("test", 0).version == 2
    assert benchmark.make_item("test", 0, version=1).version == 1
    v1 = {it.digest() for it in benchmark.load_split("test", limit=200, version=1)}
    assert not v1 & {it.digest() for it in items}  # a clip cache never mixes the versions
    train = benchmark.load_split("train", limit=1000, version=2)
    held_out = benchmark.load_split("val", version=2) + benchmark.load_split("test", version=2)
    assert not {it.digest() for it in train} & {it.digest() for it in held_out}
    with pytest.raises(ValueError, match="unknown benchmark version"):
        benchmark.make_item("test", 0, version=3)


def test_the_question_names_one_of_several_moving_shapes(items):
    for it in items:
        scene = it.scenes[0]
        assert all(s.size == benchmark.SHAPE_SIZES[2] for sc in it.scenes for s in sc)
        if it.kind not in NAMED:
            assert benchmark.referent(it) is None and benchmark.siblings(it) == []
            continue
        movers = [s for s in scene if s.moves]
        target = scene[0]
        assert target.moves and 2 <= len(movers) <= 3
        directions = [benchmark._direction(s) for s in movers]
        assert len(set(directions)) == len(directions)  # each moves its own way
        named_by = benchmark.referent(it)
        assert named_by in it.question
        if it.kind == "moving_colour":
            answers = [s.colour for s in movers]
            assert named_by == directions[0] and it.answer_text == target.colour
        elif it.kind == "direction":
            answers = directions
            assert target.name in it.question and it.answer_text == directions[0]
        else:
            answers = [benchmark._quadrant(s, it.frames - 1) for s in movers]
            assert target.name in it.question and it.answer_text == answers[0]
            assert benchmark._quadrant(target, 0) != answers[0]  # it starts elsewhere
        assert len(set(answers)) == len(answers) and set(answers) <= set(it.options)  # distractors are options
        assert sum(named_by in (s.colour, benchmark._direction(s) if s.moves else None) for s in scene) == 1


def test_answers_cycle_evenly_over_the_options(items):
    for kind in benchmark.KINDS:
        counts = collections.Counter(it.answer for it in items if it.kind == kind)
        assert max(counts.values()) - min(counts.values()) <= 1, (kind, counts)
        assert len(counts) == (2 if kind == "scene_change" else 4)


def test_a_shape_spans_at_least_two_by_two_tokens(items):
    for it in items[:40]:
        touched, _ = benchmark.token_labels(it, min_pixels=1)  # cells a shape covers at all
        solid, _ = benchmark.token_labels(it)  # cells it covers by a quarter or more
        for shape in it.scenes[0]:
            colour = list(benchmark.COLOURS).index(shape.colour)
            assert (touched[0] == colour).sum() >= 4, (it.id, shape)
            assert (solid[0] == colour).sum() >= (4 if shape.kind != "triangle" else 2), (it.id, shape)


def test_siblings_ask_the_same_clip_about_the_other_movers(items):
    for it in [it for it in items if it.kind in NAMED][:30]:
        others = benchmark.siblings(it)
        assert len(others) == sum(s.moves for s in it.scenes[0]) - 1
        assert {o.answer for o in others}.isdisjoint({it.answer})
        assert len({benchmark.referent(o) for o in others + [it]}) == len(others) + 1
        for other in others:
            assert other.kind == it.kind and other.id.startswith(it.id + "/")
            assert np.array_equal(other.frames_array(), it.frames_array())
            assert sorted(map(repr, other.scenes[0])) == sorted(map(repr, it.scenes[0]))
    assert benchmark.siblings(benchmark.make_item("test", 1, version=1)) == []
