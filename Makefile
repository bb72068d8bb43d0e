# Quick start (README):  make demo   -- set up, convert resnet50 to all three frameworks, check parity
#                        make test   -- set up, run the whole test suite (what CI runs: .ci/run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/resnet50

.PHONY: demo test setup clean

demo: setup
	$(BIN)/resnet-spec summary resnet50
	$(BIN)/resnet-spec convert resnet50 --to all -o $(OUT) --force
	$(BIN)/resnet-spec parity resnet50 --json $(OUT)/parity.json

test: setup
	$(BIN)/python -m pytest -n 2 -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) out build *.egg-info
