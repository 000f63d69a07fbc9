"""`python -m modeling`: the `qwen-prunevid` command line (see `modeling/app/cli/` and docs/cli.md)."""

import sys

from .app.cli import main


sys.exit(main())
