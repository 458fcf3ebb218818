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
comma := ,

.PHONY: setup setup-app demo test test-package test-app lint kernels-check clean train-campaign

# $(1): the environment's folder, $(2): the project's extras in it
define install_env
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(1)/bin/python -m pip install -q -e ".[$(2)]"
	touch $(1)/.installed
endef

$(VENV)/.installed: pyproject.toml
	$(call install_env,$(VENV),dev$(comma)cluster$(comma)federated)

$(APP_VENV)/.installed: pyproject.toml
	$(call install_env,$(APP_VENV),dev$(comma)deploy)

setup: $(VENV)/.installed

setup-app: $(APP_VENV)/.installed

demo: setup
	$(PY) -m shapeqc.demo

test: test-package test-app

test-package: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --ignore=tests/test_app.py

# the Deploy app's tests, in its own environment; Holoscan wants a 32 MB stack
test-app: setup-app
	ulimit -s 32768 2>/dev/null; $(APP_PY) -m pytest -q tests/test_app.py

# one session of a prior's training campaign (docs/training.md): resumes docs/training/$(BUNDLE)/checkpoint.pt
BUNDLE ?= kidney
MINUTES ?= 60
train-campaign: setup
	OMP_NUM_THREADS=1 $(PY) -m shapeqc.training.campaign --bundle bundles/$(BUNDLE) --minutes $(MINUTES)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(APP_VENV) build *.egg-info
