"""The package's layout (issue 19): every file under `modeling/` belongs to one documented concern and imports point
down the layers (eval -> app -> integration | demo -> prunevid | vendored), without cycles. `tools/layers.py` checks
it; it is tested here on the real tree and on small synthetic packages, one violation each."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("layers_under_test", ROOT / "tools" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


layers = _load_tool()

# A clean miniature of the layout: one module per concern, each importing the layer below it.
CLEAN = {
    "__init__.py": '"""Front door."""\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .app.front import F\n',
    "__main__.py": "from .app.front import main\nmain()\n",
    "modeling_qwen2_5_vl.py": "import torch\nimport transformers\n",
    "eval/__init__.py": '"""Evaluation."""\n',
    "eval/table.py": "from ..app.front import F\nfrom ..demo import clip\n",
    "app/__init__.py": '"""Front door."""\n',
    "app/front.py": "from ..integration.glue import G\n\nclass F: ...\n\ndef main():\n    from ..demo.clip import C\n",
    "integration/__init__.py": '"""Glue."""\n',
    "integration/glue.py": "from transformers import X\nfrom ..modeling_qwen2_5_vl import M\nfrom ..prunevid.algo import A\n"
                           "\nclass G: ...\n",  # fmt: skip
    "demo/__init__.py": '"""Demo."""\n',
    "demo/clip.py": "import numpy\n\nclass C: ...\n",
    "demo/assets/clip.json": "{}\n",
    "prunevid/__init__.py": '"""Algorithm."""\nfrom .algo import A\n',
    "prunevid/algo.py": "import torch\n\nclass A: ...\n",
}


def make_package(tmp_path: Path, changes: dict[str, str | None] | None = None) -> Path:
    """`tmp_path/modeling` with the clean layout, then `changes` (path -> source, None removes the file)."""
    files = {**CLEAN, **(changes or {})}
    root = tmp_path / "modeling"
    for rel, source in files.items():
        if source is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def violations(root: Path, kind: str) -> list[str]:
    return [f"{v.where} {v.message}" for v in layers.analyse(root).violations if v.kind == kind]


# ------------------------------------------------------------------------------------------------ the real tree
def test_real_tree_has_no_violation():
    report = layers.analyse(ROOT / "modeling")
    assert report.ok, report.render()
    edges = report.concern_edges()
    assert edges[("integration", "prunevid")] > 0 and edges[("app", "integration")] > 0  # the graph was read
    assert len(report.modules) > 30


def test_command_line_on_the_real_tree():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "layers.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "integration -> prunevid (" in out.stdout and out.stdout.rstrip().splitlines()[-1].startswith("OK:")
    assert len(out.stdout.splitlines()) < 30  # short enough for a closing note


# ------------------------------------------------------------------------------------------------ the check itself
def test_clean_synthetic_package_passes(tmp_path):
    report = layers.analyse(make_package(tmp_path))
    assert report.ok, report.render()
    assert report.concern_edges() == {
        ("__init__", "app"): 1, ("__main__", "app"): 1, ("eval", "app"): 1, ("eval", "demo"): 1,
        ("app", "integration"): 1, ("app", "demo"): 1, ("integration", "vendored"): 1, ("integration", "prunevid"): 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    "source, line",
    [
        ("from ..eval.table import T\n", 1),  # relative, module level
        ("import os\n\ndef f():\n    import modeling.eval.table\n", 4),  # absolute, inside a function
        ("from modeling import eval\n", 1),  # `from package import subpackage`
        ("import importlib\nimportlib.import_module('modeling.eval.table')\n", 2),  # dynamic, literal name
    ],
)
def test_upward_import_is_reported(tmp_path, source, line):
    root = make_package(tmp_path, {"app/up.py": source})
    assert violations(root, "upward import") == [f"modeling/app/up.py:{line} app -> eval " + (
        "(modeling.eval)" if "import eval" in source else "(modeling.eval.table)")]  # fmt: skip


def test_import_of_the_front_door_from_inside_is_upward(tmp_path):
    root = make_package(tmp_path, {"integration/more.py": "from .. import F\n"})
    assert violations(root, "upward import") == ["modeling/integration/more.py:1 integration -> __init__ (modeling)"]


def test_sideways_imports_are_reported(tmp_path):
    root = make_package(tmp_path, {
        "demo/more.py": "from ..integration import glue\n",  # `from . import y` names the submodule
        "prunevid/more.py": "def f():\n    from ..modeling_qwen2_5_vl import M\n",
    })  # fmt: skip
    assert violations(root, "sideways import") == [
        "modeling/demo/more.py:1 demo -> integration (modeling.integration.glue)",
        "modeling/prunevid/more.py:2 prunevid -> vendored (modeling.modeling_qwen2_5_vl)",
    ]


def test_vendored_file_imports_nothing_from_the_package(tmp_path):
    root = make_package(tmp_path, {"modeling_qwen2_5_vl.py": "from .prunevid.algo import A\n"})
    assert violations(root, "sideways import") == ["modeling/modeling_qwen2_5_vl.py:1 vendored -> prunevid "
                                                   "(modeling.prunevid.algo)"]  # fmt: skip


def test_transformers_in_prunevid_is_reported(tmp_path):
    root = make_package(tmp_path, {
        "prunevid/algo.py": "import torch\nimport transformers.cache_utils as c\n\nclass A: ...\n",
        "prunevid/lazy.py": "def f():\n    from transformers import AutoModel\n",
    })  # fmt: skip
    found = violations(root, "transformers in prunevid")
    assert [f.split(" ")[0] for f in found] == ["modeling/prunevid/algo.py:2", "modeling/prunevid/lazy.py:2"]


def test_module_cycle_through_a_function_level_import(tmp_path):
    root = make_package(tmp_path, {
        "integration/a.py": "from . import b\n",
        "integration/b.py": "def f():\n    from .a import x\n",
    })  # fmt: skip
    report = layers.analyse(root)
    cycles = [v for v in report.violations if v.kind == "module cycle"]
    assert len(cycles) == 1 and report.kinds() == {"module cycle"}, report.render()
    assert "modeling.integration.a -> modeling.integration.b (modeling/integration/a.py:1)" in cycles[0].message
    assert "modeling.integration.b -> modeling.integration.a (modeling/integration/b.py:2)" in cycles[0].message


def test_package_init_cycle_and_self_import(tmp_path):
    root = make_package(tmp_path, {
        "demo/__init__.py": '"""Demo."""\nfrom .clip import C\n',
        "demo/clip.py": "from modeling.demo import OTHER\n\nclass C: ...\n",  # a name of the package
        "demo/other.py": "import modeling.demo.other\n",
    })  # fmt: skip
    messages = violations(root, "module cycle")
    assert len(messages) == 2, messages
    assert any("modeling.demo -> modeling.demo.clip" in m for m in messages)
    assert "modeling/demo/other.py:1 imports itself: modeling.demo.other -> modeling.demo.other" in " ".join(messages)


def test_concern_cycle_is_reported(tmp_path):
    root = make_package(tmp_path, {"app/back.py": "def f():\n    from ..eval import table\n"})
    report = layers.analyse(root)
    assert report.kinds() == {"upward import", "concern cycle"}, report.render()
    (cycle,) = [v.message for v in report.violations if v.kind == "concern cycle"]
    assert "eval -> app" in cycle and "app -> eval (e.g. modeling/app/back.py:2)" in cycle


def test_stray_files_are_reported(tmp_path):
    root = make_package(tmp_path, {
        "utils.py": "x = 1\n",  # a top-level module outside the documented ones
        "helpers/__init__.py": '"""Helpers."""\n',  # an undocumented concern
        "helpers/tool.py": "from ..prunevid.algo import A\n",
        "notes.txt": "todo\n",
        "demo/assets/more.bin": "data",  # data inside a concern is fine
    })  # fmt: skip
    assert [s.split(" ")[0] for s in violations(root, "stray file")] == [
        "modeling/notes.txt", "modeling/utils.py", "modeling/helpers/__init__.py", "modeling/helpers/tool.py",
    ]  # fmt: skip
    assert layers.analyse(root).kinds() == {"stray file"}  # imports of a stray file are not also misreported


def test_package_folders_need_a_docstring(tmp_path):
    root = make_package(tmp_path, {
        "prunevid/__init__.py": "from .algo import A  # no docstring\n",
        "app/cli/run.py": "from ..front import F\n",  # a folder of modules without __init__.py
    })  # fmt: skip
    assert violations(root, "undocumented package") == [
        "modeling/app/cli/ a folder of modules without an __init__.py (and its docstring naming the folder's concern)",
        "modeling/prunevid/__init__.py:1 no docstring naming the folder's concern",
    ]


def test_eager_import_in_the_front_door(tmp_path):
    root = make_package(tmp_path, {"__init__.py": '"""Front door."""\nfrom .app.front import F\n'})
    assert [v.split(" ")[0] for v in violations(root, "eager front door")] == ["modeling/__init__.py:2"]


def test_imports_of_missing_modules_are_reported(tmp_path):
    root = make_package(tmp_path, {"app/more.py": "from ..integration.gone import G\nfrom .... import x\n"})
    assert violations(root, "unresolved import") == [
        "modeling/app/more.py:1 no module modeling.integration.gone",
        "modeling/app/more.py:2 relative import above the package",
    ]


def test_relative_forms_resolve(tmp_path):
    root = make_package(tmp_path, {
        "app/more.py": textwrap.dedent("""\
            import importlib
            from . import front
            from .. import demo
            from ..integration import glue as g, G
            import modeling.prunevid.algo as algo
            importlib.import_module(".front", "modeling.app")
            """),
    })  # fmt: skip
    report = layers.analyse(root)
    assert report.ok, report.render()
    targets = {(i.line, i.target) for i in report.imports if i.source == "modeling.app.more"}
    assert targets == {
        (2, "modeling.app.front"), (3, "modeling.demo"), (4, "modeling.integration.glue"), (4, "modeling.integration"),
        (5, "modeling.prunevid.algo"), (6, "modeling.app.front"),
    }  # fmt: skip


def test_command_line_fails_on_a_violation(tmp_path):
    root = make_package(tmp_path, {"prunevid/algo.py": "from ..integration.glue import G\n"})
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "layers.py"), str(root)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "modeling/prunevid/algo.py:1: upward import: prunevid -> integration" in out.stdout
    assert "FAIL: " in out.stdout
