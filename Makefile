# The README's two commands: `make test` and `make demo`. Both set themselves up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test lint demo system-deps bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests need (prometheus/promtool, amtool, docker-compose, chromium).
system-deps:
	bash scripts/system-deps.sh

test: setup system-deps
	$(PY) -m pytest

# Linter and type checker over the product code (configuration in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check loadlab target_app locust_tests monitoring benchmarks
	$(VENV)/bin/mypy

demo: setup
	$(VENV)/bin/loadlab run login-step --time-scale 0.1

clean:
	rm -rf $(VENV) .pytest_cache
