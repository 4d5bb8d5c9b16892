package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// newNode makes a namespace with an eth0 at 198.18.0.1/24.
func newNode(t testing.TB) (*testenv.NetNS, *backend.ExternalInterface) {
	t.Helper()
	n := testenv.NewNetNS(t)
	idx := n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	return n, &backend.ExternalInterface{
		Name: "eth0", Index: idx, MTU: 1500,
		Addrs:   []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")},
		LocalIP: netip.MustParseAddr("198.18.0.1"), PublicIP: netip.MustParseAddr("198.18.0.1"),
	}
}

func newVXLAN(t testing.TB, n *testenv.NetNS, ext *backend.ExternalInterface, conf string) *testenv.Node {
	t.Helper()
	cfg, _, err := subnet.ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(backend.Env{Netlink: n.Netlink, Network: cfg, Log: logrus.NewEntry(logrus.New())})
	if err != nil {
		t.Fatal(err)
	}
	return testenv.NewNode(v, n, ext, &self)
}

func peer(n int, mac string) *subnet.Lease {
	return &subnet.Lease{
		Subnet: netip.MustParsePrefix(fmt.Sprintf("100.96.%d.0/24", n)),
		Attrs: subnet.Attrs{
			PublicIP:    netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", n)),
			BackendType: "vxlan",
			BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac)),
		},
	}
}

var self = subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")}

// sync is a full sync of peers, as the reconciler does it.
func sync(t testing.TB, n *testenv.Node, peers []*subnet.Lease) (backend.Stats, kernel.Result) {
	t.Helper()
	states, _, res := n.Sync(t, peers)
	return testenv.Count(states), res
}

// update programs changes as the reconciler does between full syncs.
func update(n *testenv.Node, changes []testenv.Change) (backend.Stats, kernel.Result) {
	states, res := n.Update(changes)
	return testenv.Count(states), res
}

// ip runs iproute2 in the namespace and returns its output.
func ip(t *testing.T, n *testenv.NetNS, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestSetupAndSyncProgramFlannelsScheme(t *testing.T) {
	n, ext := newNode(t)
	v := newVXLAN(t, n, ext, `{"Network":"100.96.0.0/12"}`)
	pub, err := v.Setup()
	if err != nil {
		t.Fatal(err)
	}
	var data LeaseData
	json.Unmarshal(pub.Data, &data)
	if data.VNI != 1 || data.VtepMAC != v.Backend.(*VXLAN).devs[0].mac.String() {
		t.Fatalf("published %s", pub.Data)
	}
	dev := ip(t, n, "-d", "link", "show", "weft.1")
	for _, want := range []string{"mtu 1450", "vxlan id 1", "local 198.18.0.1", "dev eth0", "dstport 8472", "nolearning", data.VtepMAC} {
		if !strings.Contains(dev, want) {
			t.Errorf("device lacks %q:\n%s", want, dev)
		}
	}

	// Someone else's route must survive every sync.
	ip(t, n, "route", "add", "100.99.0.0/24", "via", "198.18.0.254", "proto", "static")

	peers := []*subnet.Lease{peer(2, "0e:00:00:00:00:02"), peer(3, "0e:00:00:00:00:03")}
	stats, res := sync(t, v, peers)
	if err := res.Error(); err != nil || stats.Programmed != 2 {
		t.Fatalf("Sync = %+v, %v", stats, err)
	}
	want := map[string][]string{
		"addr show dev weft.1":     {"inet 100.96.1.0/32"},
		"route show proto 87":      {"100.96.2.0/24 via 100.96.2.0 dev weft.1 metric", "100.96.3.0/24 via 100.96.3.0 dev weft.1 metric", "onlink"},
		"neigh show dev weft.1":    {"100.96.2.0 lladdr 0e:00:00:00:00:02 PERMANENT", "100.96.3.0 lladdr 0e:00:00:00:00:03 PERMANENT"},
		"route show 100.99.0.0/24": {"100.99.0.0/24 via 198.18.0.254 dev eth0 proto static"},
	}
	for cmd, lines := range want {
		out := ip(t, n, strings.Fields(cmd)...)
		for _, l := range lines {
			if !strings.Contains(out, l) {
				t.Errorf("ip %s lacks %q:\n%s", cmd, l, out)
			}
		}
	}
	fdb, _ := exec.Command("bridge", "-n", n.Name, "fdb", "show", "dev", "weft.1").CombinedOutput()
	for _, l := range []string{"0e:00:00:00:00:02 dst 198.18.0.2 self permanent", "0e:00:00:00:00:03 dst 198.18.0.3 self permanent"} {
		if !strings.Contains(string(fdb), l) {
			t.Errorf("fdb lacks %q:\n%s", l, fdb)
		}
	}

	// Drift: entries deleted by hand come back on the next sync.
	ip(t, n, "neigh", "del", "100.96.2.0", "dev", "weft.1")
	ip(t, n, "route", "del", "100.96.3.0/24")
	exec.Command("bridge", "-n", n.Name, "fdb", "del", "0e:00:00:00:00:02", "dev", "weft.1", "dst", "198.18.0.2", "self").Run()
	if _, res := sync(t, v, peers); res.Error() != nil {
		t.Fatal(res.Error())
	}
	if out := ip(t, n, "neigh", "show", "dev", "weft.1"); !strings.Contains(out, "100.96.2.0 lladdr 0e:00:00:00:00:02") {
		t.Errorf("neighbour not restored:\n%s", out)
	}
	if out := ip(t, n, "route", "show", "proto", "87"); !strings.Contains(out, "100.96.3.0/24") {
		t.Errorf("route not restored:\n%s", out)
	}
	if fdb, _ := exec.Command("bridge", "-n", n.Name, "fdb", "show", "dev", "weft.1").CombinedOutput(); !strings.Contains(string(fdb), "0e:00:00:00:00:02 dst 198.18.0.2") {
		t.Errorf("fdb not restored:\n%s", fdb)
	}

	// A peer leaves: only the rest remains.
	stats, res = sync(t, v, peers[:1])
	if err := res.Error(); err != nil || stats.Programmed != 1 {
		t.Fatalf("Sync = %+v, %v", stats, err)
	}
	if out := ip(t, n, "route", "show", "proto", "87"); strings.Contains(out, "100.96.3.0") || !strings.Contains(out, "100.96.2.0") {
		t.Errorf("routes after removal:\n%s", out)
	}
	if out := ip(t, n, "neigh", "show", "dev", "weft.1"); strings.Contains(out, "100.96.3.0") {
		t.Errorf("stale neighbour:\n%s", out)
	}
	if fdb, _ := exec.Command("bridge", "-n", n.Name, "fdb", "show", "dev", "weft.1").CombinedOutput(); strings.Contains(string(fdb), "0e:00:00:00:00:03") {
		t.Errorf("stale fdb:\n%s", fdb)
	}
	if out := ip(t, n, "route", "show", "100.99.0.0/24"); !strings.Contains(out, "proto static") {
		t.Errorf("someone else's route was touched:\n%s", out)
	}

	if err := v.Backend.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Netlink.LinkByName("weft.1"); err == nil {
		t.Error("device still there after Teardown")
	}
	if out := ip(t, n, "route", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Errorf("routes through the device left after Teardown:\n%s", out)
	}
}

func TestUpdateProgramsOnlyTheChanges(t *testing.T) {
	n, ext := newNode(t)
	v := newVXLAN(t, n, ext, `{"Network":"100.96.0.0/12"}`)
	p2, p3 := peer(2, "0e:00:00:00:00:02"), peer(3, "0e:00:00:00:00:03")
	if _, res := sync(t, v, []*subnet.Lease{p2, p3}); res.Error() != nil {
		t.Fatal(res.Error())
	}
	// Peer 2 gets a new MAC, 3 leaves, 4 and 5 join sharing one VTEP (a
	// node's old and new lease), 6 joins without a MAC.
	p2b := peer(2, "0e:00:00:00:00:22")
	p4 := peer(4, "0e:00:00:00:00:04")
	p5 := peer(5, "0e:00:00:00:00:04")
	p5.PublicIP = p4.PublicIP
	p6 := peer(6, "")
	p6.BackendData = nil
	stats, res := update(v, []testenv.Change{{Old: p2, New: p2b}, {Old: p3}, {New: p4}, {New: p5}, {New: p6}})
	if err := res.Error(); err != nil || stats.Programmed != 3 || stats.Unreachable != 1 {
		t.Fatalf("Update = %+v, %v", stats, err)
	}
	check := func(what string, want, unwanted []string) {
		t.Helper()
		out := ip(t, n, "route", "show", "proto", "87") + ip(t, n, "neigh", "show", "dev", "weft.1")
		fdb, _ := exec.Command("bridge", "-n", n.Name, "fdb", "show", "dev", "weft.1").CombinedOutput()
		out += string(fdb)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: kernel lacks %q:\n%s", what, w, out)
			}
		}
		for _, u := range unwanted {
			if strings.Contains(out, u) {
				t.Errorf("%s: kernel still has %q:\n%s", what, u, out)
			}
		}
	}
	check("after the update",
		[]string{"100.96.2.0 lladdr 0e:00:00:00:00:22", "0e:00:00:00:00:22 dst 198.18.0.2", "100.96.4.0/24 via 100.96.4.0", "100.96.5.0/24 via 100.96.5.0", "0e:00:00:00:00:04 dst 198.18.0.4"},
		[]string{"0e:00:00:00:00:02 ", "100.96.3.0", "0e:00:00:00:00:03", "100.96.6.0"})

	// Peer 4 leaves: the VTEP peer 5 shares stays.
	if _, res := update(v, []testenv.Change{{Old: p4}}); res.Error() != nil {
		t.Fatal(res.Error())
	}
	check("after peer 4 left", []string{"0e:00:00:00:00:04 dst 198.18.0.4", "100.96.5.0 lladdr 0e:00:00:00:00:04"}, []string{"100.96.4.0"})

	// A full sync of the same peers finds nothing to change: the update
	// and the full sync agree on what the kernel holds.
	if _, res := sync(t, v, []*subnet.Lease{p2b, p5, p6}); res.Error() != nil || res.Changed != 0 {
		t.Errorf("a full sync after updates changed %d entries (%v)", res.Changed, res.Error())
	}
}

func TestSetupReusesCompatibleAndRecreatesIncompatibleDevice(t *testing.T) {
	n, ext := newNode(t)
	v := newVXLAN(t, n, ext, `{"Network":"100.96.0.0/12"}`)
	if _, err := v.Setup(); err != nil {
		t.Fatal(err)
	}
	before, _ := n.Netlink.LinkByName("weft.1")

	again := newVXLAN(t, n, ext, `{"Network":"100.96.0.0/12"}`)
	if _, err := again.Setup(); err != nil {
		t.Fatal(err)
	}
	after, _ := n.Netlink.LinkByName("weft.1")
	if after.Attrs().Index != before.Attrs().Index {
		t.Error("a compatible device was re-created")
	}

	other := newVXLAN(t, n, ext, `{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan","Port":4789,"MTU":1400}}`)
	if _, err := other.Setup(); err != nil {
		t.Fatal(err)
	}
	dev := ip(t, n, "-d", "link", "show", "weft.1")
	if !strings.Contains(dev, "dstport 4789") || !strings.Contains(dev, "mtu 1400") {
		t.Errorf("device not re-created with the new port and MTU:\n%s", dev)
	}
}

func TestStableMAC(t *testing.T) {
	a := stableMAC(netip.MustParseAddr("198.18.0.1"), 1)
	if a.String() != stableMAC(netip.MustParseAddr("198.18.0.1"), 1).String() {
		t.Fatal("not stable")
	}
	if a.String() == stableMAC(netip.MustParseAddr("198.18.0.2"), 1).String() {
		t.Fatal("same MAC for two nodes")
	}
	if a[0]&0x01 != 0 || a[0]&0x02 == 0 {
		t.Fatalf("%s is not a locally administered unicast MAC", a)
	}
}

// benchPeers makes n vxlan peers on the node's segment.
func benchPeers(n int) []*subnet.Lease {
	peers := make([]*subnet.Lease, n)
	for i := range peers {
		j := i + 2
		peers[i] = &subnet.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(j>>8), byte(j), 0}), 24),
			Attrs: subnet.Attrs{
				PublicIP:    netip.AddrFrom4([4]byte{198, 18, byte(j >> 8), byte(j)}),
				BackendType: "vxlan",
				BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0e:00:00:00:%02x:%02x"}`, j>>8&255, j&255)),
			},
		}
	}
	return peers
}

// BenchmarkFullSync10k is one periodic resync of a node with 10,000 vxlan
// peers programmed: setting the device up, working out every peer's
// entries, reading the routes, neighbour and FDB entries back from the
// kernel and finding nothing to change.
func BenchmarkFullSync10k(b *testing.B) {
	n, peers := programmed(b, 10000)
	b.ReportAllocs()
	for b.Loop() {
		if _, res := sync(b, n, peers); res.Error() != nil || res.Changed != 0 {
			b.Fatalf("changed %d entries: %v", res.Changed, res.Error())
		}
	}
}

// BenchmarkUpdateOnePeer10k is one lease changing its VTEP MAC on a node
// with 10,000 vxlan peers: two FDB entries, one neighbour, one route.
func BenchmarkUpdateOnePeer10k(b *testing.B) {
	n, peers := programmed(b, 10000)
	a, z := *peers[0], *peers[0]
	z.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"0e:ff:ff:ff:ff:ff"}`)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		old, cur := &a, &z
		if i%2 == 1 {
			old, cur = cur, old
		}
		if _, res := update(n, []testenv.Change{{Old: old, New: cur}}); res.Error() != nil {
			b.Fatal(res.Error())
		}
	}
}

// programmed returns a vxlan backend in a new namespace with n peers
// programmed, routes included.
func programmed(b *testing.B, n int) (*testenv.Node, []*subnet.Lease) {
	ns, ext := newNode(b)
	v := newVXLAN(b, ns, ext, `{"Network":"100.96.0.0/12"}`)
	peers := benchPeers(n)
	if _, res := sync(b, v, peers); res.Error() != nil {
		b.Fatal(res.Error())
	}
	return v, peers
}
