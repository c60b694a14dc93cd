# Two entry points, both self-contained on a machine with only python3 and make:
#   make demo   runs lrlab's main job
#   make test   runs the whole test suite (lint + pytest)
# Each creates the virtual environment .venv on first use and installs what it needs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel: an unpinned torch can pull several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint venv browser

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	# the constraint keeps the oracle packages from replacing the pinned torch
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed-dev

# the main job: the `smoke` study (one synthetic, one logistic and one vision problem; SGD and Adam
# with and without CLARA over an initial-LR grid) into a resumable store under results/, then its
# report; both commands print where their results are. `lrlab demo` is the older one-screen demo.
demo: venv
	$(VENV)/bin/lrlab sweep --preset smoke --store results/smoke.sqlite
	$(VENV)/bin/lrlab report --store results/smoke.sqlite --out results/smoke-report

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the report tests open the HTML report in a real headless Chromium (Debian's package)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is needed for the report tests: sudo apt-get install chromium" >&2; exit 1; fi; }

test: lint browser
	$(VENV)/bin/python -m pytest -q
