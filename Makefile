# The README's two commands: `make test` and `make demo`. Both set themselves up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test test-parallel test-serial lint demo system-deps bench clean
# Never two targets at once, even under `make -j`: the serial test group must run alone.
.NOTPARALLEL:

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[lab,test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests need (prometheus/promtool, amtool, docker-compose, chromium).
system-deps:
	bash scripts/system-deps.sh

# The suite in two groups (marker `serial`, registered in pyproject.toml), one after the other:
# - test-parallel: the tests that measure nothing of the machine, in TEST_WORKERS processes
#   (pytest-xdist; --dist loadscope keeps each module, so its module-scoped servers and runs, on one worker);
# - test-serial: the tests that measure CPU, rates, latencies or a knee against a known truth, one at a
#   time with nothing else running.
# -k: the serial group runs even when the parallel one failed; `make test` fails if either did.
TEST_WORKERS ?= 4
test: setup system-deps
	$(MAKE) --no-print-directory -k test-parallel test-serial

test-parallel: setup
	$(PY) -m pytest -m "not serial" -n $(TEST_WORKERS) --dist loadscope

test-serial: setup
	$(PY) -m pytest -m serial -p no:xdist

# Linter and type checker over the product code (configuration in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check loadlab target_app locust_tests monitoring benchmarks
	$(VENV)/bin/mypy

demo: setup
	$(VENV)/bin/loadlab run login-step --time-scale 0.1

clean:
	rm -rf $(VENV) .pytest_cache
