# edgefleet — the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv on first use; a later run skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch that lies on this machine type's disk. Installed first, so the [platform]
# extra's torch range is already satisfied and pip never fetches a multi-GB CUDA build.
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test setup model proto bench soak lint clean

demo: model
	$(BIN)/edgefleet demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv (from PyPI) installs in ~1 min what pip took ~2.5 min over on 2 cores; a clean clone pays it in
# every CI run. uv does not read pip's settings, so the two this machine type relies on are handed
# on: the wheel folder that holds the CPU torch build (find-links) and the constraints that cap it.
PIP_SETTING = $(shell $(BIN)/python -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")
UV_ARGS = --python $(BIN)/python --quiet \
	$(addprefix --find-links ,$(sort $(PIP_FIND_LINKS) $(call PIP_SETTING,find-links))) \
	$(addprefix --constraint ,$(sort $(PIP_CONSTRAINT) $(call PIP_SETTING,constraint)))

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install $(UV_ARGS) $(TORCH)
	$(BIN)/uv pip install $(UV_ARGS) -e '.[platform,dev]'
	$(BIN)/python -m compileall -q -j 0 edgefleet
	$(BIN)/python -m compileall -q -j 0 -x 'py312_intrinsics\.py$$' $(SITE)/torch $(SITE)/ray
	touch $@

# Bytecode. Compiling the whole venv at install (uv's --compile-bytecode, as pip does) took ~95 s of
# CPU for 25,800 modules, of which a test run imports about a third. So the modules that every
# process imports at once as the fleet starts (torch, ray, edgefleet) are compiled at install, and
# the others as they are first imported: PYTHONDONTWRITEBYTECODE, set on this machine type (as on
# CI), is cleared for every command here. With it set and nothing compiled, each Ray worker would
# compile torch, transformers and Ray from source as it starts: the suite ran twice as slowly. One
# torch file uses Python 3.12 syntax that nothing imports here: compileall skips it (-x).
export PYTHONDONTWRITEBYTECODE :=
SITE = $(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

model: setup
	$(BIN)/edgefleet models fetch

proto: setup
	$(BIN)/python tools/gen_proto.py

bench: model
	$(BIN)/python -m bench

# 10 minutes of loopback load on the embedded fleet: fails if memory, actors or threads grow.
soak: setup
	$(BIN)/python -m bench.soak --minutes $(or $(MINUTES),10)

# The formatter owns layout: no `# fmt: skip` islands. CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
