# Two entry points: `make demo` and `make test`. Both create .venv when missing and
# install the package (torch pinned to the local CPU wheel first); a second run
# reinstalls nothing unless pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deadrelu-installed
TORCH_SPEC ?= torch==2.13.0
OUT ?= report

.PHONY: demo test install browser lint typecheck pytest bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,zoo,lightning,hf,tensorboard,ray]" "$(TORCH_SPEC)"
	@touch $(STAMP)

# The main job: every claim of the notes as an experiment (quick preset, MNIST-1D),
# written to $(OUT)/index.html and $(OUT)/results.json.
demo: install
	$(VENV)/bin/deadrelu lab --preset quick --out $(OUT)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

# The HTML report's screenshot test needs headless Chromium (Debian package `chromium`).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	    || echo "chromium could not be installed: the browser test will be skipped"; }

pytest: install browser
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: install
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache
