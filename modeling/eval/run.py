"""The accuracy table: PruneVid and its alternatives on the held-out moving-shapes questions.

    python -m modeling.eval --configs stock,paper,random --limit 150 --json OUT.json

Every question goes through the released model's input path (the clip as an mp4 file, read with decord at the
benchmark's `MEDIA` options, the chat template, the processor) into `Qwen2_5_VLPruneVid` loaded with
`from_pretrained` from a checkpoint folder (default: the trained demo model, `modeling.demo.checkpoint_path()`), and
is answered by greedy `generate`; the answer is correct when its first letter is the option's letter.

Retention is `PruneVidStats.retention`, what stays for decoding: visual tokens held in the KV cache after the prefill
/ visual tokens of the unpruned input (for fewer frames: of the input with every frame). The baselines run at the paper preset's achieved retention, per question: the same number of visual
tokens as `paper` kept for that question (random and EVS dropping), or the even frame count closest to the same share
of frames (uniform temporal downsampling, `nframes`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["CONFIGS", "Evaluation", "main", "wilson_interval"]

#: name -> what it is (the table's legend); `BASELINES` need `paper` first (they use its per-question budget).
CONFIGS: dict[str, str] = {
    "stock": "every stage off: the stock model",
    "paper": "PruneVid, the paper's settings (keep floor(alpha * n) per group)",
    "paper_ceil": "paper with keep_rounding='ceil' (keeps ceil(alpha * n) per group)",
    "conservative": "PruneVid preset that keeps more",
    "aggressive": "PruneVid preset that keeps fewer",
    "stage1_only": "PruneVid Stage 1 (merging) only",
    "fastv": "FastV: layer 2, 50% by the last token's attention",
    "random": "random token dropping before the LLM, at paper's retention (seeded)",
    "evs": "EVS: drop the tokens least changed from the previous temporal patch, at paper's retention",
    "uniform_frames": "uniform temporal downsampling (fewer frames) to paper's retention",
    "paper_sysprompt": "negative control: paper with Stage 2 scored by the system prompt, not the question",
}
BASELINES = ("random", "evs", "uniform_frames")
DEFAULT_CONFIGS = tuple(CONFIGS)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)  # exact at the ends (no 0.9999999999999999)
    return (low, high)


@dataclass
class Outcome:
    """One question under one config."""

    id: str
    kind: str
    answer: str
    predicted: str
    visual_tokens: int
    kept_visual_tokens: int

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer


@dataclass
class Evaluation:
    """Runs configs over items on one model (see the module docstring)."""

    model: Any
    processor: Any
    items: Sequence[Any]
    clip_cache: Path | None = None
    max_new_tokens: int = 4
    progress: bool = True

    @classmethod
    def from_pretrained(cls, path: str | Path, items: Sequence[Any], **kwargs: Any) -> "Evaluation":
        import torch
        from transformers import AutoProcessor

        from ..integration.model import Qwen2_5_VLPruneVid
        from ..prunevid.config import PruneVidConfig

        model = Qwen2_5_VLPruneVid.from_pretrained(path, prunevid=PruneVidConfig.disabled(), dtype=torch.float32)
        return cls(model.eval(), AutoProcessor.from_pretrained(path), items, **kwargs)

    # ------------------------------------------------------------------------------------------------ inputs
    def inputs(self, item: Any, nframes: int | None = None) -> dict:
        """Model inputs of `item`: mp4 -> decord -> chat template -> processor (`nframes`: uniform downsampling)."""
        from ..app.inputs import build_messages, prepare_inputs
        from .benchmark import MEDIA

        options = MEDIA if nframes is None else MEDIA.replace(fps=None, nframes=nframes)
        messages = build_messages(item.question, videos=[str(item.video_path(self.clip_cache))], options=options)
        return dict(prepare_inputs(self.processor, messages))

    # ------------------------------------------------------------------------------------------------ running
    def run(self, configs: Sequence[str]) -> dict[str, list[Outcome]]:
        """Every config on every item. Items are the outer loop, so one item's inputs are in memory at a time
        (decoded once, shared by the configs); `paper` runs before the baselines that use its budget."""
        from tqdm.auto import tqdm

        unknown = [c for c in configs if c not in CONFIGS]
        if unknown:
            raise ValueError(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
        order = list(dict.fromkeys(configs))
        if any(c in BASELINES for c in order) and "paper" not in order:
            order.insert(0, "paper")  # the baselines' budgets
        order.sort(key=lambda c: c in BASELINES)  # stable: paper (and the rest) before the baselines
        outcomes: dict[str, list[Outcome]] = {name: [] for name in order}
        for item in tqdm(self.items, desc="questions", disable=not self.progress, file=sys.stderr):
            full = self.inputs(item)
            done: dict[str, Outcome] = {}
            for name in order:
                done[name] = self._run_one(name, item, full, done.get("paper"))
                outcomes[name].append(done[name])
        return outcomes

    def technique(self, name: str, paper: Outcome | None = None) -> Any:
        """What `model.prunevid` is set to for config `name`: a `PruneVidConfig`, or a technique (a
        `PruneVidController`) for the baselines; `paper` is this question's `paper` outcome (the budget)."""
        from ..prunevid.config import PruneVidConfig
        from .baselines import SystemPromptQuery, TokenDrop

        if name in ("random", "evs"):
            return TokenDrop(name, budget=max(1, paper.kept_visual_tokens), seed=0)
        if name == "paper_sysprompt":
            return SystemPromptQuery(PruneVidConfig.paper())
        if name in ("stock", "uniform_frames"):
            return PruneVidConfig.disabled()
        if name == "paper_ceil":
            return PruneVidConfig.paper(keep_rounding="ceil")
        return PruneVidConfig.preset(name)

    def _run_one(self, name: str, item: Any, full: dict, paper: Outcome | None) -> Outcome:
        inputs = full
        if name == "uniform_frames":
            share = paper.kept_visual_tokens / paper.visual_tokens
            inputs = self.inputs(item, nframes=max(2, 2 * round(item.frames * share / 2)))
        with self.model.prunevid_override(self.technique(name, paper)):
            return self._answer(item, inputs, full)

    def _answer(self, item: Any, inputs: dict, full: dict) -> Outcome:
        import torch

        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt = inputs["input_ids"].shape[1]
        text = self.processor.batch_decode(output[:, prompt:], skip_special_tokens=True)[0].strip()
        (stats,) = self.model.prunevid_stats
        visual = stats.visual_tokens
        if inputs is not full:  # fewer frames: the budget is a share of the video with every frame
            visual = int((full["input_ids"] == self.model.config.video_token_id).sum())
        return Outcome(item.id, item.kind, item.answer, text[:1].upper(), visual, stats.cached_visual_tokens)


# ------------------------------------------------------------------------------------------------ reporting
def summarise(outcomes: dict[str, list[Outcome]]) -> list[dict[str, Any]]:
    """One row per config: accuracy, 95% interval, retention, n, accuracy per kind."""
    rows = []
    for name, results in outcomes.items():
        correct = sum(o.correct for o in results)
        n = len(results)
        kinds: dict[str, list[bool]] = {}
        for o in results:
            kinds.setdefault(o.kind, []).append(o.correct)
        visual = sum(o.visual_tokens for o in results)
        rows.append(
            {
                "config": name,
                "accuracy": round(correct / n, 4) if n else 0.0,
                "ci95": [round(v, 4) for v in wilson_interval(correct, n)],
                "retention": round(sum(o.kept_visual_tokens for o in results) / visual, 4) if visual else 0.0,
                "n": n,
                "per_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())},
                "description": CONFIGS[name],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], header: str = "") -> str:
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    lines = [header] if header else []
    lines += [
        "| config | accuracy | 95% interval | retention | n | " + " | ".join(kinds) + " |",
        "|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for r in rows:
        per = " | ".join(f"{100 * r['per_kind'].get(k, 0):.1f}" for k in kinds)
        lo, hi = r["ci95"]
        lines.append(f"| `{r['config']}` | {100 * r['accuracy']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f} | "
                     f"{100 * r['retention']:.1f}% | {r['n']} | {per} |")  # fmt: skip
    lines += ["", "Configs:"] + [f"- `{r['config']}`: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for r in rows:
        lo, hi = r["ci95"]
        x, y = 100 * r["retention"], 100 * r["accuracy"]
        ax.errorbar(x, y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", capsize=3)
        ax.annotate(r["config"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("retention: visual tokens in the KV cache (%)")
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_title("Moving-shapes test split, trained demo Qwen2.5-VL")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, from: {', '.join(CONFIGS)} (default: all)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="first N questions of the split (default: all)")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the trained demo model)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--plot", default=None, help="write accuracy vs retention here (PNG)")
    parser.add_argument("--clip-cache", default=None, help="folder for the generated clips (default: user cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.exit(2, f"python -m modeling.eval: error: --configs: unknown {unknown or 'empty'}; choose from "
                       f"{', '.join(CONFIGS)}\n")  # fmt: skip
    if args.limit is not None and args.limit < 1:
        parser.exit(2, "python -m modeling.eval: error: --limit must be >= 1\n")
    for out in (args.json_out, args.markdown, args.plot):
        if out is not None and not Path(out).resolve().parent.is_dir():
            parser.exit(2, f"python -m modeling.eval: error: the folder of {out} does not exist\n")

    import torch

    from .benchmark import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from ..demo import checkpoint_path

        model_path = checkpoint_path()
    else:
        model_path = Path(args.model)
    items = load_split(args.split, limit=args.limit)
    start = time.time()
    evaluation = Evaluation.from_pretrained(model_path, items, clip_cache=args.clip_cache, progress=not args.quiet)
    outcomes = evaluation.run(configs)
    rows = [r for r in summarise(outcomes) if r["config"] in configs]
    seconds = time.time() - start
    header = (f"{len(items)} questions of the {args.split} split, model {model_path.name}, "
              f"{seconds:.0f} s on {torch.get_num_threads()} CPU threads")  # fmt: skip
    print(markdown(rows, header))
    if args.json_out:
        payload = {
            "results": rows,
            "split": args.split,
            "items": [it.id for it in items],
            "model": str(model_path),
            "seconds": round(seconds, 1),
            "predictions": {name: [o.predicted for o in outcomes[name]] for name in configs},
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, header))
    if args.plot:
        plot(rows, args.plot)
    return 0
