"""The `qwen-prunevid` command line, end to end on the bundled clip with the offline random-weight model.

Runs the CLI in-process through `modeling.cli.main(argv)` (it returns the exit code), plus one real subprocess.
Small inputs keep it fast: the 224x224 clip resized to 112x112 (4x4 tokens per temporal patch) and 2 new tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modeling import PRESETS
from modeling.cli import DEMO_CLIP, JSON_SCHEMA, main
from modeling.visualize import fates_layout


ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-new-tokens", "2", "--max-pixels", str(112 * 112), "--no-warmup"]
STATS_KEYS = {"visual_tokens", "after_stage1", "after_stage2", "kv_cache_tokens", "static_ratio", "segments",
              "pruning_layer"}  # fmt: skip
RUN_KEYS = {"answer", "new_tokens", "token_ids", "prompt_tokens", "stats", "prunevid", "timings", "memory"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_run(run: dict) -> None:
    assert RUN_KEYS <= run.keys()
    assert set(run["stats"]) == STATS_KEYS
    assert set(run["timings"]) == {"prefill_s", "decode_s", "decode_tokens_per_s"}
    assert run["timings"]["prefill_s"] > 0
    assert run["memory"]["peak_bytes"] > 0 and run["memory"]["kind"].startswith(("cpu", "cuda"))
    assert run["new_tokens"] == len(run["token_ids"]) <= 2
    s = run["stats"]
    assert s["visual_tokens"] >= s["after_stage1"] >= s["after_stage2"] > 0
    assert s["kv_cache_tokens"] <= run["prompt_tokens"]


def test_bundled_clip_is_small():
    assert DEMO_CLIP.is_file() and DEMO_CLIP.stat().st_size < 100_000


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_json(capsys, preset):
    code, out, err = run_cli(capsys, "--preset", preset, "--no-compare", "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)  # stdout holds the JSON and nothing else
    assert result["schema"] == JSON_SCHEMA and result["preset"] == preset and result["offline_demo"] is True
    assert result["grids"] == [[16, 8, 8]]  # 32 frames at 8 fps, 112x112 -> 16 x 4 x 4 LLM tokens
    check_run(result)
    assert "stock" not in result and "RANDOM-WEIGHT" in err
    stats = result["stats"]
    assert stats["visual_tokens"] == 16 * 4 * 4
    if preset == "off":
        assert stats["after_stage2"] == stats["visual_tokens"] and stats["kv_cache_tokens"] == result["prompt_tokens"]
    else:
        assert stats["kv_cache_tokens"] < result["prompt_tokens"]


def test_compare_table(capsys):
    code, out, err = run_cli(capsys, *FAST)  # the offline demo compares by default
    assert code == 0, err
    assert "Answer, stock:" in out and "Answer, PruneVid (paper):" in out
    assert "Answers agree: " in out
    for row in ("visual tokens", "after Stage 1", "after Stage 2", "KV cache", "prefill", "decode (tokens/s)"):
        assert row in out
    assert "meaningless" in out


def test_compare_json_and_overrides(capsys):
    code, out, err = run_cli(capsys, "--json", "--preset", "aggressive", "--keep-ratio", "0.5", "--no-stage3", *FAST)
    assert code == 0, err
    result = json.loads(out)
    check_run(result), check_run(result["stock"])
    assert isinstance(result["answers_agree"], bool)
    assert result["prunevid"]["keep_ratio"] == 0.5 and result["prunevid"]["enable_stage3"] is False
    assert result["prunevid"]["tau"] == 0.7  # from the preset
    assert result["stock"]["stats"]["after_stage2"] == result["stock"]["stats"]["visual_tokens"]
    assert result["stock"]["prunevid"]["enable_stage1"] is False


def test_visualize_writes_pngs(capsys, tmp_path):
    out_png = tmp_path / "fates.png"
    code, out, err = run_cli(capsys, "--visualize", str(out_png), *FAST)
    assert code == 0, err
    layout = fates_layout(16, 112, 112)  # 16 temporal patches of 112x112 frames
    assert (layout.rows, layout.cols) == (2, 8)
    # 8 panels of 200 px, 10 px apart, 12 px margins; header 78 + 2 x (18 + 200) + 10 + legend 34 + margin 12
    assert (layout.width, layout.height) == (1694, 570)
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.size == (layout.width, layout.height)
    with Image.open(tmp_path / "fates_budget.png") as image:
        assert image.format == "PNG" and image.size == (800, 450)
    assert f"Wrote {out_png}" in out


def _bad_model(tmp_path: Path) -> Path:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.mark.parametrize(
    "case",
    ["missing_video", "garbage_video", "missing_image", "unknown_preset", "keep_ratio", "pruning_layer",
     "other_model_type", "no_config"],
)  # fmt: skip
def test_bad_input_exits_2(capsys, tmp_path, case):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2048))
    empty = tmp_path / "empty"
    empty.mkdir()
    argv, message = {
        "missing_video": (["--video", str(tmp_path / "nope.mp4")], "Video file not found"),
        "garbage_video": (["--video", str(garbage)], "Video has no decodable frames"),
        "missing_image": (["--image", str(tmp_path / "nope.png")], "Image file not found"),
        "unknown_preset": (["--preset", "turbo"], "invalid choice: 'turbo'"),
        "keep_ratio": (["--keep-ratio", "1.5"], "--keep-ratio (PruneVidConfig.keep_ratio)=1.5 is out of range"),
        "pruning_layer": (["--pruning-layer", "11"], "--pruning-layer (PruneVidConfig.pruning_layer)=11 is out of range"),  # 12 layers
        "other_model_type": (["--model", str(_bad_model(tmp_path))], "model_type='llama'"),
        "no_config": (["--model", str(empty)], "has no config.json"),
    }[case]
    code, out, err = run_cli(capsys, *argv, *FAST)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


def test_subprocess_json():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "modeling", "--json", "--no-compare", "--preset", "fastv", *FAST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    check_run(result)
    assert result["stats"]["after_stage1"] == result["stats"]["visual_tokens"]  # FastV does not merge
    assert result["stats"]["pruning_layer"] == 2
