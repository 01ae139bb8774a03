# vmbackup: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export VMBACKUP_HOME ?= /var/lib/vmbackup

.PHONY: setup host venv demo test test-fast lint proto lab-image vagrant-box e2e bench bench-contenders bench-smoke clean-lab

setup: host venv ## apt packages, libvirtd running, venv with everything

host:
	@bash scripts/host-setup.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup ## lab VM -> the furthest end-to-end story that exists today
	@$(PY) -m controller.demo

# The suite includes the Vagrant end-to-end run (tests/e2e/test_vagrant_e2e.py runs vagrant/e2e.sh, ~8 min).
test: setup ## the whole suite, real VMs included
	@bash scripts/run-tests.sh $(PY)

test-fast: setup ## only what needs neither a VM nor libvirtd
	@$(PY) -m pytest -q -m 'not vm and not libvirt' tests

lint: venv
	@$(VENV)/bin/ruff check controller agent tests bench
	@$(VENV)/bin/mypy

proto: venv ## regenerate protos/vmbackup/**/*_pb2*.py (reproducible: grpcio-tools is pinned)
	@bash scripts/gen-proto.sh $(PY)

lab-image: setup
	@$(VENV)/bin/vmbackup lab image

vagrant-box: setup ## the vagrant-libvirt box the e2e uses, built offline from the lab image
	@bash vagrant/e2e.sh --box-only

e2e: setup ## Vagrant-made VMs, the whole workflow with the CLI only (runs inside its own network namespace)
	@bash vagrant/e2e.sh

bench-contenders: ## virt-backup (PyPI) in its own venv, so it never mixes with ours
	@test -x bench/.venv-contenders/bin/virt-backup || { python3 -m venv bench/.venv-contenders && \
		bench/.venv-contenders/bin/pip install -q virt-backup; }

bench: setup bench-contenders ## all five benchmarks -> bench/results/latest.{json,md} (~50 min)
	@$(PY) -m bench.run

bench-smoke: setup
	@$(PY) -m bench.run --smoke

clean-lab: venv ## destroy every lab VM this host has
	@for vm in $$($(VENV)/bin/vmbackup lab list --names); do $(VENV)/bin/vmbackup lab destroy $$vm; done
