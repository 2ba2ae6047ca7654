# One-command set-up: every target creates .venv and installs the project when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= demo
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg

.PHONY: install test book bench-demo clean

install: $(STAMP)

# torch and torchvision are pinned in pyproject.toml to the builds these machines serve locally.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

## make test: unit tests and strict nbval over the committed chapters
test: $(STAMP)
	$(PY) -m pytest -q tests $(NBVAL) book

## make book: run every chapter with params/$(PROFILE) (default: demo, the embedded default) and build the HTML book
book: $(STAMP)
	$(PY) -m rna2histo book --profile $(PROFILE)

## make bench-demo: wall time and peak memory (PSS of the whole process tree) of `make book`'s
## main job on the embedded default, against the targets <= 30 minutes and <= 3 GB; the results
## go to benchmarks/results/book-demo-cpu-<date>.json (commit them to quote them in the README)
bench-demo: $(STAMP)
	$(PY) -m rna2histo bench --book demo --json benchmarks/results/book-demo-cpu-$$(date +%F).json

clean:
	rm -rf _build
