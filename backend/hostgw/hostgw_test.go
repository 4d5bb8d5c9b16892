package hostgw

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

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
	g, _ := New(backend.Env{Netlink: n.Netlink, Network: cfg})
	node := testenv.NewNode(g, n, ext, &subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")})

	lease := func(sn, pub, typ string) *subnet.Lease {
		return &subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: typ}}
	}
	peers := []*subnet.Lease{
		lease("100.96.2.0/24", "198.18.0.2", "host-gw"),
		lease("100.96.3.0/24", "198.18.0.3", "host-gw"),
		lease("100.96.4.0/24", "198.19.1.4", "host-gw"), // behind a router
	}
	for i := range 3 { // repeated syncs change nothing
		states, whys, res := node.Sync(t, peers)
		want := []backend.PeerState{backend.Encapsulated, backend.Encapsulated, backend.Unreachable}
		if err := res.Error(); err != nil || !slices.Equal(states, want) {
			t.Fatalf("Sync = %v, %v; want states %v", states, err, want)
		}
		if i > 0 && res.Changed != 0 {
			t.Errorf("sync %d changed %d routes, want none", i, res.Changed)
		}
		if !strings.Contains(whys[2], "198.19.1.4 is not on the same L2 segment as eth0; host-gw cannot reach it") || whys[0] != "" {
			t.Errorf("reasons %q; want one for the peer behind a router", whys)
		}
	}
	if got, want := weftRoutes(n), "100.96.2.0/24 via 198.18.0.2 dev eth0\n100.96.3.0/24 via 198.18.0.3 dev eth0"; got != want {
		t.Errorf("routes:\n%s\nwant:\n%s", got, want)
	}

	if _, _, res := node.Sync(t, peers[:1]); res.Error() != nil {
		t.Fatal(res.Error())
	}
	if got := weftRoutes(n); strings.Contains(got, "100.96.3.0") {
		t.Errorf("stale route kept:\n%s", got)
	}

	// Update: one peer moves, one leaves, one joins, one comes onto the
	// segment; only what changed is touched.
	moved := lease("100.96.2.0/24", "198.18.0.22", "host-gw")
	joined := lease("100.96.6.0/24", "198.18.0.6", "host-gw")
	back := lease("100.96.4.0/24", "198.18.0.4", "host-gw")
	if _, _, res := node.Sync(t, peers); res.Error() != nil {
		t.Fatal(res.Error())
	}
	states, res := node.Update([]testenv.Change{
		{Old: peers[0], New: moved},
		{Old: peers[1]},
		{New: joined},
		{Old: peers[2], New: back},
	})
	if want := []backend.PeerState{backend.Encapsulated, backend.Encapsulated, backend.Encapsulated}; res.Error() != nil || !slices.Equal(states, want) {
		t.Fatalf("Update = %v, %v; want states %v", states, res.Error(), want)
	}
	if got, want := weftRoutes(n), "100.96.2.0/24 via 198.18.0.22 dev eth0\n100.96.4.0/24 via 198.18.0.4 dev eth0\n100.96.6.0/24 via 198.18.0.6 dev eth0"; got != want {
		t.Errorf("routes after Update:\n%s\nwant:\n%s", got, want)
	}
	if res.Changed != 4 { // 2 replaced, 1 added, 1 deleted
		t.Errorf("Update changed %d routes, want 4", res.Changed)
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
