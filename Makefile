# weft's build, test and lint entry points. `make test` is what CI runs.

GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X github.com/weft-net/weft/internal/version.Version=$(VERSION) -X github.com/weft-net/weft/internal/version.Commit=$(COMMIT)
# Every test runs, including those that need root and a real etcd; under
# CI=true a test that cannot run fails instead of skipping.
TESTFLAGS ?= -count=1 -timeout 30m

.PHONY: all build kube-bins test test-vm unit lint fuzz bench demo clean

all: build

# Leave out what weft does not use: urfave/cli's man-page generator and
# gRPC's x/net/trace (0.6 MB of weftd; the kernel maps nearly all of a
# binary's pages, so its size is resident memory).
BUILDTAGS := urfave_cli_no_docs,grpcnotrace

## build: every binary into bin/ (static)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILDTAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## kube-bins: kube-apiserver and kube-controller-manager for the tests of
## Kubernetes mode, from their own module (tools/kube) so that weft's go.mod
## does not carry Kubernetes' dependencies (about 9 minutes on 2 cores cold,
## seconds from the build cache)
KUBE_BINS := $(BIN)/kube-apiserver $(BIN)/kube-controller-manager
kube-bins: $(KUBE_BINS)
$(BIN)/kube-%: tools/kube/go.mod tools/kube/go.sum
	cd tools/kube && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $@ k8s.io/kubernetes/cmd/kube-$*

# Tests that need a kernel feature this machine lacks (IP-in-IP) run only in
# the VM, which boots Debian's stock cloud kernel.
VM_TESTS ?= ^(TestIPIP.*|TestPodsReachEachOther|TestDirectRouting.*)$$

## test: lint, then every test (unit, real etcd, privileged) against the built
## binaries, then the VM tests
test: preflight-test lint build kube-bins
	WEFT_BIN_DIR=$(BIN) $(GO) test $(TESTFLAGS) -skip '^TestIPIP' ./...
	$(MAKE) test-vm

## test-vm: the e2e tests that need IP-in-IP (and, to show weft on a stock
## distribution kernel, the vxlan/host-gw mesh) in a QEMU VM (-accel tcg)
test-vm: preflight-test-vm
	e2e/vm/run.sh '$(VM_TESTS)'

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
	$(GO) test ./service/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

## bench: Go benchmarks of the hot pure code, then the cluster benchmarks
## (cold start, bursts, latency, memory, etcd load, data path) written to
## docs/benchmarks.md and docs/convergence.png. Needs root; installs iperf3
## and the VM's packages if missing. The ipip data path boots the QEMU VM of
## test-vm (BENCHFLAGS=-skip-vm skips it).
bench: build
	scripts/need iperf3 iproute2 nftables qemu-system-x86 busybox-static cpio bird2
	$(GO) test -run '^$$' -bench . -benchmem ./subnet/ ./backend/... ./internal/kernel/ ./internal/proxy/ | tee $(BIN)/microbench.txt
	$(GO) run ./bench -bin $(BIN) -micro $(BIN)/microbench.txt $(BENCHFLAGS)

## demo: a 3-node cluster in network namespaces, pods through the CNI plugin,
## the leases and a reachability matrix; then tears it down (KEEP=1 leaves it
## up). BACKEND=host-gw for the other backend; ROUTER=bird (or frr) adds an
## upstream router that learns the pod subnets over BGP, and ends with the
## pods reached from the outside network behind it. Needs root.
BACKEND  ?= vxlan
ROUTER   ?=
NODES    ?= 3
DEMO_DIR ?= /tmp/weft-demo
demo: preflight-demo build
	@$(BIN)/weftctl sandbox down --dir $(DEMO_DIR) >/dev/null 2>&1 || true
	@set -e; \
	if [ "$(KEEP)" != 1 ]; then trap '$(BIN)/weftctl sandbox down --dir $(DEMO_DIR)' EXIT; fi; \
	$(BIN)/weftctl sandbox up --dir $(DEMO_DIR) --name weft-demo --nodes $(NODES) --pods 1 --backend $(BACKEND) $(if $(ROUTER),--router $(ROUTER)); \
	echo; echo "Pod-to-pod reachability (average of 3 pings):"; \
	$(BIN)/weftctl sandbox matrix --dir $(DEMO_DIR); \
	if [ "$(KEEP)" = 1 ]; then echo; echo "Left running. Remove it with: sudo $(BIN)/weftctl sandbox down --dir $(DEMO_DIR)"; fi

# preflight-demo, preflight-test, preflight-test-vm: what the target runs that
# this machine lacks (root, programs), one line each with the Debian package
# that brings it; they install nothing. Each comes first among its target's
# prerequisites, so that nothing is built when something is missing.
.PHONY: preflight-demo preflight-test preflight-test-vm
preflight-demo:
	@scripts/preflight demo $(ROUTER)
preflight-test preflight-test-vm:
	@scripts/preflight $(@:preflight-%=%)

clean:
	rm -rf $(BIN)
