package reconcile

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/subnet"
)

func TestAdmitRefusesOverlaps(t *testing.T) {
	l := func(v4, v6 string) subnet.Lease {
		var out subnet.Lease
		if v4 != "" {
			out.Subnet = netip.MustParsePrefix(v4)
		}
		if v6 != "" {
			out.IPv6Subnet = netip.MustParsePrefix(v6)
		}
		return out
	}
	self := l("100.96.1.0/24", "fd96:0:0:1::/64")
	all := map[string]*peer{}
	for _, x := range []subnet.Lease{
		self,
		l("100.96.2.0/24", "fd96:0:0:2::/64"), // fine
		l("100.96.2.0/24", "fd96:0:0:9::/64"), // same IPv4 subnet as the one above
		l("100.96.3.0/24", "fd96:0:0:1::/64"), // this node's IPv6 subnet
		l("100.96.0.0/16", ""),                // covers this node's subnet
		l("198.18.0.0/24", ""),                // the underlay
		l("100.96.4.0/24", "fd96:0:0:4::/64"), // fine
	} {
		all[x.Key()] = &peer{lease: x}
	}
	delete(all, self.Key()) // the peer set never holds this node's lease
	underlay := []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}
	refused, contended := admit(all, self, fences{underlay: underlay})
	if len(all)-len(refused) != 2 {
		t.Errorf("refused %v", refused)
	}
	for _, k := range []string{"100.96.2.0-24&fd96:0:0:2::-64", "100.96.4.0-24&fd96:0:0:4::-64"} {
		if why, ok := refused[k]; ok {
			t.Errorf("%s refused: %s", k, why)
		}
	}
	if len(contended) != 1 || !contended["100.96.2.0-24&fd96:0:0:9::-64"] {
		t.Errorf("contended = %v", contended)
	}
	want := map[string]string{
		"100.96.2.0-24&fd96:0:0:9::-64": "its subnet 100.96.2.0/24 is already leased by 100.96.2.0-24&fd96:0:0:2::-64",
		"100.96.3.0-24&fd96:0:0:1::-64": "its subnet fd96:0:0:1::/64 overlaps this node's subnet fd96:0:0:1::/64",
		"100.96.0.0-16":                 "its subnet 100.96.0.0/16 overlaps this node's subnet 100.96.1.0/24",
		"198.18.0.0-24":                 "its subnet 198.18.0.0/24 overlaps the underlay network 198.18.0.0/24",
	}
	for k, w := range want {
		if refused[k] != w {
			t.Errorf("refused[%s] = %q, want %q", k, refused[k], w)
		}
	}
}

// Leases of different lengths that overlap (a /20 over /24 ones) are
// contended like equal ones: the smaller key keeps its subnet, and a peer
// set fed one lease at a time agrees with the full pass.
func TestAdmitRefusesOverlapsOfOtherLengths(t *testing.T) {
	self := subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")}
	mk := func(s string) subnet.Lease { return subnet.Lease{Subnet: netip.MustParsePrefix(s)} }
	leases := []subnet.Lease{mk("100.97.2.0/24"), mk("100.97.0.0/20"), mk("100.98.0.0/24"), mk("100.98.0.0/25"), mk("100.99.0.0/24")}
	all := map[string]*peer{}
	for _, l := range leases {
		all[l.Key()] = &peer{lease: l}
	}
	refused, contended := admit(all, self, fences{})
	want := map[string]string{
		// "100.97.0.0-20" < "100.97.2.0-24": the /20 keeps it.
		"100.97.2.0-24": "its subnet 100.97.2.0/24 overlaps 100.97.0.0/20, leased by 100.97.0.0-20",
		"100.98.0.0-25": "its subnet 100.98.0.0/25 overlaps 100.98.0.0/24, leased by 100.98.0.0-24",
	}
	if len(refused) != len(want) || len(contended) != len(want) {
		t.Errorf("refused %v, contended %v", refused, contended)
	}
	for k, w := range want {
		if refused[k] != w {
			t.Errorf("refused[%s] = %q, want %q", k, refused[k], w)
		}
	}
	// One at a time, in an order where the loser comes first.
	s := newPeerSet(logrus.NewEntry(logrus.New()), self, fences{})
	for _, l := range []subnet.Lease{leases[0], leases[3], leases[4], leases[1], leases[2]} {
		s.apply([]subnet.Event{{Type: subnet.Added, Lease: l}})
	}
	for k, p := range s.all {
		if _, lost := want[k]; p.admitted() == lost {
			t.Errorf("one at a time: %s admitted = %v (%s)", k, p.admitted(), p.refused)
		}
	}
}

// Leases that ask to be reached where no peer can be are refused, each
// with a reason that names it.
func TestAdmitRefusesHostileAddresses(t *testing.T) {
	self := subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24"), Attrs: subnet.Attrs{
		PublicIP: netip.MustParseAddr("198.18.0.1"), BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`)}}
	f := fences{
		underlay: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")},
		pods:     []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")},
		infra:    map[netip.Addr]string{netip.MustParseAddr("198.18.0.254"): "etcd's (--etcd-endpoints)"},
	}
	vx := func(n int, ip, mac string) subnet.Lease {
		return subnet.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 97, byte(n), 0}), 24), Attrs: subnet.Attrs{
			PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}}
	}
	for _, tc := range []struct {
		lease subnet.Lease
		want  string
	}{
		{vx(1, "198.18.0.2", "0e:00:00:00:00:02"), ""},
		{vx(2, "198.18.0.1", "0e:00:00:00:00:03"), "its public address 198.18.0.1 is this node's own"},
		{vx(3, "0.0.0.0", "0e:00:00:00:00:04"), "its public address 0.0.0.0 is unspecified"},
		{vx(4, "224.0.0.1", "0e:00:00:00:00:05"), "its public address 224.0.0.1 is a multicast address"},
		{vx(5, "255.255.255.255", "0e:00:00:00:00:06"), "its public address 255.255.255.255 is the broadcast address"},
		{vx(6, "198.18.0.255", "0e:00:00:00:00:07"), "its public address 198.18.0.255 is the broadcast address of the underlay network 198.18.0.0/24"},
		{vx(7, "127.0.0.1", "0e:00:00:00:00:08"), "its public address 127.0.0.1 is a loopback address"},
		{vx(8, "100.96.1.5", "0e:00:00:00:00:09"), "its public address 100.96.1.5 is a pod address (inside the pod network 100.96.0.0/12)"},
		{vx(9, "198.18.0.9", "00:00:00:00:00:00"), "its VtepMAC 00:00:00:00:00:00 is all zeros"},
		{vx(10, "198.18.0.10", "ff:ff:ff:ff:ff:ff"), "its VtepMAC ff:ff:ff:ff:ff:ff is a multicast or broadcast address"},
		{vx(11, "198.18.0.11", "01:00:5e:00:00:01"), "is a multicast or broadcast address"},
		{vx(12, "198.18.0.12", "0e:00:00:00:00:01"), "its VtepMAC 0e:00:00:00:00:01 is this node's own"},
		{vx(13, "198.18.0.254", "0e:00:00:00:00:0d"), "its public address 198.18.0.254 is etcd's (--etcd-endpoints)"},
	} {
		if got := unfit(tc.lease, self, f); got != tc.want && (tc.want == "" || !strings.Contains(got, tc.want)) {
			t.Errorf("%s (%s, %s): %q, want %q", tc.lease.Key(), tc.lease.PublicIP, tc.lease.BackendData, got, tc.want)
		}
	}
}

// A lease that copies another node's VTEP MAC at another address would
// take that node's traffic (the kernel has one FDB entry per MAC): the
// older lease keeps the MAC whatever the keys, in one pass and one lease
// at a time in either order; a node's old and new lease may share its MAC
// at one address.
func TestAdmitRefusesACopiedVtepMAC(t *testing.T) {
	self := subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.1"), BackendType: "vxlan"}}
	vx := func(sn, ip string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.Attrs{
			PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}`)}}
	}
	node2 := vx("100.97.0.0/24", "198.18.0.2")     // the real one, written first
	copycat := vx("100.96.9.0/24", "198.18.0.218") // later, with a smaller key
	renewed := vx("100.98.0.0/24", "198.18.0.2")   // node-2's next lease
	events := []subnet.Event{
		{Type: subnet.Added, Lease: node2, Age: 10},
		{Type: subnet.Added, Lease: copycat, Age: 20},
		{Type: subnet.Added, Lease: renewed, Age: 30},
	}
	check := func(name string, s *peerSet) {
		t.Helper()
		for _, l := range []subnet.Lease{node2, renewed} {
			if p := s.all[l.Key()]; !p.admitted() {
				t.Errorf("%s: %s refused: %s", name, l.Key(), p.refused)
			}
		}
		want := "its VtepMAC 0e:00:00:00:00:02 is already used by 100.97.0.0-24 at 198.18.0.2"
		if p := s.all[copycat.Key()]; p.admitted() || p.refused != want {
			t.Errorf("%s: the copy: admitted %v, %q; want refused %q", name, p.admitted(), p.refused, want)
		}
	}
	for name, order := range map[string][]int{"in order": {0, 1, 2}, "copy first": {1, 0, 2}, "renewed first": {2, 1, 0}} {
		s := newPeerSet(logrus.NewEntry(logrus.New()), self, fences{})
		for _, i := range order {
			s.apply(events[i : i+1])
		}
		check(name, s)
	}
	s := newPeerSet(logrus.NewEntry(logrus.New()), self, fences{})
	s.apply(events)
	check("one batch", s)
	// The real node gone for good: the copy's MAC is free.
	s.apply([]subnet.Event{{Type: subnet.Removed, Lease: node2}, {Type: subnet.Removed, Lease: renewed}})
	if p := s.all[copycat.Key()]; !p.admitted() {
		t.Errorf("the copy is still refused once the MAC is free: %s", p.refused)
	}
}
