# The two commands of the README: `make run` starts the system, `make test` runs every check.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# LangChain's standard tests and LangGraph's conformance suite bring their own pytest plugins:
# they get an environment and a pytest session of their own (tests/integrations/external).
INTEGRATIONS_VENV ?= .venv-integrations
IBIN := $(INTEGRATIONS_VENV)/bin

.PHONY: run test test-integrations lint typecheck bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

$(IBIN)/.installed: pyproject.toml
	test -x $(IBIN)/python || $(PYTHON) -m venv $(INTEGRATIONS_VENV)
	$(IBIN)/python -m pip install --quiet --upgrade pip
	$(IBIN)/python -m pip install --quiet -e '.[integration-tests]'
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
	$(MAKE) test-integrations

test-integrations: $(IBIN)/.installed
	$(IBIN)/python -m pytest -c tests/integrations/external/pytest.ini tests/integrations/external

bench: $(BIN)/.installed
	$(BIN)/commander-os bench

clean:
	rm -rf $(VENV) $(INTEGRATIONS_VENV) data .pytest_cache .mypy_cache .ruff_cache
