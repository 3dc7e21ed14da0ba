# `make demo` and `make test` do all of their own set-up (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint keys bench soak clean system-deps

system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The demo shows the three protocols side by side (Modbus, IEC 62056-21, DLMS).
demo: system-deps $(STAMP)
	$(VENV)/bin/meter-agent demo -c board_configs/sim-mixed.toml

test: system-deps $(STAMP)
	$(PY) -m ruff check agent sim tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check agent sim tests bench
	$(PY) -m mypy

# Keys for running the agent by hand against board_configs/sim.toml (never committed).
keys: $(STAMP)
	$(PY) -c "from pathlib import Path; from sim.keys import write_key; \
	[write_key(Path('keys/gw-demo-01.' + k + '.key')) for k in ('cmd', 'token')]; \
	[write_key(Path('keys/gw-demo-01.DLMS-0001.' + k), 16) for k in ('ek', 'ak')]"

# Many long simulation seeds and the planted-bug scans (minutes, not for CI).
soak: $(STAMP)
	SOAK=1 $(PY) -m pytest -q tests/sim

bench: $(STAMP)
	$(PY) -m bench.wire_limit
	$(PY) -m bench.ledger

# The agent beside thingsboard-gateway 3.8.x on the same simulated meters and broker
# (bench/results/peer.md; installs the peer in var/peer/ from PyPI once; ~30 min).
.PHONY: peer
peer: $(STAMP)
	$(PY) -m bench.peer

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
