# Two commands matter: `make run` and `make test`. Everything they need is installed on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
                libportaudio2 espeak-ng sox alsa-utils jackd2
PYTEST_ARGS ?=

.PHONY: run test bench deps apt check-config clean

run: $(STAMP)
	$(BIN)/appliance run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

check-config: $(STAMP)
	$(BIN)/appliance check-config

deps: $(STAMP)

apt:
	@provisioning/ensure-packages.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml
	@provisioning/ensure-packages.sh $(APT_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
