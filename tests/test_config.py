"""`PruneVidConfig` as a Python API: validation, types, immutability, loading, the automatic pruning layer."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from modeling.prunevid.config import CHOICES, INT_MAX, PRESETS, PruneVidConfig


def no_warnings(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return make()


# ------------------------------------------------------------------------------------------------ immutability
def test_fields_cannot_be_changed_in_place() -> None:
    config = PruneVidConfig.paper()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"replace\(keep_ratio=\.\.\.\)"):
        config.keep_ratio = 5.0
    with pytest.raises(AttributeError, match="immutable"):  # FrozenInstanceError is an AttributeError
        config.enable_stage3 = False
    with pytest.raises(AttributeError, match="immutable"):
        del config.tau
    assert config == PruneVidConfig.paper() and config.keep_ratio == 0.4


def test_replace_validates_and_copies() -> None:
    config = PruneVidConfig.paper()
    with pytest.raises(ValueError, match=r"keep_ratio=5.0 is out of range"):
        config.replace(keep_ratio=5.0)
    changed = config.replace(keep_ratio=np.float32(0.3), enable_stage3=False)
    assert changed.keep_ratio == 0.3 and type(changed.keep_ratio) is float and changed.enable_stage3 is False
    assert config.keep_ratio == 0.4 and config.enable_stage3 is True
    with pytest.raises(TypeError):
        config.replace(no_such_field=1)


def test_copy_pickle_hash() -> None:
    config = PruneVidConfig.aggressive(pruning_layer=3)
    assert copy.deepcopy(config) == config
    assert pickle.loads(pickle.dumps(config)) == config
    assert hash(config) == hash(PruneVidConfig.aggressive(pruning_layer=3))
    assert len({config, PruneVidConfig.aggressive(pruning_layer=3), PruneVidConfig.paper()}) == 2


# ------------------------------------------------------------------------------------------------ number types
@pytest.mark.parametrize(
    "value,expected",
    [
        (np.float32(0.4), 0.4),  # the decimal written, not 0.4000000059604645
        (np.float64(0.4), 0.4),
        (np.float16(0.3), 0.3),
        (torch.tensor(0.7), 0.7),
        (np.array(0.25), 0.25),
        (Fraction(1, 4), 0.25),
        (1, 1.0),
        (np.int64(1), 1.0),
    ],
)
def test_real_numbers_of_any_kind(value, expected) -> None:
    config = no_warnings(lambda: PruneVidConfig(keep_ratio=value, cluster_ratio=value, tau=value))
    for name in ("keep_ratio", "cluster_ratio", "tau"):
        assert getattr(config, name) == expected and type(getattr(config, name)) is float
    json.dumps(config.to_dict())


@pytest.mark.parametrize("value", [np.int64(5), np.int32(5), np.uint8(5), torch.tensor(5), np.array(5), 5])
def test_integers_of_any_kind(value) -> None:
    config = PruneVidConfig(dpc_knn_k=value, min_tokens_to_cluster=value, pruning_layer=value)
    for name in ("dpc_knn_k", "min_tokens_to_cluster", "pruning_layer"):
        assert getattr(config, name) == 5 and type(getattr(config, name)) is int
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


def test_numpy_bools_for_switches() -> None:
    config = PruneVidConfig(enable_stage1=np.bool_(False), include_images=torch.tensor(True))
    assert config.enable_stage1 is False and config.include_images is True


@pytest.mark.parametrize(
    "field,value",
    [
        ("keep_ratio", "0.4"),
        ("keep_ratio", None),
        ("keep_ratio", True),
        ("keep_ratio", [0.4]),
        ("keep_ratio", torch.tensor([0.4])),
        ("keep_ratio", 0.4 + 0j),
        ("tau", np.bool_(True)),
        ("dpc_knn_k", 7.0),
        ("dpc_knn_k", "7"),
        ("dpc_knn_k", None),
        ("dpc_knn_k", False),
        ("dpc_knn_k", torch.tensor(7.0)),
        ("min_tokens_to_cluster", 14.5),
        ("pruning_layer", 3.0),
        ("enable_stage1", 1),
        ("enable_stage3", "yes"),
        ("include_images", None),
        ("selection_query", 3),
        ("keep_rounding", None),
    ],
)
def test_wrong_types_are_type_errors(field: str, value) -> None:
    with pytest.raises(TypeError, match=rf"PruneVidConfig\.{field}=.* has the wrong type"):
        PruneVidConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("keep_ratio", 0.0, r"\(0.0, 1.0\]"),
        ("keep_ratio", 1.0000001, r"\(0.0, 1.0\]"),
        ("keep_ratio", float("nan"), r"\(0.0, 1.0\]"),
        ("keep_ratio", 10**400, r"\(0.0, 1.0\]"),  # too big for a float: out of range, not a crash
        ("tau", float("inf"), r"\[-1.0, 1.0\]"),
        ("tau", np.float32(-1.5), r"\[-1.0, 1.0\]"),
        ("dpc_knn_k", 0, rf"integers 1..{INT_MAX}"),
        ("dpc_knn_k", 10**20, rf"integers 1..{INT_MAX}"),
        ("dpc_knn_k", np.int64(2**40), rf"integers 1..{INT_MAX}"),
        ("min_tokens_to_cluster", -1, rf"integers 0..{INT_MAX}"),
        ("pruning_layer", -1, rf"integers 0..{INT_MAX}"),
        ("pruning_layer", 2**31, rf"integers 0..{INT_MAX}"),
    ],
)
def test_out_of_range_values(field: str, value, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"PruneVidConfig\.{field}=.* is out of range: allowed {allowed}"):
        PruneVidConfig(**{field: value})


def test_limits_are_accepted() -> None:
    config = PruneVidConfig(dpc_knn_k=INT_MAX, min_tokens_to_cluster=0, keep_ratio=1, tau=-1, pruning_layer=INT_MAX)
    assert config.dpc_knn_k == INT_MAX and config.keep_ratio == 1.0 and config.tau == -1.0


def test_choices() -> None:
    assert CHOICES["keep_rounding"] == ("floor", "ceil")
    assert PruneVidConfig.paper().keep_rounding == "floor"  # the authors' int(alpha * n)
    assert PruneVidConfig(keep_rounding="ceil").keep_rounding == "ceil"
    for field, allowed in CHOICES.items():
        for value in allowed:
            assert getattr(PruneVidConfig(**{field: value}), field) == value
        with pytest.raises(ValueError, match=rf"PruneVidConfig\.{field}='nope' is not one of"):
            PruneVidConfig(**{field: "nope"})


# ------------------------------------------------------------------------------------------------ from_dict
def test_from_dict_round_trip_of_every_preset() -> None:
    for name in PRESETS:
        config = PruneVidConfig.preset(name)
        saved = json.loads(json.dumps(config.to_dict()))
        assert no_warnings(lambda: PruneVidConfig.from_dict(saved)) == config
        assert PruneVidConfig.from_dict(saved, strict=True) == config


def test_from_dict_unknown_keys_warn_and_are_ignored() -> None:
    saved = {**PruneVidConfig.aggressive().to_dict(), "zeta_new_knob": 3, "alpha_new_knob": True}
    with pytest.warns(UserWarning, match=r"ignoring unknown field\(s\) \['alpha_new_knob', 'zeta_new_knob'\]") as rec:
        config = PruneVidConfig.from_dict(saved)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert config == PruneVidConfig.aggressive()
    with pytest.raises(ValueError, match=r"unknown PruneVidConfig field\(s\): \['alpha_new_knob', 'zeta_new_knob'\]"):
        PruneVidConfig.from_dict(saved, strict=True)
    with pytest.raises(TypeError, match="expects a dict"):
        PruneVidConfig.from_dict([("tau", 0.5)])
    with pytest.raises(TypeError, match="wrong type"):  # known keys are still validated
        PruneVidConfig.from_dict({"keep_ratio": "0.4"})
    # a dict saved before a field existed gets its default
    old = {k: v for k, v in PruneVidConfig.paper().to_dict().items() if k != "keep_rounding"}
    assert PruneVidConfig.from_dict(old).keep_rounding == "floor"


# ------------------------------------------------------------------------------------------------ Stage 3 needs 2
def test_stage3_follows_stage2_silently_by_default() -> None:
    assert no_warnings(lambda: PruneVidConfig()).enable_stage3 is True
    assert no_warnings(lambda: PruneVidConfig(enable_stage2=False)).enable_stage3 is False
    assert no_warnings(lambda: PruneVidConfig.stage1_only()).enable_stage3 is False
    assert no_warnings(lambda: PruneVidConfig.disabled()).enable_stage3 is False
    assert no_warnings(lambda: PruneVidConfig.paper().replace(enable_stage2=False)).enable_stage3 is False
    assert no_warnings(lambda: PruneVidConfig(enable_stage3=False)).enable_stage3 is False


def test_stage3_without_stage2_is_turned_off_visibly() -> None:
    with pytest.warns(UserWarning, match=r"enable_stage3=True is turned off because enable_stage2=False") as rec:
        config = PruneVidConfig(enable_stage2=False, enable_stage3=True)
    assert config.enable_stage3 is False
    assert rec[0].filename == __file__  # points at the caller
    with pytest.warns(UserWarning, match="enable_stage3=True is turned off"):
        PruneVidConfig.paper().replace(enable_stage2=False, enable_stage3=True)


# ------------------------------------------------------------------------------------------------ pruning layer
@pytest.mark.parametrize("depth", range(1, 41))
def test_automatic_pruning_layer_is_always_valid(depth: int) -> None:
    config = PruneVidConfig.paper()
    if depth == 1:
        with pytest.raises(ValueError, match="at least 2 layers"):
            config.resolve_pruning_layer(depth)
        return
    layer = config.resolve_pruning_layer(depth)
    assert 0 <= layer <= depth - 2
    assert layer == min(round(10 * depth / 28), depth - 2)
    if depth > 2:
        assert layer >= config.resolve_pruning_layer(depth - 1)  # deeper model, no earlier layer
    # an explicit layer is used as given when valid, and never clamped
    assert PruneVidConfig(pruning_layer=depth - 2).resolve_pruning_layer(depth) == depth - 2
    with pytest.raises(ValueError, match=rf"pruning_layer={depth - 1} is out of range .* allowed 0..{depth - 2}"):
        PruneVidConfig(pruning_layer=depth - 1).resolve_pruning_layer(depth)


def test_automatic_pruning_layer_known_depths() -> None:
    config = PruneVidConfig.paper()
    assert [config.resolve_pruning_layer(d) for d in (2, 3, 12, 28, 36, 64)] == [0, 1, 4, 10, 13, 23]
    for bad in (0, -3, 2.0, True, "28"):
        with pytest.raises(ValueError, match="num_layers"):
            config.resolve_pruning_layer(bad)
