# Runyard: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test protos bench clean promtool

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Import boundaries and types (both configured in pyproject.toml) first: they take seconds. Then the suite.
# Two workers, each taking the next test when it is free (the end-to-end tests mostly wait on processes).
# pytest exits 5 when it collected no test: that is a failure, not a pass.
# promtool (Debian's prometheus package) checks the daemons' /metrics output in the tests: installed here when
# absent and this is root; otherwise those checks are skipped and say why.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	     { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; }) || \
	    echo "promtool: installing Debian's prometheus package failed; its checks will be skipped" >&2; \
	  else echo "promtool: not installed (needs root and apt-get); its checks will be skipped" >&2; fi; }

test: $(STAMP) promtool
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/runyard.proto

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .runyard-demo
