# Two commands for a new user: `make demo` and `make test`. Everything else is for developers.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-stamp
# Native sources: a change rebuilds the extension on the next `make setup`.
NATIVE  := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null) setup.py

.PHONY: setup setup-browser test test-full demo bench bench-quality serve gpu-check clean fuzz soak

setup: $(STAMP)

$(STAMP): $(NATIVE) pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check torch==2.13.0 triton==3.8.0 numpy pillow pybind11 ninja pytest pytest-benchmark setuptools wheel build tqdm safetensors hypothesis fastapi uvicorn httpx python-multipart websockets playwright "ray[data,serve]"
	$(VPY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Headless Chromium for the browser test (Debian's package; Playwright drives it, no browser download).
setup-browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# CI runs this. Heavy cases run at reduced size unless EDITGAN_FAST_FULL=1.
test: setup setup-browser
	$(VPY) -m pytest -q tests

test-full: setup
	EDITGAN_FAST_FULL=1 $(VPY) -m pytest -q tests

demo: setup
	$(VPY) -m editgan_fast.cli demo --out out

# Speed table (reference vs fast backends, same run), the edit-quality benchmark at reduced size, the service.
bench: setup
	$(VPY) bench/run.py
	$(VPY) bench/compile.py
	$(VPY) bench/edit_quality.py --reduced
	$(VPY) bench/serve.py --seconds 3
	$(VPY) bench/batch.py

# The full edit-quality benchmark: 100 held-out samples, 0/10/30 refinement steps (tens of minutes on 2 cores).
bench-quality: setup
	$(VPY) bench/edit_quality.py

# A longer fuzz run than `make test`'s small corpus (examples per property, kills), counts in fuzz-report.json.
fuzz: setup
	rm -f fuzz-report.json
	EDITGAN_FAST_FUZZ_EXAMPLES=$${EXAMPLES:-300} EDITGAN_FAST_KILLS=40 EDITGAN_FAST_FUZZ_REPORT=$(CURDIR)/fuzz-report.json \
		$(VPY) -m pytest -q tests/test_fuzz_loaders.py tests/test_fuzz_cli.py tests/test_kill.py
	cat fuzz-report.json

# Memory over 10,000 apply calls and 1,000 optimizer steps (RSS flat after warm-up); --reduced for a quick look.
soak: setup
	$(VPY) bench/soak.py

# The editing service and its page on http://127.0.0.1:8000/ (the embedded model; vectors in ./editgan-vectors).
serve: setup
	$(VPY) -m editgan_fast.cli serve

# On a GPU machine, with its own python3 (no venv, no installs): build, every GPU test, error-checked benchmarks,
# a Markdown report in OUTDIR (default $$OUT). See bench/gpu_check.sh.
gpu-check:
	bash bench/gpu_check.sh $(or $(OUTDIR),$(OUT))

clean:
	rm -rf build *.egg-info editgan_fast/*.so editgan_fast/_build_info.py
