"""Does the question matter? Stage 2 scored by the question vs by the system prompt, at each pruning layer (CPU).

    python tools/probe_question.py --limit 50 [--version 1] [--asset modeling/demo/assets/demo_model.safetensors]

Runs the trained demo model through `modeling.eval.run.Evaluation` (the released input path) on the first `--limit`
test questions and prints accuracy and retention for: `stage1_only`; `paper`; `paper_k0` (keeps no visual token
after layer M: what the layers after M read); and, for M = 0..3, `paper` and "Stage 2 alone" (`enable_stage1=False,
keep_ratio=0.1`), each scored by the question and by the system prompt (`SystemPromptQuery`). Stage 2 scores without
a causal mask (as the authors do), so the system prompt's rows attend to the video's keys too: a question-blind choice
by content.
docs/accuracy/README.md quotes its output for version 1 (50 questions, 85 s on 2 CPU threads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--version", type=int, default=1, help="of the moving-shapes benchmark")
    parser.add_argument("--asset", default=None, help="demo model asset (default: the shipped one)")
    parser.add_argument("--clip-cache", default=None)
    args = parser.parse_args()

    import torch

    from modeling import PruneVidConfig
    from modeling.demo import ASSET, checkpoint_path
    from modeling.eval import benchmark
    from modeling.eval.baselines import SystemPromptQuery
    from modeling.eval.run import Evaluation

    items = benchmark.load_split("test", limit=args.limit, version=args.version)
    path = checkpoint_path(asset=args.asset or ASSET)
    evaluation = Evaluation.from_pretrained(path, items, clip_cache=args.clip_cache, progress=False)
    paper = PruneVidConfig.paper()
    alone = PruneVidConfig.paper(enable_stage1=False, keep_ratio=0.1)
    configs = {"stage1_only": PruneVidConfig.stage1_only(), "paper": paper, "paper_k0": paper.replace(keep_ratio=0.01)}
    for m in range(4):
        for name, config in ((f"paper_M{m}", paper), (f"stage2_alone_M{m}", alone)):
            configs[name] = config.replace(pruning_layer=m)
            configs[f"{name}_system_prompt"] = SystemPromptQuery(config.replace(pruning_layer=m))
    results: dict[str, list[tuple[bool, float]]] = {name: [] for name in configs}
    with torch.no_grad():
        for item in items:
            inputs = evaluation.inputs(item)
            for name, technique in configs.items():
                with evaluation.model.prunevid_override(technique):
                    outcome = evaluation.answer(item, inputs, inputs)
                results[name].append((outcome.correct, outcome.kept_visual_tokens / outcome.visual_tokens))
    for name, rows in results.items():
        accuracy = sum(c for c, _ in rows) / len(rows)
        print(f"{name:32s} accuracy {100 * accuracy:5.1f}%  retention {100 * sum(r for _, r in rows) / len(rows):5.1f}%")


if __name__ == "__main__":
    main()
