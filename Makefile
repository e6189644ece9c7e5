# The two commands a new user needs: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install tools lint test test-unit demo bench clean

# Tools the tests run that are not Python packages, cached outside the repo: helm (built with Go),
# Prometheus and promtool (Debian's prometheus package).
TOOLS ?= $(HOME)/.cache/activity-connector/bin
HELM_VERSION := v3.21.4
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=33 \
	-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=33

# The connector, and its test rigs (sandbox/: simulators, broker launcher, demo), a package of their own.
$(BIN)/.installed: pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' -e ./sandbox
	touch $@

install: $(BIN)/.installed

$(TOOLS)/helm-$(HELM_VERSION):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install -ldflags "$(HELM_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

tools: $(TOOLS)/helm-$(HELM_VERSION)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
		&& (service prometheus stop >/dev/null 2>&1 || true); }

lint: install
	$(BIN)/ruff check connector sandbox tests bench
	$(BIN)/ruff format --check connector sandbox tests bench
	$(BIN)/mypy

# Unit tests need no broker; integration tests start a real Apache Kafka broker (jars cached outside the repo).
test: lint tools
	PATH="$(TOOLS):$$PATH" $(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit

demo: install
	$(BIN)/activity-connector demo

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
