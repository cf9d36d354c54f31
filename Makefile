# fiber_det: `make demo` (the main job) and `make test` (lint + tests). Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install lock lint format test test-latest demo serve clean-venv

install:
	@bash tools/install_env.sh

# Regenerate requirements.lock after editing requirements.txt (keeps today's pins that still fit).
lock:
	@bash tools/install_env.sh --lock

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest -q tests

# The suite on the newest releases requirements.txt allows, in a separate venv (no lock).
test-latest:
	@VENV=.venv-latest FIBER_LATEST=1 bash tools/install_env.sh
	.venv-latest/bin/python -m pytest -q tests

demo: install
	$(PY) tools/run_demo.py

# The web demo (Gradio) of the model `make demo` saved: open http://127.0.0.1:7860 (Ctrl-C stops).
SERVE_MODEL ?= output/quickstart/model
serve: install
	@test -f $(SERVE_MODEL)/config.yaml || \
		{ echo "no saved model in $(SERVE_MODEL): run make demo first"; exit 1; }
	$(PY) tools/serve.py --model $(SERVE_MODEL)

clean-venv:
	rm -rf $(VENV) .venv-latest
