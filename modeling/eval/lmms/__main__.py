"""`python -m modeling.eval.lmms`: print the folder to pass to lmms-eval's `--include_path` for `prunevid_moving_shapes`."""

from . import TASKS_DIR


print(TASKS_DIR)
