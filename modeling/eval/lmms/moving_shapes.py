"""The lmms-eval task `prunevid_moving_shapes`: the held-out (`test`) split of the moving-shapes benchmark
([`modeling.eval.benchmark`]), scored by exact letter match.

The task's YAML (`tasks/prunevid_moving_shapes/`) loads `test.jsonl`, which lists the split's item ids and nothing
else; `process_docs` expands each id into its item (question with options and instruction, options, answer,
kind) from the benchmark's deterministic generator, and `doc_to_visual` renders the clip on first use (in the
benchmark's cache folder, `$QWEN_PRUNEVID_CACHE`). No data comes from the Hub. `python -m modeling.eval.lmms.moving_shapes`
rewrites `test.jsonl` from the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


__all__ = [
    "DATA_FILE", "doc_to_text", "doc_to_visual", "extract_letter", "process_docs", "process_results", "write_ids",
]  # fmt: skip

SPLIT = "test"
DATA_FILE = Path(__file__).resolve().parent / "tasks" / "prunevid_moving_shapes" / "test.jsonl"


def _split_items() -> list[Any]:
    from ..benchmark import load_split

    return load_split(SPLIT)


def write_ids(path: str | Path = DATA_FILE) -> Path:
    """Write the split's item ids, one JSON object per line (`{"id": "test-00000"}`)."""
    path = Path(path)
    path.write_text("".join(json.dumps({"id": item.id}) + "\n" for item in _split_items()))
    return path


def _item(item_id: str) -> Any:
    from ..benchmark import make_item

    split, _, index = item_id.rpartition("-")
    if split != SPLIT or not index.isdigit():
        raise ValueError(f"prunevid_moving_shapes: not an item id of the {SPLIT!r} split: {item_id!r}")
    return make_item(split, int(index))


def process_docs(dataset: Any) -> Any:
    """Expand the ids of the `datasets.Dataset` into the benchmark's items (lmms-eval calls this once per split)."""

    def expand(doc: dict[str, Any]) -> dict[str, Any]:
        item = _item(doc["id"])
        return {"id": item.id, "kind": item.kind, "question": item.question, "options": list(item.options),
                "answer": item.answer}  # fmt: skip

    return dataset.map(expand, load_from_cache_file=False)


def doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """The item's clip, rendered to an mp4 on first use (deterministic)."""
    return [str(_item(doc["id"]).video_path())]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The full prompt: question, options and "Answer with the option's letter from the given choices directly."."""
    return doc["question"]


def extract_letter(response: str) -> str | None:
    """The response's first character, upper-cased (None for an empty response): the rule of
    `python -m modeling.eval`, so that both score the same answers the same way."""
    text = response.strip()
    return text[0].upper() if text else None


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """`exact_match`: 1.0 when the response starts with the answer's letter, else 0.0."""
    return {"exact_match": float(extract_letter(results[0]) == doc["answer"])}


if __name__ == "__main__":
    print(write_ids())
