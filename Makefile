# Two commands for a fresh machine:
#   make run    install opengemma + the default model (Gemma 3 270M), then generate text with it
#   make test   install the test dependencies, then run the whole test suite (quick + real-model tiers)
PYTHON ?= python3
PIP = $(PYTHON) -m pip
PROMPT ?= The capital of France is

.PHONY: run test test-quick test-slow install install-test lint

install:
	# torch first, pinned: the CPU build on this machine's disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[default-model]"

install-test: install
	$(PIP) install -q -e ".[default-model,serve,eval,test]"
	# the chat page's browser test drives Debian's chromium (Playwright's own browser downloads don't work here)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

run: install
	$(PYTHON) -m opengemma.cli generate "$(PROMPT)" --max-new-tokens 40

lint:
	# one formatter and linter for the whole tree (pyproject.toml's [tool.ruff])
	$(PYTHON) -m ruff format --check opengemma tests benchmarks
	$(PYTHON) -m ruff check opengemma tests benchmarks

test: install-test lint
	$(PYTHON) -m pytest -q --durations=40

test-quick: install-test
	$(PYTHON) -m pytest -q -m "not real_model"

test-slow: install-test
	$(PYTHON) -m pytest -q --run-slow
