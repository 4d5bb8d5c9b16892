package reconcile

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/mailbox"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// fakeKernel is a kernel layer that records what it is asked and holds
// the routes it was given, by destination.
type fakeKernel struct {
	mu      sync.Mutex
	syncs   int
	updates int
	routes  map[netip.Prefix]kernel.Route
	// refuse is a destination the kernel refuses; the others are applied.
	refuse netip.Prefix
}

var _ Programmer = (*fakeKernel)(nil)

func (k *fakeKernel) NewWant(int) *kernel.Want { return &kernel.Want{} }

func (k *fakeKernel) Sync(w *kernel.Want) kernel.Result {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.syncs++
	k.routes = map[netip.Prefix]kernel.Route{}
	var res kernel.Result
	for _, r := range w.Routes {
		if r.Dst == k.refuse {
			res.Err = fmt.Errorf("route %s: file exists", r.Dst)
			continue
		}
		k.routes[r.Dst] = r
	}
	return res
}

func (k *fakeKernel) Update(changes []kernel.Change) kernel.Result {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.updates++
	var res kernel.Result
	for _, c := range changes {
		if c.Old != nil {
			for _, r := range c.Old.Routes {
				if _, ok := k.routes[r.Dst]; !ok {
					res.Err = fmt.Errorf("update deletes %s, which the kernel does not hold", r.Dst)
				}
				delete(k.routes, r.Dst)
			}
		}
		if c.New != nil {
			for _, r := range c.New.Routes {
				if r.Dst == k.refuse {
					res.Err = fmt.Errorf("route %s: file exists", r.Dst)
					continue
				}
				k.routes[r.Dst] = r
			}
		}
	}
	return res
}

func (k *fakeKernel) SweepLinks(map[string]bool) ([]string, error) { return nil, nil }

// state returns how many calls the kernel got and the subnets it routes.
func (k *fakeKernel) state() (syncs, updates int, held []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for dst := range maps.Keys(k.routes) {
		held = append(held, dst.String())
	}
	slices.Sort(held)
	return k.syncs, k.updates, held
}

// fakeBackend routes each peer's subnet via its public address; a peer
// without one is unreachable. Its MTU follows the interface.
type fakeBackend struct{ ext *backend.ExternalInterface }

var _ backend.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) Type() string { return "fake" }
func (f *fakeBackend) Setup(_ context.Context, ext *backend.ExternalInterface, _ *subnet.Lease) (backend.Published, error) {
	f.ext = ext
	return backend.Published{Data: []byte(`{"fake":true}`)}, nil
}
func (f *fakeBackend) MTU() int                       { return f.ext.MTU - 50 }
func (f *fakeBackend) Teardown(context.Context) error { return nil }
func (f *fakeBackend) Devices() []string              { return nil }
func (f *fakeBackend) Links() []int                   { return nil }
func (f *fakeBackend) Peer(p *subnet.Lease, _ *backend.Underlay, e *kernel.Entries) (backend.PeerState, string) {
	if p.PublicIP.Is6() {
		return backend.Unreachable, "peer " + p.PublicIP.String() + " cannot be reached by a fake"
	}
	e.Routes = append(e.Routes, kernel.Route{Dst: p.Subnet, Gw: p.PublicIP})
	return backend.Encapsulated, ""
}

type nopMetrics struct{}

func (nopMetrics) ObserveSync(time.Duration, backend.Stats, error) {}
func (nopMetrics) ConfigRejected()                                 {}
func (nopMetrics) SetBackend(string)                               {}

func lease(i int) subnet.Lease {
	return subnet.Lease{
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0}), 24),
		Attrs:  subnet.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "fake"},
	}
}

func keys(is ...int) []string {
	var out []string
	for _, i := range is {
		out = append(out, lease(i).Subnet.String())
	}
	slices.Sort(out)
	return out
}

// harness runs a Reconciler with the fakes.
type harness struct {
	k      *fakeKernel
	r      *Reconciler
	events chan []subnet.Event
	ifs    chan *backend.ExternalInterface
	out    *mailbox.Mailbox[Announcement]
	log    *logtest.Hook
}

func start(t *testing.T, self subnet.Lease) *harness {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	h := &harness{
		k: &fakeKernel{}, events: make(chan []subnet.Event, 2000), ifs: make(chan *backend.ExternalInterface, 1),
		out: mailbox.New[Announcement](), log: hook,
	}
	network, _, _ := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan"}}`))
	network.Backend.Type = "fake"
	fb := &fakeBackend{}
	h.r = New(Config{
		Kernel: h.k, Network: network, ResyncInterval: time.Hour, Log: logrus.NewEntry(logger), Metrics: nopMetrics{},
		Backends:  map[string]backend.Constructor{"fake": func(backend.Env) (backend.Backend, error) { return fb, nil }},
		Interface: &backend.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500, PublicIP: netip.MustParseAddr("198.18.0.1"), LocalIP: netip.MustParseAddr("198.18.0.1")},
	})
	if _, err := h.r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- h.r.Run(ctx, self, Inputs{Leases: h.events, Interfaces: h.ifs}, h.out)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// wait waits until the kernel routes exactly the subnets of want.
func (h *harness) wait(t *testing.T, want []string) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("the kernel routes %v", want), func() (bool, string) {
		syncs, updates, held := h.k.state()
		return slices.Equal(held, want), fmt.Sprintf("%d syncs, %d updates, routes %v", syncs, updates, held)
	})
}

func TestABurstOfJoinsIsOneSync(t *testing.T) {
	const n = 1000
	self := lease(0)
	events := make([][]subnet.Event, 0, n+1)
	events = append(events, []subnet.Event{}) // the initial (empty) listing
	var all []int
	for i := 1; i <= n; i++ {
		events = append(events, []subnet.Event{{Type: subnet.Added, Lease: lease(i)}})
		all = append(all, i)
	}
	h := start(t, self)
	for _, b := range events {
		h.events <- b
	}
	h.wait(t, keys(all...))
	if syncs, updates, _ := h.k.state(); syncs+updates > 2 {
		t.Errorf("a burst of %d joins cost %d full syncs and %d updates, want one of them (or, if the burst raced the first listing, two)", n, syncs, updates)
	}
	select {
	case a := <-h.out.C():
		if !a.Ready || a.Backend != "fake" || a.PublicIP != netip.MustParseAddr("198.18.0.1") || a.MTU != 1450 {
			t.Errorf("announcement %+v; want ready, fake, 198.18.0.1, MTU 1450", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no announcement after the first sync")
	}
}

func TestSelfAndOverlapsAreNotProgrammed(t *testing.T) {
	self := lease(1)
	h := start(t, self)
	overlapping := lease(1)
	overlapping.Subnet = netip.MustParsePrefix("100.96.1.128/25") // inside this node's subnet
	h.events <- []subnet.Event{
		{Type: subnet.Added, Lease: self},
		{Type: subnet.Added, Lease: overlapping},
		{Type: subnet.Added, Lease: lease(2)},
	}
	h.events <- []subnet.Event{{Type: subnet.Removed, Lease: lease(2)}, {Type: subnet.Added, Lease: lease(3)}}
	h.wait(t, keys(3))
}

func TestOnlyWhatChangedIsUpdated(t *testing.T) {
	h := start(t, lease(1))
	h.events <- []subnet.Event{{Type: subnet.Added, Lease: lease(2)}, {Type: subnet.Added, Lease: lease(3)}, {Type: subnet.Added, Lease: lease(4)}}
	h.wait(t, keys(2, 3, 4))

	moved := lease(3)
	moved.PublicIP = netip.MustParseAddr("198.18.9.3")
	h.events <- []subnet.Event{{Type: subnet.Removed, Lease: lease(2)}, {Type: subnet.Added, Lease: moved}, {Type: subnet.Added, Lease: lease(5)}}
	h.wait(t, keys(3, 4, 5))
	syncs, updates, _ := h.k.state()
	if syncs != 1 || updates != 1 {
		t.Errorf("%d full syncs and %d updates; want a full sync, then one update", syncs, updates)
	}
	h.k.mu.Lock()
	got := h.k.routes[moved.Subnet].Gw
	h.k.mu.Unlock()
	if got != moved.PublicIP {
		t.Errorf("the kernel routes the moved peer via %s, want %s", got, moved.PublicIP)
	}
	testenv.Eventually(t, 5*time.Second, "the status follows the sync", func() (bool, string) {
		st := h.r.Status()
		return st.Peers.Known == 3 && st.Peers.Programmed == 3, fmt.Sprintf("%+v", st.Peers)
	})
}

func TestAnUnreachablePeerIsLoggedOnce(t *testing.T) {
	h := start(t, lease(1))
	far := lease(2)
	far.PublicIP = netip.MustParseAddr("fd18::2") // the fake cannot reach it
	h.events <- []subnet.Event{{Type: subnet.Added, Lease: far}, {Type: subnet.Added, Lease: lease(3)}}
	h.wait(t, keys(3))
	held := []int{3}
	for i := 4; i < 8; i++ { // more syncs
		h.events <- []subnet.Event{{Type: subnet.Added, Lease: lease(i)}}
		held = append(held, i)
		h.wait(t, keys(held...))
	}
	n := 0
	for _, e := range h.log.AllEntries() {
		if strings.Contains(e.Message, "cannot be reached by a fake") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the unreachable peer was logged %d times, want once", n)
	}
	if st := h.r.Status(); st.Peers.Unreachable != 1 {
		t.Errorf("status: %+v, want 1 unreachable", st.Peers)
	}
}

// An MTU-only change of the external interface reaches the announcement,
// so that subnet.env tells new pods the MTU the tunnel can carry.
func TestAnMTUOnlyInterfaceChangeIsAnnounced(t *testing.T) {
	h := start(t, lease(1))
	h.events <- []subnet.Event{{Type: subnet.Added, Lease: lease(2)}}
	h.wait(t, keys(2))
	if a := <-h.out.C(); a.MTU != 1450 {
		t.Fatalf("first announcement MTU %d, want 1450", a.MTU)
	}
	h.ifs <- &backend.ExternalInterface{Name: "eth0", Index: 2, MTU: 1400, PublicIP: netip.MustParseAddr("198.18.0.1"), LocalIP: netip.MustParseAddr("198.18.0.1")}
	select {
	case a := <-h.out.C():
		if a.MTU != 1350 || !a.Ready {
			t.Errorf("announcement after the MTU change: %+v, want MTU 1350 and ready", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the MTU change was not announced")
	}
	if st := h.r.Status(); st.MTU != 1350 {
		t.Errorf("status MTU %d, want 1350", st.MTU)
	}
}

// A peer the kernel refuses does not keep the others out, and the status
// says since when syncs have failed until one succeeds again.
func TestARefusedPeerIsReportedAndTheOthersProgrammed(t *testing.T) {
	h := start(t, lease(1))
	h.k.mu.Lock()
	h.k.refuse = lease(3).Subnet
	h.k.mu.Unlock()
	h.events <- []subnet.Event{{Type: subnet.Added, Lease: lease(2)}, {Type: subnet.Added, Lease: lease(3)}, {Type: subnet.Added, Lease: lease(4)}}
	h.wait(t, keys(2, 4))
	testenv.Eventually(t, 5*time.Second, "the status to say syncs fail", func() (bool, string) {
		st := h.r.Status()
		return !st.FailingSince.IsZero() && strings.Contains(st.LastSyncErr, "100.96.3.0/24"), fmt.Sprintf("%+v", st)
	})
	h.k.mu.Lock()
	h.k.refuse = netip.Prefix{}
	h.k.mu.Unlock()
	h.events <- []subnet.Event{{Type: subnet.Added, Lease: lease(5)}}
	h.wait(t, keys(2, 3, 4, 5))
	testenv.Eventually(t, 5*time.Second, "the status to say syncs succeed", func() (bool, string) {
		st := h.r.Status()
		return st.FailingSince.IsZero() && st.LastSyncErr == "", fmt.Sprintf("%+v", st)
	})
}
