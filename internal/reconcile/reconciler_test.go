package daemon

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// fakeBackend records the calls it gets and the peers it holds.
type fakeBackend struct {
	mu      sync.Mutex
	calls   int
	updates int // calls that were Update
	held    map[string]subnet.Lease
}

var _ backend.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) Type() string { return "fake" }
func (f *fakeBackend) Setup(context.Context) (backend.Published, error) {
	return backend.Published{}, nil
}
func (f *fakeBackend) MTU() int                       { return 1500 }
func (f *fakeBackend) Teardown(context.Context) error { return nil }
func (f *fakeBackend) Devices() []string              { return nil }
func (f *fakeBackend) Sync(_ context.Context, _ subnet.Lease, peers []*subnet.Lease) ([]backend.Route, []backend.PeerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.held = map[string]subnet.Lease{}
	states := make([]backend.PeerState, len(peers))
	for i, p := range peers {
		f.held[p.Key()] = *p
		states[i] = backend.Encapsulated
	}
	return nil, states, nil
}

func (f *fakeBackend) Update(_ context.Context, _ subnet.Lease, changes []backend.Change) (backend.RouteDelta, []backend.PeerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.updates++
	states := make([]backend.PeerState, len(changes))
	for i, c := range changes {
		if c.Old != nil {
			if _, ok := f.held[c.Old.Key()]; !ok {
				return backend.RouteDelta{}, nil, fmt.Errorf("update of %s, which the backend does not hold", c.Old.Key())
			}
			delete(f.held, c.Old.Key())
		}
		if c.New != nil {
			f.held[c.New.Key()] = *c.New
			states[i] = backend.Encapsulated
		}
	}
	return backend.RouteDelta{}, states, nil
}

// state returns how many calls the backend got and the keys it holds.
func (f *fakeBackend) state() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, slices.Sorted(maps.Keys(f.held))
}

// noRoutes is a routeWriter that writes nothing.
type noRoutes struct{}

func (noRoutes) sync([]backend.Route) error     { return nil }
func (noRoutes) apply(backend.RouteDelta) error { return nil }

func lease(i int) subnet.Lease {
	return subnet.Lease{
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0}), 24),
		Attrs:  subnet.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "fake"},
	}
}

func newTestDaemon(b backend.Backend) *daemon {
	log := logrus.NewEntry(logrus.New())
	set := newBackendSet(backend.Env{}, log)
	set.routes = noRoutes{}
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
		calls, held := fb.state()
		if len(held) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never synced all %d peers; %d calls", n, calls)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if calls, _ := fb.state(); calls != 1 {
		t.Errorf("a burst of %d joins cost %d syncs, want 1", n, calls)
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
		_, held := fb.state()
		if slices.Equal(held, []string{lease(3).Key()}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend holds %v, want only %s", held, lease(3).Key())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestSyncLoopUpdatesOnlyWhatChanged(t *testing.T) {
	fb := &fakeBackend{}
	d := newTestDaemon(fb)
	events := make(chan []subnet.Event, 2)
	events <- []subnet.Event{{Type: subnet.Added, Lease: lease(2)}, {Type: subnet.Added, Lease: lease(3)}, {Type: subnet.Added, Lease: lease(4)}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.syncLoop(ctx, lease(1), events, nil, nil, func() error { return nil }) }()
	defer func() { cancel(); <-done }()
	wait := func(want []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, held := fb.state(); slices.Equal(held, want) {
				return
			}
			if time.Now().After(deadline) {
				_, held := fb.state()
				t.Fatalf("backend holds %v, want %v", held, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait([]string{lease(2).Key(), lease(3).Key(), lease(4).Key()})

	moved := lease(3)
	moved.PublicIP = netip.MustParseAddr("198.18.9.3")
	events <- []subnet.Event{{Type: subnet.Removed, Lease: lease(2)}, {Type: subnet.Added, Lease: moved}, {Type: subnet.Added, Lease: lease(5)}}
	wait([]string{lease(3).Key(), lease(4).Key(), lease(5).Key()})
	fb.mu.Lock()
	calls, updates, got := fb.calls, fb.updates, fb.held[moved.Key()].PublicIP
	fb.mu.Unlock()
	if calls != 2 || updates != 1 {
		t.Errorf("%d calls, %d of them Update; want a full Sync, then one Update", calls, updates)
	}
	if got != moved.PublicIP {
		t.Errorf("the backend holds %s for the moved peer, want %s", got, moved.PublicIP)
	}
	deadline := time.Now().Add(5 * time.Second) // the status follows the sync
	for st := d.state.get(); st.Peers.Known != 3 || st.Peers.Programmed != 3; st = d.state.get() {
		if time.Now().After(deadline) {
			t.Fatalf("status peers = %+v, want 3 known and programmed", st.Peers)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
