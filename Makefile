# qwen-prunevid: the two set-up commands are `make demo` and `make test` (each installs first).
VENV     ?= .venv
PY       := $(VENV)/bin/python
SYSPY    ?= python3
PATCHTOOL = $(SYSPY) tools/patchtool.py
# torch/torchvision from the local wheel mirror; the CUDA build also runs on CPU.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test check patches apply sync-upstream sync-matrix demo clean

install: $(VENV)/.installed

# The test and eval extras (eval: lmms-eval, for tests/test_lmms_eval.py); torch and torchvision stay at their pins.
$(VENV)/.installed: pyproject.toml
	$(SYSPY) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,eval]' $(TORCH_PIN)
	touch $@

test: install check
	$(PY) -m pytest -q tests

# Generated file == snapshot + series; every hunk insert-only, delimited and guarded.
check:
	$(PATCHTOOL) check

# Rewrite patches/*.patch from the edited modeling/modeling_qwen2_5_vl.py (blocks between markers).
patches:
	$(PATCHTOOL) refresh

# Regenerate modeling/modeling_qwen2_5_vl.py from the snapshot and the series.
apply:
	$(PATCHTOOL) apply

# make sync-upstream VERSION=x.y.z [KEEP=1] [FORCE=1]: rebase the series onto another transformers release, install
# it, run the equivalence/stage/vision/patch-tool tests; all or nothing (a failure leaves the tree as it was).
# VERSION reaches the shell only as an environment variable (command-line variables are exported), never as code.
sync-upstream: install
	@test -n "$$VERSION" || (echo "usage: make sync-upstream VERSION=x.y.z [KEEP=1] [FORCE=1]" >&2; exit 2)
	$(PATCHTOOL) sync-upstream --version "$$VERSION" --python '$(PY)' $(if $(KEEP),--keep) $(if $(FORCE),--force)

# The support window: sync scratch clones onto the latest patch of every minor in MINORS and test each one
# (docs/compatibility.md was made with these defaults; MATRIX_K='...' selects a pytest -k subset).
MINORS ?= 5.4 5.23
MATRIX_TESTS ?= tests/test_equivalence.py tests/test_stages.py tests/test_vision_attention.py tests/test_patchtool.py
MATRIX_K ?=
sync-matrix:
	nice -n 19 $(SYSPY) tools/sync_matrix.py --minors $(MINORS) --tests $(MATRIX_TESTS) -k '$(MATRIX_K)' \
		--out docs/compatibility.md

demo: install
	$(PY) -m modeling

clean:
	rm -rf $(VENV) build *.egg-info
