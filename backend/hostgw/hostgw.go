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
func (g *HostGW) Sync(_ context.Context, _ subnet.Lease, peers []*subnet.Lease) ([]backend.Route, []backend.PeerState, error) {
	defer g.once.EndSync()
	routes := make([]backend.Route, 0, len(peers))
	states := make([]backend.PeerState, len(peers))
	for i, p := range peers {
		routes, states[i] = g.routes(routes, p, true)
	}
	return routes, states, nil
}

// Update implements backend.Backend: host-gw has only routes.
func (g *HostGW) Update(_ context.Context, _ subnet.Lease, changes []backend.Change) (backend.RouteDelta, []backend.PeerState, error) {
	var d backend.RouteDelta
	states := make([]backend.PeerState, len(changes))
	for i, c := range changes {
		if c.New != nil {
			d.Add, states[i] = g.routes(d.Add, c.New, true)
		}
		if c.Old != nil {
			d.Del, _ = g.routes(d.Del, c.Old, false)
		}
	}
	return d, states, nil
}

// routes appends the routes to p's subnets via its public addresses and
// returns p's state: unreachable if one of them is off this node's
// segment (said once if warn).
func (g *HostGW) routes(routes []backend.Route, p *subnet.Lease, warn bool) ([]backend.Route, backend.PeerState) {
	ext := g.env.Ext
	state := backend.Encapsulated
	for _, fam := range [...]struct {
		sn     netip.Prefix
		public netip.Addr
	}{{p.Subnet, p.PublicIP}, {p.IPv6Subnet, p.PublicIPv6}} {
		if !fam.sn.IsValid() || !fam.public.IsValid() {
			continue
		}
		if !ext.OnLink(fam.public) {
			state = backend.Unreachable
			if warn {
				g.once.Warn(g.log, p.Key(), fmt.Sprintf("peer %s is not on the same L2 segment as %s; host-gw cannot reach it (use vxlan, or DirectRouting)", fam.public, ext.Name))
			}
			continue
		}
		routes = append(routes, backend.Route{Dst: fam.sn, Gw: fam.public, LinkIndex: ext.Index})
	}
	return routes, state
}

// Teardown implements backend.Backend; host-gw owns nothing but routes,
// which the route owner removes.
func (g *HostGW) Teardown(context.Context) error { return nil }
