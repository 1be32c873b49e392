# The one entry point: every target runs scripts/setup.sh first, so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-rust test-python lint proto sync wheel bench bench-smoke fuzz fuzz-tool fuzz-smoke fuzz-cmin clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m oplog demo

# Lint first so that the last lines of the run are the test summary.
test: setup lint test-rust fuzz-smoke bench-smoke wheel test-python

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
	$(PY) scripts/async_to_sync.py --check
	cargo fmt --check
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy --quiet --all-targets --features extension-module -- -D warnings

proto: setup
	$(PY) scripts/gen_proto.py

# A wheel PyPI accepts, in dist/: abi3, linked through zig (ziglang, from PyPI) against glibc 2.28
# so that it is manylinux_2_28, stripped, with its LICENSE; and the sdist. auditwheel checks it.
wheel: setup
	rm -rf dist
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin build --quiet --release --strip --zig \
	  --compatibility manylinux_2_28 --out dist
	$(VENV)/bin/maturin sdist --out dist
	$(VENV)/bin/auditwheel show dist/oplog-*-abi3-manylinux_2_28_x86_64.whl | tee dist/auditwheel.txt
	grep -q 'platform tag: "manylinux_2_28_x86_64"' dist/auditwheel.txt
	ls -l dist

# The sync modules (log.py, consumer.py, transaction.py, writer.py, replay.py) from their asyncio
# sources (*_async.py): edit those, then run this.
sync: setup
	$(PY) scripts/async_to_sync.py

bench: setup
	mkdir -p .benchmarks
	$(PY) -m pytest benches -p no:cacheprovider --benchmark-json=.benchmarks/latest.json $(BENCH_ARGS)
	$(PY) benches/report.py .benchmarks/latest.json > benches/RESULTS.md
	$(PY) benches/chart.py .benchmarks/latest.json benches/results.png
	@cat benches/RESULTS.md

# CI runs every benchmark once, untimed, so they cannot rot.
bench-smoke: setup
	$(PY) -m pytest benches -q --benchmark-disable

# libFuzzer through cargo-fuzz: a target per entry point of the codec (fuzz/fuzz_targets).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
FUZZ_TARGETS := queue_decode envelope_decode pgarray_pack blob_open
FUZZ_SECONDS ?= 600
FUZZ := RUSTC_BOOTSTRAP=1 cargo fuzz

fuzz-tool:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

# Each target for FUZZ_SECONDS (default 10 minutes), growing its corpus in fuzz/corpus.
fuzz: fuzz-tool
	for t in $(FUZZ_TARGETS); do $(FUZZ) run --fuzz-dir fuzz -O $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

# CI: every target briefly (about 45 s in all) from the committed corpus, so none can rot.
# New inputs go to a scratch directory, so the committed corpus stays as it is.
fuzz-smoke: fuzz-tool
	set -o pipefail; for t in $(FUZZ_TARGETS); do scratch=$$(mktemp -d); \
	  $(FUZZ) run --fuzz-dir fuzz -O $$t $$scratch fuzz/corpus/$$t -- -max_total_time=15 -print_final_stats=1 2>&1 \
	  | tail -n 4 || exit 1; rm -rf $$scratch; done

# Shrinks each committed corpus to the inputs that add coverage.
fuzz-cmin: fuzz-tool
	for t in $(FUZZ_TARGETS); do $(FUZZ) cmin --fuzz-dir fuzz -O $$t fuzz/corpus/$$t || exit 1; done

clean:
	rm -rf target $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	find python -name '*.so' -delete
