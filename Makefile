# Two commands for a new user: `make demo` and `make test`. Everything else is for developers.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-stamp
# Native sources: a change rebuilds the extension on the next `make setup`.
NATIVE  := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null) setup.py

.PHONY: setup test test-full demo bench bench-quality clean

setup: $(STAMP)

$(STAMP): $(NATIVE) pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check torch==2.13.0 triton==3.8.0 numpy pillow pybind11 ninja pytest pytest-benchmark setuptools wheel
	$(VPY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

# CI runs this. Heavy cases run at reduced size unless EDITGAN_FAST_FULL=1.
test: setup
	$(VPY) -m pytest -q tests

test-full: setup
	EDITGAN_FAST_FULL=1 $(VPY) -m pytest -q tests

demo: setup
	$(VPY) -m editgan_fast.cli demo --out out

# Speed table (reference vs fast backends, same run), then the edit-quality benchmark at reduced size.
bench: setup
	$(VPY) bench/run.py
	$(VPY) bench/compile.py
	$(VPY) bench/edit_quality.py --reduced

# The full edit-quality benchmark: 100 held-out samples, 0/10/30 refinement steps (tens of minutes on 2 cores).
bench-quality: setup
	$(VPY) bench/edit_quality.py

clean:
	rm -rf build *.egg-info editgan_fast/*.so
