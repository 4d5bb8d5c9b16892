package hostgw

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

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
	g, _ := New(backend.Env{Netlink: n.Netlink, Ext: ext, Network: cfg, Log: logrus.NewEntry(logger)})

	lease := func(sn, pub, typ string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: typ}}
	}
	peers := []subnet.Lease{
		lease("100.96.2.0/24", "198.18.0.2", "host-gw"),
		lease("100.96.3.0/24", "198.18.0.3", "host-gw"),
		lease("100.96.4.0/24", "198.19.1.4", "host-gw"), // behind a router
		lease("100.96.5.0/24", "198.18.0.5", "vxlan"),
	}
	self := subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")}
	for range 3 { // repeated syncs change nothing and log nothing new
		routes, stats, err := g.Sync(context.Background(), self, peers, true)
		if err == nil {
			_, err = backend.SyncRoutes(n.Netlink, routes)
		}
		if err != nil || stats != (backend.Stats{Programmed: 2, OtherType: 1, Unreachable: 1}) {
			t.Fatalf("Sync = %+v, %v", stats, err)
		}
	}
	out, _ := exec.Command("ip", "-n", n.Name, "route", "show", "proto", "87").CombinedOutput()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		l, _, _ = strings.Cut(l, " metric ") // the metric is RouteMetric's
		lines = append(lines, strings.TrimSpace(l))
	}
	got := strings.Join(lines, "\n")
	want := "100.96.2.0/24 via 198.18.0.2 dev eth0\n100.96.3.0/24 via 198.18.0.3 dev eth0"
	if got != want {
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

	routes, _, err := g.Sync(context.Background(), self, peers[:1], true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backend.SyncRoutes(n.Netlink, routes); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("ip", "-n", n.Name, "route", "show", "proto", "87").CombinedOutput()
	if strings.Contains(string(out), "100.96.3.0") {
		t.Errorf("stale route kept:\n%s", out)
	}
}
