# The one entry point: every target runs scripts/setup.sh first, so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-rust test-python lint proto bench bench-smoke clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m oplog demo

# Lint first so that the last lines of the run are the test summary.
test: setup lint test-rust bench-smoke test-python

test-rust:
	cargo test --quiet

# The whole suite on the embedded PostgreSQL 16, then the database tests on Debian's 15.
test-python:
	$(PY) -m pytest $(PYTEST_ARGS)
	OPLOG_TEST_SERVER=pg15 $(PY) -m pytest -m db $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(PY) -m mypy
	$(PY) -m mypy.stubtest oplog._core
	$(PY) scripts/gen_proto.py --check
	cargo fmt --check
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy --quiet --all-targets --features extension-module -- -D warnings

proto: setup
	$(PY) scripts/gen_proto.py

bench: setup
	mkdir -p .benchmarks
	$(PY) -m pytest benches -p no:cacheprovider --benchmark-json=.benchmarks/latest.json $(BENCH_ARGS)
	$(PY) benches/report.py .benchmarks/latest.json > benches/RESULTS.md
	@cat benches/RESULTS.md

# CI runs every benchmark once, untimed, so they cannot rot.
bench-smoke: setup
	$(PY) -m pytest benches -q --benchmark-disable

clean:
	rm -rf target $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	find python -name '*.so' -delete
