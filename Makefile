# The two commands of the README: `make run` starts the system, `make test` runs every check.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/commander-os demo

# The PostgreSQL tests run whenever a server is reachable (scripts/postgres-url starts the
# local one, and says loudly when there is none).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	COMMANDER_OS_TEST_DATABASE_URL="$$(scripts/postgres-url)" $(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/commander-os bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
