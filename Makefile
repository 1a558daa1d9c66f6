# skipxl - the README's two commands:
#   make demo   train `tiny` (all four variants) on the built-in corpus through DeepSpeed on CPU,
#               evaluate with the Transformer-XL protocol, print the comparison table
#   make test   the test suite (pytest, DeepSpeed on CPU)
#   make lint   ruff check + ruff format --check (CI runs it before the tests)
#   make test-inductor  the Inductor-on-CPU compiled-equals-eager test (slow; not in make test)
# Both create .venv on first use (python3 -m venv + pip install -e '.[dev]'); a stamp file makes
# later calls skip the install. PyTorch is installed first, as TORCH_SPEC (default torch==2.13.0,
# the release this suite is tested with; any 2.1 <= version <= 2.14.1 works): pinning it keeps pip from
# resolving a newer, multi-GB CUDA build on a CPU machine. PIP_INSTALL_ARGS passes extra pip options,
# e.g. a CPU-only torch index: make test PIP_INSTALL_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skipxl-installed
PIP_INSTALL_ARGS ?=
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
DEMO_VARIANTS ?= baseline skip_retain cross_head combined
# Tiny models on few cores: one intra-op thread is fastest and immune to oversubscription.
RUN_ENV := DS_ACCELERATOR=cpu OMP_NUM_THREADS=1

.PHONY: demo test test-inductor lint venv clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_INSTALL_ARGS) '$(TORCH_SPEC)'
	$(PY) -m pip install $(PIP_INSTALL_ARGS) -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO_DIR)
	@for v in $(DEMO_VARIANTS); do \
	  echo "== tiny / $$v on the built-in corpus (DeepSpeed, CPU)"; \
	  $(RUN_ENV) $(PY) recipes/wt103.py --corpus builtin --preset tiny --variant $$v \
	    --out $(DEMO_DIR)/$$v || exit 1; \
	done
	@echo
	@$(RUN_ENV) $(VENV)/bin/skipxl compare $(addprefix $(DEMO_DIR)/,$(DEMO_VARIANTS)) --png $(DEMO_DIR)/compare.png

test: $(STAMP)
	$(RUN_ENV) $(PY) -m pytest -q tests/

# Inductor's CPU compile of tests/test_model_compile.py (about 10 minutes cold on 2 cores)
test-inductor: $(STAMP)
	SKIPXL_INDUCTOR=1 $(RUN_ENV) $(PY) -m pytest -q -m inductor tests/test_model_compile.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf $(DEMO_DIR)
