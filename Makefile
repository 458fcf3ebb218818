# shapeqc: `make demo` runs the main job on an embedded default; `make test` runs the tests.
# Two environments: .venv (the package and its tests) and .venv-app (the same plus the MONAI Deploy SDK). With the
# SDK installed, `import monai` imports Holoscan (MONAI loads every monai.* submodule, monai.deploy included), which
# costs seconds and prints a stack-size warning on every command; so only the app's environment has it.
VENV ?= .venv
APP_VENV ?= .venv-app
PY := $(VENV)/bin/python
APP_PY := $(APP_VENV)/bin/python
# The CPU wheel of torch 2.13.0 lies on this project's machines; installing it first keeps pip
# from resolving torch to a multi-GB CUDA build. Override on other machines: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-app demo test test-package test-app lint kernels-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(APP_VENV)/.installed: pyproject.toml
	test -x $(APP_PY) || python3 -m venv $(APP_VENV)
	$(APP_PY) -m pip install -q --upgrade pip
	$(APP_PY) -m pip install -q "$(TORCH_SPEC)"
	$(APP_PY) -m pip install -q -e ".[dev,deploy]"
	touch $@

setup: $(VENV)/.installed

setup-app: $(APP_VENV)/.installed

demo: setup
	$(PY) -m shapeqc.demo

test: test-package test-app

test-package: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --ignore=tests/test_app.py

# the Deploy app's tests, in its own environment; Holoscan wants a 32 MB stack
test-app: setup-app
	ulimit -s 32768 2>/dev/null; $(APP_PY) -m pytest -q tests/test_app.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(APP_VENV) build *.egg-info
