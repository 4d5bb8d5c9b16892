package kernel_test

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/testenv"
)

func ipOut(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// A full sync replaces a route of weft's protocol left with another
// metric (by an earlier weft), removes routes of weft's nobody wants, and
// leaves everyone else's routes alone.
func TestSyncOwnsOnlyWeftsRoutes(t *testing.T) {
	n := testenv.NewNetNS(t)
	idx := n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	ipOut(t, n.Name, "route", "add", "100.96.2.0/24", "via", "198.18.0.2", "proto", "87", "metric", "7")
	ipOut(t, n.Name, "route", "add", "100.96.9.0/24", "via", "198.18.0.9", "proto", "87", "metric", "7")
	ipOut(t, n.Name, "route", "add", "100.99.0.0/24", "via", "198.18.0.254", "proto", "static")

	k := kernel.New(n.Netlink, n.Handle())
	w := k.NewWant(1)
	w.Add(0, &kernel.Entries{Routes: []kernel.Route{{Dst: netip.MustParsePrefix("100.96.2.0/24"), Gw: netip.MustParseAddr("198.18.0.2"), LinkIndex: idx}}})
	if res := k.Sync(w); res.Error() != nil {
		t.Fatal(res.Error())
	}
	out := ipOut(t, n.Name, "route", "show")
	if strings.Contains(out, "metric 7") || strings.Contains(out, "100.96.9.0") {
		t.Errorf("stale routes of weft's protocol remain:\n%s", out)
	}
	if !strings.Contains(out, "100.96.2.0/24 via 198.18.0.2 dev eth0 proto 87") {
		t.Errorf("the wanted route is missing:\n%s", out)
	}
	if !strings.Contains(out, "100.99.0.0/24 via 198.18.0.254 dev eth0 proto static") {
		t.Errorf("someone else's route was touched:\n%s", out)
	}
	// Nothing left to do.
	w = k.NewWant(1)
	w.Add(0, &kernel.Entries{Routes: []kernel.Route{{Dst: netip.MustParsePrefix("100.96.2.0/24"), Gw: netip.MustParseAddr("198.18.0.2"), LinkIndex: idx}}})
	if res := k.Sync(w); res.Error() != nil || res.Changed != 0 {
		t.Errorf("second sync changed %d (%v), want nothing", res.Changed, res.Error())
	}
}

// A failure is laid at the door of the owner whose entry the kernel
// refused; the other owners' entries are applied.
func TestSyncIsolatesAFailingOwner(t *testing.T) {
	n := testenv.NewNetNS(t)
	idx := n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	k := kernel.New(n.Netlink, n.Handle())
	w := k.NewWant(2)
	w.Add(0, &kernel.Entries{Routes: []kernel.Route{{Dst: netip.MustParsePrefix("100.96.2.0/24"), Gw: netip.MustParseAddr("198.18.0.2"), LinkIndex: idx}}})
	// A gateway off every segment, without onlink: the kernel refuses it.
	w.Add(1, &kernel.Entries{Routes: []kernel.Route{{Dst: netip.MustParsePrefix("100.96.3.0/24"), Gw: netip.MustParseAddr("203.0.113.3"), LinkIndex: idx}}})
	res := k.Sync(w)
	if res.Err != nil || len(res.Failed) != 1 || res.Failed[1] == nil {
		t.Fatalf("Sync = %+v; want owner 1 alone failed", res)
	}
	if !strings.Contains(res.Failed[1].Error(), "adding route 100.96.3.0/24 via 203.0.113.3") {
		t.Errorf("error %q does not name the route", res.Failed[1])
	}
	if out := ipOut(t, n.Name, "route", "show", "proto", "87"); !strings.Contains(out, "100.96.2.0/24") {
		t.Errorf("owner 0's route is missing:\n%s", out)
	}
}
