"""The lmms-eval plugin (`modeling/eval/lmms`): model `qwen2_5_vl_prunevid` and task `prunevid_moving_shapes`.

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

from modeling.eval.lmms import MODEL_ID, TASKS_DIR  # noqa: E402
from modeling.eval.lmms import moving_shapes  # noqa: E402
from modeling.eval.lmms.model import (  # noqa: E402
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
    assert get_model_manifest(MODEL_ID).chat_class_path == "modeling.eval.lmms.model.Qwen2_5_VLPruneVidLMM"
    # the stock model a user compares against resolves to the class the plugin extends
    assert issubclass(Qwen2_5_VLPruneVidLMM, get_model("qwen2_5_vl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [({"fps": 0}, "fps=0.0 is out of range"), ({"max_num_frames": 1}, "max_num_frames=1 is out of range"),
     ({"min_pixels": 5000, "max_pixels": 1000}, "min_pixels=5000 is larger"), ({"max_pixels": 10}, "max_pixels=10")],
)  # fmt: skip
def test_media_args_are_checked_before_loading(args, message):
    """The media args are validated once, as the CLI's and VideoQA's `MediaOptions` (nothing is loaded first)."""
    with pytest.raises(ValueError, match=f"qwen2_5_vl_prunevid: {message}"):
        Qwen2_5_VLPruneVidLMM(pretrained="/no/such/checkpoint", device="cpu", **args)


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
    ("response", "letter"), [("B", "B"), (" b", "B"), ("B. left", "B"), ("C", "C"), ("(B)", "("), ("", None)]
)
def test_exact_letter_match(response, letter):
    """The response's first character, as `python -m modeling.eval` scores."""
    assert moving_shapes.extract_letter(response) == letter
    doc = {"answer": "B"}
    assert moving_shapes.process_results(doc, [response]) == {"exact_match": float(letter == "B")}


def test_summary_counts_each_sample_once():
    """A padding duplicate of a rank's last request (same task and doc id) counts once; samples without video
    tokens are left out of the mean."""
    stats = lambda retention, visual=100: {"retention": retention, "visual_tokens": visual,  # noqa: E731
                                           "cached_visual_tokens": int(retention * visual) if retention else 0}  # fmt: skip
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
    from modeling import MediaOptions, Qwen2_5_VLPruneVid
    from modeling.app.inputs import build_messages, prepare_inputs

    options = MediaOptions(min_pixels=28 * 28 * 4, max_pixels=112 * 112, fps=4.0)
    conversations = [build_messages("Where do the squares go?", [str(media["clip16"])], options=options),
                     build_messages("Is there a scene cut?", [str(media["clip12_cut"])], options=options),
                     build_messages("And here?", [str(media["clip8"])], options=options)]  # fmt: skip
    model = Qwen2_5_VLPruneVid.from_pretrained(checkpoints["gqa2"], prunevid=PruneVidConfig.paper()).eval()

    def stats_of(inputs):
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        return sample_stats(model)

    batched = stats_of(prepare_inputs(processor, conversations))
    alone = [stats_of(prepare_inputs(processor, conversation))[0] for conversation in conversations]
    assert batched == alone
    assert len({row["visual_tokens"] for row in alone}) == 3  # three different clips: rows cannot be swapped
    for row in batched:
        assert 0 < row["retention"] < 1 and row["technique"] == "prunevid"
        assert row["retention"] == round(row["cached_visual_tokens"] / row["visual_tokens"], 4)

    model.prunevid = PruneVidConfig.disabled()
    for row, single in zip(stats_of(prepare_inputs(processor, conversations)), alone):
        assert row["retention"] == 1.0 and row["technique"] == "off"
        assert row["after_stage2"] == row["visual_tokens"] == single["visual_tokens"]
        assert row["kv_cache_tokens"] == row["prompt_tokens"] == single["prompt_tokens"]


# ------------------------------------------------------------------------------------------- the CLI, end to end
def _free_port() -> int:
    """A TCP port nothing listens on now (the system picks it), for the launcher's rendezvous."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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



@pytest.fixture(scope="module")
def demo_checkpoint() -> str:
    from modeling.demo import checkpoint_path

    return str(checkpoint_path())


class Runs:
    """The CLI runs of this module, each made once, on first use."""

    def __init__(self, tmp: Path, checkpoint: str) -> None:
        from modeling.eval.benchmark import MEDIA

        self.tmp = tmp
        # The benchmark's clips reach the model at their native size and frame count, as in `python -m modeling.eval`.
        video = ",".join(f"{key}={value}" for key, value in MEDIA.to_dict().items())
        self.args = f"pretrained={checkpoint},device=cpu,device_map=cpu,{video}"
        self._runs: dict[str, Run] = {}

    def get(self, name: str) -> Run:
        if name not in self._runs:
            self._runs[name] = self._make(name)
        return self._runs[name]

    def _make(self, name: str) -> Run:
        args = self.args
        if name == "stock":  # lmms-eval's own qwen2_5_vl: bfloat16, its only dtype
            return lmms_eval_cli(self.tmp, name, "qwen2_5_vl", args)
        if name == "off_bf16":
            return lmms_eval_cli(self.tmp, name, MODEL_ID, f"{args},prunevid=off")
        if name in ("off", "paper"):  # float32, the dtype of `python -m modeling.eval` on the CPU
            return lmms_eval_cli(self.tmp, name, MODEL_ID, f"{args},dtype=float32,prunevid={name}")
        if name == "paper_2proc_batch2":
            launcher = (str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                        str(_free_port()), "-m", "lmms_eval")  # fmt: skip
            return lmms_eval_cli(self.tmp, name, MODEL_ID, f"{args},dtype=float32,prunevid=paper", *launcher,
                                 batch_size=2)  # fmt: skip
        raise KeyError(name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_checkpoint) -> Runs:
    return Runs(tmp_path_factory.mktemp("lmms_eval"), demo_checkpoint)


@pytest.mark.slow  # an end-to-end `lmms-eval` CLI run (the `runs` fixture)
def test_stages_off_answers_as_stock_qwen2_5_vl(runs):
    """`prunevid=off` runs exactly what lmms-eval's stock `qwen2_5_vl` runs: same answers, sample by sample."""
    stock, off = runs.get("stock"), runs.get("off_bf16")
    assert len(stock.samples) == len(off.samples) == LIMIT
    assert off.answers() == stock.answers()
    assert off.accuracy == stock.accuracy
    for doc_id in off.samples:
        numbers = off.prunevid(doc_id)
        assert numbers["retention"] == 1.0 and numbers["after_stage2"] == numbers["visual_tokens"] > 0
        assert "prunevid" not in stock.samples[doc_id]["token_counts"][0]


@pytest.mark.slow  # an end-to-end `lmms-eval` CLI run (the `runs` fixture)
def test_prunevid_numbers_are_logged(runs):
    """Every logged sample carries its PruneVid numbers; the results hold the run's mean retention."""
    paper = runs.get("paper")
    retention = []
    for doc_id in paper.samples:
        numbers = paper.prunevid(doc_id)
        assert 0 < numbers["after_stage2"] < numbers["after_stage1"] <= numbers["visual_tokens"]
        assert numbers["retention"] == round(numbers["cached_visual_tokens"] / numbers["visual_tokens"], 4)
        assert numbers["cached_visual_tokens"] == numbers["after_stage2"]  # Stage 3: the cache holds the selection
        assert numbers["kv_cache_tokens"] < numbers["prompt_tokens"]
        retention.append(numbers["retention"])
    throughput = paper.results["throughput"]
    assert throughput["avg_prunevid_retention"] == pytest.approx(sum(retention) / len(retention))
    assert throughput[f"avg_prunevid_retention/{TASK}"] == pytest.approx(sum(retention) / len(retention))
    assert 0.05 < throughput["avg_prunevid_retention"] < 0.6


@pytest.mark.slow  # an end-to-end `lmms-eval` CLI run (the `runs` fixture)
def test_data_parallel_and_batches_match_one_process(runs):
    """Two processes, two samples per batch: the items are sharded (both ranks answer), and every sample gets the
    answer and the PruneVid numbers it gets alone in one process; accuracy and mean retention are the same."""
    single, parallel = runs.get("paper"), runs.get("paper_2proc_batch2")
    assert "Running on rank 1" in parallel.log
    assert sorted(parallel.samples) == sorted(single.samples) == list(range(LIMIT))
    assert parallel.answers() == single.answers()
    for doc_id in single.samples:
        assert parallel.prunevid(doc_id) == single.prunevid(doc_id)
    assert parallel.accuracy == single.accuracy
    assert parallel.results["throughput"]["avg_prunevid_retention"] == pytest.approx(
        single.results["throughput"]["avg_prunevid_retention"]
    )


@pytest.mark.slow  # an end-to-end `lmms-eval` CLI run (the `runs` fixture)
def test_accuracy_equals_modeling_eval(runs):
    """lmms-eval's accuracy (stages off and the paper preset) is what `python -m modeling.eval` reports on the same
    items, answer by answer, and the paper preset keeps the same visual tokens."""
    from modeling.eval.benchmark import load_split

    out = runs.tmp / "modeling_eval.json"
    command = [sys.executable, "-m", "modeling.eval", "--configs", "stock,paper", "--limit", str(LIMIT), "--json",
               str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, env=_env(runs.tmp), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = json.loads(out.read_text())
    rows = {row["config"]: row for row in reference["results"]}
    for config, name in (("stock", "off"), ("paper", "paper")):
        run = runs.get(name)
        letters = [moving_shapes.extract_letter(run.answers()[doc_id]) for doc_id in range(LIMIT)]
        assert letters == reference["predictions"][config], config
        assert run.accuracy == pytest.approx(rows[config]["accuracy"], abs=1e-4)
        kept = sum(run.prunevid(doc_id)["cached_visual_tokens"] for doc_id in range(LIMIT))
        visual = sum(run.prunevid(doc_id)["visual_tokens"] for doc_id in range(LIMIT))
        assert kept / visual == pytest.approx(rows[config]["retention"], abs=1e-4)  # token-weighted, as there
    items = load_split("test", limit=LIMIT)
    assert reference["items"] == [item.id for item in items]
    assert [(run.samples[i]["input"], run.samples[i]["target"]) for i in range(LIMIT)] == [
        (item.question, item.answer) for item in items
    ]
