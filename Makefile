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
CONFORMANCE_VERSION := v1.0.7
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da

BUF := go run github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
GOLANGCI_LINT := $(TOOLS_BIN)/golangci-lint
CONNECTCONFORMANCE := $(TOOLS_BIN)/connectconformance
BENCHSTAT := $(TOOLS_BIN)/benchstat
# make bench and make bench-redis run BENCH_ROUNDS rounds; in each, every
# sub-benchmark runs once for BENCH_TIME (the in-process families on the
# memory store), BENCH_REDIS_TIME (the in-process families on Redis, whose
# paths differ in cost too much for one count to suit them all) or
# BENCH_LOOPBACK_TIME (the 64 clients over loopback HTTP).
BENCH_ROUNDS ?= 10
BENCH_TIME ?= 20000x
BENCH_REDIS_TIME ?= 0.5s
BENCH_LOOPBACK_TIME ?= 2s

# One stamp file per tool version, so that bumping a version reinstalls it.
GOLANGCI_LINT_STAMP := $(TOOLS_DIR)/stamps/golangci-lint@$(GOLANGCI_LINT_VERSION)
BENCHSTAT_STAMP := $(TOOLS_DIR)/stamps/benchstat@$(BENCHSTAT_VERSION)
CONFORMANCE_STAMP := $(TOOLS_DIR)/stamps/connectconformance@$(CONFORMANCE_VERSION)

# CONFORMANCE_PROTO is the conformance protocol's .proto folder in the Go
# module cache, downloaded there if need be.
CONFORMANCE_PROTO = $$(go mod download -json connectrpc.com/conformance@$(CONFORMANCE_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')/proto

.PHONY: help
help: ## Describe the targets.
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "%-14s %s\n", $$1, $$2}'

.PHONY: test
test: ## Run all tests with the race detector (the first run builds for minutes).
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
generate: ## Regenerate internal/gen from proto/, and internal/conformance/gen from the conformance module's protos.
	$(BUF) generate
	proto="$(CONFORMANCE_PROTO)"; \
	$(BUF) generate "$$proto" --template internal/conformance/buf.gen.yaml \
		--path "$$proto/connectrpc/conformance/v1/config.proto" \
		--path "$$proto/connectrpc/conformance/v1/server_compat.proto" \
		--path "$$proto/connectrpc/conformance/v1/service.proto"

.PHONY: checkgenerate
checkgenerate: generate ## Fail if the generated code is not up to date.
	git diff --exit-code -- internal/gen internal/conformance/gen
	@status="$$(git status --porcelain -- internal/gen internal/conformance/gen)"; \
	if [ -n "$$status" ]; then \
		echo "internal/gen or internal/conformance/gen has uncommitted or untracked files:"; echo "$$status"; exit 1; \
	fi

.PHONY: conformance
conformance: $(CONFORMANCE_STAMP) ## Connect conformance suite (server, unary) twice on the same keys: executions, then replays.
	go run ./internal/conformance -runner $(CONNECTCONFORMANCE)

# BENCH_RUN defines the shell function bench_run OUT BINARY ARGS...: it runs
# a test binary's benchmarks and appends their result lines to OUT. It fails,
# showing the binary's output, when the binary fails or prints no result, as
# when a benchmark skips for want of Redis.
BENCH_RUN = bench_run() { \
	local out="$$1" log; shift; \
	if ! log="$$("$$@" -test.run '^$$' 2>&1)"; then printf '%s\n' "$$log" >&2; return 1; fi; \
	if ! grep '^Benchmark' <<<"$$log" >>"$$out"; then \
		printf '%s\n' "$$log" >&2; echo "$$*: no benchmark results" >&2; return 1; \
	fi; \
}

.PHONY: bench
bench: $(BENCHSTAT_STAMP) ## Memory store, in process (middleware, Connect v1 and v2, grpc-go; serial, parallel), interleaved rounds: benchstat, ratios to bare.
	@mkdir -p $(TOOLS_DIR)
	go test -c -o $(TOOLS_DIR)/httpmw.test ./httpmw
	go test -c -o $(TOOLS_DIR)/root.test .
	go test -c -o $(TOOLS_DIR)/grpcmw.test ./grpcmw
	go test -c -o $(TOOLS_DIR)/connectv2.test ./connectv2
	@rm -f bench.txt
	@$(BENCH_RUN); \
	for round in $$(seq 1 $(BENCH_ROUNDS)); do \
		echo "round $$round of $(BENCH_ROUNDS)" >&2; \
		bench_run bench.txt $(TOOLS_DIR)/httpmw.test -test.bench '^BenchmarkMiddleware(Parallel)?$$' -test.benchmem -test.benchtime $(BENCH_TIME); \
		bench_run bench.txt $(TOOLS_DIR)/root.test -test.bench '^BenchmarkInterceptor(Parallel)?$$' -test.benchmem -test.benchtime $(BENCH_TIME); \
		bench_run bench.txt $(TOOLS_DIR)/grpcmw.test -test.bench '^Benchmark(GRPC|Connect)$$' -test.benchmem -test.benchtime $(BENCH_TIME); \
		bench_run bench.txt $(TOOLS_DIR)/connectv2.test -test.bench '^BenchmarkConnectV(1|2|2InProcess)$$' -test.benchmem -test.benchtime $(BENCH_TIME); \
	done
	$(BENCHSTAT) bench.txt
	go run ./internal/benchratio bench.txt

.PHONY: bench-redis
bench-redis: $(BENCHSTAT_STAMP) ## Redis, in process (as bench) and 64 clients over loopback HTTP, interleaved rounds: benchstat, ratios to bare and to the baseline.
	@mkdir -p $(TOOLS_DIR)
	go test -c -o $(TOOLS_DIR)/loadtest.test ./internal/loadtest
	@rm -f bench-redis.txt
	@$(BENCH_RUN); \
	for round in $$(seq 1 $(BENCH_ROUNDS)); do \
		echo "round $$round of $(BENCH_ROUNDS)" >&2; \
		bench_run bench-redis.txt $(TOOLS_DIR)/loadtest.test -test.bench '^Benchmark(Middleware|Interceptor)Redis(Parallel)?$$' -test.benchmem -test.benchtime $(BENCH_REDIS_TIME); \
		for bench in Baseline First Bare NoKey Replay ReplayLocalCache; do \
			bench_run bench-redis.txt $(TOOLS_DIR)/loadtest.test -test.bench "^BenchmarkLoopback\$$/^$$bench\$$" -test.benchtime $(BENCH_LOOPBACK_TIME); \
		done; \
	done
	$(BENCHSTAT) bench-redis.txt
	go run ./internal/benchratio bench-redis.txt

.PHONY: tools
tools: $(GOLANGCI_LINT_STAMP) $(BENCHSTAT_STAMP) $(CONFORMANCE_STAMP) ## Install the pinned tools into .tools/bin.

$(GOLANGCI_LINT_STAMP):
	GOBIN=$(TOOLS_BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mkdir -p $(@D) && touch $@

$(CONFORMANCE_STAMP):
	GOBIN=$(TOOLS_BIN) go install connectrpc.com/conformance/cmd/connectconformance@$(CONFORMANCE_VERSION)
	@mkdir -p $(@D) && touch $@

$(BENCHSTAT_STAMP):
	GOBIN=$(TOOLS_BIN) go install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)
	@mkdir -p $(@D) && touch $@

.PHONY: clean
clean: ## Remove the installed tools and benchmark output.
	rm -rf $(TOOLS_DIR) bench*.txt
