# The two commands a newcomer needs: `make dev` (issue 3) and `make test`.
# Every target installs what it is missing; nothing here needs AWS or an API key.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv test test-python check-template clean

help:
	@echo "make test            set up what is missing and run every test"
	@echo "make check-template  cfn-lint, sam validate --lint and sam build on template.yaml"
	@echo "make clean           remove virtual environments and build output"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: venv check-template test-python

test-python: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-* .aws-sam
