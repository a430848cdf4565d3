# Two commands are the whole setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
COMPARE := $(VENV)/.compare
# Keep BLAS/OpenMP from oversubscribing small machines; torch picks its own intra-op threads.
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-all demo lint bench clean-venv chromium

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo,export,graph,lhotse,tensorboard,tts,pretrained]'
	touch $@

# Comparison decoders for the parity tests and benchmarks (the `compare` extra). pyctcdecode pins
# numpy<2 without needing it, so it goes in without its dependencies; kenlm compiles (a minute or
# two). A failure here only makes the parity tests skip, with the reason, so it does not stop setup.
$(COMPARE): $(STAMP)
	$(BIN)/pip install -q flashlight-text fast-ctc-decode kenlm || echo "warning: comparison decoders not installed"
	$(BIN)/pip install -q --no-deps pyctcdecode && $(BIN)/pip install -q pygtrie || echo "warning: pyctcdecode not installed"
	touch $@

test: setup $(COMPARE)
	$(BIN)/python -m pytest -q

# Headless Chromium for the slow browser test of report.html (tests/test_report_browser.py). Best
# effort: where it cannot be installed the test skips with its reason.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "warning: no Chromium; tests/test_report_browser.py will skip"

test-all: setup $(COMPARE) chromium
	$(BIN)/python -m pytest -q -m ''

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(MAKE) -C egs/demo

lint: setup
	$(BIN)/ruff check asr tests bench egs

bench: setup $(COMPARE)
	@set -e; for f in $$(grep -l '^if __name__ == "__main__"' bench/*.py); do echo "== $$f"; $(BIN)/python $$f; done

clean-venv:
	rm -rf $(VENV)
