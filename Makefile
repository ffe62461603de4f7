# memprobe: `make run` installs and runs the main job; `make test` installs and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
MEMPROBE := $(VENV)/bin/memprobe
STAMP := $(VENV)/.installed

.PHONY: install run test unit docs bench lint shipped clean

# The nnunet extra is part of the development install: its tests run in CI (MEMPROBE_NNUNET=0 skips it).
MEMPROBE_NNUNET ?= 1

$(STAMP): pyproject.toml scripts/install.sh
	MEMPROBE_NNUNET=$(MEMPROBE_NNUNET) bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

# Calibrate MedNeXt and suggest a batch for 128^3 on the best device present.
run: install
	bash scripts/main_job.sh

# pytest-benchmark keeps its own storage folder (created even when nothing is saved): not in the tree.
BENCH_STORAGE := --benchmark-storage=.bench-results/pytest-benchmark

# The benchmarks in `make test`: three families (a ConvNeXt, a residual CNN, a Swin transformer),
# to stay within 12 minutes on 2 cores. `make bench` runs all ten and refreshes the committed
# tables; `make test TEST_BENCH_ARCHS=` runs all ten too.
TEST_BENCH_ARCHS ?= mednext,segresnet,swinunetr

# TEST_WORKERS: pytest-xdist processes for the unit tests (one per core on CI's 2-core machine).
TEST_WORKERS ?= 2

# The docs build (seconds), unit tests (in TEST_WORKERS processes), then the benchmarks in one
# process, so their timings do not share the cores (tables printed, written to the ignored
# .bench-results/; `make bench` refreshes the committed ones in benchmarks/results/ and
# docs/benchmarks.md). Leaves `git status` clean.
test: docs unit
	MEMPROBE_BENCH_ARCHS=$(TEST_BENCH_ARCHS) MEMPROBE_RESULTS_DIR=.bench-results $(PY) -m pytest benchmarks -p no:cacheprovider $(BENCH_STORAGE)

unit: install
	$(PY) -m pytest tests -p no:cacheprovider -p no:benchmark -n $(TEST_WORKERS) --dist worksteal

# The docs site: every warning is an error (a broken link, a docstring that does not parse, a page
# missing from the nav). Built into the ignored .site/ and removed, so the tree stays as it was.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir .site; status=$$?; rm -rf .site; exit $$status

# All ten networks' benchmarks; their tables (benchmarks/results/*.md) are then copied into docs/benchmarks.md.
bench: install
	$(PY) -m pytest benchmarks -p no:cacheprovider $(BENCH_STORAGE)
	$(PY) scripts/update_docs.py

lint: install
	$(VENV)/bin/ruff check memprobe tests benchmarks scripts
	$(VENV)/bin/ruff format --check memprobe tests benchmarks scripts
	$(VENV)/bin/mypy memprobe

# Rebuild the calibrations shipped in memprobe/data from trace measurements (tens of minutes):
# training steps, then MONAI's sliding-window inference.
shipped: install
	$(PY) scripts/build_shipped.py
	$(PY) scripts/build_shipped_inference.py
	$(PY) scripts/build_shipped_nnunet.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks .bench-results .site
