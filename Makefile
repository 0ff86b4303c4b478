# Two commands for a newcomer: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration chaos bench bench-kinesis clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml Makefile tools/kinesis-mock/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@# kinesis-mock, the second Kinesis server of the tests and bench-kinesis (Node.js), exactly as
	@# tools/kinesis-mock/package-lock.json pins it (version and integrity hash, no install scripts)
	if command -v npm >/dev/null 2>&1; then \
	  mkdir -p $(VENV)/kinesis-mock && cp tools/kinesis-mock/package.json tools/kinesis-mock/package-lock.json $(VENV)/kinesis-mock/ && \
	  npm ci --silent --ignore-scripts --no-audit --no-fund --prefix $(VENV)/kinesis-mock; \
	else echo "npm not found: the Kinesis tests on kinesis-mock will be skipped (moto's run)"; fi
	touch $(STAMP)

demo: install
	$(BIN)/etl demo

lint: install
	$(BIN)/ruff check etl tests bench chaos celeryconfig.py
	$(BIN)/ruff format --check etl tests bench chaos celeryconfig.py

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install
	$(BIN)/pytest tests/integration -q $(XDIST)

# TEST_WORKERS pytest-xdist processes (the tests mostly wait on servers and workers, so more
# processes than cores pay), each on servers of its own (tests/support.py); the tests marked long
# start first, as workers free up, and an xdist_group runs on one worker (tests/conftest.py).
# TEST_WORKERS=1: one plain process.
TEST_WORKERS ?= 4
XDIST = $(if $(filter 1,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadgroup)

test: lint typecheck
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)

# All seven fault-injection scenarios, on embedded Postgres and Redis of their own (see docs/reliability.md).
chaos: install
	$(BIN)/python -m chaos --messages $(or $(MESSAGES),300) --json .chaos-results.json

# Throughput, cost and memory against limits measured in the same run (see docs/performance.md).
# Installs LocalStack into /tmp/localstack-venv with Python 3.13 the first time (skipped without it).
bench: install
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The Kinesis source next to a bare GetRecords drain of the same records, on moto and on kinesis-mock
# (docs/kinesis.md); BENCH_ARGS="--records N" for a shorter run (not saved).
bench-kinesis: install
	$(BIN)/python -m bench.kinesis $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
