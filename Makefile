# Development tasks. Tools are pinned here and installed into .tools/ (ignored
# by git), so nothing is installed globally. See .ci/run for what CI runs.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
MAKEFLAGS += --no-builtin-rules

TOOLS_DIR := $(CURDIR)/.tools
TOOLS_BIN := $(TOOLS_DIR)/bin

BUF_VERSION := v1.75.0
GOLANGCI_LINT_VERSION := v2.15.0
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da

BUF := go run github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
GOLANGCI_LINT := $(TOOLS_BIN)/golangci-lint
BENCHSTAT := $(TOOLS_BIN)/benchstat
BENCH_ROUNDS ?= 10
BENCH_TIME ?= 20000x

# One stamp file per tool version, so that bumping a version reinstalls it.
GOLANGCI_LINT_STAMP := $(TOOLS_DIR)/stamps/golangci-lint@$(GOLANGCI_LINT_VERSION)
BENCHSTAT_STAMP := $(TOOLS_DIR)/stamps/benchstat@$(BENCHSTAT_VERSION)

.PHONY: help
help: ## Describe the targets.
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "%-14s %s\n", $$1, $$2}'

.PHONY: test
test: ## Run all tests with the race detector.
	go test -race ./...

.PHONY: lint
lint: $(GOLANGCI_LINT_STAMP) ## Check formatting, go vet, buf lint and golangci-lint.
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "These files are not gofmt-formatted:"; echo "$$unformatted"; exit 1; \
	fi
	go vet ./...
	$(BUF) lint
	$(GOLANGCI_LINT) run ./...

.PHONY: generate
generate: ## Regenerate internal/gen from proto/.
	$(BUF) generate

.PHONY: checkgenerate
checkgenerate: generate ## Fail if the generated code is not up to date.
	git diff --exit-code -- internal/gen
	@status="$$(git status --porcelain -- internal/gen)"; \
	if [ -n "$$status" ]; then \
		echo "internal/gen has uncommitted or untracked files:"; echo "$$status"; exit 1; \
	fi

.PHONY: bench
bench: $(BENCHSTAT_STAMP) ## Interleaved rounds of the in-process benchmarks: benchstat table and median ratios to the bare handler.
	@mkdir -p $(TOOLS_DIR)
	go test -c -o $(TOOLS_DIR)/httpmw.test ./httpmw
	go test -c -o $(TOOLS_DIR)/root.test .
	@rm -f bench.txt
	@for round in $$(seq 1 $(BENCH_ROUNDS)); do \
		$(TOOLS_DIR)/httpmw.test -test.run '^$$' -test.bench 'BenchmarkMiddleware' -test.benchmem -test.benchtime $(BENCH_TIME) | grep '^Benchmark' >> bench.txt; \
		$(TOOLS_DIR)/root.test -test.run '^$$' -test.bench 'BenchmarkInterceptor' -test.benchmem -test.benchtime $(BENCH_TIME) | grep '^Benchmark' >> bench.txt; \
	done
	$(BENCHSTAT) bench.txt
	go run ./internal/benchratio bench.txt

.PHONY: bench-redis
bench-redis: $(BENCHSTAT_STAMP) ## 64 concurrent clients over loopback HTTP against Redis, interleaved rounds (see internal/loadtest).
	@mkdir -p $(TOOLS_DIR)
	go test -c -o $(TOOLS_DIR)/loadtest.test ./internal/loadtest
	@rm -f bench-redis.txt
	@for round in $$(seq 1 $(BENCH_ROUNDS)); do \
		for bench in Baseline First Bare NoKey Replay ReplayLocalCache; do \
			$(TOOLS_DIR)/loadtest.test -test.run '^$$' -test.bench "Loopback/$$bench\$$" -test.benchtime 2s | grep '^Benchmark' >> bench-redis.txt; \
		done; \
	done
	$(BENCHSTAT) -col .name bench-redis.txt || $(BENCHSTAT) bench-redis.txt

.PHONY: tools
tools: $(GOLANGCI_LINT_STAMP) $(BENCHSTAT_STAMP) ## Install the pinned tools into .tools/bin.

$(GOLANGCI_LINT_STAMP):
	GOBIN=$(TOOLS_BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mkdir -p $(@D) && touch $@

$(BENCHSTAT_STAMP):
	GOBIN=$(TOOLS_BIN) go install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)
	@mkdir -p $(@D) && touch $@

.PHONY: clean
clean: ## Remove the installed tools and benchmark output.
	rm -rf $(TOOLS_DIR) bench*.txt
