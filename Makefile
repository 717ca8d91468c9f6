# Entry points for people and CI. Every install step the project needs lives here.
#   make demo   generate a synthetic lower-body CT study and run the input pipeline on it
#   make test   the whole test suite (what CI runs)
#   make bench  benchmark against the stock MONAI Deploy path on standard studies (report in bench-output/report)
#   make map    the MONAI Application Package (MAP) image, with the model in model/
#   make viewer the demo study and its results in a local Orthanc, shown in the OHIF viewer
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The stamp changes whenever a requirements or constraints file changes, so `make` reinstalls then.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-label.txt requirements-dev.txt constraints.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)

# holoscan-cu13 loads libcudart.so.13; the nvidia-cuda-runtime wheel ships it (no CUDA toolkit needed).
CUDART_DIR = $(abspath $(VENV))/lib/python3.11/site-packages/nvidia/cu13/lib
export LD_LIBRARY_PATH := $(CUDART_DIR)$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))
# Holoscan wants a larger stack than the default 8 MB.
RUN := ulimit -s 32768 2>/dev/null || true;

DEMO_OUT ?= demo-output
PRESET ?= standard
SEED ?= 7
# pip warns about every unreachable extra index some machines configure; keep the real errors.
QUIET_PIP = 2>&1 | { grep -v '^WARNING: Location' || true; }; test $${PIPESTATUS[0]} -eq 0
# Debian packages the tests use: dciodvfy (independent DICOM validator), dcmtk, and Orthanc with its
# DICOMweb plugin (the PACS the gateway tests start), Chromium (the browser test of the viewer).
SYSTEM_PACKAGES := dicom3tools dcmtk orthanc orthanc-dicomweb chromium
# The OHIF viewer: npm @ohif/app, whose package is the prebuilt static viewer (dist/). Only that tarball is
# fetched (npm pack, checked against the pinned sha512), not its build dependencies; git ignores viewer/ohif/.
OHIF_VERSION := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR := viewer/ohif
OHIF_STAMP := $(OHIF_DIR)/.installed-$(OHIF_VERSION)

.PHONY: help venv system-deps demo test test-fast bench lock clean model model-cpu map ohif viewer label

help:
	@echo "make demo   - generate a synthetic study and run loader + femur splitter on it ($(DEMO_OUT)/)"
	@echo "make test   - run the test suite"
	@echo "make bench  - benchmark against the stock MONAI Deploy path (bench-output/report/benchmark.md)"
	@echo "make model  - rebuild the demonstration model in model/ (synthetic cohort, training, evaluation, card; needs a CUDA GPU)"
	@echo "make model-cpu - the earlier CPU-only recipe (2 cores, about 1.5 hours; a weaker model)"
	@echo "make map    - build the MAP image femur-lesion-seg:<version> with monai-deploy package (needs docker)"
	@echo "make viewer - the demo study and its SEG/SR in a local Orthanc, in the OHIF viewer on 127.0.0.1:3000"
	@echo "make label  - Orthanc with synthetic studies and the MONAI Label server on 127.0.0.1:8000 (Ctrl-C stops both)"

venv: $(STAMP)

$(STAMP):
	@command -v $(PYTHON_BOOTSTRAP) >/dev/null || { echo "error: $(PYTHON_BOOTSTRAP) not found; install Python 3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	# Two passes: the runtime set first, then the annotation server on top. Both under the same
	# constraints, so pip never backtracks and never swaps torch or numpy.
	$(PIP) install -q -r requirements.txt -c constraints.txt $(QUIET_PIP)
	$(PIP) install -q -r requirements-label.txt -r requirements-dev.txt -c constraints.txt $(QUIET_PIP)
	$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	@rm -f $(VENV)/.installed-*
	@touch $@

# Installs the Debian packages above when one is missing (needs root, as on CI machines).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: venv
	@$(RUN) $(PY) scripts/demo.py --out $(DEMO_OUT) --preset $(PRESET) --seed $(SEED)

test: venv system-deps ohif
	@$(RUN) $(PY) -m pytest tests

test-fast: venv system-deps
	@$(RUN) $(PY) -m pytest tests -m "not slow"

# BENCH_ARGS: more options of `python -m benchmarks`, e.g. --quick, --skip-stock, --slices 200,400,800.
BENCH_ARGS ?=
bench: venv
	@$(RUN) $(PY) -m benchmarks $(BENCH_ARGS)

# The shipped demonstration model, from scratch: synthetic cohort (seeds 1000-1119), dataset, nnU-Net
# 'small_gpu' training on fold "all" on a CUDA GPU (5 minutes of training, the budget the shipped model had),
# export into model/, post-processing chosen and evaluation on held-out standard studies, model card.
MODEL_BUDGET_MIN ?= 5
model: venv
	@$(RUN) $(PY) -m lesion_training.shipped_model --workers 2 --config small_gpu --device cuda \
		--time-budget-min $(MODEL_BUDGET_MIN) --training-seeds 1000-1119 --no-mirroring

# The earlier recipe for a machine without a GPU: the 'small' configuration for 70 epochs on 2 CPU cores
# (about 1.5 hours, seeds 1000-1039), which gave the weaker model 0.1.0 (docs/training/experiments.md).
MODEL_EPOCHS ?= 70
model-cpu: venv
	@$(RUN) $(PY) -m lesion_training.shipped_model --workers 2 --epochs $(MODEL_EPOCHS) --no-mirroring

# The MONAI Application Package: checks app.yaml, the model and the pinned runtime, stages build/map/app-src
# and build/map/models, runs `monai-deploy package` (holoscan-cli 4.2.0, offline with the artifacts manifest
# shipped in map_packaging/). Without a docker engine it stops after writing the packager's Dockerfile,
# app.json and pkg.json to build/map/package/ and says so (exit status 3). MAP_MODEL: the model folder.
MAP_MODEL ?= model
map: venv
	@$(PY) -m map_packaging --model $(MAP_MODEL) --out build/map

# The MONAI Label annotation server (label_app/) on a local Orthanc (127.0.0.1:8042) holding LABEL_STUDIES
# small synthetic studies, both on loopback; state in build/label/. Model versions in build/label/model-store.
LABEL_STUDIES ?= 3
label: venv system-deps
	@$(RUN) $(PY) label_app/serve.py --studies $(LABEL_STUDIES)

ohif: $(OHIF_STAMP)

$(OHIF_STAMP):
	@command -v npm >/dev/null || { echo "error: npm not found; install Node.js with npm" >&2; exit 1; }
	@rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)/.download
	@echo "installing the OHIF viewer @ohif/app $(OHIF_VERSION) into $(OHIF_DIR)/"
	@cd $(OHIF_DIR)/.download && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	@got="sha512-$$(openssl dgst -sha512 -binary $(OHIF_DIR)/.download/ohif-app-$(OHIF_VERSION).tgz | base64 -w0)"; \
	if [ "$$got" != "$(OHIF_INTEGRITY)" ]; then echo "error: @ohif/app $(OHIF_VERSION): checksum mismatch" >&2; exit 1; fi
	@tar -xzf $(OHIF_DIR)/.download/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR) --strip-components=1 \
	  package/dist package/package.json package/LICENSE
	@rm -rf $(OHIF_DIR)/.download && touch $@

# Orthanc on loopback with the demo study and the application's SEG and SR (make demo first when
# $(DEMO_OUT) has no study), and the OHIF viewer on http://127.0.0.1:$(VIEWER_PORT); Ctrl-C stops both.
VIEWER_PORT ?= 3000
viewer: venv system-deps ohif
	@test -d $(DEMO_OUT)/study/DICOM || $(MAKE) --no-print-directory demo
	@$(RUN) $(PY) -m viewer --demo $(DEMO_OUT) --port $(VIEWER_PORT)

# Re-resolve the whole environment from scratch and rewrite constraints.txt.
lock:
	rm -rf .venv-lock && $(PYTHON_BOOTSTRAP) -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements.txt
	.venv-lock/bin/pip install -q -r requirements-label.txt -r requirements-dev.txt numpy==1.26.4 torch==2.14.1
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/pip freeze | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
