# Two entry points (README): `make run` and `make test`. Each creates .venv and installs the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job on the CPU. Until training lands it samples groups from untrained weights (noise),
# exercising the whole generation path: GroupDiT, GroupDiff-l guidance, Heun sampler, PNG grid.
run: $(STAMP)
	$(BIN)/groupdiff sample --untrained DiT-T/2 --groups 2 --group-size 4 --steps 20 \
		--guidance-scale 1.0 --out outputs/sample.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/groupdiff bench model

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
