# Two commands matter: `make run` and `make test`. Everything they need is installed on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
                libportaudio2 espeak-ng sox alsa-utils jackd2 shellcheck systemd mosquitto
PYTEST_ARGS ?=

.PHONY: run test lint import-graph bench deps apt check-config clean security lock wheelhouse rootfs provisioning-test \
        hw-image hw-test

run: $(STAMP)
	$(BIN)/appliance run

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

LINTED := appliance tests bench interop-tests hw-tests docs
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports

# docs/import-graph.svg: the packages, one row per layer of the import contract (README, "Architecture").
import-graph: $(STAMP)
	@provisioning/ensure-packages.sh graphviz
	$(BIN)/python docs/import_graph.py | dot -Tsvg -o docs/import-graph.svg

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

# --- systemd service and provisioning (issue 8) ---------------------------------------------------------
CACHE      ?= .cache
WHEELHOUSE := $(CACHE)/wheelhouse
ROOTFS     := $(CACHE)/rootfs/bookworm-amd64

# systemd-analyze's exposure score for the unit (target <= 2.0) and what still counts against it.
security:
	@provisioning/ensure-packages.sh systemd
	@systemd-analyze security --offline=yes --no-pager systemd/appliance.service | grep -E '✗|Overall'

# Pin what install.sh puts on a robot to what a clean install resolves today. Not systemd-python and spidev:
# the robot takes those from Debian (python3-systemd, python3-spidev), so it needs no compiler.
lock:
	rm -rf $(CACHE)/lock-venv && $(PYTHON) -m venv $(CACHE)/lock-venv
	$(CACHE)/lock-venv/bin/pip install --quiet '.[pi]'
	{ sed -n '1,3p' provisioning/constraints.txt; \
	  $(CACHE)/lock-venv/bin/pip freeze --exclude-editable | grep -v '^appliance' \
	    | grep -v -i -E '^(systemd-python|spidev)=='; } > provisioning/constraints.txt.new
	mv provisioning/constraints.txt.new provisioning/constraints.txt

# Every wheel install.sh needs, so the provisioning tests install offline.
wheelhouse: $(WHEELHOUSE)/.stamp
$(WHEELHOUSE)/.stamp: $(STAMP) provisioning/constraints.txt pyproject.toml
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/pip wheel --quiet --wheel-dir $(WHEELHOUSE) --constraint provisioning/constraints.txt \
	    '.[pi,test]' 'setuptools>=77' wheel
	rm -f $(WHEELHOUSE)/appliance-*.whl
	touch $@

# A Debian bookworm root file system with systemd (debootstrap; cached until its inputs change).
rootfs:
	@hw-tests/build-rootfs.sh amd64 $(ROOTFS)

# install.sh run for real inside a bookworm chroot: twice, --upgrade, a failed upgrade, --uninstall.
provisioning-test: $(STAMP) wheelhouse rootfs
	APPLIANCE_TEST_ROOTFS=$(abspath $(ROOTFS)) APPLIANCE_TEST_WHEELHOUSE=$(abspath $(WHEELHOUSE)) \
	    $(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) tests/test_provisioning_chroot.py

# --- hardware-in-the-loop (issue 9): the installed appliance on a virtual Pi, or a real one -----------------
# make hw-test                      virtual Pi, amd64 guest (quick; CI)
# make hw-test ARCH=arm64           virtual Pi, arm64 guest (the real thing, ~4x slower)
# make hw-test HW_TARGET=pi@robot   a real Pi on the desk (see README)
ARCH      ?= amd64
HW_TARGET ?=
HW_IMAGE  := $(CACHE)/vm/$(ARCH)
HW_WHEELS := $(if $(filter arm64,$(ARCH)),$(CACHE)/wheelhouse-arm64,$(WHEELHOUSE))

# Every manylinux tag bookworm's glibc (2.36) can load.
ARM64_GLIBCS := 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36
# The same wheels as the amd64 wheelhouse, same versions: pure-Python ones copied, the rest fetched for
# aarch64. systemd-python and spidev come from Debian in the guest (python3-systemd, python3-spidev).
$(CACHE)/wheelhouse-arm64/.stamp: $(WHEELHOUSE)/.stamp
	rm -rf $(CACHE)/wheelhouse-arm64 && mkdir -p $(CACHE)/wheelhouse-arm64
	cp $(WHEELHOUSE)/*-none-any.whl $(CACHE)/wheelhouse-arm64/
	ls $(WHEELHOUSE)/*.whl | grep -v -e '-none-any\.whl$$' | sed -E 's#.*/([^-]+)-([^-]+)-.*#\1==\2#' \
	    | grep -v -i -E '^(systemd_python|spidev)==' > $(CACHE)/arm64-reqs.txt
	$(BIN)/pip download --quiet --no-deps --dest $(CACHE)/wheelhouse-arm64 --only-binary=:all: --python-version 3.11 \
	    --platform manylinux2014_aarch64 $(foreach v,$(ARM64_GLIBCS),--platform manylinux_2_$(v)_aarch64) \
	    -r $(CACHE)/arm64-reqs.txt
	touch $@

hw-image:
	@began=$$(date +%s); hw-tests/build-image.sh $(ARCH) $(HW_IMAGE); \
	  echo "  HW FIGURE image build (or cache check)                  $$(( $$(date +%s) - began )) s"

hw-test: $(STAMP) $(HW_WHEELS)/.stamp
	@rm -f $(CACHE)/hw-figures.txt
	@if [ -z "$(HW_TARGET)" ]; then $(MAKE) --no-print-directory hw-image; fi
	@began=$$(date +%s); \
	HW_ARCH=$(ARCH) HW_TARGET=$(HW_TARGET) HW_IMAGE_DIR=$(abspath $(HW_IMAGE)) HW_WHEELHOUSE=$(abspath $(HW_WHEELS)) \
	  $(BIN)/python -m pytest -p no:cacheprovider -v $(PYTEST_ARGS) hw-tests; rc=$$?; \
	echo "hardware-in-the-loop figures:"; cat $(CACHE)/hw-figures.txt 2>/dev/null; \
	echo "  HW FIGURE suite time                                    $$(( $$(date +%s) - began )) s"; exit $$rc

# --- the real AIAvatarKit (issue 14): our remote brain against its server, its client against `appliance serve` ---
AIAVATAR_VENV := $(CACHE)/aiavatar-venv
.PHONY: interop-venv interop-test interop-record

$(AIAVATAR_VENV)/.stamp: interop-tests/peer-requirements.txt
	rm -rf $(AIAVATAR_VENV) && $(PYTHON) -m venv $(AIAVATAR_VENV)
	$(AIAVATAR_VENV)/bin/pip install --quiet --no-deps -r interop-tests/peer-requirements.txt
	touch $@

interop-venv: $(AIAVATAR_VENV)/.stamp

interop-test: $(STAMP) interop-venv
	@began=$$(date +%s); \
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) interop-tests; rc=$$?; \
	echo "interop-test: $$(( $$(date +%s) - began )) s"; exit $$rc

# Re-record the real server's frames into tests/fixtures/aiavatar/ (the fake replays them); read the diff.
interop-record: $(STAMP) interop-venv
	$(BIN)/python interop-tests/record.py
