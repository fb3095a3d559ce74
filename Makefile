# Spout operator: run Pachyderm spout pipelines declaratively on Kubernetes.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := cd tests && ../$(PY) -m devstack
IMAGE_REGISTRY ?= ghcr.io/spout-operator
# One version for the operator, its images, the chart and manifests/ (tests/unit/test_version.py).
VERSION ?= $(shell cat VERSION)
OPERATOR_IMAGE ?= $(IMAGE_REGISTRY)/spout-operator:$(VERSION)
WORKER_IMAGE ?= $(IMAGE_REGISTRY)/spout101:$(VERSION)

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the Python virtualenv with pinned dependencies

.PHONY: deps
deps: venv ## Install system packages the local stack and its node need (etcd, PostgreSQL, jq, containerd, podman, ...)
	@missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	command -v containerd >/dev/null || missing="$$missing containerd"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	[ -x /usr/lib/cni/bridge ] || missing="$$missing containernetworking-plugins"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v catatonit >/dev/null || missing="$$missing catatonit"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v kubectl >/dev/null || { echo "error: kubectl not found: install kubectl 1.32 (https://kubernetes.io/docs/tasks/tools/)"; exit 1; }

.PHONY: lint
lint: venv ## Lint, type-check and check the package's layers (ruff, mypy --strict, import-linter)
	PYTHONPATH=operator $(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/spout_operator tests/devstack tests/bench tests/soak tests/faults tests/e2e images/spout101

.PHONY: test-unit
test-unit: venv ## Run the unit tests (no I/O, seconds)
	$(VENV)/bin/pytest -m "not integration and not sandbox and not faults and not e2e" tests

.PHONY: test-integration
test-integration: deps ## Run the integration tests against the real local stack
	$(VENV)/bin/pytest -m integration tests

.PHONY: test-e2e
test-e2e: deps ## Run the e2e tier: real pods on a node (builds the node's binaries and images on first run)
	$(VENV)/bin/pytest -m e2e tests

.PHONY: test-sandbox
test-sandbox: deps ## Drive `make sandbox` end to end (its own stack, so its own session)
	$(VENV)/bin/pytest -m sandbox tests

# pachd 2.6 allows one stack per machine: the sandbox test runs after the main session.
# The e2e tier has a session (and a stack with a node) of its own.
.PHONY: test
test: deps lint ## Run every test tier (builds the stack binaries and node images on first run)
	$(VENV)/bin/pytest -m "not sandbox and not e2e" tests
	$(VENV)/bin/pytest -m e2e tests
	$(VENV)/bin/pytest -m sandbox tests

##@ Local stack (real etcd, kube-apiserver, pachd; with NODE=1 a kubelet node too)

.PHONY: stack-build
stack-build: venv ## Build the stack's Go binaries (kube-*, kubelet, pachd, pachctl, worker) into the cache
	$(STACK) build

.PHONY: images
images: deps ## Build the node's images (Debian-made base, spout101, operator, pachd worker/sidecar) into the cache
	$(STACK) images

.PHONY: stack-up
stack-up: deps ## Start the local stack in the background (state in .devstack/; PACHDS=K for K pachds; NODE=1 for a node; TLS=1 for a TLS pachd)
	$(STACK) up --pachds $(or $(PACHDS),1) $(if $(NODE),--node) $(if $(TLS),--tls-pachd)

.PHONY: stack-down
stack-down: venv ## Stop the local stack
	$(STACK) down

##@ Run it

.PHONY: sandbox
sandbox: deps ## Run everything on this machine: stack with a node, operator, spout.yaml in real pods (Ctrl-C stops it)
	cd tests && ../$(PY) -m devstack.sandbox

.PHONY: sandbox-down
sandbox-down: venv ## Stop a sandbox left running in the background
	$(STACK) down

.PHONY: bench
bench: deps ## Benchmark against a fresh local stack (N=48 over K=6 pachds, 5 min steady; JSON in bench-results/)
	cd tests && ../$(PY) -m bench.bench

.PHONY: soak
soak: deps ## Soak against a fresh local stack (30 min of churn over 300 resources; RSS, threads, fds, channels)
	cd tests && ../$(PY) -m soak.soak $(SOAK_ARGS)

.PHONY: test-faults
test-faults: deps ## Run the fault tier only (kills, restarts, freezes; part of `make test`)
	DEVSTACK_PACHDS=$(or $(DEVSTACK_PACHDS),2) $(VENV)/bin/pytest -m faults tests

.PHONY: run
run: venv ## Run the operator locally against the current kubeconfig
	PYTHONPATH=operator $(PY) -m spout_operator

##@ Deployment (current kubeconfig context)

.PHONY: install
install: ## Install the CRDs (SpoutPipeline, PachdConnection, ClusterPachdConnection)
	kubectl apply -k crds/

.PHONY: uninstall
uninstall: ## Remove the CRDs (and with them every SpoutPipeline and connection)
	kubectl delete -k crds/ --ignore-not-found

.PHONY: deploy
deploy: ## Install CRDs, namespace, RBAC, the operator Deployment and the default ClusterPachdConnection
	kubectl apply -k manifests/
	@# kubectl wait errors out (not waits) while a new CRD has no conditions yet: retry briefly
	@for i in 1 2 3 4 5 6 7 8 9 10; do \
	  kubectl wait --for=condition=Established --timeout=60s crd/clusterpachdconnections.spout-operator.dev && break; \
	  sleep 1; \
	done
	kubectl apply -f manifests/connection.yaml

# Order matters: SpoutPipelines first, while the operator and their connections still exist, so
# each one's pipelines are deleted or orphaned as its deletionPolicy says (deleting the CRD or the
# operator first leaves their finalizers waiting for an operator that is gone, and the CRD stuck
# Terminating). Bounded: a SpoutPipeline still there after UNDEPLOY_TIMEOUT (pachd unreachable,
# say) stops the target with what it waits for, the operator still running; nothing is forced.
UNDEPLOY_TIMEOUT ?= 120s

.PHONY: undeploy
undeploy: ## Remove everything `deploy` installed: SpoutPipelines first (bounded wait), then connections, operator, CRDs
	@if kubectl get crd spoutpipelines.spout-operator.dev >/dev/null 2>&1; then \
	  kubectl delete spoutpipelines --all --all-namespaces --wait=false; \
	  if ! out=$$(kubectl wait --for=delete spoutpipelines --all --all-namespaces --timeout=$(UNDEPLOY_TIMEOUT) 2>&1) \
	     && ! grep -q "no matching resources" <<<"$$out"; then \
	    echo "$$out"; \
	    echo "error: SpoutPipelines still being deleted after $(UNDEPLOY_TIMEOUT) (the operator is left running):"; \
	    kubectl get spoutpipelines --all-namespaces \
	      -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,POLICY:.spec.deletionPolicy,REASON:.status.conditions[?(@.type=="Ready")].reason,MESSAGE:.status.conditions[?(@.type=="Ready")].message'; \
	    echo "Bring their pachd back, or keep their pipelines (kubectl patch spoutpipeline NAME -n NAMESPACE --type=merge -p '{\"spec\":{\"deletionPolicy\":\"Orphan\"}}'), then run make undeploy again."; \
	    exit 1; \
	  fi; \
	  kubectl delete clusterpachdconnections,pachdconnections --all --all-namespaces --ignore-not-found; \
	fi
	kubectl delete -k manifests/ --ignore-not-found --timeout=$(UNDEPLOY_TIMEOUT)

##@ Release

DIST ?= dist

.PHONY: release
release: deps ## Build the release into $(DIST)/: both images as OCI archives, the Helm chart, install.yaml, SHA256SUMS
	cd tests && ../$(PY) -m devstack.release --dist $(abspath $(DIST))

.PHONY: docker-build
docker-build: ## Build the operator and spout101 worker images (needs Docker)
	docker build -f images/operator/Dockerfile -t $(OPERATOR_IMAGE) .
	docker build -t $(WORKER_IMAGE) images/spout101

.PHONY: docker-push
docker-push: ## Push both images
	docker push $(OPERATOR_IMAGE)
	docker push $(WORKER_IMAGE)
