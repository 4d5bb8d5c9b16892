// Package hostgw is weft's host-gw backend: a plain route to each peer's
// subnet via the peer's public address. It needs every peer on the same L2
// segment; a peer behind a router is reported, not given a broken route.
package hostgw

import (
	"context"
	"fmt"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/subnet"
)

// HostGW is the host-gw backend.
type HostGW struct {
	network *subnet.Config
	ext     *backend.ExternalInterface
}

var _ backend.Backend = (*HostGW)(nil)

// New returns the backend.
func New(env backend.Env) (*HostGW, error) {
	return &HostGW{network: env.Network}, nil
}

// Type implements backend.Backend.
func (g *HostGW) Type() string { return subnet.BackendHostGW }

// MTU implements backend.Backend: no encapsulation, the underlay's MTU.
func (g *HostGW) MTU() int {
	if g.ext == nil {
		return 0
	}
	return g.ext.MTU
}

// Setup implements backend.Backend; host-gw has no devices and publishes
// no backend data.
func (g *HostGW) Setup(_ context.Context, ext *backend.ExternalInterface, _ *subnet.Lease) (backend.Published, error) {
	g.ext = ext
	return backend.Published{}, nil
}

// Devices implements backend.Backend; host-gw has none.
func (g *HostGW) Devices() []string { return nil }

// Links implements backend.Backend; host-gw has none.
func (g *HostGW) Links() []int { return nil }

// Peer implements backend.Backend: a route to each of p's subnets of the
// network's families via its public address, if that is on this node's
// segment.
func (g *HostGW) Peer(p *subnet.Lease, _ *backend.Underlay, e *kernel.Entries) (backend.PeerState, string) {
	st, why := backend.Encapsulated, ""
	for _, pool := range g.network.Pools() {
		f := p.Family(pool.IPv6())
		if !f.Subnet.IsValid() || !f.PublicIP.IsValid() {
			continue
		}
		if !g.ext.OnLink(f.PublicIP) {
			st = backend.Unreachable
			why = fmt.Sprintf("peer %s is not on the same L2 segment as %s; host-gw cannot reach it (use vxlan, or DirectRouting)", f.PublicIP, g.ext.Name)
			continue
		}
		e.Routes = append(e.Routes, kernel.Route{Dst: f.Subnet, Gw: f.PublicIP, LinkIndex: g.ext.Index})
	}
	return st, why
}

// Teardown implements backend.Backend; host-gw owns nothing but routes,
// which go when the kernel layer no longer wants them.
func (g *HostGW) Teardown(context.Context) error { return nil }
