package hostgw

import (
	"context"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

func TestSyncRoutesPeersOnTheSegmentOnly(t *testing.T) {
	n := testenv.NewNetNS(t)
	idx := n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	ext := &backend.ExternalInterface{Name: "eth0", Index: idx, MTU: 1500,
		Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}, LocalIP: netip.MustParseAddr("198.18.0.1")}
	cfg, _, _ := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"host-gw"}}`))
	logger, hook := logtest.NewNullLogger()
	g, _ := New(backend.Env{Netlink: n.Netlink, NetNS: netns.NsHandle(n.Fd()), Ext: ext, Network: cfg, Log: logrus.NewEntry(logger)})

	lease := func(sn, pub, typ string) *subnet.Lease {
		return &subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: typ}}
	}
	peers := []*subnet.Lease{
		lease("100.96.2.0/24", "198.18.0.2", "host-gw"),
		lease("100.96.3.0/24", "198.18.0.3", "host-gw"),
		lease("100.96.4.0/24", "198.19.1.4", "host-gw"), // behind a router
	}
	self := subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")}
	for range 3 { // repeated syncs change nothing and log nothing new
		routes, states, err := g.Sync(context.Background(), self, peers)
		if err == nil {
			_, err = backend.SyncRoutes(n.Netlink, routes)
		}
		want := []backend.PeerState{backend.Encapsulated, backend.Encapsulated, backend.Unreachable}
		if err != nil || !slices.Equal(states, want) {
			t.Fatalf("Sync = %v, %v; want states %v", states, err, want)
		}
	}
	if got, want := weftRoutes(n), "100.96.2.0/24 via 198.18.0.2 dev eth0\n100.96.3.0/24 via 198.18.0.3 dev eth0"; got != want {
		t.Errorf("routes:\n%s\nwant:\n%s", got, want)
	}
	warnings := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "not on the same L2 segment") {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("unreachable peer logged %d times, want once", warnings)
	}

	routes, _, err := g.Sync(context.Background(), self, peers[:1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backend.SyncRoutes(n.Netlink, routes); err != nil {
		t.Fatal(err)
	}
	if got := weftRoutes(n); strings.Contains(got, "100.96.3.0") {
		t.Errorf("stale route kept:\n%s", got)
	}

	// Update: one peer moves, one leaves, one joins, one comes onto the
	// segment; only what changed is touched.
	moved := lease("100.96.2.0/24", "198.18.0.22", "host-gw")
	joined := lease("100.96.6.0/24", "198.18.0.6", "host-gw")
	back := lease("100.96.4.0/24", "198.18.0.4", "host-gw")
	if _, err := backend.SyncRoutes(n.Netlink, append(routes, backend.Route{Dst: netip.MustParsePrefix("100.96.3.0/24"), Gw: netip.MustParseAddr("198.18.0.3"), LinkIndex: idx})); err != nil {
		t.Fatal(err)
	}
	delta, states, err := g.Update(context.Background(), self, []backend.Change{
		{Old: peers[0], New: moved},
		{Old: peers[1]},
		{New: joined},
		{Old: peers[2], New: back},
	})
	if err == nil {
		err = backend.ApplyRoutes(n.Netlink, delta)
	}
	if want := []backend.PeerState{backend.Encapsulated, 0, backend.Encapsulated, backend.Encapsulated}; err != nil || !slices.Equal(states, want) {
		t.Fatalf("Update = %v, %v; want states %v", states, err, want)
	}
	if got, want := weftRoutes(n), "100.96.2.0/24 via 198.18.0.22 dev eth0\n100.96.4.0/24 via 198.18.0.4 dev eth0\n100.96.6.0/24 via 198.18.0.6 dev eth0"; got != want {
		t.Errorf("routes after Update:\n%s\nwant:\n%s", got, want)
	}
}

// weftRoutes lists the routes of weft's protocol, without their metric
// (RouteMetric's).
func weftRoutes(n *testenv.NetNS) string {
	out, _ := exec.Command("ip", "-n", n.Name, "route", "show", "proto", "87").CombinedOutput()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		l, _, _ = strings.Cut(l, " metric ")
		lines = append(lines, strings.TrimSpace(l))
	}
	return strings.Join(lines, "\n")
}
