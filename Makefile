# `make demo` and `make test` work on a fresh clone: each builds what it needs first.
PYTHON ?= python3
VENV := .venv
INTEROP_VENV := .venv-interop
STAMP := $(VENV)/.installed
INTEROP_STAMP := $(INTEROP_VENV)/.installed

.PHONY: demo test test-fast interop-env clean

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

demo: $(STAMP)
	$(VENV)/bin/mpp demo

test: $(STAMP) $(INTEROP_STAMP)
	MPP_INTEROP_PYTHON=$(abspath $(INTEROP_VENV))/bin/python $(VENV)/bin/python -m pytest

# Everything but the interoperability tests (no side environment needed).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not interop"

clean:
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache
