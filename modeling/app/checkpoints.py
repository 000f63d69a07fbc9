"""Checks that a path is a loadable Qwen2.5-VL checkpoint, without loading it (for `--model` and
`VideoQA.from_pretrained`): the failure is a one-line `CheckpointError` naming what is wrong, before anything slow.

Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


__all__ = ["CheckpointError", "check_checkpoint", "checkpoint_depth", "load_errors"]


class CheckpointError(ValueError):
    """A `--model` / `from_pretrained` path that is not a loadable Qwen2.5-VL checkpoint; the message says why."""


#: A Hugging Face Hub model id: `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: Weight files `from_pretrained` reads, in its order of preference.
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check, without loading it, that `path` is a Qwen2.5-VL checkpoint, and return its `config.json`.

    A local directory needs a `config.json` holding a JSON object with `model_type` `qwen2_5_vl`, weights
    (`model.safetensors`, sharded with an index whose every shard exists, or `pytorch_model.bin`), safetensors
    files whose header is intact and whose size covers every tensor, and the processor's files (an image/video
    processor config and a tokenizer). A Hub id is looked up in the local cache, then on the Hub (one request, no
    retries), and only its `config.json` is checked.

    Raises:
        CheckpointError: Why `path` is not one (a `ValueError`).
    """
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"--model must be a checkpoint directory or a Hub id, got the file {local}")
        config = _read_config(local / "config.json", f"Not a Hugging Face checkpoint: {local} has no config.json")
        _check_weights(local)
        _check_processor_files(local)
    elif _HUB_ID.match(str(path)):
        config = _read_config(_hub_config(str(path)), "")
    else:
        raise CheckpointError(f"--model {str(path)!r} is neither an existing directory nor a Hub id (owner/name)")
    model_type = config.get("model_type")
    if model_type != "qwen2_5_vl":
        raise CheckpointError(f"{path} is not a Qwen2.5-VL checkpoint: its config.json has model_type={model_type!r}, "
                              "expected 'qwen2_5_vl'")  # fmt: skip
    return config


def checkpoint_depth(config: dict[str, Any]) -> int | None:
    """The LLM's number of layers from a `config.json` dict (`text_config.num_hidden_layers`, or the top level)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    depth = text.get("num_hidden_layers", config.get("num_hidden_layers"))
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else None


def _read_config(file: Path, missing: str) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(missing)
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"Cannot read {file}: {' '.join(str(error).split())}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got a JSON {type(config).__name__}")
    return config


def _check_weights(folder: Path) -> None:
    present = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not present:
        raise CheckpointError(f"No weights in {folder}: expected one of {', '.join(_WEIGHTS)}")
    name = present[0]
    if name.endswith(".index.json"):
        index = _read_config(folder / name, "")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / name} has no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise CheckpointError(f"{folder / name} lists {len(missing)} missing shard(s), e.g. {missing[0]}")
        files = [folder / shard for shard in shards]
    else:
        files = [folder / name]
    for file in files:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        elif file.stat().st_size == 0:
            raise CheckpointError(f"Weights file {file} is empty")


def _check_safetensors(file: Path) -> None:
    """The 8-byte header length, a JSON header, and a file long enough for every tensor's byte range."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, 100 * 2**20):
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"Weights file {file} is not a valid safetensors file ({error})") from error
    if 8 + length + end > size:
        raise CheckpointError(f"Weights file {file} is truncated: {size} bytes, its tensors need {8 + length + end}")


def _check_processor_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise CheckpointError(f"No processor config in {folder}: expected preprocessor_config.json or "
                              "processor_config.json (save the processor next to the weights)")  # fmt: skip
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise CheckpointError(f"No tokenizer in {folder}: expected tokenizer.json (or vocab.json and merges.txt)")


def _hub_config(repo_id: str) -> Path:
    """`config.json` of a Hub model: from the cache, else downloaded after one lookup (which fails fast offline)."""
    from huggingface_hub import constants, hf_hub_download, model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"--model {repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:
        model_info(repo_id, timeout=10)
    except GatedRepoError as error:
        raise CheckpointError(f"--model {repo_id}: gated on the Hub; log in with access to it") from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"--model {repo_id}: no such model on the Hugging Face Hub (or it is private)") from error
    except Exception as error:  # noqa: BLE001 - network errors of the HTTP client
        raise CheckpointError(f"--model {repo_id}: not a local directory, not in the Hugging Face cache, and the Hub "
                              f"cannot be reached ({type(error).__name__})") from error  # fmt: skip
    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"--model {repo_id}: cannot download its config.json ({type(error).__name__})") from error


@contextlib.contextmanager
def load_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failure to load a checkpoint's processor or weights into a [`CheckpointError`] naming the path; running
    out of memory is not the checkpoint's fault and passes through."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - transformers, safetensors and hub errors have no common base
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"Cannot load the {what} of {path}: {type(error).__name__}: {message}") from error
