"""The bundled clip and its question: a held-out item of the moving-shapes benchmark (`modeling.eval.benchmark`,
`make_item("test", 41)`), what `make demo` asks the demo model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


__all__ = ["DEMO_CLIP", "DEMO_FPS", "DEMO_PIXELS", "DEMO_QUESTION_FILE", "demo_question"]

DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo_clip.mp4"
#: The bundled clip's question, options and correct answer.
DEMO_QUESTION_FILE = DEMO_CLIP.with_suffix(".json")
#: The clip is read as the demo model was trained: 2 fps (every frame of the clip) ...
DEMO_FPS = 2.0
#: ... at 224x224 pixels (8x8 LLM tokens per temporal patch): the smallest and the largest frame size.
DEMO_PIXELS = 224 * 224


def demo_question() -> dict[str, Any]:
    """The bundled clip's question, options and correct answer (`{"question", "answer", "answer_text", ...}`)."""
    return json.loads(DEMO_QUESTION_FILE.read_text())
