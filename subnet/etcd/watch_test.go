package etcd

import (
	"context"
	"encoding/json"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// collector receives Watch's batches and keeps the resulting set of leases.
type collector struct {
	ch   chan []subnet.Event
	set  map[string]subnet.Lease
	seen []subnet.Event
}

func startWatch(t *testing.T, s *Store, cfg *subnet.Config) (*collector, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{ch: make(chan []subnet.Event), set: map[string]subnet.Lease{}}
	done := make(chan struct{})
	go func() { s.Watch(ctx, cfg, c.ch); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, cancel
}

// waitFor applies batches until cond holds.
func (c *collector) waitFor(t *testing.T, d time.Duration, what string, cond func(map[string]subnet.Lease) bool) {
	t.Helper()
	timeout := time.After(d)
	for !cond(c.set) {
		select {
		case batch := <-c.ch:
			for _, ev := range batch {
				c.seen = append(c.seen, ev)
				if ev.Type == subnet.Added {
					c.set[ev.Lease.Key()] = ev.Lease
				} else {
					delete(c.set, ev.Lease.Key())
				}
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s; have %v", what, keys(c.set))
		}
	}
}

func keys(m map[string]subnet.Lease) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func has(k string) func(map[string]subnet.Lease) bool {
	return func(m map[string]subnet.Lease) bool { _, ok := m[k]; return ok }
}

func hasNot(k string) func(map[string]subnet.Lease) bool {
	return func(m map[string]subnet.Lease) bool { _, ok := m[k]; return !ok }
}

func TestWatchSeesAddRemoveExpiryAndIgnoresBadLeases(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cli := srv.Client(t)
	logger, hook := logtest.NewNullLogger()
	s := New(cli, Options{Prefix: testPrefix, TTL: 2 * time.Second, Log: logrus.NewEntry(logger)})
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx := ctxFor(t, time.Minute)

	cli.Put(ctx, testPrefix+"/subnets/100.96.1.0-24", `{"PublicIP":"198.18.0.1","BackendType":"host-gw","Node":"node-1"}`)
	w, _ := startWatch(t, s, cfg)
	w.waitFor(t, 10*time.Second, "the existing lease", has("100.96.1.0-24"))

	// Added and removed.
	cli.Put(ctx, testPrefix+"/subnets/100.96.2.0-24", `{"PublicIP":"198.18.0.2","BackendType":"host-gw"}`)
	w.waitFor(t, 10*time.Second, "a new lease", has("100.96.2.0-24"))
	cli.Delete(ctx, testPrefix+"/subnets/100.96.2.0-24")
	w.waitFor(t, 10*time.Second, "a deleted lease to go", hasNot("100.96.2.0-24"))

	// Expiry: a node that stops renewing disappears.
	claim, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(3)})
	if err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 10*time.Second, "the acquired lease", has(claim.Lease().Key()))
	w.waitFor(t, 15*time.Second, "the lease to expire", hasNot(claim.Lease().Key()))

	// Garbage from someone else: ignored, logged once, watch goes on.
	bad := map[string]string{
		"100.96.4.0-24":   `garbage`,
		"10.0.0.0-24":     `{"PublicIP":"198.18.0.5"}`,                                             // outside the network
		"fd96:0:0:5::-64": `{"PublicIPv6":"fd18::5"}`,                                              // wrong family
		"not-a-key":       `{"PublicIP":"198.18.0.6"}`,                                             // bad key
		"100.96.7.0-24":   `{"PublicIP":"198.18.0.7","Node":"` + strings.Repeat("x", 70000) + `"}`, // huge
	}
	for k, v := range bad {
		cli.Put(ctx, testPrefix+"/subnets/"+k, v)
		cli.Put(ctx, testPrefix+"/subnets/"+k, v) // twice: still logged once
	}
	cli.Put(ctx, testPrefix+"/subnets/100.96.8.0-24", `{"PublicIP":"198.18.0.8"}`)
	w.waitFor(t, 10*time.Second, "a good lease after the bad ones", has("100.96.8.0-24"))
	for k := range bad {
		if _, ok := w.set[k]; ok {
			t.Errorf("invalid lease %s was passed on", k)
		}
		n := 0
		for _, e := range hook.AllEntries() {
			if e.Message == "ignoring invalid lease" && e.Data["key"] == testPrefix+"/subnets/"+k {
				n++
			}
		}
		if n != 1 {
			t.Errorf("invalid lease %s logged %d times, want once", k, n)
		}
	}

	// A valid lease turning invalid is withdrawn.
	cli.Put(ctx, testPrefix+"/subnets/100.96.8.0-24", `{"PublicIP":"nonsense"}`)
	w.waitFor(t, 10*time.Second, "a lease turned bad to be withdrawn", hasNot("100.96.8.0-24"))
}

func TestWatchSurvivesEtcdRestart(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, time.Minute)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	w, _ := startWatch(t, s, cfg)
	w.waitFor(t, 10*time.Second, "the first listing", func(map[string]subnet.Lease) bool { return true })
	ctx := ctxFor(t, time.Minute)

	srv.Client(t).Put(ctx, testPrefix+"/subnets/100.96.1.0-24", `{"PublicIP":"198.18.0.1"}`)
	w.waitFor(t, 10*time.Second, "a lease before the restart", has("100.96.1.0-24"))

	srv.Kill()
	time.Sleep(2 * time.Second)
	// While etcd is away nothing is withdrawn.
	select {
	case batch := <-w.ch:
		t.Fatalf("got events while etcd was down: %+v", batch)
	default:
	}
	srv.Restart()

	srv.Client(t).Put(ctx, testPrefix+"/subnets/100.96.2.0-24", `{"PublicIP":"198.18.0.2"}`)
	w.waitFor(t, 30*time.Second, "a lease after the restart", has("100.96.2.0-24"))
	if _, ok := w.set["100.96.1.0-24"]; !ok {
		t.Error("the lease from before the restart was lost")
	}
	// The watch was restarted from its last revision when the connection
	// came back, not left to the client's own resume.
	if s.WatchRestarts() == 0 {
		t.Error("the watch was not restarted after etcd came back")
	}
}

func TestWatchRelistsAfterCompaction(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cli := srv.Client(t)
	s, hook := newStore(t, srv, time.Minute)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx := ctxFor(t, time.Minute)

	lease := func(n int) subnet.Lease {
		return subnet.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96, byte(n), 0}), 24), Attrs: nodeAttrs(n)}
	}
	put := func(n int) {
		v, _ := json.Marshal(lease(n).Attrs)
		if _, err := cli.Put(ctx, testPrefix+"/subnets/"+lease(n).Key(), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	put(1)
	put(2)
	listing, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The watcher last saw leases 1 and 2 at this revision; then, while it
	// was away, 2 went, 3 came, and the history was compacted.
	out := make(chan []subnet.Event, 10)
	cli.Delete(ctx, testPrefix+"/subnets/"+lease(2).Key())
	put(3)
	srv.Compact(t)

	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.WatchFrom(wctx, cfg, out, listing); close(done) }()
	defer func() { cancel(); <-done }()
	if first := <-out; len(first) != 2 { // the listing it was given: leases 1 and 2
		t.Fatalf("first batch %v, want the two leases of the listing", first)
	}

	var got []string
	select {
	case batch := <-out:
		for _, ev := range batch {
			got = append(got, ev.Type.String()+" "+ev.Lease.Key())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no events after compaction")
	}
	sort.Strings(got)
	want := []string{"added 100.96.3.0-24", "removed 100.96.2.0-24"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("after compaction got %v, want %v", got, want)
	}
	if s.WatchRestarts() == 0 {
		t.Error("WatchRestarts not counted")
	}
	found := false
	for _, e := range hook.AllEntries() {
		found = found || strings.Contains(e.Message, "compacted")
	}
	if !found {
		t.Error("compaction not logged")
	}
}
