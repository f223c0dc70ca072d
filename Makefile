# The README's commands are the contract: `make demo` and `make test` each set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torchvision on PyPI is a CUDA build: it needs the regular (CUDA) torch wheel, which runs on CPU.
TORCH  := torch==2.14.1 torchvision==0.29.2

.PHONY: setup test test-fast demo bench docs docs-figures lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, lucent.optvis.render; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| lucent ok')"
	touch $(STAMP)

# Two workers, one torch thread each (tests/conftest.py), whole files per worker.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/circuits demo -m toy --out outputs/demo
	$(BIN)/circuits atlas -m toy --layers mixed4a,mixed4b --units mixed4b:60-67 \
	    --images outputs/demo/scenes --steps 128 --kinds channel --out outputs/demo/atlas

bench: setup
	$(BIN)/python benchmarks/run.py --out outputs/bench

# The documentation site, offline and strict (a broken link, a missing page or an unresolved
# reference fails); open outputs/docs/index.html (the search box needs a server:
# python3 -m http.server -d outputs/docs). The figures are committed under docs/figures/;
# docs-figures makes them again with the tool itself (about 4 CPU minutes from nothing).
docs: setup
	$(BIN)/python -m mkdocs build --strict -d outputs/docs

docs-figures: setup
	$(BIN)/python docs/make_figures.py

lint: setup
	$(BIN)/ruff check circuits_cli tests benchmarks docs/make_figures.py docs/hooks.py
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
