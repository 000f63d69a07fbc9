"""`python -m modeling`: the `qwen-prunevid` command line (see `modeling/cli.py` and docs/cli.md)."""

import sys

from .cli import main


sys.exit(main())
