package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// fakeBackend records the peer sets it is asked to program.
type fakeBackend struct {
	mu    sync.Mutex
	syncs [][]subnet.Lease
}

var _ backend.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) Type() string { return "fake" }
func (f *fakeBackend) Setup(context.Context) (backend.Published, error) {
	return backend.Published{}, nil
}
func (f *fakeBackend) MTU() int                       { return 1500 }
func (f *fakeBackend) Teardown(context.Context) error { return nil }
func (f *fakeBackend) Devices() []string              { return nil }
func (f *fakeBackend) Sync(_ context.Context, _ subnet.Lease, peers []subnet.Lease, _ bool) ([]backend.Route, backend.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, append([]subnet.Lease(nil), peers...))
	return nil, backend.Stats{Programmed: len(peers)}, nil
}

func (f *fakeBackend) calls() [][]subnet.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]subnet.Lease(nil), f.syncs...)
}

func lease(i int) subnet.Lease {
	return subnet.Lease{
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0}), 24),
		Attrs:  subnet.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "fake"},
	}
}

func newTestDaemon(b backend.Backend) *daemon {
	log := logrus.NewEntry(logrus.New())
	set := newBackendSet(backend.Env{}, log)
	set.installRoutes = func([]backend.Route, bool) error { return nil }
	set.active["fake"] = &running{Backend: b, options: subnet.Backend{Type: "fake"}}
	set.primary = "fake"
	return &daemon{
		cfg:      &Config{ResyncInterval: time.Hour},
		log:      log,
		state:    &state{},
		metrics:  newMetrics("fake", func() uint64 { return 0 }),
		backends: set,
	}
}

func TestSyncLoopCoalescesABurstIntoOneSync(t *testing.T) {
	fb := &fakeBackend{}
	d := newTestDaemon(fb)
	self := lease(0)
	const n = 1000
	events := make(chan []subnet.Event, n+1)
	events <- []subnet.Event{} // the initial (empty) listing
	for i := 1; i <= n; i++ {
		events <- []subnet.Event{{Type: subnet.Added, Lease: lease(i)}}
	}
	readyCalls := 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.syncLoop(ctx, self, events, nil, nil, func() error { readyCalls++; return nil }) }()

	deadline := time.Now().Add(5 * time.Second)
	for {
		calls := fb.calls()
		if len(calls) > 0 && len(calls[len(calls)-1]) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never synced all %d peers; syncs: %d", n, len(calls))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if calls := fb.calls(); len(calls) != 1 {
		t.Errorf("a burst of %d joins cost %d syncs, want 1", n, len(calls))
	}
	if readyCalls != 1 {
		t.Errorf("ready called %d times, want once", readyCalls)
	}
}

func TestSyncLoopIgnoresSelfAndOverlaps(t *testing.T) {
	fb := &fakeBackend{}
	d := newTestDaemon(fb)
	self := lease(1)
	overlapping := lease(1)
	overlapping.Subnet = netip.MustParsePrefix("100.96.1.128/25") // inside this node's subnet
	events := make(chan []subnet.Event, 4)
	events <- []subnet.Event{
		{Type: subnet.Added, Lease: self},
		{Type: subnet.Added, Lease: overlapping},
		{Type: subnet.Added, Lease: lease(2)},
	}
	events <- []subnet.Event{{Type: subnet.Removed, Lease: lease(2)}, {Type: subnet.Added, Lease: lease(3)}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.syncLoop(ctx, self, events, nil, nil, func() error { return nil }) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		calls := fb.calls()
		if len(calls) > 0 {
			last := calls[len(calls)-1]
			if len(last) == 1 && last[0].Key() == lease(3).Key() {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("syncs: %v", fmt.Sprint(calls))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}
