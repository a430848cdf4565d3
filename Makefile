# Two commands are the whole setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep BLAS/OpenMP from oversubscribing small machines; torch picks its own intra-op threads.
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-all demo lint bench clean-venv

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

demo: setup
	$(MAKE) -C egs/demo PATH="$(abspath $(BIN)):$$PATH"

lint: setup
	$(BIN)/ruff check asr tests bench egs

bench: setup
	@set -e; for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean-venv:
	rm -rf $(VENV)
