package bgp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestRoutesOfANode(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	s := New(Config{Log: logrus.NewEntry(logger)}, Options{PodSubnets: true, Communities: []uint32{64512<<16 | 100}})
	s.node = Node{
		Subnets:  []netip.Prefix{netip.MustParsePrefix("100.96.3.0/24"), netip.MustParsePrefix("fd96:0:0:3::/64")},
		PublicIP: netip.MustParseAddr("198.18.0.3"),
	}
	routes := s.routes()
	if len(routes) != 1 || routes[0].Prefix != netip.MustParsePrefix("100.96.3.0/24") || routes[0].NextHop != netip.MustParseAddr("198.18.0.3") || routes[0].Communities[0] != 64512<<16|100 {
		t.Errorf("routes = %+v; want the IPv4 subnet via the node", routes)
	}
	if len(hook.AllEntries()) != 1 || !strings.Contains(hook.LastEntry().Message, "no public address of its family") {
		t.Errorf("the IPv6 subnet without an IPv6 next hop was not reported once: %v", hook.AllEntries())
	}
	s.routes()
	if len(hook.AllEntries()) != 1 {
		t.Error("reported again")
	}
	s.node.PublicIPv6 = netip.MustParseAddr("fd18::3")
	if routes := s.routes(); len(routes) != 2 || routes[1].NextHop != netip.MustParseAddr("fd18::3") {
		t.Errorf("routes = %+v; want both families", routes)
	}
	s.opts.PodSubnets = false
	if routes := s.routes(); len(routes) != 0 {
		t.Errorf("with AdvertisePodSubnets false: %+v", routes)
	}
}

func TestPathCarriesFamilyAndNextHop(t *testing.T) {
	p, err := path(Route{Prefix: netip.MustParsePrefix("fd96:0:0:3::/64"), NextHop: netip.MustParseAddr("fd18::3")})
	if err != nil || p.Family != bgp.RF_IPv6_UC {
		t.Fatalf("path = %+v, %v; want the IPv6 unicast family", p, err)
	}
	var mp *bgp.PathAttributeMpReachNLRI
	for _, a := range p.Attrs {
		if m, ok := a.(*bgp.PathAttributeMpReachNLRI); ok {
			mp = m
		}
	}
	if mp == nil || mp.Nexthop != netip.MustParseAddr("fd18::3") {
		t.Errorf("IPv6 path has no explicit IPv6 next hop: %+v", p.Attrs)
	}
	p, err = path(Route{Prefix: netip.MustParsePrefix("100.96.3.0/24"), NextHop: netip.MustParseAddr("198.18.0.3"), Communities: []uint32{1}})
	if err != nil || p.Family != bgp.RF_IPv4_UC || len(p.Attrs) != 3 {
		t.Errorf("IPv4 path = %+v, %v; want origin, next hop and communities", p, err)
	}
	if _, err := path(Route{Prefix: netip.MustParsePrefix("100.96.3.0/24"), NextHop: netip.MustParseAddr("fd18::3")}); err == nil {
		t.Error("a next hop of the other family was accepted")
	}
}

func TestCausesSayWhatToCheck(t *testing.T) {
	p := Peer{Address: netip.MustParseAddr("198.18.0.253"), ASN: 64500, Port: 179}
	for err, want := range map[string]string{
		"dial tcp 0.0.0.0:0->198.18.0.253:179: connect: connection refused": "198.18.0.253 refuses connections on port 179",
		"dial tcp 0.0.0.0:0->198.18.0.253:179: i/o timeout":                 "a wrong or missing password",
		"dial tcp: connect: no route to host":                               "no route to 198.18.0.253",
		"something else":                                                    "connecting failed: something else",
	} {
		if got := connectCause(err, p); !strings.Contains(got, want) {
			t.Errorf("connectCause(%q) = %q, want %q", err, got, want)
		}
	}
	if got := disconnectCause(api.PeerState_DISCONNECT_REASON_BAD_PEER_AS, "bad-peer-as"); got != "bad-peer-as" {
		t.Errorf("disconnectCause = %q", got)
	}
	if got := disconnectCause(api.PeerState_DISCONNECT_REASON_HOLD_TIMER_EXPIRED, ""); got != "hold timer expired" {
		t.Errorf("disconnectCause = %q", got)
	}
}

func TestPeerStringHasNoPassword(t *testing.T) {
	p := Peer{Address: netip.MustParseAddr("198.18.0.253"), ASN: 64500, Password: "s3cret"}
	if s := p.String(); strings.Contains(s, "s3cret") {
		t.Errorf("Peer prints its password: %s", s)
	}
}
