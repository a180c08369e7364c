# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv with the tested versions (constraints.txt) the first time.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

# The first time this downloads torch, diffusers, onnxruntime, ... (a few minutes): each step says what
# it installs before it starts, and pip shows its downloads with progress bars (no -q) on the long one.
$(BIN)/.sdrt-installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || { echo "make: creating the virtual environment $(VENV) (seconds)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: upgrading pip in $(VENV) (seconds)"
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "make: installing sdrt and its tested dependencies (constraints.txt: torch, diffusers, onnxruntime, ...) into $(VENV): the first time this downloads a few GB and takes a few minutes"
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[dev]'
	@echo "make: $(VENV) is ready"
	touch $@

.PHONY: install demo test chromium docs
install: $(BIN)/.sdrt-installed

# The page test (tests/serve/test_page.py) drives Debian's headless chromium. As root on a Debian/Ubuntu
# machine without it (CI), `make test` installs it with apt-get; otherwise (not root, no apt-get, the
# install fails, or NO_APT=1) it only says so and that test skips with its reason.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ -z "$(NO_APT)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the page test (NO_APT=1 skips this)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core >/dev/null; } || echo "apt-get failed: tests/serve/test_page.py will skip"; \
	else echo "no chromium: tests/serve/test_page.py will skip (install Debian's chromium to run it)"; fi

demo: install
	$(BIN)/sdrt demo

test: install chromium
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir site
	$(BIN)/python -m pytest -q --durations=20

# The inner loop: every test but those marked slow (over ~20 s each on the 2-core machine); `make test` (CI) runs all.
.PHONY: test-fast
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site (mkdocs.yml, docs/) into site/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site
