# drover: `make demo` deploys the bundled example app to this machine;
# `make test` runs the whole test suite (installing what it needs).
GO      ?= go
BIN     ?= bin/drover
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)

.PHONY: build demo test test-unit test-integration deps bench bench-fleet lint fuzz clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/drover

demo: build
	./$(BIN) demo

# deps installs the real parts the tests use (OpenSSH server, PostgreSQL,
# MariaDB, HAProxy, socat) from Debian packages when they are missing.
deps:
	./scripts/test-deps.sh

test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) test-integration

test-unit:
	$(GO) test -race -count=1 -short ./...

# Multi-host tests: real sshd per host in network namespaces.
test-integration: build
	DROVER_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -tags integration ./test/...

# Benchmarks: export speed, push fan-out (1 vs 8 hosts), control-server
# propagation and memory (see bench/README.md).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 5x ./internal/source/
	DROVER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench PushDeploy -benchtime 5x -tags integration ./test/
	DROVER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench 'RollingBehindHAProxy|AllAtOnceWindow' -benchtime 3x -timeout 20m -tags integration ./test/
	$(GO) test -run '^$$' -bench RestartUnderLoad -benchtime 1x -count 3 ./internal/service/
	scripts/bench-deps.sh
	DROVER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench AllAtOnceNoBalancer -benchtime 1x -count 3 -tags integration ./test/
	$(GO) test -run '^$$' -bench '^BenchmarkPropagation$$' -benchtime 5x ./bench/
	DROVER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench 'ServerIdle|AgentIdle' -benchtime 1x -timeout 15m ./bench/

# The control server as its own process against 10,000 (and 1,000)
# simulated agents in other processes, SQLite and PostgreSQL: release create
# to every agent's first task; and a server-run all-at-once rollout over
# 1,000 (and 100) agents (bench/README.md). Heavy: run it on an otherwise
# idle machine.
bench-fleet: build
	DROVER_BIN=$(CURDIR)/$(BIN) DROVER_BENCH_FLEET_CYCLE=0 $(GO) test -run '^$$' -bench FleetPropagation -benchtime 1x -timeout 30m ./bench/
	DROVER_BIN=$(CURDIR)/$(BIN) DROVER_BENCH_FLEET_RELEASES=3 $(GO) test -run '^$$' -bench FleetRollout -benchtime 1x -timeout 30m ./bench/

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) vet -tags integration ./test/...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest -tags integration ./test/...

fuzz:
	$(GO) test -fuzz FuzzParse -fuzztime 20s ./internal/config/
	$(GO) test -fuzz FuzzParseSpec -fuzztime 20s ./internal/source/

clean:
	rm -rf bin
