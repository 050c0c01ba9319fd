PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo bench messages dist clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# two test processes: most tests wait on servers, timers and child processes, not the CPU. The
# package is compiled first: many tests start `uploader` as a child process, and where
# PYTHONDONTWRITEBYTECODE is set each start compiled it again (0.15 CPU-s)
test: $(STAMP)
	$(BIN)/python -m compileall -q uploader
	$(BIN)/pytest -q -n 2 --durations=10

# without the scenarios marked slow (thousands of files, subprocesses that wait on timers)
test-fast: $(STAMP)
	$(BIN)/python -m compileall -q uploader
	$(BIN)/pytest -q -n 2 --durations=10 -m "not slow"

# the type check once per platform: a POSIX-only name used unguarded fails the win32 one
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --platform linux
	$(BIN)/mypy --platform darwin
	$(BIN)/mypy --platform win32

demo: $(STAMP)
	$(BIN)/python -m $(if $(PG),tests.demo_pg,tests.demo)

bench: $(STAMP)
	$(BIN)/python -m tests.bench $(if $(QUICK),--quick,)

# the message catalogues (uploader/locale) brought in step with the code, and compiled
messages: $(STAMP)
	$(BIN)/python -m tests.messages

# the wheel (what `pipx install maiagent-uploader` installs) and, frozen from that same wheel,
# the single-file executable dist/uploader (uploader.exe on Windows; PyInstaller)
dist: $(STAMP)
	rm -rf dist build/wheel-site build/pyinstaller
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(BIN)/python -m pip install --quiet --no-deps --target build/wheel-site dist/*.whl
	$(BIN)/python -m pip install --quiet '.[dist]'
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/uploader.spec

clean:
	rm -rf $(VENV) build dist *.egg-info
