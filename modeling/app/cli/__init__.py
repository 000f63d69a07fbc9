"""The `qwen-prunevid` command line (`python -m modeling`): `parser` (flags and usage errors), `run` (the three
steps: check, read, run), `report` (text, JSON and pictures). See docs/cli.md."""

from .run import main


__all__ = ["main"]
