# The user's commands (see README.md). Every target installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?= tiny
DTYPE ?=
ENGINE ?=
HOST ?= 0.0.0.0
PORT ?= 8000
BACKEND ?=
SERVED_MODEL_NAME ?=
API_KEY ?=
SERVER_ARGS ?=
BENCH_ARGS ?=
# pytest workers for `make test`: one per core (each takes whole test files, so a file's module-scoped
# servers and engines are built once), at most 4 (each holds its own servers and engines in memory);
# TEST_WORKERS=0 runs everything in this process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
REFERENCE ?=
VERIFY_ARGS ?=
TINY_ENGINE := engines/gemma-4-tiny-it-float32
# The tiny demo also answers to the NIM's model names, so the NIM's examples run against it as written.
DEMO_ALIASES := --model-alias google/gemma-4-26b-a4b-it --model-alias google/gemma-4-31b-it

.PHONY: install test lint serve engine triton bench verify clean

install: $(STAMP)

# torch is pinned to the CPU wheel that lies on this machine's disk when no torch is importable yet;
# an unpinned torch would pull a multi-GB CUDA build. On a GPU image the existing torch is kept.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,triton,lint]"
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile tests

# ruff's settings are in pyproject.toml (it reads build/ too, which it would skip by default)
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

engine: install
	$(PY) -m engine_builder --model $(MODEL) $(if $(DTYPE),--dtype $(DTYPE)) $(if $(ASSISTANT),--assistant $(ASSISTANT)) --out-dir engines

serve: install
	@if [ -n "$(BACKEND)" ]; then \
	  exec $(PY) -m server --backend "$(BACKEND)" --host $(HOST) --port $(PORT) \
	    $(if $(SERVED_MODEL_NAME),--served-model-name $(SERVED_MODEL_NAME)) $(if $(API_KEY),--api-key $(API_KEY)) $(SERVER_ARGS); fi; \
	engine="$(ENGINE)"; demo=""; \
	if [ -z "$$engine" ]; then \
	  engine=$$(ls -d engines/*/ 2>/dev/null | grep -v tiny | head -n1); \
	  if [ -z "$$engine" ]; then engine=$(TINY_ENGINE); demo="$(DEMO_ALIASES)"; fi; \
	  if [ ! -f "$$engine/engine.json" ]; then \
	    echo ">> No engine built yet: building the tiny demo engine. For a real model: make engine MODEL=26b (or 31b), then make serve ENGINE=engines/<name>"; \
	    $(PY) -m engine_builder --model tiny --out-dir engines || exit 1; fi; \
	fi; \
	exec $(PY) -m server --engine "$$engine" --host $(HOST) --port $(PORT) $$demo \
	  $(if $(SERVED_MODEL_NAME),--served-model-name $(SERVED_MODEL_NAME)) $(if $(API_KEY),--api-key $(API_KEY)) $(SERVER_ARGS)

triton: install
	@test -n "$(ENGINE)" || { echo "usage: make triton ENGINE=engines/<name>"; exit 2; }
	$(PY) -m triton_bridge.launcher --engine "$(ENGINE)"

bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

# the engine against the Hugging Face checkpoint it was built from (REFERENCE: engine.json's source by default)
verify: install
	@test -n "$(ENGINE)" || { echo "usage: make verify ENGINE=engines/<name> [REFERENCE=<checkpoint folder or hub id>]"; exit 2; }
	$(PY) -m bench.verify --engine "$(ENGINE)" $(if $(REFERENCE),--reference "$(REFERENCE)") $(VERIFY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
