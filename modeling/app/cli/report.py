"""What a `qwen-prunevid` run writes: the text report, the JSON result (schema `qwen-prunevid.result/v2`) and the
`--visualize` pictures."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, TextIO


__all__ = ["JSON_SCHEMA", "PICTURE_FORMATS", "json_result", "print_report", "write_pictures"]

#: v2: `stats` is `PruneVidStats.to_dict()` (also `prompt_tokens`, `cached_visual_tokens`, `retention`,
#: `technique`), the time to the first token is `timings.time_to_first_token_s` (v1: `prefill_s`).
JSON_SCHEMA = "qwen-prunevid.result/v2"
#: File types `--visualize` writes (Matplotlib's writers); the extension picks the format.
PICTURE_FORMATS = (".png", ".svg", ".pdf")


def json_result(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str]) -> dict[str, Any]:
    """Schema `qwen-prunevid.result/v2`: meta fields, then the PruneVid run's fields at the top level (answer,
    new_tokens, token_ids, prompt_tokens, stats, prunevid, timings, memory); with --compare also `stock` (the same
    run fields) and `answers_agree`; `pictures` lists the pictures written."""
    result = {"schema": JSON_SCHEMA, **meta, **runs["prunevid"].to_dict()}
    if "stock" in runs:
        result["stock"] = runs["stock"].to_dict()
        result["answers_agree"] = runs["stock"].answer.strip() == runs["prunevid"].answer.strip()
    result["pictures"] = pictures
    return result


def print_report(meta: dict[str, Any], runs: dict[str, Any], pictures: list[str], out: TextIO) -> None:
    """The human-readable report: model, settings, media, question; tokens per stage, timings and memory side by
    side (stock first with --compare); the answers and whether they agree (and are right, for the bundled clip)."""
    p = runs["prunevid"]
    print(f"Model:    {meta['model']} on {meta['device']} ({meta['dtype']}), loaded in {meta['load_s']:.1f} s", file=out)
    saved = "  (the settings saved with the checkpoint)" if meta["preset"] == "saved" else ""
    print(f"PruneVid: {meta['preset']}{saved}", file=out)
    media = meta["videos"] + meta["images"]
    grids = "; ".join(f"{t} x {h // 2} x {w // 2} tokens" for t, h, w in meta["grids"])
    print(f"Media:    {', '.join(media)}" + (f"  ({grids}, t x h x w)" if grids else ""), file=out)
    print(f"Question: {meta['question']}", file=out)
    if meta.get("correct_answer"):
        print(f"Correct:  {meta['correct_answer']} ({meta['correct_answer_text']})", file=out)
    print(file=out)
    columns = [("stock", runs["stock"])] if "stock" in runs else []
    columns.append((f"PruneVid ({meta['preset']})", p))
    rows = [
        ("visual tokens", lambda r: f"{r.stats.visual_tokens:,}"),
        ("after Stage 1 (merging)", lambda r: f"{r.stats.after_stage1:,}"),
        ("after Stage 2 (selection)", lambda r: f"{r.stats.after_stage2:,}"),
        ("KV cache (prompt tokens)", lambda r: f"{r.stats.kv_cache_tokens:,}"),
        ("retention (video tokens kept)", lambda r: "-" if r.stats.retention is None else f"{r.stats.retention:.1%}"),
        ("time to first token (s)", lambda r: _seconds(r.time_to_first_token_s)),
        ("decode (tokens/s)", lambda r: "-" if r.decode_tokens_per_s is None else f"{r.decode_tokens_per_s:.1f}"),
        ("new tokens", lambda r: str(r.new_tokens)),
        (_memory_label(p.peak_memory_kind), lambda r: f"{r.peak_memory_bytes / 2**20:,.0f}"),
    ]
    if any(r.stats.image_tokens for _, r in columns):  # images are never merged; Stage 2 may select them
        rows[1:1] = [
            ("image tokens", lambda r: f"{r.stats.image_tokens:,}"),
            ("image tokens after Stage 2", lambda r: f"{r.stats.image_tokens_after_stage2:,}"),
        ]
    width = max(len(name) for name, _ in rows) + 2
    col = max(14, *(len(name) + 2 for name, _ in columns))
    print(" " * width + "".join(name.rjust(col) for name, _ in columns), file=out)
    for name, value in rows:
        print(name.ljust(width) + "".join(value(r).rjust(col) for _, r in columns), file=out)
    print(file=out)
    for name, r in columns:
        print(f"Answer, {name}: {r.answer!r}", file=out)
    if "stock" in runs:
        agree = runs["stock"].answer.strip() == p.answer.strip()
        print(f"Answers agree: {'yes' if agree else 'no'}", file=out)
    if meta.get("correct_answer"):
        right = [name for name, r in columns if r.answer.strip()[:1].upper() == meta["correct_answer"]]
        print(f"Answered correctly ({meta['correct_answer']}): {', '.join(right) if right else 'neither'}", file=out)
    for path in pictures:
        print(f"Wrote {path}", file=out)


def write_pictures(out: Path, runs: dict[str, Any], inputs: dict[str, Any], processor: Any, videos: list[str],
                   preset: str, demo: bool) -> tuple[list[str], list[str]]:  # fmt: skip
    """`--visualize`: one picture of token fates per video (OUT.png, OUT_2.png, ...) and, with --compare, the token
    budget (OUT_budget.png). Each is written through a temporary file and renamed, so a failure leaves no picture
    behind. Returns the paths written and notes for the user."""
    from ..pictures import frames_from_inputs, render_budget_chart, render_fates, video_grid

    result = runs["prunevid"]
    video_processor = processor.video_processor
    grids = inputs["video_grid_thw"].tolist() if "video_grid_thw" in inputs else []
    seconds = inputs.get("second_per_grid_ts")
    jobs, notes = [], []
    for k, grid in enumerate(grids):
        name = Path(videos[k]).name if k < len(videos) else f"video {k + 1}"
        draw = partial(
            render_fates,
            frames_from_inputs(inputs, k, video_processor.image_mean, video_processor.image_std),
            result.video_fates[k] if k < len(result.video_fates) else None,  # None: PruneVid off, all kept
            result.stats,
            title=f"PruneVid '{preset}' on {name}" + ("  (demo model)" if demo else ""),
            grid=video_grid(grid),
            seconds_per_patch=float(seconds[k]) if seconds is not None else None,
        )
        jobs.append((out if k == 0 else out.with_name(f"{out.stem}_{k + 1}{out.suffix}"), draw))
    if not grids:
        notes.append("no video in the input, so --visualize has nothing to draw")
    if "stock" in runs:
        labels = ("stock", f"PruneVid ({preset})")
        draw = partial(render_budget_chart, runs["stock"].stats, result.stats, labels=labels)
        jobs.append((out.with_name(f"{out.stem}_budget{out.suffix}"), draw))
    written: list[Path] = []
    try:
        for path, draw in jobs:
            temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
            try:
                draw(temporary)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return [str(path) for path in written], notes


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _memory_label(kind: str) -> str:
    return "peak GPU memory (MiB)" if kind.startswith("cuda") else "peak process RSS (MiB)"
