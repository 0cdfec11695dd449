# Two commands do all the set-up on a fresh machine:
#   make run   — venv, dependencies, train, start every service (Ctrl-C stops them)
#   make test  — venv, dependencies, RabbitMQ if down, Chromium if missing, the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SERVICES := learn_model features model metric plot $(patsubst %/requirements.txt,%,$(wildcard dashboard/requirements.txt))
REQUIREMENTS := $(foreach s,$(SERVICES),$(s)/requirements.txt)

.PHONY: run test unit bench bench-drift faults clean

$(VENV)/.installed: $(REQUIREMENTS) requirements-dev.txt common/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(foreach r,$(REQUIREMENTS),-r $(r)) -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	@if [ -z "$$AMQP_URL" ]; then scripts/ensure_rabbitmq.sh; fi
	$(PY) scripts/run_pipeline.py $(ARGS)

test: $(VENV)/.installed
	scripts/ensure_rabbitmq.sh
	scripts/ensure_chromium.sh
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Throughput, latency, backlog and memory against the broker's limit; see bench/run.py --help.
# Not part of `make test`: it reports figures, it doesn't pass or fail on them.
bench: $(VENV)/.installed
	scripts/ensure_rabbitmq.sh
	$(PY) bench/run.py $(ARGS)

# Drift detectors: false alarms, delay, CPU and memory, beside river's ADWIN and PageHinkley and
# alibi-detect's CVMDriftOnline (venvs of their own under bench/, made on first use; see
# bench/drift.py --help). About 7 minutes; --quick about 3. It reports; it doesn't pass or fail.
bench-drift: $(VENV)/.installed
	$(PY) bench/drift.py $(ARGS)

# Every fault scenario, full length, with its table (tests/faults/run.py --help); about 15 minutes.
# `make test` runs the quick profile (tests/faults/test_fault_suite.py). The full-disk scenario mounts a tmpfs:
# without root it is reported as skipped.
faults: $(VENV)/.installed
	scripts/ensure_rabbitmq.sh
	$(PY) tests/faults/run.py $(ARGS)

clean:
	rm -rf $(VENV) logs/*.csv logs/*.png logs/*.json models/*.skops models/model_card.json
