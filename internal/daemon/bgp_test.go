package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/subnet"
)

func TestBGPSettingsMergeClusterAndNode(t *testing.T) {
	network, _, err := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","BGP":{"ASN":64512,"Peers":[{"Address":"198.18.0.253","ASN":64500},{"Address":"198.18.0.252","ASN":64500}],"Communities":["64512:7"],"GracefulRestartTime":30}}`))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{log: logrus.NewEntry(logrus.New()), cfg: &Config{BGP: NodeBGP{
		Password: "pw", ASN: 4200000001, ListenPort: 179,
		Peers: []subnet.BGPPeer{{Address: netip.MustParseAddr("198.18.0.252"), ASN: 64501, Port: 1179}, {Address: netip.MustParseAddr("198.18.0.251"), ASN: 64502, Port: 179}},
	}}}
	ext := &backend.ExternalInterface{PublicIP: netip.MustParseAddr("198.18.0.1")}
	cfg, opts, on, err := d.bgpSettings(network, ext)
	if err != nil || !on {
		t.Fatalf("bgpSettings = %v, %v", on, err)
	}
	if cfg.ASN != 4200000001 || cfg.RouterID != ext.PublicIP || cfg.GracefulRestart.Seconds() != 30 {
		t.Errorf("config = %+v; want the node's ASN, the node's address as router ID, 30s restart", cfg)
	}
	want := []bgp.Peer{
		{Address: netip.MustParseAddr("198.18.0.251"), ASN: 64502, Port: 179, Password: "pw"},
		{Address: netip.MustParseAddr("198.18.0.252"), ASN: 64501, Port: 1179, Password: "pw"}, // the node's setting wins
		{Address: netip.MustParseAddr("198.18.0.253"), ASN: 64500, Port: 179, Password: "pw"},
	}
	if len(opts.Peers) != 3 || opts.Peers[0] != want[0] || opts.Peers[1] != want[1] || opts.Peers[2] != want[2] {
		t.Errorf("peers = %+v, want %+v", opts.Peers, want)
	}
	if len(opts.Communities) != 1 || opts.Communities[0] != 64512<<16|7 || !opts.PodSubnets {
		t.Errorf("options = %+v", opts)
	}

	// Neither the cluster nor the node: off.
	plain, _, _ := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`))
	d.cfg.BGP.Peers = nil
	if _, _, on, err := d.bgpSettings(plain, ext); on || err != nil {
		t.Errorf("without BGP: on %v, %v", on, err)
	}
	// An IPv6-only node needs a router ID.
	_, _, _, err = d.bgpSettings(network, &backend.ExternalInterface{PublicIPv6: netip.MustParseAddr("fd18::1")})
	var bad *InvalidError
	if !errors.As(err, &bad) || !errors.Is(err, bgp.ErrNoRouterID) {
		t.Errorf("IPv6-only without --bgp-router-id: %v", err)
	}
}

func TestBGPChangesThatNeedARestart(t *testing.T) {
	a := &subnet.BGP{ASN: 64512, GracefulRestartTime: 120e9}
	b := &subnet.BGP{ASN: 64513, GracefulRestartTime: 120e9}
	for _, tt := range []struct {
		running   bool
		cur, next *subnet.BGP
		want      string
	}{
		{true, a, a, ""},
		{true, a, b, "BGP.ASN changed (64512 → 64513); restart weftd to apply it"},
		{true, a, nil, "BGP was removed from the configuration"},
		{false, nil, &subnet.BGP{Peers: []subnet.BGPPeer{{}}}, "BGP was configured (BGP.Peers); restart weftd"},
		{false, nil, &subnet.BGP{}, ""}, // no peers: nothing to start
	} {
		if got := bgpChange(tt.running, tt.cur, tt.next); (tt.want == "") != (got == "") || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("bgpChange(%v, %+v, %+v) = %q, want %q", tt.running, tt.cur, tt.next, got, tt.want)
		}
	}
}

// A node that runs BGP from its own --bgp-peer-* flags runs with the
// defaults: a BGP object added later with another ASN is a change that
// needs a restart, and said so; one that says nothing new is none.
func TestBGPFromFlagsComparesWithTheDefaults(t *testing.T) {
	d := &daemon{cfg: &Config{BGP: NodeBGP{Peers: []subnet.BGPPeer{{Address: netip.MustParseAddr("198.18.0.253"), ASN: 64500}}}}}
	cur := d.effectiveBGP(nil)
	if got := bgpChange(true, cur, d.effectiveBGP(&subnet.BGP{ASN: 64513, GracefulRestartTime: subnet.DefaultGracefulRestartTime})); !strings.Contains(got, "BGP.ASN changed (64512 → 64513)") {
		t.Errorf("an ASN added to a node running from its flags: %q", got)
	}
	if got := bgpChange(true, cur, d.effectiveBGP(nil)); got != "" {
		t.Errorf("no BGP object, still none: %q", got)
	}
	if got := bgpChange(true, cur, d.effectiveBGP(subnet.DefaultBGP())); got != "" {
		t.Errorf("a BGP object of defaults: %q", got)
	}
}
