"""The documentation against the code: the README's five lines run, every relative link and every path or module name
the pages mention exists, docs/cli.md names exactly the flags of the parser and the keys of the JSON schema, the
`PruneVidConfig` docstring's table matches the fields and defaults, and the README stays a landing page."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
#: Every hand-written page (links, paths and module names are checked in these).
PAGES = sorted(
    {README, ROOT / "patches" / "README.md", ROOT / "modeling" / "eval" / "lmms" / "README.md",
     *(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*/README.md")}
)  # fmt: skip
#: Pages written by tools (bench.py, python -m modeling.eval): only their links are checked.
GENERATED = sorted((ROOT / "docs").glob("*/*.md"))
README_LIMIT = 10_000

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


# ------------------------------------------------------------------------------------------------------ the README
def test_readme_is_a_landing_page():
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} (move details to docs/)"
    text = README.read_text()
    commands = re.findall(r"^make (\w[\w-]*)", text, re.M)
    assert commands == ["demo", "test"], f"the two set-up commands are `make demo` and `make test`, got {commands}"
    assert "arXiv 2412.16117" in text and "Findings of ACL 2025" in text


def _five_lines() -> str:
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M) if "VideoQA" in b]
    assert len(blocks) == 1, "README.md should have exactly one python block with VideoQA (the five lines)"
    return blocks[0]


def test_readme_five_lines_are_five_lines():
    code = _five_lines()
    assert len(code.strip().splitlines()) <= 5
    assert code.count('"Qwen/Qwen2.5-VL-7B-Instruct"') == 1 and code.count('"clip.mp4"') == 1


@pytest.mark.slow
def test_readme_five_lines_answer(tmp_path):
    """The README's five lines, with the model id replaced by the demo checkpoint and the video by the bundled clip
    (the only two substitutions), run as a user would in a fresh process: they print a non-empty answer."""
    from modeling.demo import DEMO_CLIP, checkpoint_path

    code = _five_lines()
    code = code.replace('"Qwen/Qwen2.5-VL-7B-Instruct"', repr(str(checkpoint_path())))
    code = code.replace('"clip.mp4"', repr(str(DEMO_CLIP)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2",
           "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), f"no answer printed; stderr: {proc.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------------------ links, paths
@pytest.mark.parametrize("page", PAGES + GENERATED, ids=_relative)
def test_relative_links_exist(page):
    """Every relative link (and image) of the page points to an existing file; a `#anchor` into a markdown page
    names one of its headings."""
    text = _FENCE.sub("", page.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no {file})")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {_relative(file)})")
    assert not broken, f"{_relative(page)}: broken links: {broken}"


_PATH = re.compile(r"`((?:modeling|tools|tests|docs|patches|upstream_snapshot)/[^`\s]*)`")
_MODULE_NAME = re.compile(r"`(modeling(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(\))?`")


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_mentioned_paths_exist(page):
    """Every repository path written in backticks (`modeling/app/videoqa.py`, `tests/test_cli.py::name`) exists."""
    missing = []
    for mention in _PATH.findall(page.read_text()):
        path = mention.split("::")[0].rstrip(".,;:")
        if any(c in path for c in "*{}<>") or "NAME" in path:  # patterns such as patches/*.rej, NAME.patch
            continue
        if not (ROOT / path).exists():
            missing.append(mention)
    assert not missing, f"{_relative(page)} mentions paths that do not exist: {missing}"


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_mentioned_module_names_exist(page):
    """Every dotted name of the package written in backticks (`modeling.app.inputs.read_media`,
    `modeling.demo.checkpoint_path()`) can be imported."""
    missing = []
    for dotted in sorted(set(_MODULE_NAME.findall(page.read_text()))):
        if dotted.startswith("modeling.eval.lmms.model"):
            pytest.importorskip("lmms_eval")
        try:
            _resolve(dotted)
        except (ImportError, AttributeError) as error:
            missing.append(f"{dotted} ({type(error).__name__}: {error})")
    assert not missing, f"{_relative(page)} names what does not exist: {missing}"


# ------------------------------------------------------------------------------------------------------ docs/cli.md
def _documented_flags(text: str) -> set[str]:
    flags = set()
    for negatable, name in re.findall(r"(?<![\w-])--(\[no-\])?([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w])", text):
        flags.add(f"--{name}")
        if negatable:
            flags.add(f"--no-{name}")
    flags.update(re.findall(r"(?<![\w-])(-[a-zA-Z])(?![\w-])", text))
    return flags


def test_cli_doc_names_exactly_the_parsers_flags():
    """docs/cli.md documents every flag of `build_parser()`, and every `--flag` it writes exists there."""
    from modeling.app.cli.parser import build_parser

    parser_flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    documented = _documented_flags(CLI_DOC.read_text())
    assert parser_flags - documented == set(), "flags missing from docs/cli.md"
    long_documented = {flag for flag in documented if flag.startswith("--")}
    assert long_documented - parser_flags == set(), "docs/cli.md documents flags the parser does not have"


def test_cli_doc_json_schema():
    """docs/cli.md documents the current schema: its name, every key of `stats` (`PruneVidStats.to_dict()`), of
    `timings` and `memory`, and the meta keys."""
    from modeling import PruneVidStats
    from modeling.app.cli.report import JSON_SCHEMA

    text = CLI_DOC.read_text()
    assert f'"schema": "{JSON_SCHEMA}"' in text
    schema = re.search(r"^### `--json` schema.*?^```text\n(.*?)^```", text, re.S | re.M)
    assert schema, "docs/cli.md has no ```text block under its `--json` schema heading"
    block = schema.group(1)
    keys = {field.name for field in dataclasses.fields(PruneVidStats)} | {"retention"}
    keys |= {"time_to_first_token_s", "decode_s", "decode_tokens_per_s", "total_s", "peak_bytes", "kind"}
    keys |= {"schema", "model", "offline_demo", "question", "videos", "images", "media_options", "preset", "device",
             "dtype", "load_s", "grids", "correct_answer", "correct_answer_text", "answer", "new_tokens", "token_ids",
             "prompt_tokens", "stats", "prunevid", "timings", "memory", "stock", "answers_agree", "pictures"}  # fmt: skip
    missing = sorted(key for key in keys if not re.search(rf"(?<![\w.]){key}(?!\w)", block))
    assert not missing, f"keys missing from the schema in docs/cli.md: {missing}"
    assert "prefill_s" not in block


def test_cli_json_keys_are_the_documented_ones():
    """The keys `json_result` writes for a run are the ones the schema block lists (no undocumented key)."""
    import inspect

    from modeling.app.cli import run as cli_run

    source = inspect.getsource(cli_run)
    meta = re.search(r"meta = \{(.*?)\n    \}", source, re.S)
    assert meta, "the CLI's meta dict moved; update this test"
    meta_keys = set(re.findall(r'^\s*"(\w+)":', meta.group(1), re.M))
    block = CLI_DOC.read_text().split("### `--json` schema", 1)[1]
    missing = sorted(key for key in meta_keys if not re.search(rf"(?<![\w.]){key}(?!\w)", block))
    assert not missing, f"meta keys the CLI writes but docs/cli.md does not list: {missing}"


# ------------------------------------------------------------------------------------------------------ PruneVidConfig
def test_config_docstring_table_matches_the_fields():
    """The table in `PruneVidConfig`'s docstring lists every field once, with its actual default."""
    from modeling import PruneVidConfig

    rows = re.findall(r"^\s*\| ``(\w+)`` \| ``([^`]+)`` \|", PruneVidConfig.__doc__, re.M)
    table = dict(rows)
    assert len(rows) == len(table), "a field is listed twice"
    defaults = {field.name: repr(field.default) for field in dataclasses.fields(PruneVidConfig)}
    assert table.keys() == defaults.keys()
    wrong = {name: (table[name], defaults[name]) for name in defaults
             if table[name].replace('"', "'") != defaults[name]}  # fmt: skip
    assert not wrong, f"documented vs actual defaults: {wrong}"
