# shapeqc: `make demo` runs the main job on an embedded default; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch 2.13.0 lies on this project's machines; installing it first keeps pip
# from resolving torch to a multi-GB CUDA build. Override on other machines: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint kernels-check clean
# Holoscan (the Deploy app's runtime, imported with monai once the deploy extra is in) wants a 32 MB stack

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,deploy]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	ulimit -s 32768 2>/dev/null; $(PY) -m shapeqc.demo

test: setup
	$(VENV)/bin/ruff check .
	ulimit -s 32768 2>/dev/null; $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
