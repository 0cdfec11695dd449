# Two commands do all the set-up on a fresh machine:
#   make run   — venv, dependencies, train, start every service (Ctrl-C stops them)
#   make test  — venv, dependencies, the security lint (bandit), RabbitMQ if down, Chromium if missing,
#                then the whole test suite
#   make lock  — after editing any requirements*.txt: pins every dependency again, with hashes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A service is a folder with a requirements.txt: what it needs besides common/ (-e ./common).
SERVICES := $(patsubst %/requirements.txt,%,$(wildcard */requirements.txt))
REQUIREMENTS := $(foreach s,$(SERVICES),$(s)/requirements.txt)
# Every dependency, transitive ones included, pinned with its hashes, written by `make lock`:
# requirements.lock holds all of them plus the dev tools, for the venv; <service>/requirements.lock
# only that service's, at the same versions, for its image (Dockerfile).
LOCK := requirements.lock
SERVICE_LOCKS := $(foreach s,$(SERVICES),$(s)/requirements.lock)
# What the security lint reads: common/src, every <service>/src, scripts/.
LINTED := $(wildcard */src) scripts

.PHONY: run test unit lint lock bench bench-drift faults clean

# The lock, hashes checked, then common/ itself without dependencies (they are all in the lock),
# built by the locked setuptools: nothing unpinned is fetched.
$(VENV)/.installed: $(LOCK) common/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --no-index -e ./common
	touch $@

run: $(VENV)/.installed
	@if [ -z "$$AMQP_URL" ]; then scripts/ensure_rabbitmq.sh; fi
	$(PY) scripts/run_pipeline.py $(ARGS)

test: $(VENV)/.installed lint
	scripts/ensure_rabbitmq.sh
	scripts/ensure_chromium.sh
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# bandit over our code; a finding of medium or high severity fails (bandit.yaml: the checks skipped, and why).
lint: $(VENV)/.installed
	$(PY) -m bandit --quiet --configfile bandit.yaml --severity-level medium --recursive $(LINTED)

# Pins again what the requirements files ask for, keeping every pin that still fits; ARGS goes to
# pip-compile for the venv's lock, e.g. ARGS="--upgrade-package numpy" or ARGS=--upgrade. Each
# service's lock is resolved within the venv's, so both agree on every version.
# --unsafe-package mlmonitor: common/ itself stays out (installed after the lock, -e ./common);
# replacing pip-compile's default list, it also pins pip and setuptools like any other package.
# The sed drops pip-compile's closing note about that left-out mlmonitor.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--no-emit-index-url --no-emit-find-links --unsafe-package mlmonitor
lock: $(VENV)/.installed
	$(PIP_COMPILE) $(ARGS) --output-file $(LOCK) $(REQUIREMENTS) requirements-build.txt requirements-dev.txt
	for service in $(SERVICES); do \
		$(PIP_COMPILE) --constraint $(LOCK) --output-file $$service/requirements.lock \
			$$service/requirements.txt requirements-build.txt || exit 1; \
	done
	sed -i -z 's/\n\n# WARNING: The following packages were not pinned.*$$/\n/' $(LOCK) $(SERVICE_LOCKS)

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
	rm -rf $(VENV) logs/*.csv logs/*.png logs/*.json logs/*.jsonl logs/*.log models/*.skops models/model_card.json
