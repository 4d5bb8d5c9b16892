# weft's build, test and lint entry points. `make test` is what CI runs.

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/weft-net/weft/internal/version.Version=$(VERSION)
# Every test runs, including those that need root and a real etcd; under
# CI=true a test that cannot run fails instead of skipping.
TESTFLAGS ?= -count=1 -timeout 30m

.PHONY: all build test unit lint fuzz bench clean

all: build

## build: every binary into bin/ (static)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## test: lint, then every test (unit, real etcd, privileged) against the built binaries
test: lint build
	WEFT_BIN_DIR=$(BIN) $(GO) test $(TESTFLAGS) ./...

## unit: the fast tests only (no etcd, no root)
unit:
	$(GO) test -count=1 -short ./subnet/

## lint: gofmt and go vet
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...

## fuzz: run each fuzz target for FUZZTIME (default 30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./subnet/ -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME)
	$(GO) test ./subnet/ -run '^$$' -fuzz '^FuzzParseLease$$' -fuzztime $(FUZZTIME)

## bench: Go benchmarks of the hot pure code
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./subnet/... ./backend/

clean:
	rm -rf $(BIN)
