# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv and
# install CPU torch 2.13.0 before the package, so pip never pulls a multi-GB CUDA build here.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ralu-installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ralu demo

test: $(STAMP)
	$(PY) -m pytest -q

# the edit-run loop: everything but the slow, training and compile tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not training and not compile"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
