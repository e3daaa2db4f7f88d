# `make demo` and `make test` work on a fresh clone: each builds what it needs first.
PYTHON ?= python3
VENV := .venv
INTEROP_VENV := .venv-interop
STAMP := $(VENV)/.installed
INTEROP_STAMP := $(INTEROP_VENV)/.installed
CHROMIUM_STAMP := $(VENV)/.chromium
POSTGRES_STAMP := $(VENV)/.postgres
ANVIL_DIR := .anvil
ANVIL_STAMP := $(ANVIL_DIR)/.installed
MPPX_DIR := .mppx
MPPX_STAMP := $(MPPX_DIR)/.installed
# the interoperability environment plus what the pympp benchmark peer needs (benchmarks/bench_pympp.py)
BENCH_STAMP := $(INTEROP_VENV)/.bench

.PHONY: demo test test-fast interop-env clean bench bench-session docs anvil mppx

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# pympp imports as `mpp`, like us: it lives in its own environment and is driven as a subprocess.
$(INTEROP_STAMP): tests/interop/requirements.txt
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
	touch $@

interop-env: $(INTEROP_STAMP)

# The HTML-report test renders the page in headless Chromium: Debian's package, installed when missing
# (as root, as on CI; elsewhere install it yourself: apt-get install --no-install-recommends chromium).
$(CHROMIUM_STAMP): | $(STAMP)
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)
	touch $@

# The PostgreSQL tests start a throwaway server themselves (mpp/stores/pg/server.py); they need its
# programs: Debian's package, installed when missing (as root, as on CI).
$(POSTGRES_STAMP): | $(STAMP)
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql)
	touch $@

# The evm tests and the demo start a throwaway local chain themselves (mpp/methods/evm/devchain.py):
# Foundry's anvil, from npm (the package ships the binary), at the exact version tools/anvil/ pins
# (package.json, package-lock.json with its integrity hash), installed into .anvil/ when missing or
# when the pin changes (npm ci, ~2 s). Needs npm (Node.js 20 or newer).
$(ANVIL_STAMP): tools/anvil/package.json tools/anvil/package-lock.json
	@command -v npm >/dev/null || (echo "anvil is installed with npm: install Node.js 20 or newer (apt-get install nodejs npm)" >&2; exit 1)
	mkdir -p $(ANVIL_DIR)
	cp tools/anvil/package.json tools/anvil/package-lock.json $(ANVIL_DIR)/
	npm ci --prefix $(ANVIL_DIR) --no-audit --no-fund --loglevel=error
	touch $@

anvil: $(ANVIL_STAMP)

# The evm interoperability tests (tests/interop/test_evm_interop.py) drive mppx, the TypeScript
# SDK, with node: mppx and its peer viem at the exact versions tools/mppx/ pins (package.json,
# package-lock.json with the integrity hashes), installed into .mppx/ when missing or when the pin
# changes (npm ci). Needs node and npm (Node.js 20 or newer).
$(MPPX_STAMP): tools/mppx/package.json tools/mppx/package-lock.json
	@command -v npm >/dev/null || (echo "mppx is installed with npm: install Node.js 20 or newer (apt-get install nodejs npm)" >&2; exit 1)
	mkdir -p $(MPPX_DIR)
	cp tools/mppx/package.json tools/mppx/package-lock.json $(MPPX_DIR)/
	npm ci --prefix $(MPPX_DIR) --no-audit --no-fund --loglevel=error
	touch $@

mppx: $(MPPX_STAMP)

demo: $(STAMP) $(ANVIL_STAMP)
	$(VENV)/bin/mpp demo

# The API reference, built from the docstrings by pdoc into docs/api/ (open docs/api/index.html);
# fails listing any public module or name without a docstring (tools/api_docs.py; tests/test_docs.py
# checks the same inside `make test`). pdoc comes with the `test` extra, which $(STAMP) installs.
docs: $(STAMP)
	$(VENV)/bin/python tools/api_docs.py --out docs/api

# One pytest worker per core (pytest-xdist), each test file whole on one worker: most of the suite
# waits on seller processes, servers and expiring challenges, so two workers halve the wall time.
PYTEST_WORKERS := -n auto --dist loadfile

test: $(STAMP) $(INTEROP_STAMP) $(BENCH_STAMP) $(CHROMIUM_STAMP) $(POSTGRES_STAMP) $(ANVIL_STAMP) $(MPPX_STAMP)
	MPP_INTEROP_PYTHON=$(abspath $(INTEROP_VENV))/bin/python MPP_INTEROP_MPPX=$(abspath $(MPPX_DIR)) \
		$(VENV)/bin/python -m pytest $(PYTEST_WORKERS)

# Everything but the interoperability tests (no side environment needed).
test-fast: $(STAMP) $(CHROMIUM_STAMP) $(POSTGRES_STAMP) $(ANVIL_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_WORKERS) -m "not interop"

# Throughput and latency side by side (issue 6): table on stdout, benchmarks/results.json (~2 min);
# the PostgreSQL rows run on a throwaway PostgreSQL the harness starts and stops itself.
# The pympp peer runs in the interoperability environment, with aiohttp added to it.
$(BENCH_STAMP): benchmarks/pympp-requirements.txt | $(INTEROP_STAMP)
	$(INTEROP_VENV)/bin/pip install --quiet --disable-pip-version-check -r benchmarks/pympp-requirements.txt
	touch $@

# BENCH_ARGS: more options, e.g. make bench BENCH_ARGS="--rounds 3" (see benchmarks/bench.py --help)
BENCH_ARGS ?=
bench: $(STAMP) $(BENCH_STAMP) $(POSTGRES_STAMP)
	$(VENV)/bin/python benchmarks/bench.py --json benchmarks/results.json $(BENCH_ARGS)

# HTTP requests on the wire for 100 paid calls: session against charge (prints a table, writes JSON).
bench-session: $(STAMP)
	$(VENV)/bin/python benchmarks/session_wire.py --calls 100 --json benchmarks/session_wire.json

clean:
	rm -rf $(VENV) $(INTEROP_VENV) $(ANVIL_DIR) $(MPPX_DIR) .pytest_cache docs/api

# Third-party sellers (pympp from PyPI, mppx from npm, each in its own environment under
# conformance/targets/) run against the conformance suite; writes conformance/RESULTS.md.
# Needs network access to PyPI and npm on first use, and node/npm; not part of `make test`.
.PHONY: conformance-results
conformance-results: $(STAMP)
	$(VENV)/bin/python conformance/targets/run.py
