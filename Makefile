# Two commands on a fresh machine (Python 3.11+ and make):
#   make demo   set everything up, then run the whole system with sample jobs (dispatcher up --demo)
#   make test   set everything up, then lint, type-check and run the whole test suite
# ARGS passes flags through to `dispatcher up` (see `.venv/bin/dispatcher up --help`):
#   make demo ARGS="--port 8001"     make up ARGS="--runners 2 --spec linux"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo up test test-repeat lint bench clean soak clean-state test-floor

$(BIN)/dispatcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/dispatcher

ARGS ?=
demo: setup
	$(BIN)/dispatcher up --demo $(ARGS)

up: setup
	$(BIN)/dispatcher up $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check dispatcher worker_bridge runner dispatch_protocol tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The proof that the suite is deterministic: the whole pytest suite N times in a row (default 10),
# stopping at the first failure and naming that run. BUSY=1 keeps every core busy meanwhile (one
# shell busy-loop per core, killed when the target ends, however it ends).
#   make test-repeat            make test-repeat N=3 BUSY=1
N ?= 10
BUSY ?=
test-repeat: lint
	@burners=""; \
	trap 'test -z "$$burners" || kill $$burners 2>/dev/null' EXIT INT TERM; \
	if [ -n "$(BUSY)" ]; then \
		for core in $$(seq $$(getconf _NPROCESSORS_ONLN)); do \
			sh -c 'while :; do :; done' & burners="$$burners $$!"; \
		done; \
		echo "test-repeat: $$(getconf _NPROCESSORS_ONLN) CPU burners running"; \
	fi; \
	for run in $$(seq $(N)); do \
		start=$$(date +%s); \
		if ! $(BIN)/pytest -q -x -p no:cacheprovider; then \
			echo "test-repeat: run $$run of $(N) FAILED"; exit 1; \
		fi; \
		echo "test-repeat: run $$run of $(N) passed in $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "test-repeat: all $(N) runs passed"

bench: setup
	$(BIN)/python -m bench

# `clean` keeps ./.dispatcher (the demo's Valkey data, runner tokens, spools and logs: `dispatcher up
# --data-dir`); `clean-state` removes it, after a confirmation unless YES=1.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

YES ?=
clean-state:
	@if [ ! -e .dispatcher ]; then echo "clean-state: no .dispatcher here"; exit 0; fi; \
	if [ -z "$(YES)" ]; then \
		printf 'Remove .dispatcher (Valkey data, runner tokens, spools, logs)? [y/N] '; \
		read answer; case "$$answer" in y|Y|yes) ;; *) echo "clean-state: kept"; exit 0;; esac; \
	fi; \
	rm -rf .dispatcher && echo "clean-state: removed .dispatcher"

# Longer hostile-input runs than the test suite's: the live frame fuzz with SOAK_FRAMES frames
# (default 50000) and a fresh seed, then the handshake flood measurement (bench.flood).
SOAK_FRAMES ?= 50000
soak: setup
	DISPATCHER_FUZZ_FRAMES=$(SOAK_FRAMES) DISPATCHER_FUZZ_SEED=$$(date +%s) \
		$(BIN)/pytest -q -s -p no:cacheprovider -o timeout=3600 tests/dispatcher/test_frames_fuzz.py
	$(BIN)/python -m bench.flood
# then the fault-injection suite at soak size (48 agents, twice the load, each fault 3 times)
	FAULTS_SIZE=soak $(BIN)/pytest -q -s -p no:cacheprovider -o timeout=3600 tests/faults
# then a rolling restart of 3 pods behind HAProxy under load, 300 runners (bench.rolling)
	$(BIN)/python -m bench.rolling --runners 300
# then Redis failover under load (bench.failover): kill -9 the primary at 100 jobs/s, Sentinel and
# Cluster, for memory, replicas:1 and aof (20 s of load before, 20 s after; table in bench/results)
	$(BIN)/python -m bench.failover --durability memory --durability replicas:1 --durability aof

# The dependency floors of pyproject.toml, tested: every `name>=X` of [project] dependencies is
# pinned to `name==X` in a separate venv (FLOOR_VENV), then a representative subset runs there
# (the WebSocket layer and its handshake limits, close codes, `dispatcher serve`, the writers).
FLOOR_VENV ?= .venv-floor
FLOOR_TESTS ?= tests/dispatcher/test_wsprotocol.py tests/dispatcher/test_handshake_limits.py \
	tests/dispatcher/test_frontdoor.py tests/dispatcher/test_wskeepalive.py \
	tests/dispatcher/test_channel_bad_input.py tests/dispatcher/test_channel_close.py \
	tests/dispatcher/test_auth.py tests/dispatcher/test_serve.py tests/worker_bridge/test_tasks.py \
	tests/dispatcher/test_hotlane.py tests/dispatcher/test_faults.py tests/dispatcher/test_retries.py \
	tests/dispatcher/test_submit_many.py tests/dispatcher/test_start_settles_inbox.py
test-floor:
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(re.sub(r"\[.*\]", "", d).replace(">=", "==") for d in deps))' > $(FLOOR_VENV)/floor.txt
	$(FLOOR_VENV)/bin/pip install --quiet -c $(FLOOR_VENV)/floor.txt -e '.[dev]'
	$(FLOOR_VENV)/bin/pip freeze | grep -i -E "^($$(sed 's/==.*//' $(FLOOR_VENV)/floor.txt | paste -sd'|'))==" 
	$(FLOOR_VENV)/bin/pytest -q -p no:cacheprovider $(FLOOR_TESTS)
