# The two commands of the quick start; each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The main job: the paper's Table 1 protocol on offline data (MNIST -> UCI digits).
run: $(STAMP)
	$(BIN)/python -m experiments.main \
	  --config=experiments/configs/mnist_to_uci.py --workdir=workdir/mnist_to_uci

# Test files run in parallel (pytest-xdist), each whole on one worker so that its
# module fixtures run once; up to 4 workers, one per core.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile

clean:
	rm -rf workdir
