"""Accuracy-retention curves (`python -m modeling.eval --curves`, `modeling.eval.curves`): every method meets its
budget, the outputs are written and parse, workers give the same answers, bad arguments exit with code 2.

The runs use the trained demo model on the first 3 held-out questions at budgets 6% and 25% (CPU, one thread).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from modeling.demo import checkpoint_path
from modeling.eval import benchmark, curves
from modeling.eval.curves import PAPER_LADDER, MatchedSelection, match_keep_ratio, parse_budgets, parse_methods
from modeling.eval.run import Evaluation, main
from modeling.prunevid.select import grouped_topk


N = 3
BUDGETS = (0.06, 0.25)
#: Achieved retention (pooled over the questions) against the budget: within 1 point, or 10% of it where that is
#: more. The matched methods land on the closest count Stage 2's per-group quotas allow (a step adds up to one token
#: per group; `stage2_only` keeps the same share of every 64-token temporal patch, so 6/64 = 9.4% at 10%); random and
#: EVS keep round(b * n) tokens. Measured on 20 questions at the six default budgets: at most 0.62 point off
#: (`stage2_only` at 10%), `prunevid` at most 0.13, `fastv`, random and EVS 0.02.
ABSOLUTE, RELATIVE = 0.01, 0.10
#: The methods whose keep ratio is matched per question (`prunevid`, `stage2_only`, `fastv`, the Stage-1 ablations).
MATCHED = tuple(name for name, method in curves.METHODS.items() if isinstance(method, MatchedSelection))


def run_cli(tmp_path: Path, clips: Path, *extra: str) -> dict:
    argv = ["--curves", "--limit", str(N), "--budgets", ",".join(map(str, BUDGETS)), "--out", str(tmp_path),
            "--clip-cache", str(clips), "--threads", "1", "--quiet", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((tmp_path / "curves.json").read_text())


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def result(tmp_path_factory, clips) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("curves")
    return run_cli(out, clips), out


# ------------------------------------------------------------------------------------------------ budget matching
def test_keep_ratio_gives_the_closest_count_stage2_can_keep():
    sizes = [24] + [8] * 8  # a question's Stage-2 groups after Stage 1: one static block, eight dynamic frames
    for target in (1.0, 15.4, 22.0, 40.7, 87.9, 200.0):
        alpha, count = match_keep_ratio(sizes, target)
        reachable = {sum(math.floor(a / 1000 * n + 1e-9) for n in sizes) for a in range(1, 1001)}
        assert abs(count - target) == min(abs(c - target) for c in reachable), target
        assert 0 < alpha <= 1
        group = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])[None]
        kept = grouped_topk(torch.rand(group.shape, generator=torch.Generator().manual_seed(0)), group, alpha)
        assert int(kept.sum()) == count  # what Stage 2 then keeps
    assert match_keep_ratio(sizes, 15.4)[1] == 13  # 11, 12, 13 below; 22 next
    assert match_keep_ratio([], 10.0) == (1.0, 0)


class FakeTrial:
    """Stage 1 keeps 100, 300, 600, then 1,000 of 1,000 visual tokens on the rungs of the ladder (groups of 10)."""

    visual_tokens = 1000

    def __init__(self):
        self.probed = []

    def stage2_groups(self, key, technique):
        self.probed.append((key, technique()))
        return [10] * (10, 30, 60, 100, 100)[key[1]]


@pytest.mark.parametrize("budget, rung, keep_ratio", [(0.05, 0, 0.5), (0.1, 0, 1.0), (0.21, 1, 0.7), (0.48, 2, 0.8),
                                                      (0.9, 3, 0.9)])  # fmt: skip
def test_prunevid_takes_the_first_stage1_setting_that_keeps_the_budget(budget, rung, keep_ratio):
    method = MatchedSelection("prunevid", "", PAPER_LADDER)
    trial = FakeTrial()
    plan = method.plan(trial, budget)
    assert trial.probed == [(("prunevid", r), PAPER_LADDER[r].replace(keep_ratio=1.0)) for r in range(rung + 1)]
    assert plan.technique == PAPER_LADDER[rung].replace(keep_ratio=keep_ratio)
    assert plan.setting["expected"] == round(budget * 1000)
    labels = ("paper", "cluster_ratio=0.75", "cluster_ratio=1.0", "tau=1.0, cluster_ratio=1.0")
    assert plan.setting["stage1"] == labels[rung]


def test_a_factory_makes_a_prunevid_like_method():
    """The extension point for Stage-1 ablations: the factory gets each rung's config, keep ratio included."""
    made = []
    method = MatchedSelection("ablation", "", PAPER_LADDER, factory=lambda config: made.append(config) or "technique")
    trial = FakeTrial()
    plan = method.plan(trial, 0.21)
    assert plan.technique == "technique" and made[-1] == PAPER_LADDER[1].replace(keep_ratio=0.7)
    assert made[:-1] == [PAPER_LADDER[0].replace(keep_ratio=1.0), PAPER_LADDER[1].replace(keep_ratio=1.0)]  # probes
    assert [key for key, _ in trial.probed] == [("ablation", 0), ("ablation", 1)]


def test_parse_budgets_and_methods():
    assert parse_budgets(None) == list(curves.BUDGETS)
    assert parse_budgets("0.5, 0.03,0.5") == [0.03, 0.5]
    assert parse_methods(None)[:3] == ["prunevid", "stage2_only", "fastv"]
    for bad in ("0", "1.5", "-0.1", "16%", ""):
        with pytest.raises(ValueError, match="--budgets"):
            parse_budgets(bad)
    with pytest.raises(ValueError, match="unknown .*'bogus'"):
        parse_methods("prunevid,bogus")


# ------------------------------------------------------------------------------------------------ a real run
def test_every_method_meets_its_budget(result):
    payload, _ = result
    assert payload["budgets"] == list(BUDGETS) and set(payload["curves"]) == set(curves.METHODS)
    for name in (*MATCHED, "random", "evs"):
        for point, budget in zip(payload["curves"][name], BUDGETS):
            assert point["budget"] == budget
            assert abs(point["retention"] - budget) <= max(ABSOLUTE, RELATIVE * budget), (name, point["retention"])
            if name in MATCHED:  # the probe saw the groups the run had: Stage 2 kept exactly what was planned
                assert point["kept_visual_tokens"] == [s["expected"] for s in point["settings"]], name
                assert all(0 < s["keep_ratio"] <= 1 for s in point["settings"])
            else:
                assert point["kept_visual_tokens"] == [round(budget * n) for n in payload["visual_tokens"]]
    stage2 = payload["curves"]["stage2_only"][0]
    assert {s["stage1"] for s in stage2["settings"]} == {"no Stage 1"}


def test_the_system_prompt_control_keeps_as_many_tokens_as_the_question(result):
    """The negative control differs from its method only in what scores Stage 2: same Stage-1 setting, same count."""
    payload, _ = result
    for method in ("prunevid", "stage2_only"):
        for ours, control in zip(payload["curves"][method], payload["curves"][f"{method}_system_prompt"]):
            assert control["kept_visual_tokens"] == ours["kept_visual_tokens"], method
            assert [s["stage1"] for s in control["settings"]] == [s["stage1"] for s in ours["settings"]]


def test_fewer_frames_report_what_they_achieve(result):
    payload, _ = result
    items = benchmark.load_split("test", limit=N)
    for point, budget in zip(payload["curves"]["uniform_frames"], BUDGETS):
        frames = [s["nframes"] for s in point["settings"]]
        assert frames == [max(2, 2 * round(it.frames * budget / 2)) for it in items]
        assert point["kept_visual_tokens"] == [f * n // it.frames for f, n, it in zip(frames, payload["visual_tokens"],
                                                                                         items)]  # fmt: skip
        achieved = sum(point["kept_visual_tokens"]) / sum(payload["visual_tokens"])
        assert point["retention"] == round(achieved, 4)
    assert payload["curves"]["uniform_frames"][0]["retention"] > BUDGETS[0]  # 2 frames at least: the achieved share


def test_reusing_the_vision_tower_changes_no_answer(result, clips):
    """The run reuses each clip's vision-tower output across its prefills; without that, the same answers and tokens."""
    payload, _ = result
    items = benchmark.load_split("test", limit=2)
    evaluation = Evaluation.from_pretrained(checkpoint_path(), items, clip_cache=clips, progress=False)
    methods = ["prunevid", "evs", "uniform_frames"]
    fresh = curves.run_curves(methods, BUDGETS, evaluation, reuse_vision=False)
    for (name, budget), outcomes in fresh.items():
        point = payload["stock"] if name == "stock" else payload["curves"][name][BUDGETS.index(budget)]
        assert [o.predicted for o in outcomes] == point["predictions"][:2], (name, budget)
        assert [o.kept_visual_tokens for o in outcomes] == point["kept_visual_tokens"][:2], (name, budget)
    assert "forward" not in vars(evaluation.model.model.visual)  # the tower's own forward is back


def test_json_markdown_and_plot_are_written(result):
    payload, out = result
    items = benchmark.load_split("test", limit=N)
    assert payload["items"] == [it.id for it in items] and payload["n"] == N
    assert payload["benchmark_version"] == getattr(items[0], "version", 1) and payload["split"] == "test"
    stock = payload["stock"]
    assert stock["retention"] == 1.0 and stock["n"] == N and len(stock["predictions"]) == N
    for point in [stock] + [p for points in payload["curves"].values() for p in points]:
        assert set(point["predictions"]) <= set("ABCD")
        correct = sum(p == it.answer for p, it in zip(point["predictions"], items))
        assert point["accuracy"] == round(correct / N, 4) and point["ci95"][0] <= point["accuracy"] <= point["ci95"][1]
    table = (out / "curves.md").read_text()
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| method | budget 6%"))
    assert lines[header + 2].startswith("| `stock` | ")  # stock on top
    for name, points in payload["curves"].items():
        row = next(line for line in lines if line.startswith(f"| `{name}` | ") and "budget" not in line)
        assert f"{100 * points[1]['accuracy']:.1f}% at {100 * points[1]['retention']:.1f}%" in row
    from PIL import Image

    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 800


def test_paired_comparison_counts_the_questions_each_side_wins(result):
    payload, out = result
    assert payload["answers"] == [it.answer for it in benchmark.load_split("test", limit=N)]
    table = (out / "curves.md").read_text()
    paired = table[table.index("Paired against `prunevid`"):].splitlines()
    reference = payload["curves"]["prunevid"]
    for name, points in payload["curves"].items():
        if name == "prunevid":
            continue
        row = next(line for line in paired if line.startswith(f"| `{name}` | "))
        for point, theirs in zip(points, reference):
            right = [p == a for p, a in zip(point["predictions"], payload["answers"])]
            wrong_there = [p != a for p, a in zip(theirs["predictions"], payload["answers"])]
            wins = sum(r and w for r, w in zip(right, wrong_there))
            losses = sum(not r and not w for r, w in zip(right, wrong_there))
            assert f"+{wins} / -{losses}, p {curves.mcnemar_p(wins, losses):.3f}" in row, name
    assert curves.mcnemar_p(0, 0) == 1.0 and curves.mcnemar_p(5, 5) == 1.0
    assert curves.mcnemar_p(13, 0) == pytest.approx(2 / 2**13) and curves.mcnemar_p(0, 13) == curves.mcnemar_p(13, 0)
    assert 0.0195 < curves.mcnemar_p(29, 13) < 0.0196  # 2 * P(Binomial(42, 1/2) <= 13)


def test_workers_give_the_same_answers(result, clips, tmp_path):
    payload, _ = result
    sharded = run_cli(tmp_path, clips, "--workers", "2")
    assert sharded["workers"] == 2 and sharded["items"] == payload["items"]
    assert sharded["stock"]["predictions"] == payload["stock"]["predictions"]
    for name, points in payload["curves"].items():
        for ours, theirs in zip(points, sharded["curves"][name]):
            assert ours["predictions"] == theirs["predictions"], name
            assert ours["kept_visual_tokens"] == theirs["kept_visual_tokens"], name


def test_write_clips_only_writes_clips(tmp_path, monkeypatch):
    assert main(["--write-clips", "--limit", "2", "--clip-cache", str(tmp_path), "--quiet"]) == 0
    items = benchmark.load_split("test", limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{it.id}-{it.digest()}.mp4" for it in items)

    def no_writer(*args, **kwargs):
        raise AssertionError("a clip in the cache was written again")

    monkeypatch.setattr(benchmark, "write_video", no_writer)  # a machine without PyAV reads the carried clips
    assert [it.video_path(tmp_path).parent for it in items] == [tmp_path, tmp_path]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, message", [
    (["--curves", "--methods", "prunevid,bogus"], "--methods: unknown"),
    (["--curves", "--budgets", "0"], "outside (0, 1]"),
    (["--curves", "--budgets", "16"], "outside (0, 1]"),
    (["--curves", "--workers", "0"], "--workers must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--curves", "--configs", "paper"], "not with --configs"),
    (["--curves", "--json", "x.json"], "not with --json"),
    (["--curves", "--out", "/no/such/folder"], "does not exist"),
    (["--budgets", "0.1"], "only with --curves: --budgets"),
    (["--write-clips", "--curves"], "--write-clips"),
    (["--curves", "--benchmark-version", "9"], "--benchmark-version: choose from"),
])  # fmt: skip
def test_cli_rejects_bad_arguments(argv, message, capsys, tmp_path):
    if "--out" not in argv and "--curves" in argv:
        argv = [*argv, "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
