// Package hostgw is weft's host-gw backend: a plain route to each peer's
// subnet via the peer's public address. It needs every peer on the same L2
// segment; a peer behind a router is reported, not given a broken route.
package hostgw

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// HostGW is the host-gw backend.
type HostGW struct {
	env  backend.Env
	log  *logrus.Entry
	once backend.LogOnce
}

var _ backend.Backend = (*HostGW)(nil)

// New returns the backend.
func New(env backend.Env) (*HostGW, error) {
	return &HostGW{env: env, log: env.Log.WithField("backend", subnet.BackendHostGW)}, nil
}

// Type implements backend.Backend.
func (g *HostGW) Type() string { return subnet.BackendHostGW }

// MTU implements backend.Backend: no encapsulation, the underlay's MTU.
func (g *HostGW) MTU() int { return g.env.Ext.MTU }

// Setup implements backend.Backend; host-gw has no devices and publishes
// no backend data.
func (g *HostGW) Setup(context.Context) (backend.Published, error) {
	return backend.Published{}, nil
}

// Devices implements backend.Backend; host-gw has none.
func (g *HostGW) Devices() []string { return nil }

// Sync implements backend.Backend.
func (g *HostGW) Sync(ctx context.Context, self subnet.Lease, peers []subnet.Lease, _ bool) ([]backend.Route, backend.Stats, error) {
	var stats backend.Stats
	defer g.once.EndSync()
	ext := g.env.Ext
	routes := make([]backend.Route, 0, len(peers))
	for i := range peers {
		p := &peers[i]
		if p.BackendType != subnet.BackendHostGW {
			stats.OtherType++
			g.once.Warn(g.log, p.Key(), fmt.Sprintf("peer runs backend %q; not programming it with host-gw", p.BackendType))
			continue
		}
		reachable := true
		for _, fam := range []struct {
			sn     netip.Prefix
			public netip.Addr
		}{{p.Subnet, p.PublicIP}, {p.IPv6Subnet, p.PublicIPv6}} {
			if !fam.sn.IsValid() || !fam.public.IsValid() {
				continue
			}
			if !ext.OnLink(fam.public) {
				reachable = false
				g.once.Warn(g.log, p.Key(), fmt.Sprintf("peer %s is not on the same L2 segment as %s; host-gw cannot reach it (use vxlan, or DirectRouting)", fam.public, ext.Name))
				continue
			}
			routes = append(routes, backend.Route{Dst: fam.sn, Gw: fam.public, LinkIndex: ext.Index})
		}
		if reachable {
			stats.Programmed++
		} else {
			stats.Unreachable++
		}
	}
	return routes, stats, nil
}

// Teardown implements backend.Backend; host-gw owns nothing but routes,
// which the route owner removes.
func (g *HostGW) Teardown(context.Context) error { return nil }
