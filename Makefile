# Everything bootstraps itself: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
CONFIG ?= config/gateway.yaml
STAMP := $(VENV)/.installed

.PHONY: run test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

## Start the gateway as an explicit proxy on 127.0.0.1:$(PORT): curl -x http://127.0.0.1:$(PORT) http://...
run: $(STAMP)
	$(BIN)/mitmdump -s addon/softprobe_addon.py --listen-host 127.0.0.1 --listen-port $(PORT) \
		--set softprobe_config=$(CONFIG)

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info addon/*.egg-info

## The travel demo: front and airline services, the gateway recording them, a search/book/pay session, shown.
.PHONY: demo
demo: $(STAMP)
	$(BIN)/python examples/travel/run_demo.py
