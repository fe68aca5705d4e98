# otariinae: `make` (or `make help`) lists the targets.
# Every variable below can be overridden: `make build GO=go1.26.8 VERSION=1.2.3`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

GO          ?= go
PKGS        ?= ./...
BIN_DIR     ?= bin
BIN         ?= $(BIN_DIR)/otariinae
MAIN_PKG    ?= ./services/otariinae
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     ?= -X main.version=$(VERSION)
BUILD_FLAGS ?=
TEST_FLAGS  ?= -race -count=1 -timeout 15m
BENCH       ?= .
BENCH_FLAGS ?= -run '^$$' -bench '$(BENCH)' -benchtime 2s
GOFMT_PATHS ?= .

# `make run`: the dev system and its example repository, all under DATA_DIR.
DATA_DIR        ?= .otariinae
EXAMPLE_DIR     ?= $(DATA_DIR)/example
CONFIG_TEMPLATE ?= deployments/dev/otariinae.yaml
CONFIG          ?= $(DATA_DIR)/otariinae.yaml

.PHONY: help build run example push test bench lint fmt clean

help: ## List the targets
	@printf 'Usage: make <target> [VAR=value ...]\n\nTargets:\n'
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_.-]+:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## Build bin/otariinae (version from git describe, else "dev")
	$(GO) build $(BUILD_FLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) $(MAIN_PKG)

example: ## Create the local example repository (.otariinae/example/example.git)
	@scripts/example-repo.sh $(EXAMPLE_DIR) >/dev/null

# Variables for `otariinae dev`; ones already in the environment win.
run: export OTARIINAE_CONFIG = $(abspath $(CONFIG))
run: export OTARIINAE_DATA_DIR ?= $(DATA_DIR)
run: export OTARIINAE_GITHUB_WEBHOOK_SECRET ?= dev-secret
run: export OTARIINAE_HOOKS_ALLOW_NETWORKS ?= 127.0.0.0/8,::1/128
run: ## Run everything in one process (otariinae dev) with the example service
	@scripts/deps.sh
	@$(MAKE) --no-print-directory build
	@mkdir -p $(dir $(CONFIG))
	@bare="$$(scripts/example-repo.sh $(EXAMPLE_DIR))"; \
	esc="$$(printf '%s' "file://$$bare" | sed 's/[\\|&]/\\&/g')"; \
	sed "s|__EXAMPLE_GIT_URL__|$$esc|g" $(CONFIG_TEMPLATE) > $(CONFIG).tmp; \
	mv -f $(CONFIG).tmp $(CONFIG); \
	echo "config:  $(CONFIG) (from $(CONFIG_TEMPLATE))"; \
	echo "example: $$bare"; \
	echo "try:     scripts/simulate-push   (or: make push)"
	exec $(BIN) dev

push: ## New commit in the example repo + a simulated GitHub push (needs `make run`)
	@sha="$$(scripts/example-repo.sh $(EXAMPLE_DIR) --commit)"; \
	scripts/simulate-push --sha "$$sha" --git-dir $(EXAMPLE_DIR)/example.git

test: ## Check prerequisites, go vet, then all tests with -race
	@scripts/deps.sh
	$(GO) vet $(PKGS)
	$(GO) test $(TEST_FLAGS) $(PKGS)

bench: ## Run the benchmarks (BENCH=regexp to pick)
	$(GO) test $(BENCH_FLAGS) $(PKGS)

lint: ## gofmt check, go vet, and golangci-lint when installed
	@out="$$(gofmt -l $(GOFMT_PATHS))"; \
	if [[ -n "$$out" ]]; then printf 'gofmt: these files need formatting (make fmt):\n%s\n' "$$out" >&2; exit 1; fi
	$(GO) vet $(PKGS)
	@if command -v golangci-lint >/dev/null 2>&1; then \
		echo "golangci-lint run $(PKGS)"; golangci-lint run $(PKGS); \
	else \
		echo "golangci-lint not installed: skipped"; \
	fi

fmt: ## Format all Go files with gofmt
	gofmt -w $(GOFMT_PATHS)

clean: ## Remove bin/ and the dev data dir (.otariinae/: example repo, NATS store)
	rm -rf -- $(BIN_DIR) $(DATA_DIR)
