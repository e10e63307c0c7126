# Two commands for a fresh clone: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint bench setup system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# phd2client 0.3.0 asks for Python 3.13 in its metadata but runs on 3.11 (compat tests).
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python phd2client==0.3.0
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the INDI tests need; installed only when missing and when running as root.
system-deps:
	@if ! command -v indiserver >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing indi-bin (Debian) for the INDI tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends indi-bin iproute2 util-linux >/dev/null; \
	fi

run: $(STAMP)
	$(BIN)/phdserver serve --camera simulator $(ARGS)

test: $(STAMP) system-deps
	$(BIN)/ruff check phdserver tests benchmarks examples
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check phdserver tests benchmarks examples

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
