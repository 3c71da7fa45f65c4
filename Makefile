# The README's two commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
# one torch thread for the tests: on a 2-core machine two threads collapse when anything else runs
TEST_ENV = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_ERROR_REPORTING=false

.PHONY: install demo test lint

install:
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) -m persobench run

lint: install
	$(PYTHON) -m ruff check .

test: install
	$(PYTHON) -m ruff check .
	$(TEST_ENV) $(PYTHON) -m pytest
