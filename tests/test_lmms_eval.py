"""The lmms-eval plugin (`modeling/lmms`): model `qwen2_5_vl_prunevid` and task `prunevid_moving_shapes`.

The end-to-end checks run the lmms-eval CLI as a user would (entry-point model, `--include_path` task, offline),
with the trained demo model on `prunevid_moving_shapes --limit 24`:

- `prunevid=off` answers exactly what lmms-eval's stock `qwen2_5_vl` answers on the same checkpoint (bfloat16,
  the stock class's only dtype), sample by sample;
- `prunevid=off` and `prunevid=paper` score what `python -m modeling.eval` scores on the same items (float32, the
  project's CPU dtype), item by item;
- PruneVid's numbers are in every logged sample and the run's mean retention is in the results;
- two data-parallel processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on the CPU) shard the items
  and give the single process's answers and accuracy; `--batch_size 4` gives each sample its numbers alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch


lmms_eval = pytest.importorskip("lmms_eval", reason="the eval extra is not installed: pip install -e '.[eval]'")

from modeling.lmms import MODEL_ID, TASKS_DIR  # noqa: E402
from modeling.lmms import moving_shapes  # noqa: E402
from modeling.lmms.model import (  # noqa: E402
    PruneVidTokenCounts,
    Qwen2_5_VLPruneVidLMM,
    _check_videos,
    prunevid_config_from_args,
    sample_stats,
    summarize,
)
from modeling.prunevid.config import PruneVidConfig  # noqa: E402


LIMIT = 24
TASK = "prunevid_moving_shapes"
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ unit checks
def test_entry_point_resolves_to_the_plugin_class():
    from lmms_eval.models import get_model, get_model_manifest

    assert get_model(MODEL_ID) is Qwen2_5_VLPruneVidLMM
    assert get_model_manifest(MODEL_ID).chat_class_path == "modeling.lmms.model.Qwen2_5_VLPruneVidLMM"
    # the stock model a user compares against resolves to the class the plugin extends
    assert issubclass(Qwen2_5_VLPruneVidLMM, get_model("qwen2_5_vl"))


def test_model_args_build_the_config():
    assert prunevid_config_from_args("paper", {}) == PruneVidConfig.paper()
    assert prunevid_config_from_args("off", {}) == PruneVidConfig.disabled()
    args = {"keep_ratio": 0.3, "pruning_layer": "None", "enable_stage1": False}
    config = prunevid_config_from_args("aggressive", args)
    assert config == PruneVidConfig.aggressive(keep_ratio=0.3, enable_stage1=False)
    assert prunevid_config_from_args("fastv", {"pruning_layer": 1}).pruning_layer == 1


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("paper", {"keep_ratio": 1.5}, "PruneVidConfig.keep_ratio=1.5 is out of range"),
        ("paper", {"dpc_knn_k": 7.5}, "PruneVidConfig.dpc_knn_k=7.5"),
        ("paper", {"keep_ratio": "high"}, "PruneVidConfig.keep_ratio='high'"),
        ("paper", {"selection_query": "first"}, "PruneVidConfig.selection_query='first' is not one of"),
        ("paper", {"keep_ratoi": 0.3}, "unknown model arg(s) ['keep_ratoi']"),
        ("strong", {}, "unknown PruneVid preset 'strong'"),
    ],
)
def test_bad_model_args_raise_the_config_error(preset, overrides, message):
    """lmms-eval hands over ints, floats, bools and strings; a bad one raises the config's own error (`ValueError`
    out of range, `TypeError` wrong type), naming the field and the value."""
    with pytest.raises((ValueError, TypeError)) as error:
        prunevid_config_from_args(preset, overrides)
    assert message in str(error.value)


def test_bad_model_arg_fails_before_loading(tmp_path):
    """The error comes from the args, before any checkpoint is read (the path does not even exist)."""
    with pytest.raises(ValueError, match="tau=2.0 is out of range"):
        Qwen2_5_VLPruneVidLMM(pretrained=str(tmp_path / "nowhere"), device="cpu", device_map="cpu", tau=2.0)
    with pytest.raises(ValueError, match="dtype='float8' is not a torch floating-point dtype"):
        Qwen2_5_VLPruneVidLMM(pretrained=str(tmp_path / "nowhere"), device="cpu", device_map="cpu", dtype="float8")


def test_missing_or_broken_video_is_named(tmp_path, media):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    turn = [{"role": "user", "content": [{"type": "video", "url": str(media["clip8"])}, {"type": "text", "text": "?"}]}]
    _check_videos(turn)  # a good clip passes
    turn[0]["content"][0]["url"] = str(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        _check_videos(turn)
    turn[0]["content"][0]["url"] = str(broken)
    with pytest.raises(ValueError, match="broken.mp4"):
        _check_videos(turn)


def test_task_data_is_the_benchmarks_test_split():
    from modeling.eval.benchmark import load_split

    ids = [json.loads(line)["id"] for line in moving_shapes.DATA_FILE.read_text().splitlines()]
    items = load_split("test")
    assert ids == [item.id for item in items]
    import datasets

    docs = moving_shapes.process_docs(datasets.Dataset.from_list([{"id": i} for i in ids[:7]]))
    for doc, item in zip(docs, items[:7]):
        assert (doc["question"], doc["answer"], tuple(doc["options"])) == (item.question, item.answer, item.options)
        assert moving_shapes.doc_to_text(doc) == item.question


@pytest.mark.parametrize(
    ("response", "letter"),
    [("B", "B"), ("(B) left", "B"), ("B. left", "B"), (" C:", "C"), ("D)", "D"), ("Because", None), ("", None),
     ("the answer is B", None)],
)  # fmt: skip
def test_exact_letter_match(response, letter):
    assert moving_shapes.extract_letter(response) == letter
    doc = {"answer": "B"}
    assert moving_shapes.process_results(doc, [response]) == {"exact_match": float(letter == "B")}


def test_summary_counts_each_sample_once():
    """A padding duplicate of a rank's last request (same task and doc id) counts once; samples without video
    tokens are left out of the mean."""
    stats = lambda retention, visual=100: {"retention": retention, "visual_tokens": visual,  # noqa: E731
                                           "after_stage2": int(retention * visual) if retention else 0}  # fmt: skip
    records = [("a", 0, stats(0.2)), ("a", 1, stats(0.4)), ("a", 1, stats(0.4)), ("b", 0, stats(0.9)),
               ("b", 1, stats(None, 0))]  # fmt: skip
    summary = summarize(records)
    assert summary["prunevid_retention"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert summary["prunevid_retention/a"] == pytest.approx(0.3)
    assert summary["prunevid_retention/b"] == pytest.approx(0.9)
    assert summary["prunevid_kept_tokens"] == pytest.approx((20 + 40 + 90) / 3)
    assert summarize([]) == {}


def test_token_counts_carry_prunevid_numbers():
    counts = PruneVidTokenCounts(output_tokens=3, prunevid={"retention": 0.25})
    assert counts.to_dict() == {"output_tokens": 3, "prunevid": {"retention": 0.25}}
    assert PruneVidTokenCounts(output_tokens=3).to_dict() == {"output_tokens": 3}


def test_sample_stats_split_a_batch_per_row(checkpoints, processor, media):
    """`sample_stats` gives each row of a left-padded batch the numbers that row gets alone; PruneVid off keeps
    every token (retention 1)."""
    from functools import partial

    from modeling import Qwen2_5_VLPruneVid
    from modeling.inputs import build_messages, prepare_inputs

    build = partial(build_messages, min_pixels=28 * 28 * 4, max_pixels=112 * 112, fps=4.0)
    conversations = [build("Where do the squares go?", videos=[str(media["clip16"])]),
                     build("Is there a scene cut?", videos=[str(media["clip12_cut"])]),
                     build("And here?", videos=[str(media["clip8"])])]  # fmt: skip
    model = Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], prunevid=PruneVidConfig.paper()).eval()

    def stats_of(inputs):
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        return sample_stats(model, inputs["input_ids"], inputs["attention_mask"])

    batched = stats_of(prepare_inputs(processor, conversations))
    alone = [stats_of(prepare_inputs(processor, conversation))[0] for conversation in conversations]
    counts = ("visual_tokens", "after_stage1", "after_stage2", "kv_cache_tokens", "prompt_tokens", "segments")
    assert [{k: row[k] for k in counts} for row in batched] == [{k: row[k] for k in counts} for row in alone]
    assert len({row["visual_tokens"] for row in alone}) == 3  # three different clips: rows cannot be swapped
    for row in batched:
        assert 0 < row["retention"] < 1
        assert row["retention"] == row["after_stage2"] / row["visual_tokens"]

    model.prunevid = PruneVidConfig.disabled()
    for row, single in zip(stats_of(prepare_inputs(processor, conversations)), alone):
        assert row["retention"] == 1.0
        assert row["after_stage2"] == row["visual_tokens"] == single["visual_tokens"]
        assert row["kv_cache_tokens"] == row["prompt_tokens"] == single["prompt_tokens"]


# ------------------------------------------------------------------------------------------- the CLI, end to end
def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(cache / "hf_datasets"),
        QWEN_PRUNEVID_CACHE=str(cache / "qwen_prunevid"),  # the rendered clips, shared by every run
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")])),
    )
    return env


class Run:
    """One lmms-eval CLI run: its results file, its logged samples (by doc id) and its log."""

    def __init__(self, output: Path, log: str, seconds: float) -> None:
        (results_file,) = output.glob("*/*_results.json")
        (samples_file,) = output.glob(f"*/*_samples_{TASK}.jsonl")
        self.results: dict[str, Any] = json.loads(results_file.read_text())
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        self.samples = {sample["doc_id"]: sample for sample in samples}
        assert len(self.samples) == len(samples), "a document was logged twice"
        self.log = log
        self.seconds = seconds

    @property
    def accuracy(self) -> float:
        return self.results["results"][TASK]["exact_match,none"]

    def answers(self) -> dict[int, str]:
        return {doc_id: sample["filtered_resps"] for doc_id, sample in self.samples.items()}

    def prunevid(self, doc_id: int) -> dict[str, Any]:
        (counts,) = self.samples[doc_id]["token_counts"]
        return counts["prunevid"]


def lmms_eval_cli(tmp: Path, name: str, model: str, model_args: str, *launcher: str, batch_size: int = 1) -> Run:
    """`lmms-eval --model MODEL --model_args ... --tasks prunevid_moving_shapes --include_path ... --limit 24`, or
    the same through `launcher` (e.g. `accelerate launch ... -m lmms_eval`)."""
    output = tmp / name
    command = [*(launcher or [str(BIN / "lmms-eval")]), "--model", model, "--model_args", model_args,
               "--tasks", TASK, "--include_path", str(TASKS_DIR), "--limit", str(LIMIT),
               "--batch_size", str(batch_size), "--log_samples", "--output_path", str(output)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=_env(tmp), capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{log[-6000:]}"
    return Run(output, log, time.perf_counter() - start)

