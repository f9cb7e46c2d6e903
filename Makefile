# dropwatch: the two commands a new user needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup deps bpf venv test demo lint clean

setup: deps bpf venv

deps:
	./scripts/install-deps.sh

bpf:
	$(MAKE) -C bpf

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/dropwatch demo

lint: venv
	$(VENV)/bin/ruff check dropwatch tests bench
	$(VENV)/bin/mypy dropwatch

clean:
	$(MAKE) -C bpf clean
	rm -rf $(VENV)
