"""`tools/device_wheels.py`: the wheels carried to the lent GPU machine are pinned by the lock, and the check finds
a requirement that is neither carried nor on the machine (markers evaluated for the machine, extras left out)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("device_wheels", ROOT / "tools" / "device_wheels.py")
device_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_wheels)


def wheel(folder: Path, name: str, *requires: str) -> None:
    meta = "Metadata-Version: 2.1\nName: {0}\nVersion: 1.0\n".format(name)
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)


def test_every_carried_package_is_pinned_by_the_lock():
    pins = device_wheels.pins()
    assert pins["transformers"].startswith("transformers==")
    assert all(device_wheels.canonical(name) in pins for name in device_wheels.WHEELS)
    assert "torch" in device_wheels.IMAGE and "decord" not in device_wheels.IMAGE


def test_missing_requirements_are_found(tmp_path):
    wheel(tmp_path, "transformers", "huggingface-hub>=2.4", "numpy>=1.17", "kernels<0.20,>=0.19.1",
          "tomli>=1.1; python_version < '3.11'", "pytest; extra == 'testing'")  # fmt: skip
    wheel(tmp_path, "huggingface_hub", "httpx2<3,>=2.0.0", "hf-xet<2; platform_machine == 'x86_64'")
    assert device_wheels.missing(tmp_path) == {"huggingface-hub": ["httpx2"], "transformers": ["kernels"]}
    wheel(tmp_path, "httpx2")
    wheel(tmp_path, "kernels", "tomlkit>=0.13.3")
    assert device_wheels.missing(tmp_path) == {"kernels": ["tomlkit"]}
    wheel(tmp_path, "tomlkit")
    assert device_wheels.missing(tmp_path) == {}
    assert device_wheels.main(["--out", str(tmp_path), "--check-only"]) == 0
