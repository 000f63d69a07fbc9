"""The `qwen-prunevid` command line, end to end on the bundled clip with the offline demo model.

Runs the CLI in-process through `modeling.app.cli.main(argv)` (it returns the exit code), and every bad input as a real
subprocess (exit code 2, exactly one line on stderr, nothing written, and for input that can be checked up front,
transformers never imported: no model was loaded). Small inputs keep it fast: the 224x224 clip resized to 112x112
(4x4 tokens per temporal patch) and 2 new tokens.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling import PRESETS, PruneVidConfig
from modeling.app.cli import main
from modeling.app.cli.report import JSON_SCHEMA
from modeling.demo import DEMO_CLIP
from modeling.demo.clips import make_clip
from modeling.app.pictures import fates_layout


ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-new-tokens", "2", "--max-pixels", str(112 * 112), "--no-warmup"]
STATS_KEYS = {"prompt_tokens", "visual_tokens", "after_stage1", "after_stage2", "kv_cache_tokens",
              "cached_visual_tokens", "image_tokens", "image_tokens_after_stage2", "static_ratio", "segments",
              "pruning_layer", "technique", "retention"}  # fmt: skip
RUN_KEYS = {"answer", "new_tokens", "token_ids", "prompt_tokens", "stats", "prunevid", "timings", "memory"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_run(run: dict) -> None:
    assert RUN_KEYS <= run.keys()
    assert set(run["stats"]) == STATS_KEYS
    assert set(run["timings"]) == {"time_to_first_token_s", "decode_s", "decode_tokens_per_s", "total_s"}
    assert run["timings"]["total_s"] >= run["timings"]["time_to_first_token_s"] > 0
    assert run["memory"]["peak_bytes"] > 0 and run["memory"]["kind"].startswith(("cpu", "cuda"))
    assert run["new_tokens"] == len(run["token_ids"]) <= 2
    s = run["stats"]
    assert s["visual_tokens"] >= s["after_stage1"] >= s["after_stage2"] > 0
    assert s["kv_cache_tokens"] <= run["prompt_tokens"] == s["prompt_tokens"]
    assert s["retention"] == round(s["cached_visual_tokens"] / s["visual_tokens"], 4)


def test_bundled_clip_is_small():
    assert DEMO_CLIP.is_file() and DEMO_CLIP.stat().st_size < 100_000


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_json(capsys, preset):
    code, out, err = run_cli(capsys, "--preset", preset, "--no-compare", "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)  # stdout holds the JSON and nothing else
    assert result["schema"] == JSON_SCHEMA and result["preset"] == preset and result["offline_demo"] is True
    assert result["grids"] == [[16, 8, 8]]  # 32 frames at 2 fps, 112x112 -> 16 x 4 x 4 LLM tokens
    check_run(result)
    assert "stock" not in result and "trained here on moving-shapes questions" in err
    assert result["correct_answer"] == "A" and result["correct_answer_text"] == "up"
    stats = result["stats"]
    assert stats["visual_tokens"] == 16 * 4 * 4
    if preset == "off":
        assert stats["after_stage2"] == stats["visual_tokens"] and stats["kv_cache_tokens"] == result["prompt_tokens"]
        assert stats["technique"] == "off" and stats["retention"] == 1.0
    else:
        assert stats["kv_cache_tokens"] < result["prompt_tokens"] and stats["technique"] == "prunevid"


def test_compare_table(capsys):
    code, out, err = run_cli(capsys, *FAST)  # the offline demo compares by default
    assert code == 0, err
    assert "Answer, stock:" in out and "Answer, PruneVid (paper):" in out
    assert "Answers agree: " in out
    for row in ("visual tokens", "after Stage 1", "after Stage 2", "KV cache", "retention", "time to first token",
                "decode (tokens/s)"):
        assert row in out
    assert "Correct:  A (up)" in out and "Answered correctly (A): " in out


def test_demo_answers_the_bundled_clip_correctly(capsys):
    """The trained demo model at the clip's training size: stock and PruneVid both give the correct letter."""
    code, out, err = run_cli(capsys, "--json", "--no-warmup")
    assert code == 0, err
    result = json.loads(out)
    assert result["grids"] == [[16, 16, 16]] and result["question"].startswith("Question: In which direction")
    assert result["answer"].strip()[:1] == result["stock"]["answer"].strip()[:1] == result["correct_answer"] == "A"
    assert result["answers_agree"] is True


def test_compare_json_and_overrides(capsys):
    code, out, err = run_cli(capsys, "--json", "--preset", "aggressive", "--keep-ratio", "0.5", "--no-stage3",
                             "--dynamic-cluster-ratio", "1", *FAST)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    check_run(result), check_run(result["stock"])
    assert result["prunevid"]["dynamic_cluster_ratio"] == 1.0
    assert result["stock"]["prunevid"]["dynamic_cluster_ratio"] is None
    assert isinstance(result["answers_agree"], bool)
    assert result["prunevid"]["keep_ratio"] == 0.5 and result["prunevid"]["enable_stage3"] is False
    assert result["prunevid"]["tau"] == 0.7  # from the preset
    assert result["stock"]["stats"]["after_stage2"] == result["stock"]["stats"]["visual_tokens"]
    assert result["stock"]["stats"]["technique"] == "off" and result["stock"]["stats"]["retention"] == 1.0
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


def test_visualize_preset_off_is_per_temporal_patch(capsys, tmp_path):
    out_png = tmp_path / "off.png"
    code, out, err = run_cli(capsys, "--preset", "off", "--no-compare", "--visualize", str(out_png), *FAST)
    assert code == 0, err
    with Image.open(out_png) as image:  # 16 temporal patches (32 frames): 2 rows of 8 panels, not 4 rows
        assert image.size == (fates_layout(16, 112, 112).width, fates_layout(16, 112, 112).height)
    assert "PruneVid: off" in out and f"Wrote {out_png}" in out


def test_visualize_svg_writes_svg(capsys, tmp_path):
    out_svg = tmp_path / "fates.svg"
    code, out, err = run_cli(capsys, "--visualize", str(out_svg), *FAST)
    assert code == 0, err
    for path in (out_svg, tmp_path / "fates_budget.svg"):
        head = path.read_bytes()[:400]
        assert b"<svg" in head and not head.startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fates.svg", "fates_budget.svg"]  # no temporary left
    assert f"Wrote {out_svg}" in out


def test_dtype_reaches_the_demo_model(capsys):
    code, out, err = run_cli(capsys, "--dtype", "bfloat16", "--no-compare", "--json", *FAST)
    assert code == 0, err
    assert json.loads(out)["dtype"] == "bfloat16"


def test_image_tokens_are_counted(capsys, tmp_path):
    image = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 168, 3), dtype=np.uint8)).save(image)
    argv = ["--image", str(image), "--question", "What is this?", "--no-compare", "--json", *FAST,
            "--max-pixels", str(112 * 168)]  # fmt: skip
    code, out, err = run_cli(capsys, *argv, "--include-images")
    assert code == 0, err
    result = json.loads(out)
    stats = result["stats"]
    assert stats["image_tokens"] == 112 * 168 // 28**2 == 24
    assert 0 < stats["image_tokens_after_stage2"] < 24  # Stage 2 selects among the image's tokens
    dropped = stats["image_tokens"] - stats["image_tokens_after_stage2"]
    assert stats["kv_cache_tokens"] == result["prompt_tokens"] - dropped  # Stage 3: exactly those left the cache
    assert stats["visual_tokens"] == 0  # no video
    code, out, err = run_cli(capsys, *argv, "--no-include-images")
    assert code == 0, err
    assert json.loads(out)["stats"]["image_tokens_after_stage2"] == 24  # images untouched


def _fake_checkpoint(folder: Path, config: object = None, *, weights: bytes | None = None, processor: bool = True,
                     layers: int = 12) -> Path:
    """A folder with the files of a Qwen2.5-VL checkpoint (tiny valid safetensors), for the up-front checks only."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if config is None:
        config = {"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": layers}}
    (folder / "config.json").write_text(json.dumps(config))
    if weights is None:
        save_file({"x": torch.zeros(4)}, str(folder / "model.safetensors"))
    elif weights:
        (folder / "model.safetensors").write_bytes(weights)
    if processor:
        for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_text("{}")
    return folder


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Bad (and a few good) input files."""
    root = tmp_path_factory.mktemp("bad")
    files = {"clip": make_clip(root / "clip.mp4", frames=8, size=(112, 224), fps=8.0)}
    files["garbage_video"] = root / "garbage.mp4"
    files["garbage_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    files["empty_video"] = root / "empty.mp4"
    files["empty_video"].write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    files["truncated_jpeg"] = root / "truncated.jpg"
    files["truncated_jpeg"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    files["text_image"] = root / "notes.png"
    files["text_image"].write_text("not an image")
    files["wide_image"] = root / "wide.png"
    Image.new("RGB", (402, 2)).save(files["wide_image"])  # aspect ratio 201 > qwen-vl-utils' 200
    safetensors = root / "w.safetensors"
    _fake_checkpoint(root / "ok").joinpath("model.safetensors").rename(safetensors)
    data = safetensors.read_bytes()
    files["ckpt_corrupt_weights"] = _fake_checkpoint(root / "corrupt", weights=os.urandom(256))
    files["ckpt_truncated_weights"] = _fake_checkpoint(root / "truncated", weights=data[:-8])
    files["ckpt_no_weights"] = _fake_checkpoint(root / "no_weights", weights=b"")
    files["ckpt_no_processor"] = _fake_checkpoint(root / "no_processor", processor=False)
    files["ckpt_config_list"] = _fake_checkpoint(root / "config_list", config=[1, 2])
    files["ckpt_llama"] = _fake_checkpoint(root / "llama", config={"model_type": "llama"})
    files["ckpt_no_config"] = root / "no_config"
    files["ckpt_no_config"].mkdir()
    files["ckpt_12_layers"] = _fake_checkpoint(root / "twelve")
    files["ckpt_bad_saved"] = _fake_checkpoint(root / "bad_saved", config={
        "model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": 12}, "prunevid": {"keep_ratio": 7}})
    return files


# id: (argv, expected text in the error line, checkable before any model load)
BAD_INPUTS: dict[str, tuple[list[str], str, str]] = {
    # video reads that crashed in qwen-vl-utils' removed torchvision fallback
    "max_frames_0": (["--max-frames", "0"], "--max-frames (MediaOptions.max_frames)=0 is out of range: allowed "
                     "integers 2..", "light"),
    "max_frames_1": (["--max-frames", "1"], "--max-frames (MediaOptions.max_frames)=1 is out of range", "light"),
    "max_frames_negative": (["--max-frames", "-1"], "--max-frames (MediaOptions.max_frames)=-1", "light"),
    "max_frames_huge": (["--max-frames", str(10**20)], "argument --max-frames: must be an integer of at most", "light"),
    "fps_nan": (["--fps", "nan"], "argument --fps: must be a finite number, got 'nan'", "light"),
    "fps_zero": (["--fps", "0"], "--fps (MediaOptions.fps)=0.0 is out of range: allowed a finite number > 0", "light"),
    "fps_inf": (["--fps", "inf"], "argument --fps: must be a finite number", "light"),
    "video_url_unreachable": (["--video", "http://unreachable.invalid/clip.mp4"], "unreachable.invalid/clip.mp4", "light"),
    "video_data_uri": (["--video", "data:video/mp4;base64,AAAA"], "data: URIs are supported for images only", "light"),
    "image_url_unreachable": (["--image", "http://unreachable.invalid/x.png"], "Cannot download http://unreachable", "light"),
    # validated too late before
    "visualize_missing_folder": (["--visualize", "{tmp}/nowhere/x.png"], "nowhere does not exist", "light"),
    "visualize_proc": (["--visualize", "/proc/x.png"], "--visualize /proc/x.png: cannot write there", "light"),
    "visualize_directory": (["--visualize", "{tmp}"], "is a directory", "light"),
    "visualize_unknown_format": (["--visualize", "{tmp}/x.gif"], "must end in .png, .svg, .pdf", "light"),
    "max_pixels_0": (["--max-pixels", "0"], "--max-pixels (MediaOptions.max_pixels)=0 is out of range: allowed "
                     "integers 784..", "light"),
    "max_pixels_negative": (["--max-pixels", "-5"], "--max-pixels (MediaOptions.max_pixels)=-5", "light"),
    "max_pixels_1": (["--max-pixels", "1"], "--max-pixels (MediaOptions.max_pixels)=1", "light"),
    "min_above_max_pixels": (["--min-pixels", "50000", "--max-pixels", "12544"],
                             "--min-pixels (MediaOptions.min_pixels)=50000 is larger than max_pixels=12544", "light"),
    "max_pixels_too_small_for_aspect": (["--video", "{clip}", "--max-pixels", "784", "--min-pixels", "1"],
                                        "is resized to", "torch"),
    "truncated_jpeg": (["--image", "{truncated_jpeg}"], "Image cannot be decoded", "light"),
    "text_as_image": (["--image", "{text_image}"], "Image cannot be decoded", "light"),
    "aspect_ratio_201": (["--image", "{wide_image}"], "aspect ratio must be smaller than 200", "torch"),
    "dpc_knn_k_huge": (["--dpc-knn-k", str(10**20)], "argument --dpc-knn-k: must be an integer of at most", "light"),
    "seed_huge": (["--seed", str(10**20)], "argument --seed: must be an integer in 0..", "light"),
    "max_new_tokens_0": (["--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer in 1..32768", "light"),
    "max_new_tokens_huge": (["--max-new-tokens", str(10**9)], "argument --max-new-tokens", "light"),
    "seed_400_digits": (["--seed", "1" + "0" * 400], "argument --seed: must be an integer in 0..", "light"),
    "tau_nan": (["--tau", "nan"], "argument --tau: must be a finite number", "light"),
    "tau_overflow": (["--tau", "1e999"], "argument --tau: must be a finite number, got '1e999'", "light"),
    # exit 1 before
    "ckpt_corrupt_weights": (["--model", "{ckpt_corrupt_weights}"], "not a valid safetensors file", "light"),
    "ckpt_truncated_weights": (["--model", "{ckpt_truncated_weights}"], "is truncated", "light"),
    "ckpt_no_weights": (["--model", "{ckpt_no_weights}"], "No weights in", "light"),
    "ckpt_no_processor": (["--model", "{ckpt_no_processor}"], "No processor config in", "light"),
    "ckpt_config_list": (["--model", "{ckpt_config_list}"], "must hold a JSON object, got a JSON list", "light"),
    "ckpt_other_model_type": (["--model", "{ckpt_llama}"], "model_type='llama'", "light"),
    "ckpt_no_config": (["--model", "{ckpt_no_config}"], "has no config.json", "light"),
    "ckpt_a_file": (["--model", "{clip}"], "got the file", "light"),
    "ckpt_bad_saved_settings": (["--model", "{ckpt_bad_saved}"], "saved in", "light"),
    "ckpt_pruning_layer": (["--model", "{ckpt_12_layers}", "--pruning-layer", "11"],
                           "--pruning-layer (PruneVidConfig.pruning_layer)=11 is out of range", "light"),
    "hub_id_offline": (["--model", "nobody/no-such-model"], "not in the local Hugging Face cache", "light"),
    "not_a_hub_id": (["--model", "no such dir/x/y"], "neither an existing directory nor a Hub id", "light"),
    "device_cuda_missing": (["--device", "cuda:99"], "--device cuda:99:", "torch"),
    "device_bogus": (["--device", "bogus"], "--device 'bogus' is not a device", "light"),
    "flash_attention_on_cpu": (["--device", "cpu", "--attn", "flash_attention_2"], "needs a CUDA GPU", "torch"),
    # more than one line before
    "unknown_flag": (["--frobnicate"], "unrecognized arguments: --frobnicate (see qwen-prunevid --help)", "light"),
    "unknown_preset": (["--preset", "turbo"], "invalid choice: 'turbo'", "light"),
    "garbage_video": (["--video", "{garbage_video}"], "Video has no decodable frames", "light"),
    "empty_video": (["--video", "{empty_video}"], "Video has no decodable frames", "light"),
    "missing_video": (["--video", "{tmp}/nope.mp4"], "Video file not found", "light"),
    "directory_as_video": (["--video", "{tmp}"], "is a directory, not a video file", "light"),
    "missing_image": (["--image", "{tmp}/nope.png"], "Image file not found", "light"),
    # wrong behaviour before
    "empty_question": (["--question", ""], "--question must not be empty", "light"),
    "blank_question": (["--question", "  "], "--question must not be empty", "light"),
    "stage3_without_stage2": (["--no-stage2", "--stage3"], "--stage3 needs Stage 2", "light"),
    "keep_ratio": (["--keep-ratio", "1.5"], "--keep-ratio (PruneVidConfig.keep_ratio)=1.5 is out of range", "light"),
    "dynamic_cluster_ratio": (["--dynamic-cluster-ratio", "0"],
                              "--dynamic-cluster-ratio (PruneVidConfig.dynamic_cluster_ratio)=0", "light"),
    # the demo model's depth is known up front (modeling.demo.DEMO_ARCHITECTURE)
    "pruning_layer_demo": (["--pruning-layer", "11"], "--pruning-layer (PruneVidConfig.pruning_layer)=11", "light"),
}
_WRAPPER = (
    "import sys\n"
    "from modeling.app.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.write('\\n@imported=%s' % sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    "sys.exit(code)\n"
)


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.glob("**/*")}


@pytest.fixture(scope="module")
def bad_runs(bad, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, float]]:
    """Every case of BAD_INPUTS as a subprocess (several at a time), with --json and --visualize into an empty
    folder of its own; returns per case the process, that folder and the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    names = {k: str(v) for k, v in bad.items()}
    media_before = _snapshot(bad["clip"].parent)

    def run(case: str) -> tuple[subprocess.CompletedProcess, Path, float]:
        work = root / case
        (work / "out").mkdir(parents=True)
        argv = [arg.format(tmp=str(work), **names) for arg in BAD_INPUTS[case][0]]
        command = [sys.executable, "-c", _WRAPPER, "--json", "--visualize", str(work / "out" / "fates.png"), *FAST,
                   *argv]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return proc, work, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(zip(BAD_INPUTS, pool.map(run, BAD_INPUTS)))
    assert _snapshot(bad["clip"].parent) == media_before  # no input file created, changed or removed
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case, bad_runs):
    _, message, stage = BAD_INPUTS[case]
    proc, work, elapsed = bad_runs[case]
    stdout, _, imported = proc.stdout.rpartition("\n@imported=")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr  # one line: no usage text, no native log lines, no notes, no traceback
    assert lines[0].startswith("qwen-prunevid: error: ") and message in lines[0], lines[0]
    assert stdout == ""  # --json printed nothing
    assert list(_snapshot(work)) == [work / "out"]  # --visualize (and anything else) wrote nothing
    expected = {"light": [], "torch": ["torch"], "model": ["torch", "transformers"]}[stage]
    assert imported == str(expected), f"imported {imported} before failing, after {elapsed:.1f} s"


def test_help_imports_nothing_heavy():
    """`--help` (and the argument checks) answer without importing torch, transformers or the media readers: what
    makes them fast, checked without a clock."""
    code = "import sys; from modeling.app.cli import main\n" \
           "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print(sorted(m for m in ('torch', 'transformers', 'decord', 'qwen_vl_utils', 'numpy', 'av') " \
           "if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: qwen-prunevid" in proc.stdout and proc.stdout.strip().endswith("[]")


@pytest.mark.slow
def test_lazy_package_exports():
    code = "import sys, modeling; assert 'torch' not in sys.modules\n" \
           "from modeling import PruneVidConfig, PRESETS; assert 'torch' not in sys.modules\n" \
           "from modeling import Qwen2_5_VLPruneVid, VideoQA; print(Qwen2_5_VLPruneVid.__name__, VideoQA.__name__)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Qwen2_5_VLPruneVid", "VideoQA"]


def test_checkpoint_saved_settings_are_the_default(capsys, tmp_path):
    from modeling.demo.offline import build_processor
    from conftest import save_random_model

    folder = save_random_model(tmp_path / "ckpt")
    build_processor().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["prunevid"] = {**PruneVidConfig.aggressive().to_dict(), "keep_ratio": 0.3, "knob_of_a_newer_version": 1}
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli(capsys, "--model", str(folder), "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)
    assert result["preset"] == "saved" and result["prunevid"]["keep_ratio"] == 0.3 and result["prunevid"]["tau"] == 0.7
    notes = [line for line in err.splitlines() if "knob_of_a_newer_version" in line]
    assert len(notes) == 1 and notes[0].startswith("qwen-prunevid: note: ")  # the unknown saved key, said once
    code, out, err = run_cli(capsys, "--model", str(folder), "--json", "--tau", "0.9", *FAST)
    assert code == 0, err
    result = json.loads(out)  # an override applies on top of the saved settings
    assert result["preset"] == "saved" and result["prunevid"]["keep_ratio"] == 0.3 and result["prunevid"]["tau"] == 0.9
    code, out, err = run_cli(capsys, "--model", str(folder), "--json", "--preset", "paper", *FAST)
    assert code == 0, err
    result = json.loads(out)  # an explicit preset wins
    assert result["preset"] == "paper" and result["prunevid"] == PruneVidConfig.paper().to_dict()


@pytest.mark.slow
def test_subprocess_json():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "modeling", "--json", "--no-compare", "--preset", "fastv", *FAST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    check_run(result)
    # stderr holds the demo's note and nothing else: no "qwen-vl-utils using decord", no warnings, no native logs
    assert [line.split(":")[:2] for line in proc.stderr.splitlines()] == [["qwen-prunevid", " note"]], proc.stderr
    assert result["stats"]["after_stage1"] == result["stats"]["visual_tokens"]  # FastV does not merge
    assert result["stats"]["pruning_layer"] == 2 and result["schema"] == "qwen-prunevid.result/v2"


@pytest.mark.parametrize("patches", [1, 2, 3, 5, 16])
def test_short_clip_pictures_fit_their_text(patches):
    """Title, header, panel labels and legend lie inside the picture, however few temporal patches there are."""
    import matplotlib.pyplot as plt

    from modeling import PruneVidStats
    from modeling.app.pictures import MIN_WIDTH, _fates_figure

    frames = np.zeros((2 * patches, 56, 84, 3), dtype=np.uint8)
    stats = PruneVidStats(prompt_tokens=12400, visual_tokens=12345, after_stage1=6789, after_stage2=2345,
                          kv_cache_tokens=2400, cached_visual_tokens=2345, static_ratio=0.5, pruning_layer=10)  # fmt: skip
    fig, layout = _fates_figure(frames, None, stats, title="PruneVid 'conservative' on a_long_file_name_clip.mp4",
                                seconds_per_patch=0.25, grid=(patches, 2, 3))  # fmt: skip
    try:
        assert layout.width >= MIN_WIDTH and layout.cols == min(patches, 8)
        renderer = fig.canvas.get_renderer()
        artists = [*fig.texts, *fig.legends]
        assert len(fig.texts) >= 3 + patches and fig.legends  # title, counts, details, one label per panel
        for artist in artists:
            box = artist.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= layout.width and box.y1 <= layout.height, artist
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--cuda-graphs"], True),
        (["--preset", "fast"], True),
        (["--preset", "fast", "--no-cuda-graphs"], False),
        (["--preset", "off", "--cuda-graphs"], True),
    ],
)
def test_cuda_graphs_switch_reaches_the_config(argv, expected):
    """`--[no-]cuda-graphs` sets `PruneVidConfig.cuda_graphs` over the preset's value (fast() records graphs)."""
    from modeling.app.cli.parser import build_parser
    from modeling.app.cli.run import _prunevid_config

    config, _ = _prunevid_config(build_parser().parse_args(argv), None, [])
    assert config.cuda_graphs is expected
    assert config.to_dict()["cuda_graphs"] is expected


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "stock"),
        (["--preset", "fast"], "vectorized"),
        (["--preset", "fast", "--rope-index", "stock"], "stock"),
        (["--preset", "off", "--rope-index", "vectorized"], "vectorized"),
    ],
)
def test_rope_index_flag_reaches_the_config(argv, expected):
    """`--rope-index` sets `PruneVidConfig.rope_index` over the preset's value (fast() vectorises it)."""
    from modeling.app.cli.parser import build_parser
    from modeling.app.cli.run import _prunevid_config

    config, _ = _prunevid_config(build_parser().parse_args(argv), None, [])
    assert config.rope_index == expected
