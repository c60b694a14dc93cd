# Entry points, each self-contained on a machine with only python3 and make:
#   make demo   runs lrlab's main job (installs the package with its bench extras only)
#   make test   runs every check CI runs: lint, type check, docs build, pytest (installs the dev extras)
#   make docs   builds the documentation site into site/ (warnings are errors)
# Each creates the virtual environment .venv on first use and installs what it needs, printing one
# line per install stage; pip itself prints only errors.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel: an unpinned torch can pull several GB of CUDA packages.
TORCH_PIN := torch==2.13.0
# -qq: errors only. The constraint keeps the extras (the oracle packages above all) from replacing
# the pinned torch.
PIP := $(PY) -m pip install -qq -c $(VENV)/constraints.txt

.PHONY: demo test lint typecheck docs venv browser

$(PY):
	@echo "make: [1/3] creating the virtual environment $(VENV)"
	@$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-torch: | $(PY)
	@echo "make: [2/3] installing $(TORCH_PIN) (CPU wheel)"
	@echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	@$(PIP) "$(TORCH_PIN)"
	@touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-torch
	@echo "make: [3/3] installing lrlab with its bench extras (numpy, scikit-learn, scipy, matplotlib, pandas, datasets)"
	@$(PIP) -e ".[bench]"
	@touch $@

# the dev extras include the bench extras, so a dev install serves `make demo` as well
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-torch
	@echo "make: [3/3] installing lrlab with its dev extras (bench, Ray, pytest, ruff, mypy, mkdocs, the oracle packages)"
	@$(PIP) -e ".[dev]"
	@touch $@ $(VENV)/.installed-bench

venv: $(VENV)/.installed-dev

# the main job: the `smoke` study (one synthetic, one logistic and one vision problem; SGD and Adam
# with and without CLARA over an initial-LR grid) into a resumable store under results/, then its
# report; both commands print where their results are. `lrlab demo` is the older one-screen demo.
demo: $(VENV)/.installed-bench
	$(VENV)/bin/lrlab sweep --preset smoke --store results/smoke.sqlite
	$(VENV)/bin/lrlab report --store results/smoke.sqlite --report-dir results/smoke-report
	@echo "lrlab is installed in $(VENV): run $(VENV)/bin/lrlab --help, or source $(VENV)/bin/activate first"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# settings in pyproject.toml ([tool.mypy]): src/ only
typecheck: venv
	$(VENV)/bin/mypy

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site
	@echo "docs: site/index.html"

# the report tests open the HTML report in a real headless Chromium (Debian's package)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "make test: installing Debian's chromium with apt-get (once; about 120 packages) for the report's browser test; install it yourself beforehand to skip this"; \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test: Chromium is needed for the report's browser test: sudo apt-get install chromium" >&2; exit 1; fi; }

test: lint typecheck docs browser
	$(VENV)/bin/python -m pytest -q
