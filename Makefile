# edgetl — two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: setup hil-deps demo test hil bench lint clean

setup: $(VENV)/.installed

# Debian/Ubuntu ship python3 without venv/ensurepip; install it if that is what is missing.
$(VENV)/bin/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || { \
	  echo "python venv support missing: installing python3-venv"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[host,dev,lightning,timm,hf,text]"
	touch $@

# The main job, offline, end to end: one pipeline file (examples/edgetl.toml) declares it:
# synthesize two cities, pretrain on city-a (server side), fine-tune on a little of city-b, int8
# for ONNX and TFLite calibrated on city-b images, held to 1 point on city-b test (the run's val
# split, 60 images, cannot resolve one point); verified bundles for the host, a Raspberry Pi 4 and
# a Jetson Orin Nano; this machine as a device (devices/local.toml; deployed under ~/.edgetl),
# timed, scored and judged. A second `make demo` re-runs no stage. Then what a file does not
# declare: the Edge TPU report, the bundles verified as a device would, predictions, and head-only
# adaptation of the city-a bundle to city-b as a device would do it.
demo: setup
	@[ -d $(DEMO)/.edgetl-pipeline ] || rm -rf $(DEMO)  # a demo dir from before the pipeline
	$(BIN)/edgetl pipeline examples/edgetl.toml
	$(BIN)/edgetl targets
	$(BIN)/edgetl devices
	$(BIN)/edgetl compile $(DEMO)/runs/city-b --target coral-usb --dry-run
	$(BIN)/edgetl bundle verify $(DEMO)/bundles/host-cpu --this-machine
	$(BIN)/edgetl bundle verify $(DEMO)/bundles/rpi4.tar.gz
	$(BIN)/edgetl predict $(DEMO)/bundles/host-cpu $$(ls $(DEMO)/data/city-b-test/*/*.png | sed -n '1p;30p;60p') --top 2
	# on the device: the city-a model's head learns city-b from the 20 labelled images per class
	# (exit 1 would mean the guard kept the old head)
	rm -rf $(DEMO)/bundles/city-a-host.heads
	$(BIN)/edgetl compile $(DEMO)/runs/city-b-pretrain --target host-cpu --out $(DEMO)/bundles/city-a-host --force
	$(BIN)/python -m edgetl.runtime adapt $(DEMO)/bundles/city-a-host --data $(DEMO)/data/city-b-train; test $$? -le 1

# What the hardware-in-the-loop tests start for real: an sshd on loopback (openssh-server) and
# headless Chromium to render check's HTML report. Installed when missing, with apt as root (or
# sudo); where neither works the tests that need them skip and say why (CI=true fails them).
hil-deps:
	@need=""; command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need="openssh-server"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	[ -z "$$need" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && echo sudo; } || echo none ); \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null; then \
	    echo "missing:$$need, and no root/apt to install them: the tests that need them will skip"; \
	  else echo "installing$$need for the device and report tests"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$need >/dev/null \
	      || echo "could not install$$need: the tests that need them will skip"; fi; }

# ... and an emulated Raspberry Pi 4: an arm64 Python with numpy, onnxruntime and LiteRT under
# qemu-user (tools/arm64-root.sh; about 30 s and 350 MB, once). Where it cannot be built, the
# emulated-device tests skip and say why (CI=true fails them).
HIL_ROOT := .hil/arm64-root
$(HIL_ROOT)/.complete: tools/arm64-root.sh
	@PYTHON=$(BIN)/python tools/arm64-root.sh $(HIL_ROOT) \
	  || echo "could not build the emulated aarch64 device: its tests will skip"

test: setup hil-deps $(HIL_ROOT)/.complete
	$(BIN)/python -m pytest -q

# Hardware in the loop alone: deploy, check and adapt through a real sshd on loopback and an
# emulated Raspberry Pi 4 (and this machine); `make test` runs these too.
hil: setup hil-deps $(HIL_ROOT)/.complete
	$(BIN)/python -m pytest -q -m hil

bench: setup
	@for b in benchmarks/[!_]*.py; do echo "# $$b" >&2; $(BIN)/python $$b || exit $$?; done

lint: setup
	$(BIN)/python -m ruff check edgetl tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO) runs *.egg-info .hil
