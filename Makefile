# kingdee-cdc — every target bootstraps what it needs (.venv, Python deps, Java jars) and is a no-op
# when already set up (Kafka, Kafka Connect and Debezium jars come from Maven Central). Needs python3 (3.11+), Java 17+, Maven and Go on the machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
JARS   := deploy/kafka/lib/.resolved
CONNECT_JARS := deploy/connect/lib/.resolved
# The Debezium JDBC sink connector (Kafka Connect plugin archive from Maven Central): the benchmark's peer.
JDBC_SINK := deploy/jdbc-sink/plugins/.resolved
APICURIO := deploy/debezium/plugins/apicurio-converter/.resolved
# Deployment validators (Go, from the Go module proxy): helm for the chart, composecheck = compose-go,
# the library behind `docker compose config` (this machine kind has no compose plugin).
TOOLS  := .tools/bin
HELM   := $(TOOLS)/helm
COMPOSECHECK := $(TOOLS)/composecheck
HELM_VERSION := v3.16.4

.PHONY: setup tools browser console-screenshots test unit integration typecheck demo bench bench-console bench-scale bench-profile dev-up dev-down clean

setup: $(STAMP) $(JARS) $(CONNECT_JARS) $(APICURIO)

# The console's browser tests drive Debian's Chromium through Playwright, which must never download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# Only the tests need these (helm template, compose validation); the demo does not.
tools: $(HELM) $(COMPOSECHECK)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,test]"
	@touch $(STAMP)

$(JARS): deploy/kafka/pom.xml $(STAMP)
	$(PY) -c "from harness.devstack import ensure_kafka_jars; ensure_kafka_jars()"
	@touch $@

$(HELM):
	@command -v go >/dev/null || { echo "Go is needed once to build helm and composecheck for the deployment tests (apt-get install golang-go, or https://go.dev/dl)"; exit 1; }
	GOBIN=$(abspath $(TOOLS)) GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(COMPOSECHECK): deploy/tools/go.mod deploy/tools/go.sum deploy/tools/composecheck/main.go
	@command -v go >/dev/null || { echo "Go is needed once to build composecheck for the deployment tests"; exit 1; }
	cd deploy/tools && go build -o $(abspath $(COMPOSECHECK)) ./composecheck

# Debian's Chromium for the console's browser tests (and a CJK font, so Chinese labels render in screenshots);
# needs root, or sudo, once.
browser:
	@test -x /usr/bin/chromium && dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium fonts-wqy-microhei; }

# Apicurio Registry (the dev schema registry) and its Kafka Connect Avro converter, from Maven Central.
$(APICURIO): deploy/apicurio/pom.xml deploy/apicurio/settings.xml $(STAMP) $(CONNECT_JARS)
	$(PY) -c "from harness.apicurio import ensure_apicurio; ensure_apicurio()"
	@touch $@

# Kafka Connect + the Debezium PostgreSQL connector, for the end-to-end test and the demo.
$(CONNECT_JARS): deploy/connect/pom.xml deploy/debezium/pom.xml $(STAMP)
	$(PY) -c "from harness.debezium import ensure_connect_jars; ensure_connect_jars()"
	@touch $@

$(JDBC_SINK): deploy/jdbc-sink/pom.xml $(STAMP)
	$(PY) -c "from harness.debezium import ensure_jdbc_sink_plugin; ensure_jdbc_sink_plugin()"
	@touch $@

# The README's test command: type check, then unit + integration tests on real Kafka and PostgreSQL.
test: setup tools browser
	$(PY) -m mypy connector harness tests bench
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup tools browser
	$(PY) -m pytest tests/integration

typecheck: setup
	$(PY) -m mypy connector harness tests bench

# Screenshots of every console page (docs/console/*.png) from its browser test.
console-screenshots: setup browser
	KDCDC_CONSOLE_SCREENSHOTS=docs/console $(PY) -m pytest tests/integration/test_console.py -q

demo: setup
	$(PY) -m harness demo

# Every benchmark in one run (≈ 5–15 min) → docs/benchmarks.md and docs/benchmarks.json.
bench: setup $(CONNECT_JARS) $(JDBC_SINK)
	$(PY) -m bench.run

# The operator console's page times on a 10-million-event journal (fills it in SQL: ~10 minutes) → docs/.
bench-console: setup
	$(PY) -m bench.console --json docs/benchmarks-console.json --markdown docs/benchmarks-console.md

# Throughput against partitions and instances (one instance on 1, 3 and 6 partitions, two on 6; ≈ 3 minutes)
# → docs/benchmarks-scale.md and docs/benchmarks-scale.json.
bench-scale: setup
	$(PY) -m bench.scale --json docs/benchmarks-scale.json --markdown docs/benchmarks-scale.md

# A py-spy profile of the pipeline process during a sustained run → docs/profiles/ (py-spy from PyPI, once).
bench-profile: setup
	@test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy
	$(PY) -m bench.profile

dev-up: setup
	$(PY) -m harness dev up

dev-down: setup
	$(PY) -m harness dev down

clean:
	rm -rf $(VENV) .tools deploy/kafka/lib deploy/connect/lib deploy/debezium/plugins deploy/jdbc-sink/plugins deploy/jdbc-sink/target .devstack .pytest_cache .mypy_cache .hypothesis \
	       deploy/apicurio/app-* deploy/apicurio/target
