# jacuap: `make run` sets up and runs the main job; `make test` sets up and tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/demo
RUN_EPOCHS ?= 4

.PHONY: install data run test test-slow test-bench clean

install: $(STAMP) data

# Reinstall when the package metadata changes; otherwise a no-op.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev,torch]'  # .pyc files come on first import, only for what is used
	touch $(STAMP)

# The real Fashion-MNIST, offline, from Debian's package (root + apt only).
data:
	@if [ -d $(FMNIST_DIR) ]; then \
	  echo "data: Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) && \
	  echo "data: installed dataset-fashion-mnist" || \
	  echo "data: could not install dataset-fashion-mnist; make run will use sklearn digits"; \
	else \
	  echo "data: Fashion-MNIST absent; as root run 'apt-get install dataset-fashion-mnist'," \
	       "or put its IDX files in a folder and pass --config.data_dir; make run will use sklearn digits"; \
	fi

# Main job: a JR-trained CNN on Fashion-MNIST (digits MLP if absent), then its UAPs.
run: install
	@if [ -d $(FMNIST_DIR) ]; then DS=fashion_mnist; M=cnn; E=$(RUN_EPOCHS); else DS=digits; M=mlp; E=30; fi; \
	set -e; \
	$(PY) train.py --workdir=$(RUN_DIR)/$$DS --config=jacuap/configs/default.py \
	  --config.dataset=$$DS --config.model=$$M --config.num_epochs=$$E; \
	if [ -f attack.py ]; then \
	  $(PY) attack.py --workdir=$(RUN_DIR)/$$DS --attack=sgd_uap,sv_uap --norm=linf \
	    --eps=0.05,0.1,0.2 --num_craft=2000 --num_eval=2000 --out=$(RUN_DIR)/$$DS/attack; \
	fi

# One pytest worker per core (pytest-xdist); compiled programs are shared through JAX's
# persistent cache in .pytest_cache/ (tests/conftest.py).  The 8-device equivalence tests need the XLA
# flag before JAX starts: a second process.
test: install
	$(PY) -m pytest -q -n auto -m "not slow and not bench"
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests/test_parallel.py

# The program runs of 10 s or more (signals, kills and resumes, two hosts, the notebook, PyTorch models,
# the strong suite): .ci/run runs it after `make test`.
test-slow: install
	$(PY) -m pytest -q -n auto -m "slow and not bench"

# The benchmark scripts end to end on toy sizes, and their references: .ci/run runs it too.
test-bench: install
	$(PY) -m pytest -q -n auto -m bench

clean:
	rm -rf $(VENV) runs *.egg-info
